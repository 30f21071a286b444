"""Readers for the field's evaluation formats, validated: every bad record raises DataError with its line.

- corpus, a file or a directory of them (format detected from the first record, or given):
  jsonl `docid`, `text`, optional `title` (may be empty) and `lang` (MIRACL: `docs-*.jsonl.gz` in
  `miracl-corpus-v1.0-{lang}/`); BEIR `_id`, `title`, `text` (`corpus.jsonl`); pyserini / Mr.TyDi `id`,
  `contents` (`collection/docs.jsonl.gz`); tsv `pid<TAB>passage` (MS MARCO, mMARCO) or DPR's
  `id<TAB>text<TAB>title` (psgs_w100.tsv, header row). The text encoded for a passage is
  `formats.records.passage_text(title, text)`, as in training.
- queries: jsonl (`query_id`, `query`, optional `lang`), BEIR jsonl (`_id`, `text`), XOR-TyDi jsonl
  (`id`, `question`, `answers`, `lang`), or tsv (`query_id<TAB>query[<TAB>lang]`; a header row such as
  `qid<TAB>query` on line 1 is skipped).
- qrels: TREC `query_id iteration docid relevance` (MIRACL, Mr.TyDi, MS MARCO), or BEIR's tsv with its
  header `query-id<TAB>corpus-id<TAB>score` (a 3-column file must have it). Relevance: an integer >= 0.
- runs, TREC format: `query_id Q0 docid rank score tag`.
Ids may be JSON strings or integers (read as strings) and must not contain whitespace, since TREC
files separate fields with it. Blank lines are skipped; a file without records is an error. As in the
training readers (`formats.io`): `.gz`/`.bz2`/`.xz` are opened transparently, a UTF-8 BOM on line 1 is
stripped, suffixes match in any case. Without a `lang` field, a language in the names (MIRACL's
`-de-`, Mr.TyDi's `mrtydi-v1.1-japanese`, mMARCO's `portuguese_queries.dev.tsv`) is used, else
`default_lang`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..formats import io, tables
from ..formats.records import passage_text
from .fields import (
    id_field,
    json_records,
    lang_field,
    language_label,
    nonblank_lines,
    optional_str,
    parse_number,
    split_lines,
    text_field,
    unique,
)

log = logging.getLogger(__name__)

DEFAULT_LANG = "und"
"""Language of records without a `lang` field (BCP 47's "undetermined")."""

CORPUS_FORMATS = ("jsonl", "beir", "pyserini", "tsv")
QUERY_FORMATS = ("jsonl", "beir", "xor", "tsv")
QRELS_FORMATS = ("trec", "beir")


@dataclass
class TextSet:
    """Texts to encode, with their ids and languages, in file order (all three lists have one entry per record)."""

    ids: list[str]
    texts: list[str]
    langs: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def read_corpus(path: str | Path, default_lang: str = DEFAULT_LANG, format: str = "auto") -> TextSet:
    """Passages of a corpus file or directory (see the module docstring); text = `passage_text(title, text)`."""
    out, seen = TextSet([], [], []), set()
    for file, line_no, docid, title, text, lang in corpus_records(path, format, default_lang):
        out.ids.append(unique(docid, seen, "docid", file, line_no))
        out.texts.append(passage_text(title, text))
        out.langs.append(lang)
    return out


def read_passage_texts(path: str | Path, keep_ids, format: str = "auto") -> dict[str, str]:
    """{docid: text without its title} of the passages in `keep_ids` (what answer metrics search)."""
    keep = set(keep_ids)
    return {docid: text for _, _, docid, _, text, _ in corpus_records(path, format) if docid in keep}


def corpus_records(path: str | Path, format: str = "auto", default_lang: str = DEFAULT_LANG):
    """(file, line, docid, title, text, lang) of every passage of a corpus file or directory."""
    for file in _corpus_files(Path(path)):
        fmt = format if format != "auto" else _corpus_format(file)
        if fmt not in CORPUS_FORMATS:
            raise DataError(file, None, "format", f"expected one of {', '.join(CORPUS_FORMATS)}, got {fmt!r}")
        log.info("%s: reading the corpus as %s", file, fmt)
        lang_default = name_lang(file) if default_lang == DEFAULT_LANG else language_label(default_lang)
        rows = _tsv_passages(file) if fmt == "tsv" else json_records(file)
        id_key, text_key = {"jsonl": ("docid", "text"), "beir": ("_id", "text"), "pyserini": ("id", "contents"),
                            "tsv": ("docid", "text")}[fmt]
        for line_no, record in rows:
            docid = id_field(record, id_key, file, line_no)
            text = text_field(record, text_key, file, line_no)
            title = optional_str(record, "title", file, line_no) or ""
            yield file, line_no, docid, title, text, lang_field(record, file, line_no) or lang_default


def _corpus_files(path: Path) -> list[Path]:
    """A file as it is; a directory: Mr.TyDi's collection/, BEIR's corpus.jsonl, or MIRACL's docs-*.jsonl*."""
    if not path.is_dir() or tables.is_table(path):
        return [path]
    if (path / "collection").is_dir():
        path = path / "collection"
    single = io.find(path, "corpus.jsonl", "docs.jsonl", "collection.tsv", "psgs_w100.tsv")
    if single:
        return [single]

    def number(p: Path) -> tuple:
        digits = re.findall(r"\d+", p.name)
        return (int(digits[-1]) if digits else -1, p.name)

    jsonl = [p for p in path.iterdir() if p.is_file() and io.is_ext(p, ".jsonl")]
    files = sorted((p for p in jsonl if not io.stem(p).startswith(NOT_CORPUS)), key=number)
    if not files:
        others = f" (got only {', '.join(sorted(p.name for p in jsonl))}, not a corpus)" if jsonl else ""
        raise DataError(path, None, None, "expected a corpus file, or a directory holding corpus.jsonl, "
                        f"collection/docs.jsonl or docs-*.jsonl.gz{others}")
    return files


NOT_CORPUS = ("queries", "topics", "topic.", "qrels", "questions")
"""Names of a dataset folder's other jsonl files (BEIR's queries.jsonl): never read as its corpus."""


def _corpus_format(path: Path) -> str:
    if io.is_ext(path, ".tsv") or _tab_separated(path):
        return "tsv"
    keys = set(io.first_record(path) or ()) if path.is_file() or tables.is_table(path) else set()
    return "beir" if "_id" in keys else "pyserini" if "contents" in keys else "jsonl"


def _tab_separated(path: Path) -> bool:
    """A first line that is no JSON object but holds a tab: TSV under another suffix (anserini's
    `topics.*.txt`, MS MARCO's and Mr.TyDi's topic files)."""
    if not path.is_file() or io.is_ext(path, ".jsonl", ".json") or tables.is_table(path):
        return False
    first = next(io.lines(path), None)
    return first is not None and "\t" in first[1] and io.first_record(path) is None


def read_queries(path: str | Path, default_lang: str = DEFAULT_LANG, format: str = "auto") -> TextSet:
    """Queries of a tsv file (any case of `.tsv`), or a jsonl file: documented, BEIR or XOR-TyDi."""
    out, seen = TextSet([], [], []), set()
    for line_no, qid, query, lang in query_records(path, format, default_lang):
        out.ids.append(unique(qid, seen, "query_id", path, line_no))
        out.texts.append(query)
        out.langs.append(lang)
    return out


def query_records(path: str | Path, format: str = "auto", default_lang: str = DEFAULT_LANG):
    """(line, query_id, query, lang) of every query; XOR-TyDi questions must have answers."""
    fmt = format if format != "auto" else _query_format(Path(path))
    if fmt not in QUERY_FORMATS:
        raise DataError(path, None, "format", f"expected one of {', '.join(QUERY_FORMATS)}, got {fmt!r}")
    log.info("%s: reading the queries as %s", path, fmt)
    lang_default = name_lang(path) if default_lang == DEFAULT_LANG else language_label(default_lang)
    id_key, text_key = {"jsonl": ("query_id", "query"), "tsv": ("query_id", "query"), "beir": ("_id", "text"),
                        "xor": ("id", "question")}[fmt]
    for line_no, record in _tsv_queries(path) if fmt == "tsv" else json_records(path):
        qid = id_field(record, id_key, path, line_no)
        query = text_field(record, text_key, path, line_no)
        if fmt == "xor":
            _answers_field(record, path, line_no)
        yield line_no, qid, query, lang_field(record, path, line_no) or lang_default


def _query_format(path: Path) -> str:
    if io.is_ext(path, ".tsv") or _tab_separated(path):
        return "tsv"
    keys = set(io.first_record(path) or ()) if path.is_file() or tables.is_table(path) else set()
    return "beir" if "_id" in keys else "xor" if "question" in keys else "jsonl"


def read_answers(path: str | Path) -> dict[str, list[str]]:
    """{question id: answers} of a questions jsonl with `answers` (XOR-TyDi's `id`, or `query_id`)."""
    answers = {}
    for line_no, record in json_records(path):
        key = "id" if "id" in record else "query_id"
        answers[unique(id_field(record, key, path, line_no), set(answers), key, path, line_no)] = \
            _answers_field(record, path, line_no)
    return answers


def _answers_field(record: dict, path, line_no: int) -> list[str]:
    value = record.get("answers")
    if not isinstance(value, list) or not value or not all(isinstance(a, str) and a.strip() for a in value):
        got = "nothing (missing)" if "answers" not in record else repr(value)
        raise DataError(path, line_no, "answers", f"expected a non-empty list of answer strings, got {got}")
    return value


def read_qrels(path: str | Path, query_ids=None, doc_ids=None, format: str = "auto") -> dict[str, dict[str, int]]:
    """{query_id: {docid: relevance}} from a TREC qrels file or BEIR's qrels tsv (with its header).

    With `query_ids` / `doc_ids` (collections of known ids), a line naming another id is an error.
    """
    known_queries = None if query_ids is None else set(query_ids)
    known_docs = None if doc_ids is None else set(doc_ids)
    qrels: dict[str, dict[str, int]] = {}
    for line_no, (qid, docid, rel) in _qrels_rows(path, format):
        if known_queries is not None and qid not in known_queries:
            raise DataError(path, line_no, "query_id", f"expected an id of the queries file, got {qid!r}")
        if known_docs is not None and docid not in known_docs:
            raise DataError(path, line_no, "docid", f"expected an id of the corpus, got {docid!r}")
        relevance = parse_number(rel, int, path, line_no, "relevance")
        if relevance < 0:
            raise DataError(path, line_no, "relevance", f"expected an integer >= 0, got {rel!r}")
        if docid in qrels.setdefault(qid, {}):
            raise DataError(path, line_no, "docid", f"expected one judgement per (query, doc), got {docid!r} again")
        qrels[qid][docid] = relevance
    return qrels


BEIR_HEADER = ["query-id", "corpus-id", "score"]


def _qrels_rows(path, format: str) -> Iterator[tuple[int, tuple[str, str, str]]]:
    """(line, (query_id, docid, relevance)) of TREC or BEIR qrels, detected from the first line."""
    rows = nonblank_lines(path)
    fmt = format
    for line_no, text in rows:
        first = text.split("\t")
        if fmt == "auto":
            fmt = "beir" if len(first) == 3 or [c.strip() for c in first] == BEIR_HEADER else "trec"
        if fmt not in QRELS_FORMATS:
            raise DataError(path, None, "format", f"expected one of {', '.join(QRELS_FORMATS)}, got {fmt!r}")
        log.info("%s: reading the qrels as %s", path, fmt)
        if fmt == "beir":
            if [c.strip() for c in first] != BEIR_HEADER:
                raise DataError(path, line_no, None, "expected BEIR's header line query-id<TAB>corpus-id<TAB>score "
                                f"first (or 4-column TREC qrels), got {text[:60]!r}")
            break
        rows = _chain((line_no, text), rows)
        break
    for line_no, text in rows:
        if fmt == "beir":
            cols = text.split("\t")
            if len(cols) != 3:
                raise DataError(path, line_no, None, f"expected 3 tab-separated columns (query-id, corpus-id, "
                                f"score), got {len(cols)}")
            yield line_no, (cols[0], cols[1], cols[2])
        else:
            fields = text.split()
            if len(fields) != 4:
                raise DataError(path, line_no, None, f"expected 4 whitespace-separated fields "
                                f"(query_id iteration docid relevance), got {len(fields)}")
            yield line_no, (fields[0], fields[2], fields[3])


def _chain(first, rest):
    yield first
    yield from rest


def read_run(path: str | Path) -> dict[str, dict[str, float]]:
    """{query_id: {docid: score}} from a TREC run file (the rank column is ignored, as trec_eval does)."""
    run: dict[str, dict[str, float]] = {}
    for line_no, fields in split_lines(path, 6, "query_id Q0 docid rank score tag"):
        qid, _, docid, _, score, _ = fields
        if docid in run.setdefault(qid, {}):
            raise DataError(path, line_no, "docid", f"expected each doc once per query, got {docid!r} again")
        run[qid][docid] = parse_number(score, float, path, line_no, "score")
    return run


# --- languages named in file names ---------------------------------------------------------------

LANGUAGE_WORDS = {
    "arabic": "ar", "bengali": "bn", "chinese": "zh", "dutch": "nl", "english": "en", "finnish": "fi",
    "french": "fr", "german": "de", "hindi": "hi", "indonesian": "id", "italian": "it", "japanese": "ja",
    "korean": "ko", "portuguese": "pt", "russian": "ru", "spanish": "es", "swahili": "sw", "telugu": "te",
    "thai": "th", "vietnamese": "vi",
}
"""Languages as mMARCO and Mr.TyDi name them."""

_MIRACL = re.compile(r"miracl-(?:corpus-)?v[\d.]+-([a-z]{2,3})(?:-|$)")
_WORD = re.compile(r"(?:^|[-_./])(" + "|".join(LANGUAGE_WORDS) + r")(?:[-_./]|$)")


def name_lang(path: str | Path, default: str = DEFAULT_LANG) -> str:
    """The language a dataset's names give a file (`miracl-v1.0-de-dev`, `mrtydi-v1.1-japanese/`,
    `portuguese_queries.dev.tsv`), else `default`."""
    for part in reversed(Path(path).parts[-3:]):
        part = part.lower()
        if m := _MIRACL.search(part):
            return m.group(1)
        if m := _WORD.search(part):
            return LANGUAGE_WORDS[m.group(1)]
    return default


# --- tab-separated layouts ---------------------------------------------------------------------


def _tsv_queries(path) -> Iterator[tuple[int, dict]]:
    for line_no, text in nonblank_lines(path):
        cols = text.split("\t")
        if len(cols) not in (2, 3):
            raise DataError(path, line_no, None, f"expected 2 or 3 tab-separated columns (query_id, query, "
                            f"lang), got {len(cols)}")
        if line_no == 1 and io.is_header(cols):
            continue  # a header row such as `qid<TAB>query`
        yield line_no, dict(zip(("query_id", "query", "lang"), cols))


def _tsv_passages(path) -> Iterator[tuple[int, dict]]:
    """`pid<TAB>passage` (MS MARCO) or `id<TAB>text<TAB>title` (DPR, named by its header row)."""
    names = ["docid", "text", "title"]
    for line_no, text in nonblank_lines(path):
        cols = text.split("\t")
        if len(cols) not in (2, 3):
            raise DataError(path, line_no, None, f"expected 2 or 3 tab-separated columns (pid, passage or "
                            f"id, text, title), got {len(cols)}")
        if line_no == 1 and io.is_header(cols):
            names = [{"id": "docid", "pid": "docid"}.get(c.strip().lower(), c.strip().lower()) for c in cols]
            continue
        yield line_no, dict(zip(names, cols))
