"""Paging a listing on a terminal, as git does: through $PAGER (default `less -R`), with
LESS=FRX when LESS is not set, so that output shorter than the screen is simply printed.

While the pager runs, file descriptor 1 is its input; when it ends, the terminal is
stdout again. A pager quit early makes the next write fail as a closed output (a quiet
end, status 0); logagg always waits for the pager to end before it does, also after
Ctrl-C, so the shell prompt never lands in the middle of the pager's screen.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

from logagg.errors import LogaggError

DEFAULT_PAGER = "less -R"


def pager_command() -> str | None:
    """The pager to use: $PAGER, else `less -R`; None when $PAGER is empty or `cat`."""
    command = os.environ.get("PAGER", DEFAULT_PAGER).strip()
    return None if command in ("", "cat") else command


@contextlib.contextmanager
def paged(enabled: bool) -> Iterator[None]:
    """While active, stdout goes to the pager (when `enabled` and there is one)."""
    command = pager_command() if enabled else None
    if command is None:
        yield
        return
    env = {**os.environ}
    env.setdefault("LESS", "FRX")
    env.setdefault("LV", "-c")
    sys.stdout.flush()
    try:
        proc = subprocess.Popen(command, shell=True, stdin=subprocess.PIPE, env=env)
    except OSError:  # no shell to start it with: print as if there were no pager
        yield
        return
    assert proc.stdin is not None
    saved = os.dup(1)
    os.dup2(proc.stdin.fileno(), 1)
    proc.stdin.close()
    try:
        yield
        sys.stdout.flush()
    except BaseException:
        # What the listing still holds is dropped, never written after the pager ends.
        _discard_stdout()
        raise
    finally:
        os.dup2(saved, 1)  # the pipe's last write end closes: the pager reads its end
        os.close(saved)
        _wait(proc)
        if proc.returncode in (126, 127):  # the shell could not find or run it
            raise LogaggError(f"the pager {command!r} could not be run: set PAGER, or --no-pager")


def _discard_stdout() -> None:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    with contextlib.suppress(Exception):
        sys.stdout.flush()


def _wait(proc: subprocess.Popen[bytes]) -> None:
    """Wait for the pager to end; Ctrl-C meanwhile is the pager's (less ignores it)."""
    while True:
        try:
            proc.wait()
            return
        except KeyboardInterrupt:
            continue
