"""Readers for the field's dataset formats, one per format family, alike in shape.

Each reader is `read(path, options, on_error) -> iterator of (line, internal record)` (records in
`records.py`); a bad record raises `DataError(path, line, field, expected)`, or goes to `on_error`
when bad records are skipped. Every reader opens `.gz`, `.bz2` and `.xz` transparently and accepts a
UTF-8 BOM on line 1 (`io.py`). `resolve` names the format: the one given, or the one detected from
the file names and the first record. See docs/formats.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from . import io, ir, monolingual, parallel, tables

READERS = {
    "ir": {"tevatron": ir.tevatron, "tevatron-v2": ir.tevatron_v2, "flagembedding": ir.flagembedding,
           "msmarco": ir.msmarco, "dpr": ir.dpr},
    "parallel": {"jsonl": parallel.jsonl, "tsv": parallel.tsv, "moses": parallel.moses},
    "monolingual": {"jsonl": monolingual.jsonl, "text": monolingual.text},
}
"""Formats by kind of training data; the first is each kind's documented jsonl."""

TABLE_FORMATS = {"ir": ("tevatron", "tevatron-v2", "flagembedding"), "parallel": ("jsonl",),
                 "monolingual": ("jsonl",)}
"""The formats whose records a table input (parquet, `save_to_disk`: `tables`) may hold, as columns."""

FORMAT_KEYS = {"ir": "data.train_ir_format", "parallel": "data.parallel_format",
               "monolingual": "data.monolingual_format"}


@dataclass(frozen=True)
class ReadOptions:
    """What a reader needs beyond the path (from DataConfig, see `options_for`)."""

    format: str = "auto"
    corpus: str | None = None
    """Tevatron v2 corpus jsonl, or MS MARCO's collection.tsv, when not beside the queries."""
    lang: str | None = None
    """The non-English language of parallel data, or the language of plain text, when names do not say."""
    min_score: float | None = None
    """Parallel TSV with a score column: pairs scoring below are dropped."""


def options_for(data_cfg, kind: str) -> ReadOptions:
    """The reader options of one training stream from a DataConfig."""
    if kind == "ir":
        return ReadOptions(data_cfg.train_ir_format, corpus=data_cfg.train_corpus)
    if kind == "parallel":
        return ReadOptions(data_cfg.parallel_format, lang=data_cfg.parallel_lang,
                           min_score=data_cfg.parallel_min_score)
    return ReadOptions(data_cfg.monolingual_format, lang=data_cfg.monolingual_lang)


def resolve(path: str | Path, kind: str, opts: ReadOptions) -> str:
    """The format to read `path` as: `opts.format`, or detected; DataError naming the choices if neither."""
    path, names = Path(path), READERS[kind]
    if opts.format != "auto":
        if opts.format not in names:
            raise DataError(path, None, FORMAT_KEYS[kind], f"expected one of auto, {', '.join(names)}, "
                            f"got {opts.format!r}")
        if opts.format not in TABLE_FORMATS[kind] and tables.is_table(path):
            raise DataError(path, None, FORMAT_KEYS[kind], f"a parquet or save_to_disk input holds the columns of "
                            f"{', '.join(TABLE_FORMATS[kind])}; got {opts.format!r}")
        return opts.format
    found = _detect(path, kind)
    if found is None:
        if not path.exists() and not (kind == "parallel" and parallel.name_pair(path)):
            raise DataError(path, None, None, f"file not found (given as {path_key(kind)})")
        raise DataError(path, None, None, f"cannot tell the {kind} format from the name or first record: "
                        f"expected one of {', '.join(names)} (see docs/formats.md); set {FORMAT_KEYS[kind]}")
    return found


