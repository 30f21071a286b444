"""Building a cache's parts: the file cut at newlines, each byte range validated into part-NNNNN.arrow."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, NoRecords

# Suffixes whose records are one per line, so the file can be cut at newlines for parallel building.
LINE_FORMATS = (".jsonl", ".json", ".ndjson")
MIN_PART_BYTES = 32 * 2**20
MAX_PART_BYTES = 256 * 2**20
# Rows per Arrow record batch. Opening a cache reads every batch's header, and each read maps (at least)
# a page of the memory-mapped file into every rank: with datasets' default of 1,000 rows that is 0.6 GiB
# of resident file pages per rank at 10^7 rows. At 100,000 rows it is a few MiB per 10^7.
RECORD_BATCH_ROWS = 100_000


@dataclass(frozen=True)
class Part:
    """Bytes [start, stop) of the source file; index orders the parts."""

    index: int
    start: int
    stop: int


def plan_parts(path: Path, size: int, num_proc: int) -> list[Part]:
    """Cut the file at newlines into parts of MIN..MAX_PART_BYTES (at least num_proc of them when the file
    is large enough); a file that is not line-based is one part."""
    if path.suffix.lower() not in LINE_FORMATS or num_proc <= 1 and size <= MAX_PART_BYTES:
        return [Part(0, 0, size)]
    part_bytes = min(MAX_PART_BYTES, max(MIN_PART_BYTES, math.ceil(size / max(num_proc, 1))))
    starts = [0]
    with open(path, "rb") as f:
        while starts[-1] + part_bytes < size:
            f.seek(starts[-1] + part_bytes)
            f.readline()  # to the end of the line that straddles the cut
            if f.tell() >= size:
                break
            starts.append(f.tell())
    return [Part(i, a, b) for i, (a, b) in enumerate(zip(starts, starts[1:] + [size]))]


def build_parts(jobs: list, procs: int):
    """The parts' results in order, from `procs` spawned processes (spawn: this process may hold
    threads and a process group, which fork would copy in an unusable state)."""
    if procs <= 1:
        yield from map(build_part, jobs)
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        yield from pool.imap(build_part, jobs)


def build_part(job) -> dict:
    """Write one part's validated records to part-NNNNN.arrow; a bad record is reported, not raised
    (its line is relative to the part; the parent makes it absolute). Flat jsonl records go through
    Arrow's JSON reader (`formats.arrow_json`) unless the part needs the Python reader."""
    source, part, kind, bad_records, tmp, features, read, fast = job
    source, tmp = Path(source), Path(tmp)
    name = f"part-{part.index:05d}.arrow"
    result = {"file": name, "start": part.start, "num_rows": 0, "num_skipped": 0}
    built = fast and _build_fast(source, part, kind, tmp / name, features, result)
    if not built:
        _build_slow(source, part, kind, bad_records, tmp, name, features, read, result)
    if not result["num_rows"]:
        (tmp / name).unlink(missing_ok=True)
    else:
        result["bytes"] = (tmp / name).stat().st_size  # checked whenever the cache is opened
    return result


def _writer(path: Path, features):
    from datasets.arrow_writer import ArrowWriter

    return ArrowWriter(features=features, path=str(path), writer_batch_size=RECORD_BATCH_ROWS)


def _build_fast(source: Path, part: Part, kind: str, out: Path, features, result: dict) -> bool:
    """The part through Arrow's JSON reader; False (nothing written) where it needs the Python reader."""
    from ..formats import arrow_json
    from ..formats.records import Suspicious

    suspicious, writer = Suspicious(source), _writer(out, features)
    try:
        for table in arrow_json.tables(source, part.start, part.stop, kind, suspicious):
            writer.write_table(table)
            result["num_rows"] += table.num_rows
    except arrow_json.NotFast:
        writer.close()
        out.unlink(missing_ok=True)
        result["num_rows"] = 0
        return False
    writer.finalize()
    writer.close()
    if suspicious.first:  # lines of the whole file: one count of the newlines before the part
        lines_before = global_line(source, part.start, 0)
        suspicious.first = {what: lines_before + line for what, line in suspicious.first.items()}
    suspicious.report()
    return True


def _build_slow(source: Path, part: Part, kind: str, bad_records: str, tmp: Path, name: str, features, read,
                result: dict) -> None:
    whole = part.start == 0 and part.stop == source.stat().st_size
    piece = source if whole else tmp / f"piece-{part.index:05d}{source.suffix}"
    if not whole:
        _copy_range(source, piece, part.start, part.stop)
    skipped: list = []
    writer = _writer(tmp / name, features)
    try:
        for record in read(piece, kind, bad_records, skipped):
            writer.write(record)
            result["num_rows"] += 1
    except DataError as e:
        if not isinstance(e, NoRecords):
            result["error"] = _located(e, piece)
        # else: no valid record in this part (all blank or skipped); counted over the whole file later
    finally:
        writer.finalize()
        writer.close()
        if not whole:
            piece.unlink()
    result["num_skipped"] = len(skipped)
    if skipped:
        line, message = skipped[0]
        result["first_skip"] = {"line": line, "field": None, "expected": _strip_where(message, piece, line)}


def _located(e: DataError, piece: Path) -> dict:
    return {"line": e.line, "field": e.field, "expected": _strip_where(str(e), piece, e.line, e.field)}


def _strip_where(message: str, piece: Path, line, field=None) -> str:
    """A DataError's message without its 'file, line N: field ...: ' prefix (re-added with the real file)."""
    prefix = f"{piece}" + (f", line {line}" if line is not None else "") + ": "
    if field:
        prefix += f"field '{field}': "
    return message[len(prefix):] if message.startswith(prefix) else message


def global_line(source: Path, start: int, line: int | None) -> int | None:
    """Line `line` of the part starting at byte `start`, as a line of the whole file."""
    if line is None:
        return None
    newlines = 0
    with open(source, "rb") as f:
        remaining = start
        while remaining:
            block = f.read(min(remaining, 2**24))
            newlines += block.count(b"\n")
            remaining -= len(block)
    return newlines + line


def _copy_range(source: Path, dest: Path, start: int, stop: int) -> None:
    with open(source, "rb") as src, open(dest, "wb") as out:
        src.seek(start)
        remaining = stop - start
        while remaining:
            block = src.read(min(remaining, 2**24))
            out.write(block)
            remaining -= len(block)
