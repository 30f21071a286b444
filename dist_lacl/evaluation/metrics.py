"""Ranking metrics computed as trec_eval computes them: MRR@k, Recall@k, nDCG@k, per language and averaged.

Conventions, all trec_eval's (and so pytrec_eval's), checked against pytrec_eval in the tests:
- Order: a run is ranked by score descending; equal scores are ranked by docid *descending* (string
  order). The rank column of a run file is ignored.
- Relevant: relevance > 0. nDCG uses the graded relevance as the gain, gain / log2(rank + 1), and
  the ideal ranking of the judged documents (trec_eval's ndcg_cut). MRR@k is trec_eval's recip_rank
  on the top k.
- Which queries count: those with at least one judgement in the qrels *and* at least one retrieved
  document. A query absent from the qrels is left out of every average; a query judged with no
  relevant document (all relevance 0) is kept and scores 0 on every metric.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..errors import UserError

METRICS = ("mrr", "recall", "ndcg")
DEFAULT_METRICS = ("mrr@10", "recall@100", "ndcg@10")

Run = Mapping[str, Mapping[str, float]]
"""{query_id: {docid: score}}"""
Qrels = Mapping[str, Mapping[str, int]]
"""{query_id: {docid: relevance}}"""


def parse_metrics(names: str | Sequence[str]) -> list[str]:
    """'mrr@10,recall@100' or a list of such names -> the validated names, e.g. ['mrr@10', 'recall@100']."""
    names = names.split(",") if isinstance(names, str) else list(names)
    out = []
    for name in (n.strip().lower() for n in names):
        metric, _, cutoff = name.partition("@")
        if metric not in METRICS or not cutoff.isdigit() or int(cutoff) < 1:
            raise UserError(f"metrics: expected names like mrr@10, recall@100, ndcg@10 "
                            f"({', '.join(METRICS)} at a positive cutoff), got {name!r}")
        out.append(name)
    return out


def max_cutoff(metrics: Sequence[str]) -> int:
    """The deepest rank any of `metrics` looks at: the k to retrieve."""
    return max(int(name.split("@")[1]) for name in metrics)


def rank_docs(scores: Mapping[str, float]) -> list[str]:
    """Docids best first, in trec_eval's order: score descending, then docid descending."""
    return [docid for docid, _ in sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)]


def query_metrics(ranked: Sequence[str], judgements: Mapping[str, int], metrics: Sequence[str]) -> dict[str, float]:
    """One query's metrics from its ranked docids and its judgements {docid: relevance}."""
    out = {}
    for name in metrics:
        metric, cutoff = name.split("@")
        top = ranked[:int(cutoff)]
        out[name] = {"mrr": _reciprocal_rank, "recall": _recall, "ndcg": _ndcg}[metric](top, judgements, int(cutoff))
    return out


def _reciprocal_rank(top: Sequence[str], judgements: Mapping[str, int], cutoff: int) -> float:
    return next((1.0 / rank for rank, docid in enumerate(top, 1) if judgements.get(docid, 0) > 0), 0.0)


def _recall(top: Sequence[str], judgements: Mapping[str, int], cutoff: int) -> float:
    num_relevant = sum(rel > 0 for rel in judgements.values())
    found = sum(judgements.get(docid, 0) > 0 for docid in top)
    return found / num_relevant if num_relevant else 0.0


def _ndcg(top: Sequence[str], judgements: Mapping[str, int], cutoff: int) -> float:
    """The ideal ranking is cut at `cutoff`, not at the number retrieved: retrieving fewer is not excused."""
    dcg = sum(judgements.get(docid, 0) / math.log2(rank + 1) for rank, docid in enumerate(top, 1))
    ideal = sorted((rel for rel in judgements.values() if rel > 0), reverse=True)[:cutoff]
    idcg = sum(rel / math.log2(rank + 1) for rank, rel in enumerate(ideal, 1))
    return dcg / idcg if idcg > 0 else 0.0


def evaluate_run(run: Run, qrels: Qrels, metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    """{query_id: {metric: value}} for the queries that count (see the module docstring)."""
    return {qid: query_metrics(rank_docs(scores), qrels[qid], metrics)
            for qid, scores in run.items() if qid in qrels and scores}


def aggregate(per_query: Mapping[str, Mapping[str, float]], langs: Mapping[str, str],
              default_lang: str) -> dict[str, dict[str, float]]:
    """Means per language, `macro` (the mean of the language means) and `all` (the mean over queries).

    `langs` maps query ids to languages; queries not in it get `default_lang`. Each group's dict also
    holds `num_queries` (for `macro`: the number of languages). Empty input gives {}.
    """
    groups: dict[str, list[str]] = {}
    for qid in per_query:
        groups.setdefault(langs.get(qid, default_lang), []).append(qid)
    if groups.keys() & {"macro", "all"}:
        raise UserError("lang: 'macro' and 'all' name the averages; use other language codes")
    if not groups:
        return {}
    names = list(next(iter(per_query.values())))
    out = {lang: _mean([per_query[q] for q in qids], names) for lang, qids in sorted(groups.items())}
    macro = _mean([out[lang] for lang in groups], names)
    macro["num_queries"] = len(groups)
    out["macro"] = macro
    out["all"] = _mean(list(per_query.values()), names)
    return out


def _mean(rows: Sequence[Mapping[str, float]], names: Sequence[str]) -> dict[str, float]:
    out = {name: sum(row[name] for row in rows) / len(rows) for name in names}
    out["num_queries"] = len(rows)
    return out
