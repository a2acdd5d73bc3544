"""The project's exceptions and exit codes: the only place an exit status is decided."""

from __future__ import annotations

import signal
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit statuses."""

    OK = 0
    ERROR = 1  # runtime error: I/O, database
    USAGE = 2  # bad command line
    DATA = 3  # --strict and some lines were rejected
    INTERRUPTED = 130  # SIGINT
    OUTPUT_CLOSED = 141  # ingest --emit: stdout closed before every event was written
    TERMINATED = 143  # SIGTERM


class LogaggError(Exception):
    """An error the user can act on; its message is one line (or empty: nothing to add)."""

    exit_code: ExitCode = ExitCode.ERROR


class StoreError(LogaggError):
    """The store cannot be opened, read or written."""


class SchemaVersionError(StoreError):
    """The store was written by a newer logagg (or is not a logagg store)."""


class SourceError(LogaggError):
    """An input cannot be opened or read (missing, a directory, corrupt compression)."""


class OutputClosed(LogaggError):
    """Standard output was closed by the program reading it: it took what it wanted.

    Ends a command quietly with status 0 (`logagg events | head -1` under pipefail)."""

    exit_code = ExitCode.OK


class OutputError(LogaggError):
    """Standard output cannot be written: a full disk, an I/O error."""


class EmitClosed(LogaggError):
    """`ingest --emit`: stdout was closed before every committed event was written to it
    (the report is already printed). Status 141, as for a process that SIGPIPE ended."""

    exit_code = ExitCode.OUTPUT_CLOSED


class UsageError(LogaggError):
    """A command-line value is invalid in a way the option parser cannot see."""

    exit_code = ExitCode.USAGE


class Unhealthy(LogaggError):
    """`check` found problems (already reported)."""


class InputErrors(LogaggError):
    """Some inputs could not be read (already reported); the others were."""


class Rejected(LogaggError):
    """`--strict` and some lines were rejected (already reported)."""

    exit_code = ExitCode.DATA


class Interrupted(LogaggError):
    """A signal stopped the command after it finished cleanly (report already printed)."""

    def __init__(self, signum: int) -> None:
        super().__init__("")
        self.signum = signum

    @property
    def exit_code(self) -> ExitCode:  # type: ignore[override]
        return ExitCode.INTERRUPTED if self.signum == signal.SIGINT else ExitCode.TERMINATED


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit status of a command that ended with `exc`."""
    if isinstance(exc, LogaggError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    return ExitCode.ERROR
