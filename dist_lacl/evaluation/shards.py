"""Embedding shards on disk: the layout `encode` writes and `search` reads, what produced them, and checks.

A directory of embeddings holds, for a world of W ranks and each rank r = 0 .. W-1:

- `emb-<r>-of-<W>.npy`: [n_r, D] float32 or float16 (`storage`), rows [r*N//W, (r+1)*N//W) of the input;
- `ids-<r>-of-<W>.npy`: [n_r] the ids, UTF-8 bytes in a fixed-width `S` array (compact: no Python objects);
- `meta-<r>-of-<W>.json`: tower, dim, storage, rows, and `provenance` (model weights fingerprint, tower,
  prefix, max length, dtype, storage, world size, input file hash). Written last: it marks the shard complete.

While a rank encodes, its rows go to `parts-<r>-of-<W>/part-<start>-<stop>.npy` (each written atomically)
next to `parts-<r>-of-<W>/provenance.json`; a killed job resumes at the first missing row range, and the
parts are concatenated into the shard at the end. Concatenating the shards in rank order gives input order.

Readers never memory-map the embeddings: `NpyRows` reads the requested rows into ordinary memory, so the
resident memory of a search is one block, however large the corpus (mapped file pages would count too).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from .. import atomic
from ..errors import UserError, write_failure

FORMAT = 2
STORAGE = {"fp32": np.float32, "fp16": np.float16}
_META = re.compile(r"meta-(\d+)-of-(\d+)\.json")
_PARTS = re.compile(r"parts-(\d+)-of-(\d+)")
_PART = re.compile(r"part-(\d+)-(\d+)\.npy")


def shard_name(kind: str, rank: int, world_size: int) -> str:
    """`emb`, `ids` -> .npy, `meta` -> .json, `parts` -> the folder of a rank's finished row ranges."""
    suffix = {"emb": ".npy", "ids": ".npy", "meta": ".json", "parts": ""}[kind]
    return f"{kind}-{rank}-of-{world_size}{suffix}"


# --- writing ------------------------------------------------------------------------------------


def write_file(path: Path, write) -> None:
    """`atomic.write_with`, with a storage failure (a full disk) reported as one line naming `path`."""
    def write_or_explain(f):
        try:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # here: a full disk is recognised while the partial file still takes its space
        except BaseException as e:
            failure = write_failure(e, path.parent, str(path))
            if failure is None:
                raise
            raise failure from None

    atomic.write_with(path, write_or_explain)


def write_json(path: Path, obj) -> None:
    write_file(path, lambda f: f.write(json.dumps(obj, ensure_ascii=False, indent=1).encode()))


def ids_array(ids) -> np.ndarray:
    """Ids -> a fixed-width UTF-8 `S` array (NUL-free ids only: numpy strips trailing NULs)."""
    encoded = [i.encode("utf-8") for i in ids]
    if any(b"\0" in b for b in encoded):
        raise UserError("ids: expected ids without NUL characters")
    return np.array(encoded, dtype=f"S{max(map(len, encoded), default=1)}")


def write_shard(out_dir: Path, rank: int, world_size: int, blocks, ids, meta: dict) -> None:
    """Write one complete shard: embeddings streamed from `blocks` ([n_i, D] arrays in row order, cast to
    `meta["storage"]`), the ids, then the meta file (last: it marks the shard complete)."""
    dtype, dim, num_rows = STORAGE[meta["storage"]], meta["dim"], meta["num_rows"]

    def write_emb(f):
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                 "fortran_order": False, "shape": (num_rows, dim)})
        written = 0
        for block in blocks:
            f.write(np.ascontiguousarray(block, dtype=dtype).tobytes())
            written += len(block)
        if written != num_rows:
            raise RuntimeError(f"shard {rank}: {written} rows written, {num_rows} expected")

    write_file(out_dir / shard_name("emb", rank, world_size), write_emb)
    write_file(out_dir / shard_name("ids", rank, world_size), lambda f: np.save(f, ids_array(ids)))
    write_json(out_dir / shard_name("meta", rank, world_size), meta)


# --- provenance -----------------------------------------------------------------------------------


def provenance_differences(found: dict, wanted: dict) -> list[str]:
    """`key: <found> in the directory, <wanted> now` for each setting that differs."""
    return [f"{key}: {found.get(key)!r} in the directory, {wanted.get(key)!r} now"
            for key in wanted.keys() | found.keys() if found.get(key) != wanted.get(key)]


