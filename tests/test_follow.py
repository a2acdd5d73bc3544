"""`ingest --follow` with real files and processes: growth, rotation, truncation, restarts."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import check_store, event, logagg_cmd, run_logagg

from logagg.store.sqlite import _V1, SCHEMA_VERSION, SQLiteStore

WAIT = 20.0  # seconds a followed line may take to be committed before the test fails


def append(path: Path, *numbers: int, topic: str = "f") -> None:
    with open(path, "a", encoding="utf-8") as f:
        for n in numbers:
            f.write(json.dumps(event(n, topic=topic)) + "\n")


def stored_ids(db: Path) -> list[str]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        return [row[0] for row in conn.execute("SELECT event_id FROM events ORDER BY rowid")]
    except sqlite3.OperationalError:  # the schema is being created by the follower
        return []
    finally:
        conn.close()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def wait_ids(db: Path, expected: list[str]) -> None:
    wait_for(lambda: sorted(stored_ids(db)) == sorted(expected), f"events {expected}")


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
    assert run_logagg("ingest", "--db", db, "--follow", "-", input=b"").returncode == 2


def test_a_version_1_store_is_migrated_with_its_events(tmp_path: Path, db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.executescript(_V1)
        conn.execute(
            "INSERT INTO events VALUES ('t', 'e1', '2025-01-01T00:00:00.000000Z', 's', '{}',"
            " NULL, '2025-01-01T00:00:00.000000Z')"
        )
        conn.execute(
            "INSERT INTO topics VALUES ('t', 1, '2025-01-01T00:00:00.000000Z',"
            " '2025-01-01T00:00:00.000000Z')"
        )
        conn.execute("UPDATE counters SET received = 1, accepted = 1")
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    with SQLiteStore.open(str(db)) as store:
        assert store.checkpoints() == {}
        assert store.check().ok
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    assert os.path.exists(db)
    assert stored_ids(db) == ["e1"]


@pytest.mark.slow
def test_kill_9_at_random_moments_never_rereads_nor_skips(tmp_path: Path, db: Path) -> None:
    """Checkpoints commit with their rows: after any kill, a restart neither repeats a line
    (no duplicates) nor misses one."""
    seed = int(os.environ.get("LOGAGG_TEST_SEED", "20251124"))
    rng = random.Random(seed)
    log = tmp_path / "app.log"
    total = 40_000
    append(log, *range(total))
    cmd = logagg_cmd(
        "ingest", "--db", db, "--follow", "--batch-size", "500", "--flush-interval", "0.05", log
    )
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.2))
        proc.kill()
        proc.wait(timeout=30)
        kills += 1
        if len(stored_ids(db)) == total:
            break
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(stored_ids(db)) == total, f"all {total} lines (seed {seed})")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    facts = check_store(db)
    assert facts["duplicate_dropped"] == 0, f"a line was read twice (seed {seed}, {kills} kills)"
    assert stored_ids(db) == ids(*range(total)), f"seed {seed}"
