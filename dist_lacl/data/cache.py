"""The Arrow cache of a training file: built once per file (in parallel), shared by runs, waited for by polling.

Layout under the cache root (`data.cache_dir`, else $DIST_LACL_CACHE, else ~/.cache/dist_lacl):
  <kind>-<name>-<key>/        a finished cache: MANIFEST.json + part-NNNNN.arrow (memory-mapped)
  .<kind>-<name>-<key>.lock/  a build in progress (`cache_lock`)
  .<kind>-<name>-<key>.tmp-*/ the build's output until it is complete; renamed into place in one step
  .<...>.failed-<nonce>       the message of a build that failed, for the waiting ranks of that run
The key hashes the resolved path, size and mtime of every file the format reads, the record kind, the
reading options (format included), the bad-record policy and the cache format version, so an edited
file, another policy or a format change builds a new cache.
A cache directory exists only once complete: a crashed build leaves a .tmp- directory (never read)
and a lock whose heartbeat goes stale, which the next build takes over. The parts are built by
`cache_parts`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from .. import atomic
from ..errors import DataError, UserError
from . import cache_lock
from .cache_parts import Part, build_parts, global_line, plan_parts

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def default_cache_root() -> Path:
    """$DIST_LACL_CACHE, else $XDG_CACHE_HOME/dist_lacl, else ~/.cache/dist_lacl: one cache per user."""
    if os.environ.get("DIST_LACL_CACHE"):
        return Path(os.environ["DIST_LACL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dist_lacl"


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
                if cache_lock.take(self.lock, nonce, stale_s, self.source):
                    try:
                        if not self.ready():
                            self._build_locked(features, read, num_proc)
                    finally:
                        cache_lock.release(self.lock)
                else:
                    time.sleep(cache_lock.HEARTBEAT_S)
        except BaseException as e:
            self._write_failure(nonce, e)
            raise

    def heartbeat_age(self) -> float | None:
        return cache_lock.heartbeat_age(self.lock)

    def _build_locked(self, features, read, num_proc: int) -> None:
        for leftover in self.root.glob(f".{self.name}.tmp-*"):  # a crashed build's; the lock is ours
            atomic.discard(leftover)
        tmp = atomic.new_temp_dir(self.dir)
        beat = cache_lock.Heartbeat(self.lock / "heartbeat")
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
            for result in build_parts(jobs, procs):
                results.append(result)
                cache_lock.write_progress(self.lock, len(results), len(parts))
                if time.perf_counter() - last_log > _progress_s():
                    last_log = time.perf_counter()
                    log.info("%s: %d of %d parts cached (%d records, %.0f s)", self.source, len(results),
                             len(parts), sum(r["num_rows"] for r in results), last_log - start)
            manifest = self._manifest(results)
            delay = float(os.environ.get("DIST_LACL_TEST_CACHE_DELAY_S", 0))
            if delay:  # tests: a build slower than the collective timeout, without a huge file
                time.sleep(delay)
            atomic.write_text(tmp / "MANIFEST.json", json.dumps(manifest))
            atomic.publish_dir(tmp, self.dir)  # the one step that makes the cache visible, complete
        except BaseException:
            atomic.discard(tmp)
            raise
        finally:
            beat.stop()
        seconds = time.perf_counter() - start
        log.info("%s: cached %d records in %.1f s (%.0f records/s)", self.source, manifest["num_rows"], seconds,
                 manifest["num_rows"] / max(seconds, 1e-9))

    def _manifest(self, results: list[dict]) -> dict:
        first_bad = next((r for r in results if r.get("error")), None)
        if first_bad is not None:
            line = global_line(self.source, first_bad["start"], first_bad["error"]["line"])
            raise DataError(self.source, line, first_bad["error"]["field"], first_bad["error"]["expected"])
        num_rows = sum(r["num_rows"] for r in results)
        if num_rows == 0:
            raise DataError(self.source, None, None, f"no valid {self.kind} records (empty file?)")
        skipped = sum(r["num_skipped"] for r in results)
        if skipped:
            first = next(r for r in results if r["num_skipped"])
            line = global_line(self.source, first["start"], first["first_skip"]["line"])
            reason = DataError(self.source, line, first["first_skip"]["field"], first["first_skip"]["expected"])
            log.warning("%s: skipped %d malformed records (first: %s)", self.source, skipped, reason)
        return {"source": str(self.source), "size": self.size, "kind": self.kind, "num_rows": num_rows,
                "num_skipped": skipped, "parts": [r["file"] for r in results if r["num_rows"]],
                "format_version": FORMAT_VERSION}

    def _write_failure(self, nonce: str, error: BaseException) -> None:
        message = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
        try:
            atomic.write_text(self.failure_marker(nonce),
                              json.dumps({"message": message, "user_error": isinstance(error, UserError)}))
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
                log.warning("waiting for the data cache of %s: %.0f s, %s", self.source, now - start,
                            cache_lock.progress(self.lock))
            time.sleep(0.2)


def _progress_s() -> float:
    return float(os.environ.get("DIST_LACL_CACHE_PROGRESS_S", 30))