def existing_provenance(out_dir: Path) -> list[tuple[str, int, dict]]:
    """(file name, world size, provenance) of every shard and unfinished shard in `out_dir`.

    Raises UserError for shards this version cannot tell the origin of (an older format's `ids-*.json`).
    """
    found = []
    if not out_dir.is_dir():
        return found
    for path in sorted(out_dir.iterdir()):
        meta, parts = _META.fullmatch(path.name), _PARTS.fullmatch(path.name)
        if meta:
            found.append((path.name, int(meta[2]), read_meta(path)["provenance"]))
        elif parts and (path / "provenance.json").is_file():
            found.append((path.name, int(parts[2]), _read_json(path / "provenance.json")))
        elif re.fullmatch(r"ids-\d+-of-\d+\.json", path.name):
            raise UserError(f"{out_dir}: holds embeddings of an older dist-lacl that did not record what produced "
                            "them; encode into a new --output directory")
    return found


def lock_shard(out_dir: Path, rank: int):
    """An exclusive lock on rank `rank`'s `.lock-<rank>` in `out_dir` (created), or None if another live
    process holds it (another `encode` into the same directory). The kernel releases it when the process
    ends, however it ends, so a killed job never leaves it held; `unlock_shard` removes the file."""
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f".lock-{rank}"
    lock = open(path, "a")  # noqa: SIM115 (held open until unlock_shard)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # A holder that finished removed the file after we opened it: our lock is on a file nobody sees.
        if os.stat(path).st_ino != os.fstat(lock.fileno()).st_ino:
            raise OSError("lock file replaced")
    except OSError:
        lock.close()
        return None
    return lock


def unlock_shard(lock) -> None:
    """Remove the lock file, then release it (in that order, see `lock_shard`); again: nothing."""
    if lock is not None and not lock.closed:
        Path(lock.name).unlink(missing_ok=True)
        lock.close()


def check_directory_fits(out_dir: Path, provenance: dict) -> None:
    """Raise UserError unless every shard already in `out_dir` was made by this very run's settings.

    Never deletes anything: embeddings of another model, other prefixes, dtype, tower, max length,
    input or world size would silently mix with ours (or be kept as if they were ours).
    """
    for name, world_size, found in existing_provenance(out_dir):
        if world_size != provenance["world_size"]:
            raise UserError(f"{out_dir}: holds shards of {world_size} ranks ({name}), this run has "
                            f"{provenance['world_size']}; encode into a new --output directory")
        differences = provenance_differences(found, provenance)
        if differences:
            raise UserError(f"{out_dir}: holds embeddings made differently ({name}: {'; '.join(sorted(differences))}); "
                            "encode into a new --output directory (nothing was changed)")


# --- reading -------------------------------------------------------------------------------------


