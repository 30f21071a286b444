"""The evaluation pipelines: embeddings -> run, run -> metrics report, and the trainer's dev evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import distributed as dist
from ..errors import UserError
from .encode import encode_texts, load_embeddings, shard_bounds
from .index import IndexSpec, search
from .inputs import DEFAULT_LANG, TextSet, read_corpus, read_qrels, read_queries
from .metrics import DEFAULT_METRICS, Qrels, Run, aggregate, evaluate_run, max_cutoff, parse_metrics
from .shards import Shard, open_shards


def results_to_run(query_ids: Sequence[str], doc_ids, scores: np.ndarray,
                   rows: np.ndarray) -> dict[str, dict[str, float]]:
    """Search output (scores, rows [Q, k]) -> {query_id: {docid: score}}; rows -1 (no result) dropped.
    `doc_ids[row]` gives a row's docid (a sequence, or `CorpusIds.names_of(rows)`'s dict)."""
    return {qid: {doc_ids[r]: float(s) for s, r in zip(q_scores, q_rows) if r >= 0}
            for qid, q_scores, q_rows in zip(query_ids, scores, rows)}


class CorpusIds:
    """The docids of a corpus's shards, by global row, read from disk only for the rows asked for."""

    def __init__(self, shards: list[Shard]):
        self.shards = shards
        self.offsets = np.cumsum([0] + [len(s.ids) for s in shards])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def names_of(self, rows) -> dict[int, str]:
        """{row: docid} for the global `rows` (any order, repeats fine; -1 ignored)."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        rows = rows[rows >= 0]
        shard_of = np.searchsorted(self.offsets, rows, side="right") - 1
        out = {}
        for s in np.unique(shard_of):
            mine = rows[shard_of == s]
            out.update(zip(mine.tolist(), self.shards[s].id_strings(mine - self.offsets[s])))
        return out

    def unknown(self, docids, chunk_rows: int = 1 << 20) -> set[str]:
        """Those of `docids` that are no row's id, streaming over the ids (memory: one chunk)."""
        wanted = {d.encode("utf-8") for d in docids}
        found = set()
        for shard in self.shards:
            probe = np.array(sorted(wanted - found), dtype=bytes)  # its own width: a shard's could truncate
            for start in range(0, len(shard.ids), chunk_rows):
                if not len(probe):
                    break
                chunk = shard.ids[start:start + chunk_rows]
                hits = probe[np.isin(probe, chunk)]
                found.update(hits.tolist())
                probe = probe[~np.isin(probe, hits)]
        return {d.decode("utf-8") for d in wanted - found}


def open_search_inputs(query_dir: str | Path, corpus_dir: str | Path) -> tuple[list[str], np.ndarray, CorpusIds]:
    """Read the queries and open the corpus shards -> (query ids, queries [Q, D], corpus ids); checks that
    each directory holds its tower's embeddings, of one model and one dimension (UserError otherwise)."""
    query_shards = open_shards(query_dir, "--query-emb")
    corpus_shards = open_shards(corpus_dir, "--corpus-emb")
    for option, path, found, wanted in (("--query-emb", query_dir, query_shards, "query"),
                                        ("--corpus-emb", corpus_dir, corpus_shards, "passage")):
        tower = found[0].meta["tower"]
        if tower != wanted:
            swapped = " (--query-emb and --corpus-emb swapped?)" if tower in ("query", "passage") else ""
            raise UserError(f"{option} {path}: holds {tower}-tower embeddings, expected the {wanted} tower{swapped}")
    q_meta, p_meta = query_shards[0].meta, corpus_shards[0].meta
    if q_meta["dim"] != p_meta["dim"]:
        raise UserError(f"--query-emb {query_dir} holds {q_meta['dim']}-dimensional embeddings, --corpus-emb "
                        f"{corpus_dir} {p_meta['dim']}-dimensional: encode both with one model")
    q_model, p_model = q_meta["provenance"]["model_weights"], p_meta["provenance"]["model_weights"]
    if q_model != p_model:
        raise UserError(f"--query-emb {query_dir} and --corpus-emb {corpus_dir} were encoded by different models "
                        f"(weights {q_model} and {p_model}): encode both with the model to evaluate")
    query_ids, queries = load_embeddings(query_dir, "--query-emb")
    return query_ids, queries, CorpusIds(corpus_shards)


def search_embeddings(query_dir: str | Path, corpus_dir: str | Path, k: int, spec: IndexSpec | None = None,
                      block_rows: int | None = None, query_batch: int = 4096, inputs=None) -> tuple[Run, CorpusIds]:
    """Search the `encode` outputs in `query_dir` against `corpus_dir` -> (run, corpus ids).

    The corpus is read block by block (see `index.search`): memory is one block, not the corpus.
    `inputs`: `open_search_inputs`' result, if already read.
    """
    query_ids, queries, corpus_ids = inputs or open_search_inputs(query_dir, corpus_dir)
    if not len(corpus_ids):
        raise UserError(f"--corpus-emb {corpus_dir}: the embedding shards hold no rows")
    k = min(k, len(corpus_ids))  # more would only be empty slots, [Q, k] of them in memory
    scores, rows = search(queries, [s.emb for s in corpus_ids.shards], k, spec, block_rows, query_batch,
                          row_names=lambda bad: [corpus_ids.names_of(bad)[int(r)] for r in bad])
    return results_to_run(query_ids, corpus_ids.names_of(rows), scores, rows), corpus_ids


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
