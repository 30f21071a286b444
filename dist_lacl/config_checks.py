"""Checks of a run config: values the trainer can honour, a world size that splits the batches evenly,
and a resume that continues the same run. Each failure is a ConfigError naming the field.

`cfg` is always a `config.RunConfig`; this module does not import it (config.py imports this one, and
imports run one way).
"""

from __future__ import annotations

import re

from .best import best_scalar
from .errors import ConfigError

IR_FORMATS = ("auto", "tevatron", "tevatron-v2", "flagembedding", "msmarco", "dpr")
_CHOICES = {
    "model.aux_towers": ("query", "passage", "both"),
    "model.pooling": ("cls", "mean"),
    "model.compile_backend": ("inductor", "aot_eager"),
    "data.bad_records": ("error", "skip"),
    "data.train_ir_format": IR_FORMATS,
    "data.ir_batches": ("one", "mixed"),
    "data.parallel_format": ("auto", "jsonl", "tsv", "moses"),
    "data.monolingual_format": ("auto", "jsonl", "text"),
    "loss.language_variant": ("balanced", "squared"),
    "loss.language_pairs": ("all", "own"),
    "loss.sharding": ("replicated", "sharded"),
    "train.backend": ("deepspeed", "ddp"),
    "train.grad_reduction": ("coalesced", "per_chunk"),
    "train.precision": ("fp32", "bf16", "fp16"),
}


REPORTERS = ("tensorboard", "wandb")
"""The scalar writers of train.report_to (see reporting.py)."""


