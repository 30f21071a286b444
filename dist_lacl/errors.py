"""User-facing errors: one readable message, a non-zero exit, no traceback (unless --debug)."""


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


class ResumeRequested(Exception):
    """Training stopped on a signal after checkpointing; the launcher should run the job again."""

    exit_code = 3


class NonFiniteError(Exception):
    """Too many consecutive steps with a non-finite loss or gradient."""

    exit_code = 4
