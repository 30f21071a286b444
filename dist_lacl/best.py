"""The best checkpoint: the dev scalar `train.keep_best` names, and whether a score beats the best so far.

Higher is better for every metric the dev evaluation reports (MRR, Recall, nDCG). The best step and
value live in the trainer state (`trainer_state.json` of every checkpoint, written atomically), so a
resume and `export --best` read them from the newest complete checkpoint; the Checkpointer never prunes
the best one (`loading.find_best_checkpoint` finds it for `export --best`).
"""

from __future__ import annotations

import math

from .errors import ConfigError

DEV_METRICS = ("mrr@10", "recall@100", "ndcg@10")
"""The metrics train.eval_every computes, each logged as eval/<metric>/<language|macro|all>."""

AVERAGES = ("macro", "all")
"""macro: the mean of the languages' means (the default group); all: the mean over every query."""


def best_scalar(keep_best: str) -> str:
    """The logged scalar that `keep_best` names: `ndcg@10` (the macro average), `ndcg@10/<group>` or the
    full `eval/ndcg@10/<group>`; the metric is case-insensitive (nDCG@10). ConfigError otherwise."""
    parts = keep_best.strip().split("/")
    if parts[0] == "eval":
        parts = parts[1:]
    metric, group = (parts + ["macro"])[:2] if len(parts) in (1, 2) else ("", "")
    if metric.lower() not in DEV_METRICS or not group:
        raise ConfigError(f"train.keep_best: expected a dev metric, one of {', '.join(DEV_METRICS)}, optionally "
                          f"followed by /macro (the default), /all or /<dev language>; got {keep_best!r}")
    return f"eval/{metric.lower()}/{group}"


def check_group(keep_best: str, languages) -> None:
    """A keep_best that names a language must name one of the dev set's."""
    group = best_scalar(keep_best).rsplit("/", 1)[1]
    if group not in AVERAGES and group not in set(languages):
        raise ConfigError(f"train.keep_best: {keep_best!r} names language {group!r}, which the dev set does not "
                          f"hold; expected one of {', '.join([*AVERAGES, *sorted(set(languages))])}")


def improves(value: float, best: float | None) -> bool:
    """Whether `value` beats the best so far (higher is better; a tie keeps the earlier checkpoint)."""
    return math.isfinite(value) and (best is None or value > best)
