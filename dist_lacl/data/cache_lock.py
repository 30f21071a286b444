"""The lock of a cache build: a folder made by mkdir, its owner, a heartbeat, progress, and stale takeover.

  .<name>.lock/  owner.json (host, pid, run nonce), heartbeat (touched every HEARTBEAT_S seconds),
                 progress.json (parts done)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

from .. import atomic

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0


def take(lock: Path, nonce: str, stale_s: float, source: Path) -> bool:
    """Whether this process now holds `lock`. A lock whose heartbeat stopped stale_s ago is cleared
    (this call still returns False: the caller retries, competing fairly with any other taker)."""
    try:
        lock.mkdir()
    except FileExistsError:
        age = heartbeat_age(lock)
        if age is not None and age > stale_s:
            log.warning("%s: the build holding %s stopped %.0f s ago; taking it over", source, lock, age)
            clear(lock)
        return False
    atomic.write_text(lock / "owner.json", json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                       "nonce": nonce}))
    (lock / "heartbeat").touch()
    return True


def clear(lock: Path) -> None:
    """Remove an abandoned lock: renamed away first, so that of two processes clearing it only one
    succeeds and neither removes a lock a third has just taken."""
    trash = lock.parent / f".stale-{uuid.uuid4().hex}"
    try:
        lock.rename(trash)
    except OSError:
        return  # another process cleared it first
    shutil.rmtree(trash, ignore_errors=True)


def release(lock: Path) -> None:
    shutil.rmtree(lock, ignore_errors=True)


def heartbeat_age(lock: Path) -> float | None:
    """Seconds since the builder last showed life (the lock's own age before its first beat); None
    when no build holds the lock."""
    for path in (lock / "heartbeat", lock):
        try:
            return time.time() - path.stat().st_mtime
        except FileNotFoundError:
            continue
    return None


def write_progress(lock: Path, parts_done: int, parts: int) -> None:
    atomic.write_text(lock / "progress.json", json.dumps({"parts_done": parts_done, "parts": parts}))


def progress(lock: Path) -> str:
    """The build's progress, in words, for the waiting ranks' log."""
    try:
        p = json.loads((lock / "progress.json").read_text())
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
