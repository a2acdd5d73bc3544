"""`ingest --follow` at its edges, with real files and real `logagg` processes: lines written
to a rotated file after the new one appeared, a rotated file's half-written last line, a
file rewritten while logagg was stopped (copytruncate, an inode used again), a store of an
older schema, and paths that cannot be read for a while."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from conftest import check_store, event, logagg_cmd

from logagg.models import Checkpoint, encode_rows, event_from_fields
from logagg.store.sqlite import SCHEMA_VERSION

WAIT = 20.0  # seconds a followed line may take to be committed before the test fails

Follower = Callable[..., subprocess.Popen[bytes]]


def line(n: int, topic: str = "f") -> bytes:
    return json.dumps(event(n, topic=topic)).encode() + b"\n"


def append(path: Path, *numbers: int, topic: str = "f") -> None:
    with open(path, "ab") as f:
        f.write(b"".join(line(n, topic) for n in numbers))


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


def counter(db: Path, name: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute(f"SELECT {name} FROM counters").fetchone()[0])
    finally:
        conn.close()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def ids(*numbers: int) -> list[str]:
    return [f"e{n}" for n in numbers]


def wait_ids(db: Path, expected: Sequence[str]) -> None:
    want = sorted(expected)
    try:
        wait_for(lambda: sorted(stored_ids(db)) == want, f"{len(want)} events")
    except AssertionError:
        got = stored_ids(db)
        missing = [x for x in want if x not in got]
        extra = [x for x in got if x not in want]
        raise AssertionError(
            f"{len(missing)} of {len(want)} events missing: {missing}"
            f"{f'; unexpected: {extra}' if extra else ''}"
        ) from None


@pytest.fixture
def follower(db: Path) -> Iterator[Follower]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(
        *paths: Path,
        options: Sequence[str] = (),
        preexec: Callable[[], None] | None = None,
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            logagg_cmd("ingest", "--db", db, "-F", "--flush-interval", "0.05", *options, *paths),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=preexec,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> str:
    """Stop a follower with `sig`; its stderr. It must exit as the signal says."""
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err.decode()
    return err.decode()


# --- rotation -----------------------------------------------------------------------------


def test_lines_written_to_a_renamed_file_after_the_new_one_was_seen_are_read(
    tmp_path: Path, db: Path, follower: Follower
) -> None:
    """The application keeps writing to its open file after the rename, and logagg has
    already moved on to the new file: those lines are still read (--rotate-wait)."""
    log = tmp_path / "app.log"
    app = open(log, "ab", buffering=0)  # noqa: SIM115 - the application's own handle
    try:
        app.write(b"".join(line(n) for n in range(20)))
        proc = follower(log)
        wait_ids(db, ids(*range(20)))
        log.rename(tmp_path / "app.log.1")
        append(log, 1000)  # the new file: once stored, logagg has seen it
        wait_ids(db, ids(*range(20), 1000))
        for n in range(20, 40):  # the application has not reopened yet
            app.write(line(n))
            time.sleep(0.01)
    finally:
        app.close()
    append(log, *range(40, 60))  # now it has
    wait_ids(db, ids(*range(60), 1000))
    stop(proc, signal.SIGTERM)
    facts = check_store(db)
    assert (facts["duplicate_dropped"], facts["invalid"]) == (0, 0)


def test_a_half_written_last_line_of_a_rotated_file_is_completed_not_rejected(
    tmp_path: Path, db: Path, follower: Follower
) -> None:
    log = tmp_path / "app.log"
    second = line(2)
    app = open(log, "ab", buffering=0)  # noqa: SIM115 - the application's own handle
    try:
        app.write(line(1) + second[:25])
        proc = follower(log)
        wait_ids(db, ids(1))
        log.rename(tmp_path / "app.log.1")
        append(log, 1000)
        wait_ids(db, ids(1, 1000))
        app.write(second[25:])
    finally:
        app.close()
    wait_ids(db, ids(1, 2, 1000))
    stop(proc)
    assert check_store(db)["invalid"] == 0


def _open_paths(pid: int) -> set[str]:
    paths = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            paths.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return paths


def test_a_rotated_file_is_read_until_quiet_for_rotate_wait_then_let_go(
    tmp_path: Path, db: Path, follower: Follower
) -> None:
    """Growth restarts the grace period; a last line without a newline is taken as the
    file's last line when the grace period ends."""
    log, old = tmp_path / "app.log", tmp_path / "app.log.1"
    append(log, 1)
    proc = follower(log, options=["--rotate-wait", "2"])
    wait_ids(db, ids(1))
    log.rename(old)
    append(log, 1000)
    wait_ids(db, ids(1, 1000))
    for n in range(2, 8):  # growth every 0.5 s keeps it open past the first two seconds
        time.sleep(0.5)
        append(old, n)
    with open(old, "ab") as f:
        f.write(line(8).rstrip(b"\n"))  # complete JSON, no newline
    wait_ids(db, ids(*range(1, 9), 1000))
    wait_for(lambda: str(old) not in _open_paths(proc.pid), "the rotated file to be closed", 10)
    append(old, 9)  # after the grace period: no longer read
    append(log, 1001)
    wait_ids(db, ids(*range(1, 9), 1000, 1001))
    stop(proc)
    assert "e9" not in stored_ids(db)


