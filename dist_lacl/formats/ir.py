"""English IR training data, one reader per distributed format; each yields (line, internal IR record).

  tevatron       jsonl {query_id, query, positive_passages: [{docid, title, text[, score]}], negative_passages}
  tevatron-v2    queries jsonl {query_id, query_text, positive_document_ids, negative_document_ids}
                 + corpus jsonl {docid, title, text} (data.train_corpus, default corpus.jsonl beside it)
  flagembedding  jsonl {query, pos: [str], neg: [str]} (+ pos_scores, neg_scores, prompt, type)
  msmarco        collection.tsv, queries.train.tsv, qrels.train.tsv [, qidpidtriples.train.full.2.tsv]
  dpr            biencoder-nq-train.json: one JSON array of {question, answers, positive_ctxs,
                 negative_ctxs, hard_negative_ctxs}, streamed
Ids a format lacks are made from the text (`records.text_id`), so they are the same on every read.
A teacher's scores (Tevatron's passage `score`, FlagEmbedding's pos_scores/neg_scores) become each
passage's "score"; the other formats carry none (`SCORE_FIELDS`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError
from . import io
from .records import ident, parse_ir, passage, score, str_list, text, text_id
from .store import TextStore

SCORE_FIELDS = {"tevatron": ("positive_passages[{i}].score", "negative_passages[{i}].score"),
                "flagembedding": ("pos_scores", "neg_scores")}
"""Where each format holds the teacher's score of positive i and of negative i, for messages."""

MAX_TRIPLE_NEGATIVES = 64
"""MS MARCO triples: hard negatives kept per query (the first distinct ones in file order); the full
triples file has 397M rows, about 1,000 per query."""


def tevatron(path: Path, opts, on_error) -> Iterator[tuple[int, dict]]:
    return io.parsed(io.records(path), lambda t, n: parse_ir(io.json_object(t, path, n), (path, n)), on_error)


def flagembedding(path: Path, opts, on_error) -> Iterator[tuple[int, dict]]:
    def parse(line: str, line_no: int) -> dict:
        rec, where = io.json_object(line, path, line_no), (path, line_no)
        query = text(rec, "query", where)
        prompt = rec.get("prompt") or ""
        if not isinstance(prompt, str):
            raise DataError(path, line_no, "prompt", "expected a string")
        # FlagEmbedding puts the example's instruction straight before the query
        query = prompt + query
        pos = _texts(rec, "pos", where, required=True)
        neg = _texts(rec, "neg", where, required=False)
        return {"query_id": text_id(query), "query": query,
                "positives": _with_scores(pos, rec, "pos_scores", where),
                "negatives": _with_scores(neg, rec, "neg_scores", where)}

    return io.parsed(io.records(path), parse, on_error)


def _with_scores(texts: list[str], rec: dict, key: str, where) -> list[dict]:
    """FlagEmbedding passages, each with its teacher's score from rec[key] (one finite number per
    passage) when the record has that list."""
    out = [{"docid": text_id(t), "title": "", "text": t} for t in texts]
    scores = rec.get(key)
    if scores is None:
        return out
    if not isinstance(scores, list) or len(scores) != len(texts):
        raise DataError(*where, key, f"expected a list of {len(texts)} numbers, one per passage")
    for i, (p, value) in enumerate(zip(out, scores)):
        p["score"] = score(value, where, f"{key}[{i}]")
    return out


def _texts(rec: dict, key: str, where, required: bool) -> list[str]:
    values = str_list(rec, key, where, required)
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise DataError(*where, f"{key}[{i}]", "expected a non-empty string")
    return values


def dpr(path: Path, opts, on_error) -> Iterator[tuple[int, dict]]:
    def parse(rec, line_no: int) -> dict:
        where = (path, line_no)
        if not isinstance(rec, dict):
            raise DataError(path, line_no, None, "expected a JSON object {question, positive_ctxs, ...}")
        question = text(rec, "question", where)
        ctxs = {key: str_list(rec, key, where, required=key == "positive_ctxs")
                for key in ("positive_ctxs", "hard_negative_ctxs")}
        return {"query_id": text_id(question), "query": question,
                "positives": [_ctx(c, f"positive_ctxs[{i}]", where) for i, c in enumerate(ctxs["positive_ctxs"])],
                "negatives": [_ctx(c, f"hard_negative_ctxs[{i}]", where)
                              for i, c in enumerate(ctxs["hard_negative_ctxs"])]}

    return io.parsed(io.json_array(path), parse, on_error)


def _ctx(ctx, name: str, where) -> dict:
    key = next((k for k in ("passage_id", "psg_id") if isinstance(ctx, dict) and k in ctx), None)
    return passage(ctx, name, where, key)


# ---------------------------------------------------------------- formats that name passages by id

def tevatron_v2_files(path: Path, opts) -> dict[str, Path]:
    corpus = Path(opts.corpus) if opts.corpus else io.find(path.parent, "corpus.jsonl")
    if corpus is None:
        raise DataError(path, None, None, "Tevatron v2 queries need their corpus jsonl {docid, title, text}: "
                        "set data.train_corpus (no corpus.jsonl beside the queries)")
    return {"queries": path, "corpus": corpus}


