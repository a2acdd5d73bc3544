"""Ctrl-C and SIGTERM as a request to stop, for the commands that finish their work first."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[list[int]]:
    """While active, SIGINT and SIGTERM set `stop` (once; a second one acts as usual).

    Yields a list that receives the signal numbers caught. Main thread only.
    """
    caught: list[int] = []
    watched = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in watched}

    def handler(signum: int, _frame: object) -> None:
        caught.append(signum)
        stop.set()
        for sig in watched:
            signal.signal(sig, previous[sig])

    for sig in watched:
        signal.signal(sig, handler)
    try:
        yield caught
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