class NpyRows:
    """Rows of a 2-D (or 1-D) .npy file, read on demand into ordinary memory: `rows[a:b]`, `len(rows)`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with self.path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            shape, fortran, self.dtype = _read_header(f, version)
            self.offset = f.tell()
        if fortran:
            raise UserError(f"{path}: expected a C-ordered array")
        self.shape = shape
        self.row_bytes = self.dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, item: slice) -> np.ndarray:
        start, stop, step = item.indices(len(self))
        if step != 1:
            raise ValueError("NpyRows reads contiguous row ranges only")
        count = max(stop - start, 0)
        with self.path.open("rb") as f:
            f.seek(self.offset + start * self.row_bytes)
            flat = np.fromfile(f, dtype=self.dtype, count=count * self.row_bytes // self.dtype.itemsize)
        return flat.reshape((count, *self.shape[1:]))

    def read_into(self, start: int, out: np.ndarray, staging_rows: int = 16384) -> np.ndarray:
        """Rows [start, start + len(out)) into the C-contiguous array `out`, converted to its dtype; returns `out`.

        Allocates nothing when the dtypes agree, else one staging buffer of `staging_rows` rows: a search
        reuses one block buffer for every block (fresh memory costs a page fault per 4 KiB page, as
        much as the copy itself).
        """
        if start < 0 or start + len(out) > len(self) or out.shape[1:] != self.shape[1:]:
            raise ValueError(f"rows [{start}, {start + len(out)}) of shape {out.shape[1:]} are not in {self.path}")
        with self.path.open("rb", buffering=0) as f:
            f.seek(self.offset + start * self.row_bytes)
            if out.dtype == self.dtype:
                self._read_exactly(f, out)
                return out
            staging = np.empty((min(staging_rows, len(out)), *self.shape[1:]), dtype=self.dtype)
            for a in range(0, len(out), len(staging)):
                rows = staging[:len(out) - a]
                self._read_exactly(f, rows)
                out[a:a + len(rows)] = rows
        return out

    def _read_exactly(self, f, out: np.ndarray) -> None:
        view, done = memoryview(out).cast("B"), 0
        while done < len(view):
            got = f.readinto(view[done:])
            if not got:
                raise UserError(f"{self.path}: the file ends before the rows its header declares; encode again")
            done += got

    def rows_at(self, rows) -> np.ndarray:
        """The rows at the (sorted or not) positions `rows`, one read each: for a few rows of a big file."""
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for i, row in enumerate(rows):
                out[i] = np.frombuffer(os.pread(fd, self.row_bytes, self.offset + int(row) * self.row_bytes),
                                       dtype=self.dtype).reshape(self.shape[1:])
        finally:
            os.close(fd)
        return out


def _read_header(f, version):
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


class Shard:
    """One complete shard: `meta`, `emb` (NpyRows [n, D]) and `ids` (NpyRows [n] of UTF-8 bytes)."""

    def __init__(self, emb_dir: Path, rank: int, world_size: int):
        self.meta = read_meta(emb_dir / shard_name("meta", rank, world_size))
        self.emb = NpyRows(emb_dir / shard_name("emb", rank, world_size))
        self.ids = NpyRows(emb_dir / shard_name("ids", rank, world_size))
        expected = (self.meta["num_rows"], self.meta["dim"])
        if self.emb.shape != expected or len(self.ids) != expected[0]:
            raise UserError(f"{self.emb.path}: shape {self.emb.shape} and {len(self.ids)} ids, but "
                            f"{shard_name('meta', rank, world_size)} says {expected}; encode again into a new directory")

    def id_strings(self, rows) -> list[str]:
        """The ids of local rows `rows` (few), decoded."""
        return [b.decode("utf-8") for b in self.ids.rows_at(rows)]


def open_shards(emb_dir: str | Path, option: str = "embeddings") -> list[Shard]:
    """The complete shards of one `encode` run in `emb_dir`, in rank order (nothing is read but headers).

    Raises UserError naming `option` for a missing directory, no shards, several world sizes, a shard
    not finished, or an older layout.
    """
    emb_dir = Path(emb_dir)
    if not emb_dir.is_dir():
        raise UserError(f"{option} {emb_dir}: " + ("expected a directory of `encode` shards, got a file"
                                                    if emb_dir.exists() else "directory not found"))
    names = [p.name for p in emb_dir.iterdir()]
    if any(re.fullmatch(r"ids-\d+-of-\d+\.json", n) for n in names):
        raise UserError(f"{option} {emb_dir}: embeddings of an older dist-lacl; encode them again")
    world_sizes = {int(m[2]) for n in names if (m := _META.fullmatch(n) or _PARTS.fullmatch(n))}
    if len(world_sizes) != 1:
        found = f"shards of world sizes {sorted(world_sizes)}" if world_sizes else "no meta-*-of-*.json shards"
        raise UserError(f"{option} {emb_dir}: expected the embeddings of one `encode` run, found {found}")
    world_size = world_sizes.pop()
    for rank in range(world_size):
        if not (emb_dir / shard_name("meta", rank, world_size)).is_file():
            raise UserError(f"{option} {emb_dir}: shard {rank} of {world_size} is not finished; run the same "
                            "`encode` again to finish it")
    return [Shard(emb_dir, rank, world_size) for rank in range(world_size)]


def read_meta(path: Path) -> dict:
    meta = _read_json(path)
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: shard format {meta.get('format')!r}, this dist-lacl reads {FORMAT}; encode again")
    return meta


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e}); encode into a new directory") from None


def part_ranges(parts_dir: Path) -> list[tuple[int, int]]:
    """Sorted [start, stop) row ranges (relative to the shard) of the finished parts in `parts_dir`."""
    if not parts_dir.is_dir():
        return []
    return sorted((int(m[1]), int(m[2])) for p in parts_dir.iterdir() if (m := _PART.fullmatch(p.name)))


def part_path(parts_dir: Path, start: int, stop: int) -> Path:
    return parts_dir / f"part-{start:012d}-{stop:012d}.npy"


def missing_ranges(done: list[tuple[int, int]], num_rows: int, part_rows: int) -> list[tuple[int, int]]:
    """The row ranges of [0, num_rows) not in `done` (disjoint, sorted), cut into pieces of <= part_rows."""
    gaps, position = [], 0
    for start, stop in done + [(num_rows, num_rows)]:
        gaps += [(a, min(a + part_rows, start)) for a in range(position, start, part_rows)]
        position = max(position, stop)
    return gaps