def _detect(path: Path, kind: str) -> str | None:
    if tables.is_table(path):
        return _by_keys(kind, set(io.first_record(path) or ()))
    name = io.stem(path)
    if kind == "ir":
        if path.is_dir():
            return "msmarco" if io.find(path, "collection.tsv", "qrels.train.tsv", "queries.train.tsv") else None
        if name.startswith(("qrels.", "qidpidtriples.")) and name.endswith(".tsv"):
            return "msmarco"
        if name.endswith(".json") and _starts_array(path):
            return "dpr"
        keys = _first_keys(path)
        if not keys and name.endswith(".jsonl") and path.is_file():
            return "tevatron"  # first line empty, malformed or not an object: the reader says which, and where
        return _by_keys(kind, keys)
    if kind == "parallel":
        if name.endswith(".tsv"):
            return "tsv"
        if not name.endswith(".jsonl") and (codes := parallel.name_codes(path)) and (
                name.rsplit(".", 1)[-1] in codes or not path.exists()):
            return "moses"
        # A .jsonl name is this kind's jsonl: its reader then names the line and field of any fault.
        return "jsonl" if name.endswith(".jsonl") else _by_keys(kind, _first_keys(path))
    if name.endswith(".txt"):
        return "text"
    return "jsonl" if name.endswith(".jsonl") else _by_keys(kind, _first_keys(path))


def _by_keys(kind: str, keys: set) -> str | None:
    """The jsonl family of `kind` whose records have `keys` (a jsonl file's first line, a table's first row)."""
    if kind == "ir":
        return ("tevatron" if "positive_passages" in keys else "tevatron-v2" if "positive_document_ids" in keys
                else "flagembedding" if "pos" in keys else None)
    return "jsonl" if (kind == "parallel" and {"en", "text"} <= keys) or (kind == "monolingual" and "text" in keys) \
        else None


def _starts_array(path: Path) -> bool:
    """Whether the file's first non-blank character is '[' (a JSON array, not jsonl named .json)."""
    if not path.is_file():
        return False
    with io.open_binary(path) as f:
        return f.read(4096).decode("utf-8", "replace").lstrip("\ufeff \t\r\n")[:1] == "["


def _first_keys(path: Path) -> set:
    if not path.is_file():
        return set()
    return set(io.first_record(path) or ())


def files(path: str | Path, kind: str, fmt: str, opts: ReadOptions) -> list[Path]:
    """Every file a format reads for `path` (what a cache key must cover); DataError if one is missing."""
    path = Path(path)
    if fmt == "msmarco":
        found = list(ir.msmarco_files(path, opts).values())
    elif fmt == "tevatron-v2":
        found = list(ir.tevatron_v2_files(path, opts).values())
    elif fmt == "moses":
        found = list(parallel.moses_files(path, opts)[:2])
    else:
        found = [path]
    found = [f for table_or_file in found
             for f in (tables.files(table_or_file) if tables.is_table(table_or_file) else [table_or_file])]
    for f in found:
        if not f.is_file():
            raise DataError(f, None, None, f"file not found (given as {path_key(kind)})" if not f.is_dir()
                            else "expected a file, got a directory")
    return found


def path_key(kind: str) -> str:
    """The setting naming training data of `kind` (data.train_ir, data.parallel, data.monolingual)."""
    return FORMAT_KEYS[kind].removesuffix("_format")


def data_file(path: str | Path, fmt: str, opts: ReadOptions) -> Path:
    """The file that stands for `path` where a file is needed (a cache key stats it): `path` itself, or the
    non-English file of a Moses prefix (`X.de-en`, which is no file)."""
    path = Path(path)
    return parallel.moses_files(path, opts)[1] if fmt == "moses" and not path.is_file() else path


def read(path: str | Path, kind: str, opts: ReadOptions = ReadOptions(), on_error=None):
    """(format name, iterator of (line, internal record)) for training data of `kind`."""
    fmt = resolve(path, kind, opts)
    files(path, kind, fmt, opts)
    return fmt, READERS[kind][fmt](Path(path), opts, on_error)
