"""The evaluation pipelines: embeddings -> run, run -> metrics report, and the trainer's dev evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import distributed as dist
from .encode import encode_texts, iter_shards, load_embeddings, shard_bounds
from .index import IndexSpec, search
from .inputs import DEFAULT_LANG, TextSet, read_corpus, read_qrels, read_queries
from .metrics import Qrels, Run, aggregate, evaluate_run, max_cutoff, parse_metrics

DEFAULT_METRICS = ("mrr@10", "recall@100", "ndcg@10")


def results_to_run(query_ids: Sequence[str], doc_ids: Sequence[str], scores: np.ndarray,
                   rows: np.ndarray) -> dict[str, dict[str, float]]:
    """Search output (scores, rows [Q, k]) -> {query_id: {docid: score}}; rows -1 (no result) dropped."""
    return {qid: {doc_ids[r]: float(s) for s, r in zip(q_scores, q_rows) if r >= 0}
            for qid, q_scores, q_rows in zip(query_ids, scores, rows)}


def search_embeddings(query_dir: str | Path, corpus_dir: str | Path, k: int, spec: IndexSpec | None = None,
                      block_rows: int | None = None, query_batch: int = 4096) -> tuple[Run, list[str]]:
    """Search the `encode` outputs in `query_dir` against `corpus_dir` -> (run, corpus ids in row order).

    The corpus shards stay memory-mapped; they are read block by block (see `index.search`).
    """
    query_ids, queries = load_embeddings(query_dir)
    shards = list(iter_shards(corpus_dir))
    doc_ids = [docid for ids, _ in shards for docid in ids]
    scores, rows = search(queries, [emb for _, emb in shards], k, spec, block_rows, query_batch)
    return results_to_run(query_ids, doc_ids, scores, rows), doc_ids


def score_run(run: Run, qrels: Qrels, metrics: Sequence[str], langs: dict[str, str] | None = None,
              default_lang: str = DEFAULT_LANG) -> dict:
    """The JSON report of `run`: per-language, macro and overall means, and which queries counted."""
    per_query = evaluate_run(run, qrels, metrics)
    return {
        "metrics": aggregate(per_query, langs or {}, default_lang),
        "num_queries": {
            "in_run": len(run),
            "judged": len(qrels),
            "scored": len(per_query),
            "unjudged_in_run": sum(qid not in qrels for qid in run),
            "judged_not_in_run": sum(qid not in run or not run[qid] for qid in qrels),
            "judged_without_relevant": sum(not any(r > 0 for r in qrels[q].values()) for q in per_query),
        },
        "conventions": "trec_eval: ties ranked by docid descending; queries without judgements left out; "
                       "judged queries with no relevant document score 0",
    }


# --- dev evaluation during training -------------------------------------------------------------


@dataclass
class DevSet:
    """A small evaluation set, read once and evaluated every N training steps."""

    queries: TextSet
    corpus: TextSet
    qrels: dict[str, dict[str, int]]


def load_dev_set(queries_path: str | Path, corpus_path: str | Path, qrels_path: str | Path) -> DevSet:
    """Read and cross-check a dev set (qrels must name known query and doc ids)."""
    queries, corpus = read_queries(queries_path), read_corpus(corpus_path)
    return DevSet(queries, corpus, read_qrels(qrels_path, queries.ids, corpus.ids))


def evaluate_dev(model, tokenizer, dev: DevSet, metrics: Sequence[str] = DEFAULT_METRICS,
                 query_max_len: int = 32, passage_max_len: int = 128, batch_size: int = 64,
                 dtype: str = "fp32", device: torch.device | None = None) -> dict[str, float]:
    """*Collective*: call on every rank. -> {"eval/<metric>/<lang|macro|all>": value}, equal on all ranks.

    Each rank encodes a contiguous shard of the queries and passages with `model` (the bare
    DualEncoder, e.g. `engine.module`: its parameters must be whole on every rank, as under ZeRO-1/2,
    not ZeRO-3); the embeddings are gathered, rank 0 searches exactly on CPU (a dev set is small) and
    scores, and the result is broadcast. The model's train/eval mode is left as it was.
    """
    metrics = parse_metrics(metrics)
    q_reps = _encode_gathered(model, tokenizer, dev.queries.texts, "query", query_max_len, batch_size, dtype, device)
    p_reps = _encode_gathered(model, tokenizer, dev.corpus.texts, "passage", passage_max_len, batch_size, dtype,
                              device)
    result = None
    if dist.is_main():
        scores, rows = search(q_reps, [p_reps], max_cutoff(metrics), IndexSpec(gpus="none"))
        run = results_to_run(dev.queries.ids, dev.corpus.ids, scores, rows)
        langs = dict(zip(dev.queries.ids, dev.queries.langs))
        summary = aggregate(evaluate_run(run, dev.qrels, metrics), langs, DEFAULT_LANG)
        result = {f"eval/{m}/{group}": values[m] for group, values in summary.items() for m in metrics}
    return dist.broadcast_object(result)


def _encode_gathered(model, tokenizer, texts: Sequence[str], tower: str, max_len: int, batch_size: int,
                     dtype: str, device) -> np.ndarray:
    """*Collective.* Rank r encodes rows [r*N/W, (r+1)*N/W); every rank gets all N rows [N, D], in order."""
    start, stop = shard_bounds(len(texts), dist.rank(), dist.world_size())
    local = encode_texts(model, tokenizer, texts[start:stop], tower, max_len, batch_size, dtype=dtype,
                         device=device, show_progress=False)
    parts = [part for part in dist.all_gather_objects(local) if len(part)]
    return np.concatenate(parts)
