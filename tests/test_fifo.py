"""Named pipes (FIFOs) with real `logagg` processes: a FIFO without a writer never keeps
SIGINT / SIGTERM from stopping the run with its report, and what writers send is read."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import check_store, event, logagg_cmd

PROMPT = 5.0  # seconds within which a signalled run must have exited


def line(n: int) -> bytes:
    return json.dumps(event(n)).encode() + b"\n"


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "events.fifo"
    os.mkfifo(path)
    return path


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def stored_ids(db: Path) -> list[str]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        return [row[0] for row in conn.execute("SELECT event_id FROM events ORDER BY rowid")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def wait_until_reading(proc: subprocess.Popen[bytes]) -> None:
    """Until the run has started its writer thread, the last step before it reads."""

    def threads() -> int:
        with open(f"/proc/{proc.pid}/status") as f:
            return int(next(x for x in f if x.startswith("Threads:")).split()[1])

    deadline = time.monotonic() + 20
    while threads() < 2:
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, "the run did not start reading"
        time.sleep(0.02)


@pytest.mark.parametrize("follow", [False, True], ids=["read", "follow"])
@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"]
)
def test_a_fifo_without_a_writer_answers_the_first_signal(
    fifo: Path,
    db: Path,
    procs: list[subprocess.Popen[bytes]],
    follow: bool,
    sig: int,
    code: int,
) -> None:
    args = ["ingest", "--db", db, *(["-F"] if follow else []), fifo]
    proc = subprocess.Popen(logagg_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(proc)
    wait_until_reading(proc)
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=PROMPT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {PROMPT} s after the first {signal.Signals(sig).name}")
    assert proc.returncode == code, err.decode()
    assert time.monotonic() - sent < PROMPT
    stderr = err.decode()
    assert "received 0" in stderr, stderr  # the report
    assert "Traceback" not in stderr
    check_store(db)


def test_a_fifo_is_read_until_its_writer_closes(fifo: Path, db: Path) -> None:
    proc = subprocess.Popen(
        logagg_cmd("ingest", "--db", db, "--json", fifo),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        with open(fifo, "wb", buffering=0) as writer:  # waits for the reader to open it
            writer.write(line(1))
            time.sleep(0.2)
            writer.write(line(2) + line(3))
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["accepted"] == 3
    assert stored_ids(db) == ["e1", "e2", "e3"]


def test_a_followed_fifo_reads_one_writer_after_another(
    fifo: Path, db: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    proc = subprocess.Popen(
        logagg_cmd("ingest", "--db", db, "-F", "--flush-interval", "0.05", fifo),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    procs.append(proc)
    for numbers in ([1, 2], [3], [4, 5]):
        with open(fifo, "wb", buffering=0) as writer:
            writer.write(b"".join(line(n) for n in numbers))
        deadline = time.monotonic() + 20
        while len(stored_ids(db)) < numbers[-1]:
            assert time.monotonic() < deadline, f"timed out waiting for {numbers}"
            assert proc.poll() is None, proc.communicate()[1].decode()
            time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err.decode()
    assert stored_ids(db) == [f"e{n}" for n in range(1, 6)]
    check_store(db)
