"""The Arrow cache of a training file: built once per file (in parallel), shared by runs, waited for by polling.

Layout under the cache root (`data.cache_dir`, else $DIST_LACL_CACHE, else ~/.cache/dist_lacl):
  <kind>-<name>-<key>/        a finished cache: MANIFEST.json + part-NNNNN.arrow (memory-mapped)
  .<kind>-<name>-<key>.lock/  a build in progress (`cache_lock`)
  .<kind>-<name>-<key>.tmp-*/ the build's output until it is complete; renamed into place in one step
  .<...>.failed-<nonce>       the message of a build that failed, for the waiting ranks of that run
The key hashes the fingerprint of every file the format reads (`fingerprint`), the record kind, the
reading options (format included), the bad-record policy, the cache format version and the records'
Arrow schema, so an edited file, another policy, a format change or new record fields build a new cache.
A cache directory exists only once complete: a crashed build leaves a .tmp- directory (never read)
and a lock whose heartbeat goes stale, which the next build takes over. Every part is checked
against the manifest (bytes, rows) before it is used; a damaged cache is rebuilt. The parts are
built by `cache_parts`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from .. import atomic
from ..errors import DataError, UserError
from . import cache_lock
from .cache_parts import Part, build_parts, global_line, plan_parts

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: the manifest holds each part's bytes and rows
SAMPLE_BYTES = 2**20
NOT_BUILT = "not built"


def cache_root(cache_dir: str | Path | None = None) -> tuple[Path, str]:
    """The cache root and the setting that chose it: `cache_dir` (data.cache_dir), else $DIST_LACL_CACHE,
    else $XDG_CACHE_HOME/dist_lacl, else ~/.cache/dist_lacl: one cache per user."""
    if cache_dir:
        return Path(cache_dir), "data.cache_dir"
    if os.environ.get("DIST_LACL_CACHE"):
        return Path(os.environ["DIST_LACL_CACHE"]), "$DIST_LACL_CACHE"
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dist_lacl"
    return default, "the default; set data.cache_dir or $DIST_LACL_CACHE"


def check_root(root: Path, setting: str) -> None:
    """Make the cache root exist and prove it writable, or raise one line naming it and its setting."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=root))
    except OSError as e:
        what = "is a file, not a folder" if root.is_file() else f"cannot be written ({e.strerror or e})"
        raise UserError(f"the data cache root {root} ({setting}) {what}: point data.cache_dir or "
                        "$DIST_LACL_CACHE at a writable folder") from None


def fingerprint(path: Path) -> list:
    """What identifies the content of the file `path`, read in milliseconds whatever its size.

    Size and mtime alone are fooled by a rewrite of the same length whose mtime is put back
    (`touch -r`, `cp -p`, `rsync -t`, a checkout). The inode change time cannot be put back: only the
    kernel sets it, to now, on every write, rename or chmod; and a file replaced by a rename has a
    new inode. So any rewrite changes the key. The hash of the first and last MiB adds a check of the
    bytes themselves for file systems that report no real ctime or inode (some FUSE and object-store
    mounts), where a regenerated file almost always differs near one end. A full hash would be exact
    but reads the whole file on every run (minutes for 10^8 records on a network file system) and is
    rejected. The price: a chmod, a hard link or a copy of an unchanged file rebuilds its cache once.
    """
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, content_stamp(path)[1]]


