"""User-facing errors: one readable message, a non-zero exit, no traceback (unless --debug)."""

import errno
import os
import shutil


class UserError(Exception):
    """Bad input or configuration that the user can fix. The message names the file, line or field."""

    exit_code = 2


class ConfigError(UserError):
    """An invalid configuration value or key."""


class DataError(UserError):
    """A malformed input record."""

    def __init__(self, path, line: int | None, field: str | None, expected: str):
        where = f"{path}" + (f", line {line}" if line is not None else "")
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{expected}")
        self.path, self.line, self.field = path, line, field


class NoRecords(DataError):
    """A file, or a part of one, without a valid record: the cache decides over the whole file, so it
    tells this apart from the file-level errors (no language in the name, not decompressible)."""


class ResumeRequested(Exception):
    """Training stopped on a signal after checkpointing; the launcher should run the job again."""

    exit_code = 3


class NonFiniteError(Exception):
    """Too many consecutive steps with a non-finite loss or gradient."""

    exit_code = 4


def write_failure(error: BaseException, directory, what: str, note: str = "") -> OSError | None:
    """The OSError (with an errno) to report for a failed write into `directory`, or None if it was not
    a storage problem. torch and numpy report a full disk without an errno ("iostream error",
    "N requested and M written"), so a write that failed while the disk is full counts as ENOSPC.
    Call before cleaning up, while the partial files still take their space."""
    code = getattr(error, "errno", None)
    if not code and isinstance(error, (OSError, RuntimeError)) and shutil.disk_usage(directory).free < 2**20:
        code = errno.ENOSPC
    if not code:
        return None
    return OSError(code, f"{what} was not written ({os.strerror(code)}){note}", str(directory))
