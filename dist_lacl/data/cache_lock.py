"""The lock of a cache build: a folder made by mkdir, its owner, a heartbeat, progress, and takeover.

  .<name>.lock/  owner.json (host, boot id, pid namespace, pid and its start time, run nonce),
                 heartbeat (touched every HEARTBEAT_S seconds), progress.json (parts done)
A lock is taken over at once when its owner certainly died (same host and pid namespace, the pid gone
or reused, or the host rebooted), else when its heartbeat stopped for stale_s.
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
    """Whether this process now holds `lock`. An abandoned lock (`abandoned`) is cleared and taken at
    once, unless another taker clears or takes it first."""
    for _ in range(2):
        try:
            lock.mkdir()
            break
        except FileExistsError:
            if (why := abandoned(lock, stale_s)) is None:
                return False
            log.warning("%s: the build holding %s %s; taking it over", source, lock, why)
            clear(lock)
    else:
        return False
    owner = {**_identity(), "pid": os.getpid(), "start": (_proc(os.getpid()) or ("", None))[1], "nonce": nonce}
    atomic.write_text(lock / "owner.json", json.dumps(owner))
    (lock / "heartbeat").touch()
    return True


def abandoned(lock: Path, stale_s: float) -> str | None:
    """Why no process is building under `lock` any more, or None: its owner is gone (`owner_gone`),
    or its heartbeat stopped stale_s ago."""
    if (gone := owner_gone(lock)) is not None:
        return f"is gone ({gone})"
    age = heartbeat_age(lock)
    return f"stopped {age:.0f} s ago" if age is not None and age > stale_s else None


def _identity() -> dict:
    """Where this process runs: host, boot (a reboot ends every build) and pid namespace (a pid means
    something only inside its namespace: containers may share a host name)."""
    def read(path: str) -> str | None:
        try:
            return os.readlink(path) if path.startswith("/proc/self/ns") else Path(path).read_text().strip()
        except OSError:
            return None
    return {"host": socket.gethostname(), "boot": read("/proc/sys/kernel/random/boot_id"),
            "pid_ns": read("/proc/self/ns/pid")}


def _proc(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, or None where /proc does not show it.
    The start time tells a reused pid apart; state Z is a dead process its parent has not reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


def owner_gone(lock: Path) -> str | None:
    """Why the process that holds `lock` certainly no longer runs, or None when that cannot be told
    here (another host or pid namespace, no owner written yet: the heartbeat decides then)."""
    try:
        owner = json.loads((lock / "owner.json").read_text())
    except (OSError, ValueError):
        return None
    me = _identity()
    if owner.get("host") != me["host"] or owner.get("pid_ns") != me["pid_ns"] or me["pid_ns"] is None:
        return None
    if owner.get("boot") != me["boot"]:
        return "this host restarted since"
    pid = owner.get("pid")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"pid {pid} on this host is not running"
    except PermissionError:
        pass  # a process of another user: perhaps the pid reused
    except (OSError, TypeError):
        return None
    proc = _proc(pid)
    if proc is not None and proc[0] == "Z":
        return f"pid {pid} on this host has exited"
    if proc is not None and owner.get("start") not in (None, proc[1]):
        return f"pid {pid} on this host is another process now"
    return None


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
