"""`dist-lacl mine`: hard negatives from a model for a training set, written as Tevatron jsonl.

Steps: (1) the corpus is encoded in chunks of `--chunk-passages` rows, every rank encoding its shard of
each chunk (`encode_to_shards`, resumable: `mine_work`) into `<work>/corpus/chunk-NNNNN/`; (2) the training queries
likewise into `<work>/queries/`; (3) rank 0 searches the top k by exact inner product (`index.search`:
block by block over the memory-mapped shards, GPU when faiss sees one); (4) per query, the passages at
ranks A..B of the retrieved list (1-based positions, positives included in the count) minus the
positives are the candidates, and `--num-negatives` of them are drawn with a generator seeded by
(seed, query_id); (5) the output is written to a temporary name and renamed.

Memory: the corpus is read once for its ids and the byte offset of each record; texts are read back
from the file by row (a chunk's shard to encode, the chosen negatives to write), so nothing of size
O(corpus) but the ids and offsets stays in RAM.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import distributed as dist
from .data.read import read_records
from .errors import DataError, UserError
from .evaluation.fields import id_field, optional_str, text_field
from .evaluation.inputs import TextSet, read_qrels, read_queries
from .evaluation.shards import write_file
from .formats.records import passage_text
from .mine_work import check_paths, claim_work_dir, corpus_chunks, encode_all, fingerprint, search_top_k
from .teacher import MINED, load_teacher, score_mined

log = logging.getLogger(__name__)

DEFAULT_QUERY_MAX_LEN, DEFAULT_PASSAGE_MAX_LEN = 32, 128
"""Tokens per query / passage for a model that records no trained lengths."""
_WRITE_BATCH = 10_000
"""Queries whose passages are read and written together (bounds the passage texts held in RAM)."""


# --- the training set ----------------------------------------------------------------------------


@dataclass
class TrainingQuery:
    """One query to mine for: its positives by docid, and those given with their text (Tevatron input)."""

    query_id: str
    query: str
    positive_ids: list[str] = field(default_factory=list)
    given: dict[str, dict] = field(default_factory=dict)
    """docid -> {docid, title, text} of positives whose passage the training file holds."""


def read_training_set(train_ir: str | None, queries_path: str | None, qrels_path: str | None,
                      min_relevance: int = 1, skip_unjudged: bool = False) -> list[TrainingQuery]:
    """Queries with positives from a Tevatron file and/or a queries file + TREC qrels, in file order.

    Tevatron queries come first, then those of the queries file not already seen; qrels judgements of
    at least `min_relevance` add positives to either. A query without a positive is an error (or, with
    `skip_unjudged`, left out and counted).
    """
    if not (train_ir or queries_path):
        raise UserError("mine: expected --train-ir FILE and/or --queries FILE --qrels FILE")
    if queries_path and not qrels_path:
        raise UserError("--queries: expected --qrels with it (the positives of those queries)")
    by_id: dict[str, TrainingQuery] = {}
    if train_ir:
        for rec in read_records(train_ir, "ir"):
            if rec["query_id"] in by_id:
                raise UserError(f"{train_ir}: query_id {rec['query_id']!r} appears twice; expected unique ids")
            given = {p["docid"]: p for p in rec["positives"]}
            by_id[rec["query_id"]] = TrainingQuery(rec["query_id"], rec["query"], list(given), given)
    if queries_path:
        queries = read_queries(queries_path)
        for qid, text in zip(queries.ids, queries.texts):
            if qid in by_id and by_id[qid].query != text:
                raise UserError(f"{queries_path}: query {qid!r} has another text than in {train_ir}")
            by_id.setdefault(qid, TrainingQuery(qid, text))
    if qrels_path:
        for qid, judged in read_qrels(qrels_path, query_ids=by_id).items():
            query = by_id[qid]
            query.positive_ids += [d for d, rel in judged.items() if rel >= min_relevance and d not in query.given
                                   and d not in query.positive_ids]
    missing = [q.query_id for q in by_id.values() if not q.positive_ids]
    if missing and not skip_unjudged:
        source = f"in {qrels_path} (relevance >= {min_relevance})" if qrels_path else f"in {train_ir}"
        raise UserError(f"{len(missing)} queries have no positive passage {source}, e.g. {missing[0]!r}; "
                        "expected one each (--skip-unjudged leaves them out)")
    if missing:
        log.warning("leaving out %d of %d queries without a positive passage", len(missing), len(by_id))
    return [q for q in by_id.values() if q.positive_ids]


# --- the corpus, on disk -------------------------------------------------------------------------


class CorpusFile:
    """A corpus jsonl (`docid`, `text`, optional `title`) scanned once: ids and byte offsets in RAM,
    passages read back from the file by row. The text encoded is `passage_text(title, text)`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(self.path, None, None, "file not found (expected a corpus jsonl)")
        self.ids: list[str] = []
        offsets, seen = array("q"), set()  # 8 bytes per passage while scanning, not a Python int each
        with self.path.open("rb") as f, tqdm(total=self.path.stat().st_size, unit="B", unit_scale=True,
                                              desc="scan corpus", disable=not dist.is_main()) as bar:
            offset = 0
            for line_no, raw in enumerate(f, start=1):
                bar.update(len(raw))
                if raw.strip():
                    docid = _parse_passage(raw, self.path, line_no)["docid"]
                    if docid in seen:
                        raise DataError(self.path, line_no, "docid", f"expected unique ids, got {docid!r} again")
                    seen.add(docid)
                    self.ids.append(docid)
                    offsets.append(offset)
                offset += len(raw)
        if not self.ids:
            raise DataError(self.path, None, None, "expected at least one record, the file is empty")
        self.offsets = np.frombuffer(offsets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def passages(self, rows: Sequence[int]) -> dict[int, dict]:
        """{row: {docid, title, text}}, read in file order."""
        out = {}
        with self.path.open("rb") as f:
            for row in sorted(set(int(r) for r in rows)):
                f.seek(self.offsets[row])
                out[row] = _parse_passage(f.readline(), self.path, None)
        return out

    def texts(self, start: int, stop: int) -> list[str]:
        """The texts to encode of rows [start, stop), read sequentially."""
        out: list[str] = []
        if start >= stop:
            return out
        with self.path.open("rb") as f:
            f.seek(self.offsets[start])
            while len(out) < stop - start:
                raw = f.readline()
                if raw.strip():
                    p = _parse_passage(raw, self.path, None)
                    out.append(passage_text(p["title"], p["text"]))
        return out

    def chunk(self, start: int, stop: int) -> TextSet:
        """Rows [start, stop) as a TextSet whose texts are read from the file only for the slice asked."""
        return TextSet(self.ids[start:stop], _LazyTexts(self, start, stop), ["und"] * (stop - start))


class _LazyTexts(Sequence):
    """The texts of rows [start, stop) of a CorpusFile; slicing reads just those rows from disk."""

    def __init__(self, corpus: CorpusFile, start: int, stop: int):
        self.corpus, self.start, self.stop = corpus, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, item):
        if isinstance(item, slice):
            lo, hi, step = item.indices(len(self))
            texts = self.corpus.texts(self.start + lo, self.start + max(lo, hi))
            return texts[::step]
        index = range(len(self))[item]
        return self.corpus.texts(self.start + index, self.start + index + 1)[0]


