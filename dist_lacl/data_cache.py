"""The Arrow cache of a training file: built once per file (in parallel), shared by runs, waited for by polling.

Layout under the cache root (`data.cache_dir`, else $DIST_LACL_CACHE, else ~/.cache/dist_lacl):
  <kind>-<name>-<key>/        a finished cache: MANIFEST.json + part-NNNNN.arrow (memory-mapped)
  .<kind>-<name>-<key>.lock/  a build in progress: owner.json, heartbeat (touched every few seconds),
                              progress.json (parts done)
  .tmp-<...>/                 the build's output until it is complete; renamed into place in one step
  .<...>.failed-<nonce>       the message of a build that failed, for the waiting ranks of that run
The key hashes the resolved path, size and mtime of every file the format reads, the record kind, the
reading options (format included), the bad-record policy and the cache format version, so an edited
file, another policy or a format change builds a new cache.
A cache directory exists only once complete: a crashed build leaves a .tmp- directory (never read)
and a lock whose heartbeat goes stale, which the next build takes over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError, NoRecords, UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
HEARTBEAT_S = 2.0
# Suffixes whose records are one per line, so the file can be cut at newlines for parallel building.
LINE_FORMATS = (".jsonl", ".json", ".ndjson")
MIN_PART_BYTES = 32 * 2**20
MAX_PART_BYTES = 256 * 2**20
# Rows per Arrow record batch. Opening a cache reads every batch's header, and each read maps (at least)
# a page of the memory-mapped file into every rank: with datasets' default of 1,000 rows that is 0.6 GiB
# of resident file pages per rank at 10^7 rows. At 100,000 rows it is a few MiB per 10^7.
RECORD_BATCH_ROWS = 100_000


def default_cache_root() -> Path:
    """$DIST_LACL_CACHE, else $XDG_CACHE_HOME/dist_lacl, else ~/.cache/dist_lacl: one cache per user."""
    if os.environ.get("DIST_LACL_CACHE"):
        return Path(os.environ["DIST_LACL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dist_lacl"


@dataclass(frozen=True)
class Part:
    """Bytes [start, stop) of the source file; index orders the parts."""

    index: int
    start: int
    stop: int


class CacheEntry:
    """The cache of one (file, kind, bad-record policy) under `root`."""

    def __init__(self, root: str | Path, path: str | Path, kind: str, bad_records: str,
                 sources: list[Path] | None = None, options: dict | None = None, splittable: bool = True,
                 flat_jsonl: bool = False):
        """`path` as the user named it (a file or a dataset folder); `sources`: every file the format reads
        (default: `path`); `options`: the reading options (format included); `splittable`: whether the
        file holds one record per line on its own, so byte ranges of it can be built in parallel;
        `flat_jsonl`: whether Arrow's JSON reader may try it first (`formats.arrow_json.applies`)."""
        self.source = Path(path).resolve()
        self.kind, self.bad_records, self.splittable, self.flat_jsonl = kind, bad_records, splittable, flat_jsonl
        self.size = self.source.stat().st_size
        stamps = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in (sources or [self.source])]
        key = json.dumps([str(self.source), stamps, kind, bad_records, options or {}, FORMAT_VERSION], sort_keys=True)
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.source.stem)[:40]
        self.name = f"{kind}-{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        self.root = Path(root)
        self.dir = self.root / self.name
        self.lock = self.root / f".{self.name}.lock"

    def ready(self) -> bool:
        return (self.dir / "MANIFEST.json").is_file()

    def manifest(self) -> dict:
        return json.loads((self.dir / "MANIFEST.json").read_text())

    def failure_marker(self, nonce: str) -> Path:
        return self.root / f".{self.name}.failed-{nonce}"

    def load(self):
        """The finished cache as one memory-mapped `datasets.Dataset`, rows in file order."""
        import datasets

        parts = [datasets.Dataset.from_file(str(self.dir / p)) for p in self.manifest()["parts"]]
        return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)

    # -- rank 0 ------------------------------------------------------------------------------

    def build(self, features, read, num_proc: int, nonce: str, stale_s: float) -> None:
        """Make the cache exist: build it under the lock, or wait for another job's build. On failure,
        leave a marker for this run's waiting ranks (nonce) and raise."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            while not self.ready():
                if self._take_lock(nonce, stale_s):
                    try:
                        if not self.ready():
                            self._build_locked(features, read, num_proc)
                    finally:
                        shutil.rmtree(self.lock, ignore_errors=True)
                else:
                    time.sleep(HEARTBEAT_S)
        except BaseException as e:
            self._write_failure(nonce, e)
            raise

    def _take_lock(self, nonce: str, stale_s: float) -> bool:
        try:
            self.lock.mkdir()
        except FileExistsError:
            age = self.heartbeat_age()
            if age is not None and age > stale_s:
                log.warning("%s: the build holding %s stopped %.0f s ago; taking it over",
                            self.source, self.lock, age)
                trash = self.root / f".stale-{uuid.uuid4().hex}"
                try:
                    self.lock.rename(trash)
                except OSError:
                    return False  # another process took it over first
                shutil.rmtree(trash, ignore_errors=True)
            return False
        (self.lock / "owner.json").write_text(json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "nonce": nonce}))
        (self.lock / "heartbeat").touch()
        return True

    def heartbeat_age(self) -> float | None:
        """Seconds since the builder last showed life (the lock's own age before its first beat); None
        when no build holds the lock."""
        for path in (self.lock / "heartbeat", self.lock):
            try:
                return time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue
        return None

    def _build_locked(self, features, read, num_proc: int) -> None:
        for leftover in self.root.glob(f".tmp-{self.name}-*"):  # a crashed build's; the lock is ours
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = self.root / f".tmp-{self.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        beat = Heartbeat(self.lock / "heartbeat")
        start = time.perf_counter()
        try:
            parts = plan_parts(self.source, self.size, num_proc) if self.splittable else \
                [Part(0, 0, self.size)]
            procs = min(num_proc, len(parts))
            log.info("%s: building the Arrow cache in %s (%d parts, %d processes)", self.source, self.dir,
                     len(parts), procs)
            results, last_log = [], time.perf_counter()
            jobs = [(str(self.source), part, self.kind, self.bad_records, str(tmp), features, read, self.flat_jsonl)
                    for part in parts]
            for result in _run(jobs, procs):
                results.append(result)
                _write_json(self.lock / "progress.json", {"parts_done": len(results), "parts": len(parts)})
                if time.perf_counter() - last_log > _progress_s():
                    last_log = time.perf_counter()
                    log.info("%s: %d of %d parts cached (%d records, %.0f s)", self.source, len(results),
                             len(parts), sum(r["num_rows"] for r in results), last_log - start)
            manifest = self._manifest(results)
            delay = float(os.environ.get("DIST_LACL_TEST_CACHE_DELAY_S", 0))
            if delay:  # tests: a build slower than the collective timeout, without a huge file
                time.sleep(delay)
            _write_json(tmp / "MANIFEST.json", manifest)
            tmp.rename(self.dir)  # the one step that makes the cache visible, complete
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            beat.stop()
        seconds = time.perf_counter() - start
        log.info("%s: cached %d records in %.1f s (%.0f records/s)", self.source, manifest["num_rows"], seconds,
                 manifest["num_rows"] / max(seconds, 1e-9))

    def _manifest(self, results: list[dict]) -> dict:
        first_bad = next((r for r in results if r.get("error")), None)
        if first_bad is not None:
            line = _global_line(self.source, first_bad["start"], first_bad["error"]["line"])
            raise DataError(self.source, line, first_bad["error"]["field"], first_bad["error"]["expected"])
        num_rows = sum(r["num_rows"] for r in results)
        if num_rows == 0:
            raise DataError(self.source, None, None, f"no valid {self.kind} records (empty file?)")
        skipped = sum(r["num_skipped"] for r in results)
        if skipped:
            first = next(r for r in results if r["num_skipped"])
            line = _global_line(self.source, first["start"], first["first_skip"]["line"])
            reason = DataError(self.source, line, first["first_skip"]["field"], first["first_skip"]["expected"])
            log.warning("%s: skipped %d malformed records (first: %s)", self.source, skipped, reason)
        return {"source": str(self.source), "size": self.size, "kind": self.kind, "num_rows": num_rows,
                "num_skipped": skipped, "parts": [r["file"] for r in results if r["num_rows"]],
                "format_version": FORMAT_VERSION}

    def _write_failure(self, nonce: str, error: BaseException) -> None:
        message = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
        try:
            _write_json(self.failure_marker(nonce), {"message": message, "user_error": isinstance(error, UserError)})
        except OSError:
            log.exception("could not write the cache failure marker")

    # -- the other ranks ---------------------------------------------------------------------

    def wait(self, nonce: str, stale_s: float, progress_s: float | None = None) -> None:
        """Poll until the cache is complete (no collective, so no timeout); log progress every
        progress_s (default $DIST_LACL_CACHE_PROGRESS_S or 30); raise if this run's builder failed or
        stopped beating."""
        progress_s = progress_s or _progress_s()
        start, last_log, missing_since = time.time(), time.time(), None
        marker = self.failure_marker(nonce)
        while not self.ready():
            if marker.is_file():
                failure = json.loads(marker.read_text())
                if failure["user_error"]:
                    raise UserError(failure["message"])
                raise UserError(f"{self.source}: rank 0 failed to build the data cache: {failure['message']}")
            age = self.heartbeat_age()
            now = time.time()
            if age is None:
                missing_since = missing_since or now
                stalled = now - missing_since
            else:
                missing_since, stalled = None, age
            if stalled > stale_s:
                raise UserError(
                    f"{self.source}: waited {now - start:.0f} s for the data cache in {self.dir}, but no process "
                    f"has been building it for {stalled:.0f} s (rank 0 died, or data.cache_dir is not on a file "
                    "system that all ranks share)")
            if now - last_log >= progress_s:
                last_log = now
                # A warning: the waiting ranks log nothing below that, and a silent wait looks hung.
                log.warning("waiting for the data cache of %s: %.0f s, %s", self.source, now - start, self._progress())
            time.sleep(0.2)

    def _progress(self) -> str:
        try:
            p = json.loads((self.lock / "progress.json").read_text())
            return f"{p['parts_done']} of {p['parts']} parts built"
        except (OSError, ValueError):
            return "building"


class Heartbeat:
    """Touches `path` every HEARTBEAT_S seconds from a daemon thread until stopped."""

    def __init__(self, path: Path):
        self.path, self.done = path, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def _beat(self):
        while not self.done.wait(HEARTBEAT_S):
            try:
                self.path.touch()
            except OSError:
                pass

    def stop(self):
        self.done.set()
        self.thread.join()


def _progress_s() -> float:
    return float(os.environ.get("DIST_LACL_CACHE_PROGRESS_S", 30))


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


def _run(jobs: list, procs: int):
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
    return result


def _writer(path: Path, features):
    from datasets.arrow_writer import ArrowWriter

    return ArrowWriter(features=features, path=str(path), writer_batch_size=RECORD_BATCH_ROWS)


def _build_fast(source: Path, part: Part, kind: str, out: Path, features, result: dict) -> bool:
    """The part through Arrow's JSON reader; False (nothing written) where it needs the Python reader."""
    from .formats import arrow_json
    from .formats.records import Suspicious

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
        lines_before = _global_line(source, part.start, 0)
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


def _global_line(source: Path, start: int, line: int | None) -> int | None:
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


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)