# --- rewritten while logagg was stopped ------------------------------------------------------


def test_restart_after_copytruncate_and_regrowth_reads_the_new_content_from_the_top(
    tmp_path: Path, db: Path, follower: Follower
) -> None:
    log = tmp_path / "app.log"
    append(log, *range(50))
    proc = follower(log)
    wait_ids(db, ids(*range(50)))
    stop(proc)
    inode = log.stat().st_ino
    shutil.copyfile(log, tmp_path / "app.log.1")  # copytruncate, while logagg is stopped
    with open(log, "r+b") as f:
        f.truncate(0)
    append(log, *range(1000, 1150))  # more than before: the old offset is inside it
    assert log.stat().st_ino == inode
    proc = follower(log)
    wait_ids(db, ids(*range(50), *range(1000, 1150)))
    stop(proc)
    assert check_store(db)["duplicate_dropped"] == 0


def test_restart_after_delete_and_recreate_with_the_same_inode_reads_from_the_top(
    tmp_path: Path, db: Path, follower: Follower
) -> None:
    log = tmp_path / "app.log"
    append(log, *range(50))
    proc = follower(log)
    wait_ids(db, ids(*range(50)))
    stop(proc)
    inode = log.stat().st_ino
    log.unlink()
    for k in range(500):  # a file system that hands the inode out again (ext4 does)
        new = tmp_path / f"new-{k}"  # the ones with other inodes are kept, so it moves on
        new.touch()
        if new.stat().st_ino == inode:
            append(new, *range(1000, 1150))
            new.rename(log)
            break
    else:
        pytest.skip("this file system did not reuse the inode")
    proc = follower(log)
    wait_ids(db, ids(*range(50), *range(1000, 1150)))
    stop(proc)
    assert check_store(db)["duplicate_dropped"] == 0


# --- the checkpoint's fingerprint column ---------------------------------------------------

# The schema of version 2, as logagg wrote it before checkpoints had a fingerprint.
_V2_STORE = """
CREATE TABLE events (
    topic TEXT NOT NULL, event_id TEXT NOT NULL, timestamp TEXT NOT NULL,
    source TEXT NOT NULL, payload TEXT NOT NULL, extra TEXT, ingested_at TEXT NOT NULL,
    PRIMARY KEY (topic, event_id)
);
CREATE INDEX events_topic_time ON events (topic, timestamp);
CREATE TABLE topics (
    topic TEXT PRIMARY KEY, events INTEGER NOT NULL,
    first_timestamp TEXT NOT NULL, last_timestamp TEXT NOT NULL
);
CREATE TABLE counters (
    id INTEGER PRIMARY KEY CHECK (id = 1), received INTEGER NOT NULL,
    accepted INTEGER NOT NULL, duplicates INTEGER NOT NULL, invalid INTEGER NOT NULL
);
INSERT INTO counters VALUES (1, 0, 0, 0, 0);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE checkpoints (
    path TEXT PRIMARY KEY, device INTEGER NOT NULL, inode INTEGER NOT NULL,
    offset INTEGER NOT NULL, line INTEGER NOT NULL, updated_at TEXT NOT NULL
);
PRAGMA user_version = 2;
"""