def _parse_passage(raw: bytes, path: Path, line_no: int | None) -> dict:
    """One corpus line -> {docid, title, text}, validated as `evaluation.inputs.read_corpus` does."""
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, line_no, None, f"expected a UTF-8 JSON object ({e})") from None
    if not isinstance(rec, dict):
        raise DataError(path, line_no, None, f"expected a JSON object, got {type(rec).__name__}")
    docid, text = id_field(rec, "docid", path, line_no), text_field(rec, "text", path, line_no)
    return {"docid": docid, "title": optional_str(rec, "title", path, line_no) or "", "text": text}


# --- settings ------------------------------------------------------------------------------------


@dataclass
class MineSettings:
    """What `mine` does, checked once (the CLI's numeric options, ranges included)."""

    rank_lo: int
    rank_hi: int
    k: int
    num_negatives: int
    seed: int


def parse_rank_range(text: str) -> tuple[int, int]:
    """'10-100' -> (10, 100): 1-based positions in the retrieved list, both included."""
    m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    if not m:
        raise UserError(f"--rank-range: expected FIRST-LAST such as 10-100, got {text!r}")
    lo, hi = int(m.group(1)), int(m.group(2))
    if lo < 1 or hi < lo:
        raise UserError(f"--rank-range: expected 1 <= FIRST <= LAST (ranks start at 1), got {text!r}")
    return lo, hi