def content_stamp(path: Path) -> list:
    """[size, sha256 of the first and last MiB]: the bytes alone, so unlike `fingerprint` the same for a
    copy, a move or a chmod of an unchanged file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        digest.update(f.read(SAMPLE_BYTES))
        if size > SAMPLE_BYTES:
            f.seek(max(SAMPLE_BYTES, size - SAMPLE_BYTES))
            digest.update(f.read(SAMPLE_BYTES))
    return [size, digest.hexdigest()]


class CacheEntry:
    """The cache of one (file, kind, bad-record policy) under `root`."""

    def __init__(self, root: str | Path, path: str | Path, kind: str, bad_records: str,
                 sources: list[Path] | None = None, options: dict | None = None, splittable: bool = True,
                 flat_jsonl: bool = False, root_setting: str = "data.cache_dir", schema: dict | None = None):
        """`path` as the user named it (a file or a dataset folder); `sources`: every file the format reads
        (default: `path`); `options`: the reading options (format included); `splittable`: whether the
        file holds one record per line on its own, so byte ranges of it can be built in parallel;
        `flat_jsonl`: whether Arrow's JSON reader may try it first (`formats.arrow_json.applies`);
        `root_setting`: the setting that chose `root`, for messages; `schema`: the records' Arrow features
        (as a dict), so a cache of records without a field since added is never reused."""
        self.source = Path(path).resolve()
        self.kind, self.bad_records, self.splittable, self.flat_jsonl = kind, bad_records, splittable, flat_jsonl
        self.size = self.source.stat().st_size
        stamps = [fingerprint(Path(f)) for f in (sources or [self.source])]
        key = json.dumps([str(self.source), stamps, kind, bad_records, options or {}, FORMAT_VERSION,
                          schema or {}], sort_keys=True)
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.source.stem)[:40]
        self.name = f"{kind}-{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        self.root, self.root_setting = Path(root), root_setting

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def lock(self) -> Path:
        return self.root / f".{self.name}.lock"

    def ready(self) -> bool:
        """Whether the cache is complete and intact."""
        return self.defect() is None

    def defect(self) -> str | None:
        """Why the cache cannot be used as it is (NOT_BUILT when it does not exist), or None when each
        part has the bytes and the rows the manifest says (a part cut exactly at a record-batch boundary
        still opens, with fewer rows). Counting rows reads only the record batches' headers."""
        if not self.dir.exists():
            return NOT_BUILT
        try:
            manifest = self.manifest()
            checks = [(name, manifest["sizes"][name]) for name in manifest["parts"]]
        except FileNotFoundError:
            return "MANIFEST.json is missing"
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"MANIFEST.json is unreadable ({type(e).__name__}: {e})"
        for name, expected in checks:
            try:
                size = (self.dir / name).stat().st_size
            except FileNotFoundError:
                return f"{name} is missing"
            if size != expected["bytes"]:
                return f"{name} has {size} bytes, the manifest says {expected['bytes']}"
            rows = _count_rows(self.dir / name)
            if isinstance(rows, str):
                return f"{name} is {rows}"
            if rows != expected["rows"]:
                return f"{name} holds {rows} rows, the manifest says {expected['rows']}"
        return None

    def manifest(self) -> dict:
        return json.loads((self.dir / "MANIFEST.json").read_text())

    def failure_marker(self, nonce: str) -> Path:
        return self.root / f".{self.name}.failed-{nonce}"

    def load(self):
        """The finished cache as one memory-mapped `datasets.Dataset`, rows in file order, each part's
        rows as the manifest says (rank 0 checked them all just before; this catches a change since)."""
        import datasets
        import pyarrow as pa

        manifest, parts = self.manifest(), []
        for name in manifest["parts"]:
            try:
                part = datasets.Dataset.from_file(str(self.dir / name))
            except (OSError, pa.ArrowException) as e:
                raise UserError(f"{self.source}: the data cache in {self.dir} was damaged while it was opened "
                                f"({name}: {e}); run again to rebuild it") from None
            if len(part) != manifest["sizes"][name]["rows"]:
                raise UserError(f"{self.source}: the data cache in {self.dir} was damaged while it was opened "
                                f"({name} holds {len(part)} rows, the manifest says "
                                f"{manifest['sizes'][name]['rows']}); run again to rebuild it")
            parts.append(part)
        return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)

    # -- rank 0 ------------------------------------------------------------------------------

    def build(self, features, read, num_proc: int, nonce: str, stale_s: float) -> None:
        """Make the cache exist: build it under the lock, or wait for another job's build. On failure,
        leave a marker for this run's waiting ranks (nonce) and raise. A finished cache needs no write
        (a read-only root may hold it); an unusable root is one UserError, with no marker to write."""
        if self.ready():
            return
        check_root(self.root, self.root_setting)
        try:
            while not self.ready():
                if cache_lock.take(self.lock, nonce, stale_s, self.source):
                    try:
                        if (defect := self.defect()) is not None:
                            if defect != NOT_BUILT:
                                log.warning("%s: the data cache in %s is damaged (%s); rebuilding it",
                                            self.source, self.dir, defect)
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
        built = [r for r in results if r["num_rows"]]
        return {"source": str(self.source), "size": self.size, "kind": self.kind, "num_rows": num_rows,
                "num_skipped": skipped, "parts": [r["file"] for r in built],
                "sizes": {r["file"]: {"bytes": r["bytes"], "rows": r["num_rows"]} for r in built},
                "format_version": FORMAT_VERSION}

    def _write_failure(self, nonce: str, error: BaseException) -> None:
        message = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
        try:
            atomic.write_text(self.failure_marker(nonce),
                              json.dumps({"message": message, "user_error": isinstance(error, UserError)}))
        except OSError as e:  # the error itself is raised anyway; the waiting ranks time out instead
            log.warning("could not leave the failure marker for the other ranks: %s", e)

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


def _count_rows(path: Path) -> int | str:
    """The rows of an Arrow stream file, or why it cannot be read (a part cut inside a record batch)."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            return sum(batch.num_rows for batch in pa.ipc.open_stream(source))
    except (OSError, pa.ArrowException) as e:
        return f"unreadable: {e}"
