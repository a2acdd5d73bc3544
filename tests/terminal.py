"""Running the real `logagg` on a pseudo-terminal of a given size, and measuring a run."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LOGAGG = str(Path(sys.executable).parent / "logagg")


@dataclass
class Run:
    code: int
    screen: str  # what the terminal received, line ends as "\n"
    stderr: str  # stderr, when it was a pipe (else it is in `screen`)

    @property
    def plain(self) -> str:
        """The screen without colours and styles."""
        return re.sub(r"\x1b\[[0-9;]*m", "", self.screen)


def _sized_pty(columns: int, rows: int) -> tuple[int, int]:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    return master, slave


def on_terminal(
    *args: str | Path,
    columns: int = 80,
    rows: int = 24,
    env: dict[str, str] | None = None,
    stdin_terminal: bool = False,
    stderr_terminal: bool = False,
    send: Callable[[int, subprocess.Popen[bytes], bytearray], None] | None = None,
    timeout: float = 30,
) -> Run:
    """Run `logagg ARGS` with stdout (and optionally stdin, stderr) on a terminal of
    `columns` x `rows` (COLUMNS and LINES set to match, unless `env` says otherwise).
    `send(master, proc, screen_so_far)` is called as output arrives, to type or signal."""
    master, slave = _sized_pty(columns, rows)
    full_env = {**os.environ, "COLUMNS": str(columns), "LINES": str(rows), "TERM": "xterm"}
    full_env.pop("NO_COLOR", None)
    full_env.update(env or {})
    proc = subprocess.Popen(
        [LOGAGG, *map(str, args)],
        stdin=slave if stdin_terminal else subprocess.DEVNULL,
        stdout=slave,
        stderr=slave if stderr_terminal else subprocess.PIPE,
        env=full_env,
        start_new_session=True,
    )
    os.close(slave)
    screen = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # every writer has gone
                    break
                if not data:
                    break
                screen += data
            if send is not None:
                send(master, proc, screen)
            if not ready and proc.poll() is not None:
                break
        else:
            raise AssertionError(f"logagg {args} did not end in {timeout} s: {screen[-500:]!r}")
        err = proc.stderr.read() if proc.stderr is not None else b""
        code = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
        if proc.stderr is not None:
            proc.stderr.close()
    text = screen.decode("utf-8", "replace").replace("\r\n", "\n")
    return Run(code, text, err.decode("utf-8", "replace"))


def peak_rss_kib(*args: str | Path, env: dict[str, str] | None = None) -> tuple[int, int]:
    """Run `logagg ARGS` with stdout to /dev/null; its exit status and peak RSS in KiB."""
    proc = subprocess.Popen(
        [LOGAGG, *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, int(usage.ru_maxrss)