def check_args(args) -> MineSettings:
    """Range-check every numeric option -> MineSettings; a UserError names the option."""
    lo, hi = parse_rank_range(args.rank_range)
    k = hi if args.k is None else args.k
    positive = {"--num-negatives": args.num_negatives, "--batch-size": args.batch_size, "--k": k,
                "--chunk-passages": args.chunk_passages, "--query-batch": args.query_batch,
                "--min-relevance": args.min_relevance, "--dist-timeout-s": args.dist_timeout_s}
    if args.block_rows is not None:
        positive["--block-rows"] = args.block_rows
    for name, value in positive.items():
        if value < 1:
            raise UserError(f"{name}: expected a positive integer, got {value}")
    for name, value in {"--query-max-len": args.query_max_len, "--passage-max-len": args.passage_max_len}.items():
        if value is not None and value < 2:
            raise UserError(f"{name}: expected at least 2 tokens, got {value}")
    if args.seed < 0:
        raise UserError(f"--seed: expected an integer >= 0, got {args.seed}")
    if k < hi:
        raise UserError(f"--k: expected at least {hi}, the last rank of --rank-range {args.rank_range}, got {k}")
    return MineSettings(lo, hi, k, args.num_negatives, args.seed)


# --- choosing and writing negatives ----------------------------------------------------------------


def query_rng(seed: int, query_id: str) -> np.random.Generator:
    """A generator that depends on (seed, query_id) only: not on the query's position or the world size."""
    digest = hashlib.sha256(f"{seed}\0{query_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def choose_negatives(query_id: str, rows: np.ndarray, doc_ids: Sequence[str], positives: set[str],
                     settings: MineSettings) -> list[int]:
    """Corpus rows of the negatives of one query, in corpus order.

    `rows` [k] is its retrieved list, best first (-1 past the corpus's end). Candidates: positions
    rank_lo..rank_hi (1-based, positives counted), positives removed. They are drawn as a set (sorted by
    row first), so two candidates whose scores swap by float rounding do not change the draw.
    """
    window = rows[settings.rank_lo - 1:settings.rank_hi]
    candidates = sorted(int(r) for r in window if r >= 0 and doc_ids[r] not in positives)
    size = min(settings.num_negatives, len(candidates))
    picked = query_rng(settings.seed, query_id).choice(len(candidates), size=size, replace=False)
    return sorted(candidates[i] for i in picked)


def positive_rows(queries: list[TrainingQuery], corpus: CorpusFile, qrels: str | None) -> dict[str, int]:
    """Corpus row of every positive whose text the training file does not give (the qrels' docids).
    Checked before anything is encoded: a positive missing from the corpus is an error naming it."""
    wanted = {d for q in queries for d in q.positive_ids if d not in q.given}
    row_of = {docid: row for row, docid in enumerate(corpus.ids) if docid in wanted}
    missing = [(q.query_id, d) for q in queries for d in q.positive_ids if d not in q.given and d not in row_of]
    if missing:
        query_id, docid = missing[0]
        raise UserError(f"{qrels}: query {query_id!r} has the positive {docid!r}, which {corpus.path} does not "
                        f"hold ({len(missing)} such positives); expected every positive docid in --corpus")
    return row_of


def check_rank_range(settings: MineSettings, num_passages: int, corpus: Path) -> None:
    """--rank-range against the corpus's size: past its end is an error; partly past it, a warning."""
    lo, hi = settings.rank_lo, settings.rank_hi
    if lo > num_passages:
        raise UserError(f"--rank-range {lo}-{hi}: starts past the end of {corpus}, which holds {num_passages} "
                        f"passages; expected FIRST <= {num_passages}")
    if hi > num_passages:
        log.warning("--rank-range %d-%d: %s holds %d passages, so ranks past %d do not exist; each query draws "
                    "its %d negatives from at most %d candidates (ranks %d-%d, less its positives there)", lo, hi,
                    corpus, num_passages, num_passages, settings.num_negatives, num_passages - lo + 1, lo,
                    num_passages)