def validate(cfg) -> None:
    """Raise ConfigError naming the field for any value the trainer cannot honour."""
    if cfg.train.keep_best:
        best_scalar(cfg.train.keep_best)
    for dotted, choices in _CHOICES.items():
        section, name = dotted.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            raise ConfigError(f"{dotted}: expected one of {', '.join(choices)}, got {value!r}")
    t, loss, data = cfg.train, cfg.loss, cfg.data
    longest = max(data.query_max_len, data.passage_max_len, data.sentence_max_len)
    checks = [
        (loss.temperature > 0, "loss.temperature", "a positive number"),
        (loss.language_temperature is None or loss.language_temperature > 0, "loss.language_temperature",
         "a positive number or null (null: loss.temperature)"),
        (loss.semantic_weight >= 0, "loss.semantic_weight", "a number >= 0"),
        (loss.language_weight >= 0, "loss.language_weight", "a number >= 0"),
        (loss.block_rows >= 0, "loss.block_rows", "an integer >= 0 (0: all rows at once)"),
        (loss.distill_weight >= 0, "loss.distill_weight", "a number >= 0 (0: no distillation)"),
        (loss.distill_temperature > 0, "loss.distill_temperature", "a positive number"),
        (loss.distill_weight == 0 or data.train_group_size >= 2, "data.train_group_size",
         "at least 2 with loss.distill_weight > 0 (the teacher's distribution is over a query's group)"),
        (t.lr > 0, "train.lr", "a positive number"),
        (t.weight_decay >= 0, "train.weight_decay", "a number >= 0"),
        (all(0 <= b < 1 for b in t.adam_betas), "train.adam_betas", "two numbers in [0, 1)"),
        (t.adam_eps > 0, "train.adam_eps", "a positive number"),
        (0 <= t.seed < 2**31, "train.seed", "an integer from 0 to 2^31 - 1"),
        (t.num_threads >= 0, "train.num_threads", "an integer >= 0 (0: torch's default)"),
        (t.grad_clip >= 0, "train.grad_clip", "a number >= 0 (0 disables clipping)"),
        (t.max_steps > 0, "train.max_steps", "a positive integer"),
        (bool(t.output_dir), "train.output_dir", "a folder for the run's checkpoints and logs"),
        (t.warmup_steps >= 0, "train.warmup_steps", "an integer >= 0"),
        (t.ir_batch_size > 0, "train.ir_batch_size", "a positive integer"),
        (t.parallel_batch_size > 0, "train.parallel_batch_size", "a positive integer"),
        (t.monolingual_batch_size > 0, "train.monolingual_batch_size", "a positive integer"),
        (t.chunk_size >= 0, "train.chunk_size", "an integer >= 0 (0 disables gradient caching)"),
        (t.chunk_size <= max(t.ir_batch_size * data.train_group_size, 1), "train.chunk_size",
         f"at most the largest per-step batch ({t.ir_batch_size * data.train_group_size} passages)"),
        (t.chunk_tokens >= 0, "train.chunk_tokens", "an integer >= 0 (0: chunks of train.chunk_size rows)"),
        (not (t.chunk_tokens and t.chunk_size), "train.chunk_tokens",
         "train.chunk_size 0 with it (a token budget replaces chunks of train.chunk_size rows)"),
        (not t.chunk_tokens or t.chunk_tokens >= longest, "train.chunk_tokens",
         f"at least the longest max length (data.*_max_len: {longest}), so every row fits in a chunk"),
        (cfg.model.packed_row_length >= 0, "model.packed_row_length",
         "an integer >= 0 (0: rows as long as each chunk's longest sequence)"),
        (not cfg.model.packed_row_length or cfg.model.padding_free, "model.packed_row_length",
         "model.padding_free true with it (it sets the length of the packed rows)"),
        (not cfg.model.packed_row_length or cfg.model.packed_row_length >= longest, "model.packed_row_length",
         f"at least the longest max length (data.*_max_len: {longest}), so every sequence fits in a row"),
        (not (cfg.model.packed_row_length and t.chunk_tokens) or t.chunk_tokens >= cfg.model.packed_row_length,
         "train.chunk_tokens", "at least model.packed_row_length, so a chunk holds a whole row"),
        (t.log_every > 0, "train.log_every", "a positive integer"),
        (t.eval_every >= 0, "train.eval_every", "an integer >= 0"),
        (t.eval_every == 0 or all((data.dev_queries, data.dev_corpus, data.dev_qrels)), "data.dev_*",
         "dev_queries, dev_corpus and dev_qrels when train.eval_every > 0"),
        (t.save_every >= 0, "train.save_every", "an integer >= 0"),
        (t.keep_last >= 1, "train.keep_last", "an integer >= 1"),
        (not t.keep_best or t.eval_every > 0, "train.eval_every",
         "a positive integer with train.keep_best (the best checkpoint is chosen at dev evaluations)"),
        (set(t.report_to) <= set(REPORTERS) and len(set(t.report_to)) == len(t.report_to), "train.report_to",
         f"a list of distinct names from {', '.join(REPORTERS)}, got {t.report_to!r}"),
        (t.max_nonfinite_steps >= 1, "train.max_nonfinite_steps", "an integer >= 1"),
        (t.dist_timeout_s > 0, "train.dist_timeout_s", "a positive integer"),
        (data.train_group_size >= 1, "data.train_group_size", "an integer >= 1"),
        (data.cache_build_procs >= 0, "data.cache_build_procs", "an integer >= 0 (0 = one per CPU)"),
        (0 <= data.prefetch <= 8, "data.prefetch", "an integer from 0 (off) to 8 steps"),
        (data.language_alpha is None or data.language_alpha >= 0, "data.language_alpha",
         "a number >= 0 or null (null: every example once per epoch)"),
        (min(data.query_max_len, data.passage_max_len, data.sentence_max_len) >= 2,
         "data.*_max_len", "at least 2 tokens"),
        (bool(data.train_ir), "data.train_ir", "a path to IR training data (Tevatron jsonl, see docs/formats.md)"),
        (data.ir_alpha >= 0, "data.ir_alpha", "a number >= 0 (1: datasets drawn by size, 0: uniformly)"),
    ]
    if isinstance(data.train_ir, list):
        checks += _ir_source_checks(data)
    if loss.semantic_weight > 0 or loss.language_weight > 0:
        checks.append((bool(data.parallel), "data.parallel",
                       "a parallel-sentences jsonl (or set loss.semantic_weight and loss.language_weight to 0)"))
    if loss.language_weight > 0:
        checks.append((bool(data.monolingual), "data.monolingual",
                       "a monolingual-sentences jsonl (or set loss.language_weight to 0)"))
    for ok, name, expected in checks:
        if not ok:
            raise ConfigError(f"{name}: expected {expected}")