def test_a_version_2_store_is_migrated_on_open_and_following_continues(
    tmp_path: Path, db: Path, follower: Follower
) -> None:
    """A checkpoint written before fingerprints existed is trusted as before (device,
    inode, size): the follower continues after it, and the next checkpoint has one."""
    log = tmp_path / "app.log"
    append(log, *range(50))
    st = log.stat()
    conn = sqlite3.connect(db)
    conn.executescript(_V2_STORE)
    conn.execute(
        "INSERT INTO checkpoints VALUES (?, ?, ?, ?, 50, '2025-01-01T00:00:00.000000Z')",
        (str(log), st.st_dev, st.st_ino, st.st_size),
    )
    conn.commit()
    conn.close()
    proc = follower(log)
    append(log, *range(50, 60))
    wait_ids(db, ids(*range(50, 60)))  # not the 50 before the checkpoint
    stop(proc)
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        offset, line_no, head = conn.execute(
            "SELECT offset, line, head FROM checkpoints WHERE path = ?", (str(log),)
        ).fetchone()
    finally:
        conn.close()
    assert (offset, line_no) == (log.stat().st_size, 60)
    assert head and log.read_bytes().startswith(head)
    check_store(db)


def test_a_version_1_postgres_store_is_migrated_and_keeps_fingerprints(pg_url: str) -> None:
    import psycopg

    from logagg.store import postgres as pgstore
    from logagg.store.postgres import PostgresStore

    url = pg_url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(pgstore.MIGRATIONS[0])  # type: ignore[arg-type]
        conn.execute("INSERT INTO logagg_meta VALUES ('schema_version', '1')")
        conn.execute("INSERT INTO checkpoints VALUES ('/var/log/old.log', 1, 2, 30, 3, 'then')")
    with PostgresStore.open(url) as store:
        assert store.checkpoints() == {
            "/var/log/old.log": Checkpoint("/var/log/old.log", 1, 2, 30, 3, None)
        }
        row = event_from_fields(**event(1))
        mark = Checkpoint("/var/log/a.log", 1, 2, 300, 4, b"\x00{head}\xff")
        store.write_rows([encode_rows([row])], checkpoints=[mark])
        assert store.checkpoints()[mark.path] == mark
    with psycopg.connect(url, autocommit=True) as conn:
        version = conn.execute(
            "SELECT value FROM logagg_meta WHERE key = 'schema_version'"
        ).fetchone()
    assert version == (str(pgstore.SCHEMA_VERSION),)


# --- paths that cannot be read ---------------------------------------------------------------


def test_a_directory_at_a_followed_path_is_reported_once_and_retried(
    tmp_path: Path, db: Path, follower: Follower
) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    append(a, 1)
    b.mkdir()
    proc = follower(a, b)
    wait_ids(db, ids(1))
    for n in range(2, 7):  # several polls pass; the other file is followed meanwhile
        time.sleep(0.2)
        append(a, n)
        wait_ids(db, ids(*range(1, n + 1)))
    assert proc.poll() is None, proc.communicate()[1].decode()
    b.rmdir()
    append(b, 100, topic="b")
    wait_ids(db, ids(*range(1, 7), 100))
    stderr = stop(proc)
    about_b = [x for x in stderr.splitlines() if str(b) in x]
    assert len([x for x in about_b if "is a directory" in x]) == 1, stderr
    assert len(about_b) <= 2, stderr  # the problem, and perhaps that it was solved
    assert "Traceback" not in stderr


_PR_CAPBSET_DROP = 24
_DAC_CAPS = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER


def _drop_dac_capabilities() -> None:
    """In the child before exec: lose the capabilities that let root ignore permissions."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in _DAC_CAPS:
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            os._exit(97)


def test_a_file_without_read_permission_is_reported_once_and_retried(
    tmp_path: Path, db: Path, follower: Follower
) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    append(a, 1)
    append(b, 100, topic="b")
    b.chmod(0o000)
    preexec = _drop_dac_capabilities if os.geteuid() == 0 else None
    probe = subprocess.run(
        [sys.executable, "-c", f"open({str(b)!r}, 'rb')"], preexec_fn=preexec, capture_output=True
    )
    if probe.returncode in (0, 97):
        b.chmod(0o644)
        pytest.skip("permissions do not apply to a child process here")
    try:
        proc = follower(a, b, preexec=preexec)
        wait_ids(db, ids(1))
        for n in range(2, 7):
            time.sleep(0.2)
            append(a, n)
            wait_ids(db, ids(*range(1, n + 1)))
        assert proc.poll() is None, proc.communicate()[1].decode()
    finally:
        b.chmod(0o644)
    wait_ids(db, ids(*range(1, 7), 100))
    stderr = stop(proc)
    about_b = [x for x in stderr.splitlines() if str(b) in x]
    assert len([x for x in about_b if "ermission denied" in x]) == 1, stderr
    assert "Traceback" not in stderr
