"""Where commands write: checked before any long work, published atomically, never over the user's files.

Rules shared by every command that writes a file or a folder:
- an output may not be one of the command's inputs, nor a folder that contains one;
- an existing output file is replaced only with `--overwrite`;
- an existing folder is written into only if it is empty, or, with `--overwrite`, if it holds nothing but
  a previous output of the same kind (its `marker` file lists what we wrote there) - so `--output .`,
  `--output ~` or `--output <run dir>` are refused, never emptied;
- folders are built under a fresh temporary name next to the target and renamed into place (`atomic`);
- a folder that a command keeps writing into for a while (a run directory, mine's work directory) is held
  by a `FolderLock`, so a second command into it is refused instead of mixing the two.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from .errors import UserError

Inputs = Iterable["str | Path | None | tuple[str, str | Path | None]"]
"""A command's inputs: paths, or (option, path) pairs so that a refusal names the option."""


def check_output_file(path: str | Path, option: str, inputs: Inputs = (),
                      overwrite: bool = False) -> Path:
    """`path` resolved, if a file may be written there; else UserError naming `option`."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; expected a file name")
    check_not_an_input(path, option, inputs)
    if path.exists() and not overwrite:
        raise UserError(f"{option} {path}: already exists; pass --overwrite to replace it, or choose a new name")
    check_parent_writable(path, option)
    return path


def check_output_dir(path: str | Path, option: str, marker: str, inputs: Inputs = (),
                     overwrite: bool = False) -> Path:
    """`path` resolved, if a folder of this kind (identified by its `marker` file) may be written there."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: is a file; expected a folder")
    check_not_an_input(path, option, inputs)
    if path.is_dir() and any(path.iterdir()):
        if not (path / marker).is_file():
            raise UserError(f"{option} {path}: the folder is not empty and is not a previous output of this "
                            f"command (no {marker}); choose a new or empty folder - nothing was changed")
        if not overwrite:
            raise UserError(f"{option} {path}: holds a previous output; pass --overwrite to replace it, or "
                            f"choose a new folder")
        extra = sorted(set(os.listdir(path)) - set(written_by_us(path, marker)))
        if extra:
            raise UserError(f"{option} {path}: holds files this command did not write ({', '.join(extra[:3])}); "
                            "move them away or choose a new folder - nothing was changed")
    check_parent_writable(path, option)
    return path


def written_by_us(folder: Path, marker: str) -> list[str]:
    """Top-level names a previous output recorded in its marker (plus the marker itself)."""
    try:
        names = json.loads((folder / marker).read_text()).get("written", [])
    except (OSError, ValueError, AttributeError):
        names = []
    return [*names, marker] if isinstance(names, list) else [marker]


def check_not_an_input(path: str | Path, option: str, inputs: Inputs) -> None:
    """UserError if `path` is one of `inputs` (in any spelling: relative, `a/../x`, a symlink or a hard
    link to it) or a folder containing one; `--overwrite` never allows it, the input would be destroyed."""
    path = Path(path).expanduser()
    target = path.resolve()
    for given in inputs:
        name, given = given if isinstance(given, tuple) else (None, given)
        if given is None or given == "":
            continue
        source = Path(given).expanduser()
        same = target == source.resolve() or _same_file(path, source)
        if same or target in source.resolve().parents:
            what = (f"{'is also' if same else 'contains'} {name} ({given})" if name
                    else f"is (or contains) the input {given}")
            raise UserError(f"{option} {path}: {what}; choose another output (nothing was written)")


def _same_file(a: Path, b: Path) -> bool:
    """One file under two names (a hard link); False when either is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_parent_writable(path: Path, option: str) -> None:
    """The nearest existing folder above `path` must be a writable folder."""
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{option} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{option} {path}: {parent} is not writable")


class FolderLock:
    """An exclusive lock on `<folder>/.lock`, held by one process (rank 0 of a launch) for a whole command.
    The kernel releases it when the process ends, however it ends, so a crash never leaves a folder locked."""

    NAME = ".lock"
    """The lock file in the folder: the holder's host and pid, for a refused second command to name."""

    def __init__(self, folder: Path, option: str, command: str):
        import fcntl
        import secrets
        import socket

        self.file = open(folder / self.NAME, "a+")  # noqa: SIM115 (held open for the process's life)
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise UserError(f"{option}: {folder} is in use by another {command} ({holder}); wait for "
                            f"it to finish, or choose another {option}") from None
        self.token = f"{socket.gethostname()} pid {os.getpid()} {secrets.token_hex(4)}"
        self.file.seek(0)
        self.file.truncate()
        self.file.write(self.token + "\n")
        self.file.flush()
