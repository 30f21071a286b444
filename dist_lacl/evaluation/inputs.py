"""Readers for the field's evaluation formats, validated: every bad record raises DataError with its line.

- corpus jsonl: one object per line, `docid`, `text`, optional `title` (may be empty) and `lang`;
  the text encoded for a passage is `title + " " + text`, or `text` alone when the title is empty.
- queries jsonl (`query_id`, `query`, optional `lang`) or tsv (`query_id<TAB>query[<TAB>lang]`).
- qrels, TREC format: `query_id iteration docid relevance` (relevance an integer >= 0).
- runs, TREC format: `query_id Q0 docid rank score tag`.
Ids may be JSON strings or integers (read as strings) and must not contain whitespace, since TREC
files separate fields with it. Blank lines are skipped; a file without records is an error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

DEFAULT_LANG = "und"
"""Language of records without a `lang` field (BCP 47's "undetermined")."""


@dataclass
class TextSet:
    """Texts to encode, with their ids and languages, in file order (all three lists have one entry per record)."""

    ids: list[str]
    texts: list[str]
    langs: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def read_corpus(path: str | Path, default_lang: str = DEFAULT_LANG) -> TextSet:
    """Passages of a corpus jsonl; text = title + " " + text."""
    out, seen = TextSet([], [], []), set()
    for line_no, record in _json_records(path):
        docid = _unique(_id_field(record, "docid", path, line_no), seen, "docid", path, line_no)
        text = _text_field(record, "text", path, line_no)
        title = _optional_str(record, "title", path, line_no) or ""
        out.ids.append(docid)
        out.texts.append(f"{title.strip()} {text}" if title.strip() else text)
        out.langs.append(_lang_field(record, path, line_no) or default_lang)
    return out


def read_queries(path: str | Path, default_lang: str = DEFAULT_LANG) -> TextSet:
    """Queries of a `.tsv` file (query_id, query[, lang]) or, for any other suffix, a jsonl file."""
    records = _tsv_queries(path) if Path(path).suffix == ".tsv" else _json_records(path)
    out, seen = TextSet([], [], []), set()
    for line_no, record in records:
        out.ids.append(_unique(_id_field(record, "query_id", path, line_no), seen, "query_id", path, line_no))
        out.texts.append(_text_field(record, "query", path, line_no))
        out.langs.append(_lang_field(record, path, line_no) or default_lang)
    return out


def read_qrels(path: str | Path, query_ids=None, doc_ids=None) -> dict[str, dict[str, int]]:
    """{query_id: {docid: relevance}} from a TREC qrels file.

    With `query_ids` / `doc_ids` (collections of known ids), a line naming another id is an error.
    """
    known_queries = None if query_ids is None else set(query_ids)
    known_docs = None if doc_ids is None else set(doc_ids)
    qrels: dict[str, dict[str, int]] = {}
    for line_no, fields in _split_lines(path, 4, "query_id iteration docid relevance"):
        qid, _, docid, rel = fields
        if known_queries is not None and qid not in known_queries:
            raise DataError(path, line_no, "query_id", f"expected an id of the queries file, got {qid!r}")
        if known_docs is not None and docid not in known_docs:
            raise DataError(path, line_no, "docid", f"expected an id of the corpus, got {docid!r}")
        relevance = _parse_number(rel, int, path, line_no, "relevance")
        if relevance < 0:
            raise DataError(path, line_no, "relevance", f"expected an integer >= 0, got {rel!r}")
        if docid in qrels.setdefault(qid, {}):
            raise DataError(path, line_no, "docid", f"expected one judgement per (query, doc), got {docid!r} again")
        qrels[qid][docid] = relevance
    return qrels


def read_run(path: str | Path) -> dict[str, dict[str, float]]:
    """{query_id: {docid: score}} from a TREC run file (the rank column is ignored, as trec_eval does)."""
    run: dict[str, dict[str, float]] = {}
    for line_no, fields in _split_lines(path, 6, "query_id Q0 docid rank score tag"):
        qid, _, docid, _, score, _ = fields
        if docid in run.setdefault(qid, {}):
            raise DataError(path, line_no, "docid", f"expected each doc once per query, got {docid!r} again")
        run[qid][docid] = _parse_number(score, float, path, line_no, "score")
    return run


# --- lines and records -------------------------------------------------------------------------


def _lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of the non-blank lines; raises on a missing, non-UTF-8 or empty file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    found = False
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, line_no, None, f"expected UTF-8 text, got byte {raw[e.start]:#04x} "
                                f"at column {e.start + 1}") from None
            text = text.removeprefix("\ufeff") if line_no == 1 else text
            if text.strip():
                found = True
                yield line_no, text.rstrip("\r\n")
    if not found:
        raise DataError(path, None, None, "expected at least one record, the file is empty")


def _json_records(path) -> Iterator[tuple[int, dict]]:
    for line_no, text in _lines(path):
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(path, line_no, None, f"expected a JSON object, got invalid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise DataError(path, line_no, None, f"expected a JSON object, got {type(record).__name__}")
        yield line_no, record


def _tsv_queries(path) -> Iterator[tuple[int, dict]]:
    for line_no, text in _lines(path):
        cols = text.split("\t")
        if len(cols) not in (2, 3):
            raise DataError(path, line_no, None, f"expected 2 or 3 tab-separated columns (query_id, query, "
                            f"lang), got {len(cols)}")
        yield line_no, dict(zip(("query_id", "query", "lang"), cols))


def _split_lines(path, num_fields: int, layout: str) -> Iterator[tuple[int, list[str]]]:
    for line_no, text in _lines(path):
        fields = text.split()
        if len(fields) != num_fields:
            raise DataError(path, line_no, None, f"expected {num_fields} whitespace-separated fields "
                            f"({layout}), got {len(fields)}")
        yield line_no, fields


# --- fields ------------------------------------------------------------------------------------


def _id_field(record: dict, name: str, path, line_no: int) -> str:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        got = "nothing (missing)" if name not in record else repr(value)
        raise DataError(path, line_no, name, f"expected a string or integer id, got {got}")
    value = str(value)
    if not value or any(c.isspace() for c in value):
        raise DataError(path, line_no, name, f"expected a non-empty id without whitespace, got {value!r}")
    return value


def _text_field(record: dict, name: str, path, line_no: int) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        got = "nothing (missing)" if name not in record else repr(value)
        raise DataError(path, line_no, name, f"expected a non-empty string, got {got}")
    return value


def _optional_str(record: dict, name: str, path, line_no: int) -> str | None:
    value = record.get(name)
    if value is not None and not isinstance(value, str):
        raise DataError(path, line_no, name, f"expected a string or no field, got {value!r}")
    return value


def _lang_field(record: dict, path, line_no: int) -> str | None:
    lang = _optional_str(record, "lang", path, line_no)
    if lang is not None and (not lang or any(c.isspace() for c in lang)):
        raise DataError(path, line_no, "lang", f"expected a language code such as 'de', got {lang!r}")
    return lang


def _parse_number(text: str, kind: type, path, line_no: int, name: str):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value):
        what = "an integer" if kind is int else "a finite number"
        raise DataError(path, line_no, name, f"expected {what}, got {text!r}")
    return value


def _unique(value: str, seen: set, name: str, path, line_no: int) -> str:
    """Duplicate ids would make runs and qrels ambiguous."""
    if value in seen:
        raise DataError(path, line_no, name, f"expected unique ids, got {value!r} again")
    seen.add(value)
    return value
