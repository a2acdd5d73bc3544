"""The project's exceptions and exit codes: one flat module, no dependencies."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit statuses, the only place they are named."""

    OK = 0
    ERROR = 1  # runtime error: I/O, database
    USAGE = 2  # bad command line
    DATA = 3  # --strict and some lines were rejected
    INTERRUPTED = 130  # SIGINT
    TERMINATED = 143  # SIGTERM


class LogaggError(Exception):
    """An error the user can act on; its message is one line and it maps to an exit code."""

    exit_code: ExitCode = ExitCode.ERROR


class StoreError(LogaggError):
    """The store cannot be opened, read or written."""


class SchemaVersionError(StoreError):
    """The store was written by a newer logagg (or is not a logagg store)."""


class SourceError(LogaggError):
    """An input cannot be opened or read (missing, a directory, corrupt compression)."""


class OutputClosed(LogaggError):
    """Standard output was closed by the program reading it."""


class UsageError(LogaggError):
    """A command-line value is invalid in a way the option parser cannot see."""

    exit_code = ExitCode.USAGE