def _ir_source_checks(data) -> list[tuple[bool, str, str]]:
    """data.train_ir as a list: each entry's path, format, unique name and weight; weights on all or none."""
    checks = [(data.train_ir_format == "auto", "data.train_ir_format",
               "auto with a list of data.train_ir (give each entry its format)"),
              (data.train_corpus is None, "data.train_corpus",
               "null with a list of data.train_ir (give each entry its corpus)")]
    names: dict[str, int] = {}
    weighted = [s.weight is not None for s in data.train_ir]
    for i, s in enumerate(data.train_ir):
        key = f"data.train_ir[{i}]"
        checks += [
            (bool(s.path), f"{key}.path", "a path to IR training data"),
            (s.format in IR_FORMATS, f"{key}.format", f"one of {', '.join(IR_FORMATS)}, got {s.format!r}"),
            (bool(re.fullmatch(r"[\w.-]+", s.name)), f"{key}.name",
             f"letters, digits, '_', '.' or '-' (it names TensorBoard's data/ir/<name>), got {s.name!r}"),
            (names.setdefault(s.name, i) == i, f"{key}.name",
             f"a name of its own: {s.name!r} is also data.train_ir[{names[s.name]}]'s (set name)"),
            (s.weight is None or s.weight > 0, f"{key}.weight", "a positive number"),
            (weighted[i] == weighted[0], f"{key}.weight",
             "a weight on every entry or on none (data.train_ir[0] has " + ("one)" if weighted[0] else "none)")),
        ]
    return checks


def check_world_size(cfg, world_size: int) -> None:
    """Global batches split evenly over ranks, so every rank gathers equal-sized blocks."""
    t = cfg.train
    for name in ("ir_batch_size", "parallel_batch_size", "monolingual_batch_size"):
        if getattr(t, name) % world_size:
            raise ConfigError(f"train.{name}: {getattr(t, name)} does not divide by the world size {world_size}")


# What a resumed run may change: schedule length, logging/saving cadence, chunking (gradient caching is
# exact), how the loss is split over ranks and blocks (exact too), threads, timeouts, bad-record policy and where the cache lives. Anything else changes the
# model, the data order or the optimisation, and would silently produce a different run.
# train.output_dir: a run directory moved or copied elsewhere is still that run.
RESUMABLE_CHANGES = {"train.output_dir", "train.max_steps", "train.log_every", "train.save_every", "train.keep_last",
                     "train.chunk_size", "train.chunk_tokens", "train.keep_last_graph", "train.grad_reduction", "train.eval_every",
                     "data.dev_queries", "data.dev_corpus", "data.dev_qrels", "train.num_threads", "train.dist_timeout_s",
                     "train.max_nonfinite_steps", "train.deepspeed_config", "data.bad_records",
                     "data.cache_dir", "data.cache_build_procs", "data.prefetch", "model.gradient_checkpointing",
                     "model.packed_row_length",
                     "loss.sharding", "loss.block_rows", "train.report_to"}


def check_resume_compatible(previous, current, source: str) -> None:
    """Raise ConfigError if `current` cannot continue the run that `previous` started."""
    old, new = _flatten(previous.to_dict()), _flatten(current.to_dict())
    changed = [k for k in old if old[k] != new[k] and k not in RESUMABLE_CHANGES]
    if changed:
        details = "; ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in changed[:3])
        raise ConfigError(f"{source}: the output directory holds another run ({details}). Use a new "
                          "train.output_dir, or the same settings to resume it")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out