def write_mined(out: Path, queries: list[TrainingQuery], rows: np.ndarray, corpus: CorpusFile,
                settings: MineSettings, row_of: dict[str, int]) -> None:
    """Write Tevatron jsonl to `out` atomically (`shards.write_file`), its counts logged. `row_of`:
    `positive_rows`."""
    stats = {"queries": len(queries), "negatives": 0, "short": 0, "positives_in_top_k": 0, "positives": 0}

    def write(f):
        text = io.TextIOWrapper(f, encoding="utf-8")
        for start in tqdm(range(0, len(queries), _WRITE_BATCH), desc="write", unit="batch"):
            batch = queries[start:start + _WRITE_BATCH]
            chosen = [choose_negatives(q.query_id, rows[start + i], corpus.ids, set(q.positive_ids), settings)
                      for i, q in enumerate(batch)]
            passages = corpus.passages([r for c in chosen for r in c] +
                                       [row_of[d] for q in batch for d in q.positive_ids if d in row_of])
            for i, (q, negs) in enumerate(zip(batch, chosen)):
                retrieved = {corpus.ids[r] for r in rows[start + i] if r >= 0}
                stats["positives"] += len(q.positive_ids)
                stats["positives_in_top_k"] += sum(d in retrieved for d in q.positive_ids)
                stats["negatives"] += len(negs)
                stats["short"] += len(negs) < settings.num_negatives
                record = {"query_id": q.query_id, "query": q.query,
                          "positive_passages": [q.given.get(d) or passages[row_of[d]] for d in q.positive_ids],
                          "negative_passages": [passages[r] for r in negs]}
                text.write(json.dumps(record, ensure_ascii=False) + "\n")
        text.flush()
        text.detach()  # leave `f` open for the fsync

    write_file(out, write)
    log.info("wrote %s: %d queries, %.1f negatives each from ranks %d-%d (%d with fewer than %d); "
             "%d of %d positives retrieved in the top %d", out, stats["queries"],
             stats["negatives"] / max(stats["queries"], 1), settings.rank_lo, settings.rank_hi, stats["short"],
             settings.num_negatives, stats["positives_in_top_k"], stats["positives"], settings.k)


# --- the command ---------------------------------------------------------------------------------


def run_mine(args) -> None:
    """*Collective* under a launcher: every rank encodes; rank 0 searches and writes."""
    settings = check_args(args)
    out, work = check_paths(args)
    teacher = load_teacher(args)  # None without --score-with
    dist.init_process_group(args.dist_timeout_s)
    queries = read_training_set(args.train_ir, args.queries, args.qrels, args.min_relevance, args.skip_unjudged)
    corpus = CorpusFile(args.corpus)
    row_of = positive_rows(queries, corpus, args.qrels)
    check_rank_range(settings, len(corpus), corpus.path)
    from .loading import input_length, load_model  # after the quick checks: it imports the engines' libraries

    model, tokenizer = load_model(args.model)
    args.query_max_len = input_length(model, "query", args.query_max_len, "--query-max-len", DEFAULT_QUERY_MAX_LEN)
    args.passage_max_len = input_length(model, "passage", args.passage_max_len, "--passage-max-len",
                                        DEFAULT_PASSAGE_MAX_LEN)
    lock = claim_work_dir(work, fingerprint(args, corpus.path, model, tokenizer, teacher))  # noqa: F841 (held)
    chunks = corpus_chunks(corpus, work, args)
    query_set = TextSet([q.query_id for q in queries], [q.query for q in queries], ["und"] * len(queries))
    encode_all(args, model, tokenizer, chunks + [(query_set, work / "queries", "query", args.query_max_len)])
    log.info("rank %d: encoding done", dist.rank())
    def search_and_write() -> None:
        rows = search_top_k(work, chunks, query_set.ids, settings.k, args)
        write_mined(work / MINED if teacher else out, queries, rows, corpus, settings, row_of)

    if teacher:  # rank 0 searches and writes the records, then every rank scores its share
        dist.main_decides(search_and_write)
        score_mined(teacher, work, out, args.dtype)
    elif dist.is_main():  # searching and writing happen in one process
        search_and_write()