def tevatron_v2(path: Path, opts, on_error) -> Iterator[tuple[int, dict]]:
    files = tevatron_v2_files(path, opts)

    def parse(line: str, line_no: int) -> dict:
        rec, where = io.json_object(line, path, line_no), (path, line_no)
        return {"query_id": ident(rec, "query_id", where), "query": text(rec, "query_text", where),
                "positives": [_id(v, "positive_document_ids", i, where)
                              for i, v in enumerate(str_list(rec, "positive_document_ids", where, True))],
                "negatives": [_id(v, "negative_document_ids", i, where)
                              for i, v in enumerate(str_list(rec, "negative_document_ids", where, False))]}

    queries = list(io.parsed(io.records(path), parse, on_error))
    store = _corpus_store(files["corpus"], _needed(queries))
    yield from _resolve(queries, store, path, files["corpus"], on_error)


def _id(value, key: str, i: int, where) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise DataError(*where, f"{key}[{i}]", "expected a document id (string)")
    return str(value)


def _needed(queries) -> set[str]:
    return {d for _, q in queries for d in (*q["positives"], *q["negatives"])}


def _corpus_store(corpus: Path, needed: set[str]) -> TextStore:
    store = TextStore()
    for line_no, line in io.records(corpus):
        rec, where = io.json_object(line, corpus, line_no), (corpus, line_no)
        docid = ident(rec, "docid", where)
        if docid in needed:
            p = passage(rec, "corpus", where, "docid")
            store.add(docid, p["title"], p["text"])
    return store


def _resolve(queries, store: TextStore, path: Path, corpus: Path, on_error) -> Iterator[tuple[int, dict]]:
    """Queries whose passages are ids -> records with the passages' titles and texts from `store`."""
    def parse(q: dict, line_no: int) -> dict:
        out = dict(q)
        for key in ("positives", "negatives"):
            out[key] = []
            for docid in q[key]:
                found = store.get(docid)
                if found is None:
                    raise DataError(path, line_no, key, f"expected ids of {corpus.name}, got {docid!r} "
                                    f"that it does not hold")
                out[key].append({"docid": docid, "title": found[0], "text": found[1]})
        return out

    return io.parsed(iter(queries), parse, on_error)


_MSMARCO_SPLIT = re.compile(r"^(qrels|queries|qidpidtriples)\.(train|dev)")


def msmarco_files(path: Path, opts) -> dict[str, Path]:
    """The files of an MS MARCO passage training set: a directory, or its qrels/triples file with the
    others beside it; data.train_corpus names another collection.tsv."""
    directory, split, given = (path, "train", None) if path.is_dir() else (path.parent, "train", path)
    if given is not None and (m := _MSMARCO_SPLIT.match(io.stem(given))):
        split = m.group(2)
    files = {"collection": Path(opts.corpus) if opts.corpus else io.find(directory, "collection.tsv"),
             "queries": io.find(directory, f"queries.{split}.tsv"),
             "qrels": io.find(directory, f"qrels.{split}.tsv", f"qrels.{split}.small.tsv"),
             "triples": io.find(directory, f"qidpidtriples.{split}.full.2.tsv", f"qidpidtriples.{split}.full.tsv")}
    if given is not None and io.stem(given).startswith("qidpidtriples"):
        files["triples"] = given
    missing = [name for name in ("collection", "queries", "qrels") if files[name] is None]
    if missing:
        raise DataError(path, None, None, f"expected MS MARCO's collection.tsv, queries.{split}.tsv and "
                        f"qrels.{split}.tsv in {directory} (missing: {', '.join(missing)})")
    return {k: v for k, v in files.items() if v is not None}


def msmarco(path: Path, opts, on_error) -> Iterator[tuple[int, dict]]:
    files = msmarco_files(path, opts)
    positives: dict[str, list[str]] = {}
    for line_no, line in io.lines(files["qrels"]):
        fields = line.split()
        if len(fields) != 4:
            raise DataError(files["qrels"], line_no, None, f"expected 4 columns (qid 0 pid 1), got {len(fields)}")
        if not fields[3].isdigit():
            raise DataError(files["qrels"], line_no, "relevance", f"expected an integer, got {fields[3]!r}")
        if int(fields[3]) > 0:
            positives.setdefault(fields[0], []).append(fields[2])
    negatives: dict[str, list[str]] = {}
    if "triples" in files:
        for line_no, line in io.lines(files["triples"]):
            qid, _, neg = io.tsv(line, files["triples"], line_no, (3,), "qid, pos_pid, neg_pid")
            kept = negatives.setdefault(qid, [])
            if len(kept) < MAX_TRIPLE_NEGATIVES and neg not in kept:
                kept.append(neg)

    def parse(line: str, line_no: int) -> dict | None:
        qid, query = io.tsv(line, files["queries"], line_no, (2,), "qid, query")
        if qid not in positives:
            return None  # an unjudged query: nothing to train on
        where = (files["queries"], line_no)
        return {"query_id": qid, "query": text({"query": query}, "query", where),
                "positives": positives[qid], "negatives": negatives.get(qid, [])}

    queries = list(io.parsed(io.lines(files["queries"]), parse, on_error))
    store = TextStore()
    needed = _needed(queries)
    for line_no, line in io.lines(files["collection"]):
        pid, _, body = line.partition("\t")
        if pid in needed:
            if not body.strip():
                raise DataError(files["collection"], line_no, "passage", "expected pid<TAB>passage text")
            store.add(pid, "", body)
    yield from _resolve(queries, store, files["queries"], files["collection"], on_error)
