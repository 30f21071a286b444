"""Atomic writes: every file and folder dist-lacl writes appears whole or not at all.

A file is written to a unique temporary name beside its target, flushed to disk and renamed over it;
a folder is built under a temporary name and swapped in. A crash at any point leaves either the old
version or the new one, never a mix, and never removes what was there before the new one is in place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_UMASK = os.umask(0o022)  # read once, at import (os.umask can only be read by setting it)
os.umask(_UMASK)


def write_with(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` through `write(binary_file)`: a temporary name in the same directory, fsync, rename.
    On any failure (a full disk, Ctrl-C) the temporary file is removed and the error re-raised."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would differ from a plain open()'s
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    """`data` to `path`, atomically."""
    write_with(path, lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> None:
    """`text` (UTF-8, newlines as given) to `path`, atomically."""
    write_bytes(path, text.encode("utf-8"))


def new_temp_dir(path: str | Path) -> Path:
    """A fresh, uniquely named folder beside `path` (never an existing one: nothing of the user's is
    reused), its parents created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    tmp.chmod(0o777 & ~_UMASK)  # mkdtemp's 0700 would differ from a plain mkdir()'s (shared caches)
    return tmp


def publish_dir(tmp: str | Path, path: str | Path) -> Path:
    """Move the finished folder `tmp` to `path`. An empty folder at `path` is replaced by the rename; a
    non-empty one (its owner already checked by the caller) is moved aside first and deleted only once
    the new one is in place, so a crash in between still leaves one complete copy."""
    tmp, path = Path(tmp), Path(path)
    old = None
    if path.is_dir() and any(path.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.rename(path, old / path.name)
    elif path.is_dir():
        path.rmdir()
    os.rename(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def discard(tmp: str | Path) -> None:
    """Remove a temporary folder this process created (after a failure)."""
    shutil.rmtree(tmp, ignore_errors=True)
