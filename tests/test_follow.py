"""`ingest --follow` with real files and processes: growth, rotation, truncation, restarts."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import check_store, event, logagg_cmd, run_logagg
from helpers import WAIT, accepted_count, event_count, seed_from_env, stored_ids, wait_until


def append(path: Path, *numbers: int, topic: str = "f") -> None:
    with open(path, "a", encoding="utf-8") as f:
        for n in numbers:
            f.write(json.dumps(event(n, topic=topic)) + "\n")


def wait_ids(db: Path, expected: list[str]) -> None:
    """Wait until the store holds exactly the events `expected` (in any order)."""
    wait_until(lambda: sorted(stored_ids(db)) == sorted(expected), WAIT, f"the events {expected}")


@pytest.fixture
def follower(db: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*paths: Path) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            logagg_cmd("ingest", "--db", db, "--follow", "--flush-interval", "0.05", *paths),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def ids(*numbers: int) -> list[str]:
    return [f"e{n}" for n in numbers]


def test_follows_growth_of_two_files_and_one_that_appears_later(
    tmp_path: Path, db: Path, follower: Callable[..., subprocess.Popen[bytes]]
) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    append(a, 1, 2)
    proc = follower(a, b)
    wait_ids(db, ids(1, 2))
    append(a, 3)
    append(b, 10, 11)
    wait_ids(db, ids(1, 2, 3, 10, 11))
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    check_store(db)


def test_rotation_reads_the_old_file_to_its_end_then_the_new_one(
    tmp_path: Path, db: Path, follower: Callable[..., subprocess.Popen[bytes]]
) -> None:
    log = tmp_path / "app.log"
    append(log, 1)
    proc = follower(log)
    wait_ids(db, ids(1))
    log.rename(tmp_path / "app.log.1")
    append(tmp_path / "app.log.1", 2)  # written by the producer before it reopened
    append(log, 3)
    wait_ids(db, ids(1, 2, 3))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    check_store(db)


def test_truncation_starts_again_from_the_top(
    tmp_path: Path, db: Path, follower: Callable[..., subprocess.Popen[bytes]]
) -> None:
    log = tmp_path / "app.log"
    append(log, 1, 2)
    proc = follower(log)
    wait_ids(db, ids(1, 2))
    log.write_text("")
    append(log, 3)  # shorter than before
    wait_ids(db, ids(1, 2, 3))
    log.write_text("")
    append(log, 4, 5)  # as long as before: noticed by its changed start
    wait_ids(db, ids(1, 2, 3, 4, 5))
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)


def test_restart_after_kill_continues_where_the_committed_data_ends(
    tmp_path: Path, db: Path, follower: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """No line is read twice (no duplicates) and none is skipped (no gap)."""
    log = tmp_path / "app.log"
    append(log, *range(0, 50))
    first = follower(log)
    wait_ids(db, ids(*range(0, 50)))
    first.kill()
    first.wait(timeout=30)
    append(log, *range(50, 80))
    second = follower(log)
    wait_ids(db, ids(*range(0, 80)))
    second.send_signal(signal.SIGINT)
    second.wait(timeout=30)
    facts = check_store(db)
    assert facts["duplicate_dropped"] == 0, "lines before the checkpoint were read again"
    assert stored_ids(db) == ids(*range(0, 80)), "input order kept, nothing missing"
    with sqlite3.connect(db) as conn:
        path, offset, line = conn.execute("SELECT path, offset, line FROM checkpoints").fetchone()
    conn.close()
    assert (path, offset, line) == (str(log), log.stat().st_size, 80)


def test_a_partial_last_line_waits_for_its_newline(
    tmp_path: Path, db: Path, follower: Callable[..., subprocess.Popen[bytes]]
) -> None:
    log = tmp_path / "app.log"
    append(log, 1)
    line = json.dumps(event(2)).encode()
    with open(log, "ab") as f:
        f.write(line[:20])
    proc = follower(log)
    wait_ids(db, ids(1))
    with open(log, "ab") as f:
        f.write(line[20:] + b"\n")
    wait_ids(db, ids(1, 2))
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert check_store(db)["invalid"] == 0


def test_follow_with_stdin_is_a_usage_error(db: Path) -> None:
    proc = run_logagg("ingest", "--db", db, "--follow", "-", input=b"")
    assert proc.returncode == 2
    assert proc.stderr == (
        b"logagg: error: --follow reads files: name them (stdin is followed anyway)\n"
    )
    assert not db.exists()


@pytest.mark.slow
def test_kill_9_at_random_moments_never_rereads_nor_skips(tmp_path: Path, db: Path) -> None:
    """Checkpoints commit with their rows: after any kill, a restart neither repeats a line
    (no duplicates) nor misses one. Each follower is killed once the store holds a random
    number of rows (10 to 30 % of the file) beyond what the last one left."""
    seed = seed_from_env(20251124)
    rng = random.Random(seed)
    log = tmp_path / "app.log"
    total = 40_000
    append(log, *range(total))
    cmd = logagg_cmd(
        "ingest", "--db", db, "--follow", "--batch-size", "500", "--flush-interval", "0.05", log
    )
    history: list[str] = []
    stopped_at: list[int] = []
    for kills in range(1, 4):
        target = min(accepted_count(db) + int(rng.uniform(0.1, 0.3) * total), total - 1)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(
                lambda t=target: accepted_count(db) >= t,
                60,
                f"{target} rows before kill {kills} (seed {seed})",
            )
        finally:
            proc.kill()
            proc.wait(timeout=30)
        stopped_at.append(event_count(db))
        history.append(f"kill {kills} at {target} rows: {stopped_at[-1]} stored")
    trail = f"seed {seed}: " + "; ".join(history)
    assert min(stopped_at) < total, f"no kill landed before the end ({trail})"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: accepted_count(db) == total, 60, f"all {total} lines ({trail})")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    facts = check_store(db)
    assert facts["duplicate_dropped"] == 0, f"a line was read twice ({trail})"
    assert stored_ids(db) == ids(*range(total)), trail
