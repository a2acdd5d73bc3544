"""The process's standard streams, and data shown to people as text.

`guard_streams` runs once, in the console entry point, before any command:

- a standard descriptor (0, 1, 2) that is not open is opened on /dev/null, so that no
  file the command opens (the store) can become "stdout" and receive its output;
- `sys.stdout` is put over a thin layer that turns a failed write into the project's
  errors: the reader closed the pipe -> `OutputClosed` (a quiet end, status 0, or 141 for
  `ingest --emit`), anything else (a full disk) -> `OutputError("stdout: <reason>")`. A
  stdout that was closed when logagg started counts as closed by its reader. After the
  first failure further writes are dropped, so the interpreter's last flush is quiet.

`printable` is how data reaches a terminal (tables, reject messages, error lines):
control characters are shown escaped, never sent to the terminal.
"""

from __future__ import annotations

import io
import os
import re
import select
import sys

from logagg.errors import LogaggError, OutputClosed, OutputError

# C0 and C1 controls, DEL, line and paragraph separators, the bidirectional controls that
# reorder what a terminal shows, and lone surrogates (undecodable bytes of a file name).
_CONTROLS = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: str) -> str:
    """`text` with every control character shown as an escape (`\\x1b`, `\\n`, `\\u202e`)."""
    return _CONTROLS.sub(_escape, text)


class _GuardedStdout(io.RawIOBase):
    """File descriptor 1, whose write failures become OutputClosed / OutputError."""

    def __init__(self, fd: int, closed_at_start: bool) -> None:
        super().__init__()
        self._fd = fd
        self._pending: LogaggError | None = OutputClosed("") if closed_at_start else None
        self.failure: LogaggError | None = None

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return self._pending is None and os.isatty(self._fd)

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        size = len(data)
        if self.failure is not None:  # already reported to whoever wrote first: drop
            return size
        if self._pending is not None:
            self.failure, self._pending = self._pending, None
            raise self.failure
        while True:
            try:
                return os.write(self._fd, data)
            except BlockingIOError:  # a non-blocking pipe shared with another program
                select.select([], [self._fd], [])
            except BrokenPipeError:
                self.failure = OutputClosed("")
                raise self.failure from None
            except OSError as exc:
                self.failure = OutputError(f"stdout: {exc.strerror or exc}")
                raise self.failure from None


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def guard_streams() -> None:
    """Make descriptors 0-2 safe and stdout's failures the project's errors (see above)."""
    stdout_closed = not _is_open(1)
    for fd, flags in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        if not _is_open(fd):
            opened = os.open(os.devnull, flags)
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
    if sys.stdin is None:
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    old = sys.stdout
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(_GuardedStdout(1, stdout_closed), buffer_size=1 << 16),
        encoding=getattr(old, "encoding", None) or "utf-8",
        errors=getattr(old, "errors", None) or "strict",
        line_buffering=bool(getattr(old, "line_buffering", False)),
    )
