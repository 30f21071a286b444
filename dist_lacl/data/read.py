"""Reading training records in any format, their Arrow features, and the cached dataset of a file."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import uuid
from pathlib import Path

import datasets

from .. import distributed as dist
from .. import formats
from ..errors import DataError, NoRecords
from ..formats import ReadOptions, arrow_json
from ..formats.records import Suspicious
from .cache import CacheEntry, cache_root, content_stamp

log = logging.getLogger(__name__)


def read_records(path: str | Path, kind: str, bad_records: str = "error", skipped: list | None = None,
                 options: ReadOptions | None = None):
    """Yield validated internal records of `kind` (ir, parallel, monolingual) from `path` in any format
    of `formats.READERS` (named in `options.format`, or detected); DataError names file, line and field.

    With bad_records="skip", malformed records are dropped and (line, reason) appended to `skipped`.
    Suspicious records (a hard negative that is its query's positive: dropped; a parallel pair in
    English, or whose text equals the English) are counted and warned about once per file.
    """
    options = options or ReadOptions()
    on_error = None
    if bad_records == "skip":
        def on_error(e: DataError) -> None:
            if skipped is not None:
                skipped.append((e.line, str(e)))
    fmt, rows = formats.read(path, kind, options, on_error)
    log.info("%s: reading %s data as %s", path, kind, fmt)
    suspicious, n = Suspicious(path), 0
    for line_no, rec in rows:
        n += 1
        yield suspicious.check(kind, rec, line_no)
    suspicious.report()
    if n == 0:
        raise NoRecords(path, None, None, f"no valid {kind} records (empty file?)")


def features(kind: str) -> datasets.Features:
    """The Arrow schema of `kind`'s internal records."""
    # score: a teacher's score of the passage, null where the source has none (records.scored)
    passage = [{"docid": datasets.Value("string"), "title": datasets.Value("string"),
                "text": datasets.Value("string"), "score": datasets.Value("float64")}]
    return datasets.Features({
        "ir": {"query_id": datasets.Value("string"), "query": datasets.Value("string"),
               "positives": passage, "negatives": passage},
        "parallel": {"en": datasets.Value("string"), "text": datasets.Value("string"),
                     "lang": datasets.Value("string")},
        "monolingual": {"text": datasets.Value("string"), "lang": datasets.Value("string")},
    }[kind])


# Formats whose files hold one record per line on their own, so the cache can build byte ranges of
# them in parallel (a reader that needs the file's name or a companion file reads the whole file).
LINE_SPLITTABLE = {("ir", "tevatron"), ("ir", "flagembedding"), ("parallel", "jsonl"), ("monolingual", "jsonl")}


def cache_entry(path: str | Path, kind: str, cache_dir: str | Path | None = None, bad_records: str = "error",
                options: ReadOptions | None = None) -> tuple[CacheEntry, ReadOptions]:
    """The cache entry of training data `path` (format resolved and logged) and the options to read it with."""
    path, options = Path(path), options or ReadOptions()
    fmt = formats.resolve(path, kind, options)
    sources = formats.files(path, kind, fmt, options)
    path = formats.data_file(path, fmt, options)  # a Moses prefix is no file to stat
    table = formats.tables.is_table(path)  # parquet or save_to_disk: read whole, never as byte ranges
    options = dataclasses.replace(options, format=fmt)  # the parts are read as the whole was detected
    log.info("%s: %s data in the %s format", path, kind, fmt)
    root, setting = cache_root(cache_dir)
    entry = CacheEntry(root, path, kind, bad_records, sources=sources, options=dataclasses.asdict(options),
                       splittable=(kind, fmt) in LINE_SPLITTABLE and not table,
                       flat_jsonl=arrow_json.applies(path, kind, fmt) and not table,
                       root_setting=setting, schema=features(kind).to_dict())
    return entry, options


def load_dataset(path: str | Path, kind: str, cache_dir: str | Path | None = None, bad_records: str = "error",
                 options: ReadOptions | None = None, num_proc: int = 0, stale_s: float = 120.0) -> datasets.Dataset:
    """*Collective.* The validated, memory-mapped Arrow dataset of training data in any format
    (`read_records`, `formats`).

    Rank 0 builds the cache once per input (see data.cache: keyed by a fingerprint of every file the
    format reads and the reading options, checked part by part when opened, shared by runs, built by
    num_proc processes for line formats; 0 = one per CPU, at most 16) while the other ranks poll the
    file system for it, which no collective timeout limits; all meet in a barrier once it is complete.
    If rank 0's build fails, every rank raises its message; if rank 0 stops beating for stale_s, the
    others raise too.
    """
    entry, options = cache_entry(path, kind, cache_dir, bad_records, options)
    # Rank 0's key for all: another node may see another inode change time of the same file for a moment.
    nonce, entry.name = dist.broadcast_object((uuid.uuid4().hex, entry.name) if dist.is_main() else None)
    if dist.is_main():
        # Auto: one process per CPU, at most 16 (each imports torch and datasets: ~0.3 GB apiece).
        read = functools.partial(read_records, options=options)
        entry.build(features(kind), read, num_proc or min(os.cpu_count() or 1, 16), nonce, stale_s)
    else:
        entry.wait(nonce, stale_s)
    dist.barrier()
    return entry.load()


def input_content(path: str | Path, kind: str, options: ReadOptions) -> list[list]:
    """[name, size, hash of the ends] of every file training data `path` is read from: what a resume
    compares, to say so when the files changed since the checkpoint (`cache.content_stamp`)."""
    fmt = formats.resolve(path, kind, options)
    return [[str(f), *content_stamp(Path(f))] for f in formats.files(path, kind, fmt, options)]
