"""Faults: nothing committed is ever lost, nothing is ever stored twice.

Real processes and real SQLite files: kill -9 at random moments, signals during a live
pipe, database errors in the writer, unwritable stores, foreign files, newer schemas and a
full disk (a file-size limit on the child).
"""

from __future__ import annotations

import ctypes
import gzip
import json
import os
import random
import resource
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import check_store, event, logagg_cmd, run_logagg, write_jsonl
from helpers import (
    SEED,
    accepted_count,
    assert_one_line_error,
    generated,
    keys_of_file,
    report_counts,
    stored_keys,
    wait_until,
    wait_until_read,
)

from logagg.store.sqlite import SCHEMA_VERSION

# --- kill -9 --------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_at_random_moments_then_rerun_stores_each_event_once(tmp_path: Path) -> None:
    """SIGKILL during ingest, many times; re-running the input gives exactly its unique events.

    Each run is killed once the store holds a random number of rows (5 to 30 % of the
    input's events) beyond what the previous run left, whatever the batch size; a run
    that commits its last batch first ends by itself. Seeded: LOGAGG_TEST_SEED."""
    rng = random.Random(SEED)
    data = tmp_path / "input.jsonl"
    unique = generated(data, 100_000, seed=rng.randrange(1 << 30))
    db = tmp_path / "store.db"
    history: list[str] = []
    killed = 0
    partial = 0
    for round_no in range(1, 5):
        batch = rng.choice([300, 2000, 20_000, 50_000])
        step = int(rng.uniform(0.05, 0.3) * len(unique))
        target = min(accepted_count(db) + step, len(unique) - 1)
        proc = subprocess.Popen(
            logagg_cmd("ingest", "--db", db, "--batch-size", batch, "--quiet", data),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        where = f"seed {SEED}, round {round_no}, batch {batch}, kill at {target} rows"
        try:
            wait_until(
                lambda t=target, p=proc: accepted_count(db) >= t or p.poll() is not None,
                60,
                where,
            )
        finally:
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=60)
        killed += proc.returncode == -signal.SIGKILL
        assert proc.returncode in (0, -signal.SIGKILL), f"{where}: {err.decode()}"
        facts = check_store(db)
        history.append(f"{where}: {facts['rows']} rows")
        assert facts["rows"] <= len(unique), f"{where}: more rows than unique events"
        partial += 0 < facts["rows"] < len(unique)
    trail = "\n".join(history)
    assert killed and partial, f"no run was killed halfway (seed {SEED}):\n{trail}"

    final = run_logagg("ingest", "--db", db, "--json", data)
    assert final.returncode == 0, f"seed {SEED}: {final.stderr.decode()}\n{trail}"
    keys = stored_keys(db)
    assert len(keys) == len(set(keys)), f"seed {SEED}: a key stored twice\n{trail}"
    assert set(keys) == unique, (
        f"seed {SEED}: {len(unique - set(keys))} events missing,"
        f" {len(set(keys) - unique)} unknown\n{trail}"
    )
    facts = check_store(db)
    assert facts["unique_processed"] == len(unique), f"seed {SEED}\n{trail}"


# --- signals during a live pipe ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code", "as_json"),
    [(signal.SIGINT, 130, False), (signal.SIGTERM, 143, False), (signal.SIGTERM, 143, True)],
    ids=["SIGINT", "SIGTERM", "SIGTERM-json"],
)
def test_signal_during_a_live_pipe_commits_what_was_read(
    tmp_path: Path, signum: int, code: int, as_json: bool
) -> None:
    """Events read before the signal are committed, the report is printed, exit 130 / 143.

    The flush interval and batch size are far beyond the test, so only the shutdown commit
    can have stored the events.
    """
    db = tmp_path / "store.db"
    args = ["ingest", "--db", db, "--flush-interval", "600", "--batch-size", "1000000"]
    proc = subprocess.Popen(
        logagg_cmd(*args, *(["--json"] if as_json else []), "-"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    try:
        first = b"".join(json.dumps(event(n)).encode() + b"\n" for n in range(40))
        proc.stdin.write(first + b"not json\n")
        proc.stdin.write(b"".join(json.dumps(event(n)).encode() + b"\n" for n in range(30, 50)))
        proc.stdin.flush()
        wait_until_read(proc)
        assert proc.poll() is None, "the ingest ended while its pipe was open"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err.decode()
    if as_json:
        report = json.loads(out)
        counts = (report["received"], report["accepted"], report["duplicates"], report["invalid"])
    else:
        assert out == b""
        counts = report_counts(err)
    assert counts == (61, 50, 10, 1)
    facts = check_store(db)
    assert (facts["rows"], facts["received"]) == (50, 61)


# --- a failing writer or reader ---------------------------------------------------------------


@pytest.mark.slow
def test_database_error_in_the_writer_ends_the_run_without_hanging(tmp_path: Path) -> None:
    """SQLite refusing an insert ends the run: one clear error, exit 1, no thread left waiting."""
    db = tmp_path / "store.db"
    data = tmp_path / "input.jsonl"
    generated(data, 60_000, seed=SEED)
    poison = json.dumps(event(1, topic="poison", event_id="boom")).encode() + b"\n"
    lines = data.read_bytes().splitlines(keepends=True)
    data.write_bytes(b"".join([*lines[:10_000], poison, *lines[10_000:]]))
    one = write_jsonl(tmp_path / "one.jsonl", [event(0)])
    assert run_logagg("ingest", "--db", db, one).returncode == 0
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.event_id = 'boom'"
            " BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"
        )
    conn.close()

    proc = run_logagg(
        "ingest", "--db", db, "--batch-size", "1000", "--queue-size", "1", data, timeout=60
    )

    line = assert_one_line_error(proc, "refused by trigger")
    assert str(db) in line
    facts = check_store(db)
    assert 1 < facts["rows"] < len(lines), "nothing committed before the failing batch"
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER refuse")
    conn.close()
    again = run_logagg("ingest", "--db", db, data)
    assert again.returncode == 0, again.stderr.decode()
    assert check_store(db)["rows"] == len(keys_of_file(data)) + 1


@pytest.mark.slow
def test_reader_dying_on_a_broken_gzip_ends_the_run_without_hanging(tmp_path: Path) -> None:
    """A truncated .gz read through a one-batch queue: clear error, exit 1, earlier events kept."""
    rng = random.Random(SEED)
    lines = [
        json.dumps(event(n, payload={"noise": rng.randbytes(64).hex()})).encode()
        for n in range(20_000)
    ]
    whole = gzip.compress(b"\n".join(lines) + b"\n")
    gz = tmp_path / "broken.jsonl.gz"
    gz.write_bytes(whole[: len(whole) // 2])
    db = tmp_path / "store.db"
    proc = run_logagg(
        "ingest", "--db", db, "--queue-size", "1", "--batch-size", "100", gz, timeout=60
    )
    stderr = proc.stderr.decode()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert any(str(gz) in x and "error" in x for x in stderr.splitlines()), stderr
    assert check_store(db)["rows"] > 1000


# --- stores that cannot be written ---------------------------------------------------------

_PR_CAPBSET_DROP = 24
_DAC_CAPS = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER


def _drop_dac_capabilities() -> None:
    """In the child before exec: lose the capabilities that let root ignore permissions."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in _DAC_CAPS:
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            os._exit(97)


@pytest.fixture
def as_plain_user(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[bytes]]:
    """Run `logagg` so that file permissions apply to it, even when the tests run as root.

    As root, the child loses CAP_DAC_OVERRIDE and friends before exec (it keeps uid 0, so
    it still reaches the interpreter); the fixture skips if that does not make a mode-0444
    file unwritable.
    """
    preexec: Callable[[], None] | None = None
    if os.geteuid() == 0:
        preexec = _drop_dac_capabilities
        probe = tmp_path / "probe"
        probe.write_text("x")
        probe.chmod(0o444)
        proc = subprocess.run(
            [sys.executable, "-c", f"open({str(probe)!r}, 'a')"],
            preexec_fn=preexec,
            capture_output=True,
        )
        probe.unlink()
        if proc.returncode == 0 or proc.returncode == 97:
            pytest.skip("running as root and permissions cannot be made to apply to a child")

    def run(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            logagg_cmd(*args), capture_output=True, timeout=60, preexec_fn=preexec
        )

    return run


@pytest.fixture
def restore_modes(tmp_path: Path) -> Iterator[list[Path]]:
    """Paths whose mode a test changed; made writable again afterwards."""
    changed: list[Path] = []
    yield changed
    for path in changed:
        path.chmod(0o755 if path.is_dir() else 0o644)


def _events(n: int) -> list[dict[str, Any]]:
    return [event(i) for i in range(n)]


def test_directory_not_writable_for_a_new_store(
    tmp_path: Path, as_plain_user: Callable[..., Any], restore_modes: list[Path]
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    restore_modes.append(locked)
    data = write_jsonl(tmp_path / "in.jsonl", _events(3))
    proc = as_plain_user("ingest", "--db", locked / "store.db", data)
    assert_one_line_error(proc, "permission", "read-only", "cannot")
    assert list(locked.iterdir()) == []


def test_directory_not_writable_for_an_existing_store(
    tmp_path: Path, as_plain_user: Callable[..., Any], restore_modes: list[Path]
) -> None:
    """An existing store whose directory is locked: one-line error, the store intact after."""
    home = tmp_path / "home"
    home.mkdir()
    db = home / "store.db"
    first = write_jsonl(tmp_path / "first.jsonl", _events(5))
    assert as_plain_user("ingest", "--db", db, first).returncode == 0
    home.chmod(0o555)
    restore_modes.append(home)
    more = write_jsonl(tmp_path / "more.jsonl", [event(n) for n in range(5, 9)])
    proc = as_plain_user("ingest", "--db", db, more)
    assert_one_line_error(proc, "permission", "read-only", "cannot")
    home.chmod(0o755)
    assert check_store(db)["rows"] == 5
    assert as_plain_user("ingest", "--db", db, more).returncode == 0
    assert check_store(db)["rows"] == 9


def test_read_only_store_file(
    tmp_path: Path, as_plain_user: Callable[..., Any], restore_modes: list[Path]
) -> None:
    """A mode-0444 store refuses writes with a one-line error and is intact afterwards."""
    db = tmp_path / "store.db"
    first = write_jsonl(tmp_path / "first.jsonl", _events(5))
    assert as_plain_user("ingest", "--db", db, first).returncode == 0
    db.chmod(0o444)
    restore_modes.append(db)
    more = write_jsonl(tmp_path / "more.jsonl", [event(n) for n in range(5, 9)])
    assert_one_line_error(as_plain_user("ingest", "--db", db, more), "read-only", "permission")
    publish = as_plain_user("publish", "--db", db, "--topic", "t", "--event-id", "x")
    assert_one_line_error(publish, "read-only", "permission")
    db.chmod(0o644)
    facts = check_store(db)
    assert (facts["rows"], facts["received"]) == (5, 5)


@pytest.mark.parametrize(
    "command",
    [
        ["ingest", "IN"],
        ["publish", "--topic", "t", "--event-id", "x"],
        ["events"],
        ["stats"],
        ["check"],
    ],
    ids=lambda c: c[0],
)
def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(
    tmp_path: Path, command: list[str]
) -> None:
    db = tmp_path / "notes.txt"
    content = ("these are my notes, not a database\n" * 300).encode()
    db.write_bytes(content)
    data = write_jsonl(tmp_path / "in.jsonl", _events(2))
    args = [str(data) if a == "IN" else a for a in command]
    assert_one_line_error(run_logagg(*args, "--db", db), "not a sqlite database", "not a database")
    assert db.read_bytes() == content


@pytest.mark.parametrize(
    "command",
    [
        ["ingest", "IN"],
        ["publish", "--topic", "t", "--event-id", "x"],
        ["events"],
        ["stats"],
        ["check"],
    ],
    ids=lambda c: c[0],
)
def test_a_store_of_a_newer_schema_is_refused_and_left_alone(
    tmp_path: Path, command: list[str]
) -> None:
    db = tmp_path / "store.db"
    data = write_jsonl(tmp_path / "in.jsonl", _events(3))
    assert run_logagg("ingest", "--db", db, data).returncode == 0
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    more = write_jsonl(tmp_path / "more.jsonl", [event(n) for n in range(3, 6)])
    args = [str(more) if a == "IN" else a for a in command]

    line = assert_one_line_error(run_logagg(*args, "--db", db), "newer", "version")
    assert "99" in line
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 99
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 3
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.close()
    assert check_store(db)["rows"] == 3


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_disk_full_during_ingest(tmp_path: Path) -> None:
    """A file-size limit hit mid-ingest: one-line error, exit 1, the store healthy afterwards."""
    db = tmp_path / "store.db"
    data = tmp_path / "input.jsonl"
    unique = generated(data, 30_000, seed=SEED + 1)
    head = tmp_path / "head.jsonl"
    head.write_bytes(b"".join(data.read_bytes().splitlines(keepends=True)[:500]))
    assert run_logagg("ingest", "--db", db, head).returncode == 0
    before = check_store(db)["rows"]
    limit = db.stat().st_size + 1024 * 1024
    proc = subprocess.run(
        logagg_cmd("ingest", "--db", db, "--batch-size", "500", data),
        capture_output=True,
        timeout=60,
        preexec_fn=_file_size_limit(limit),
    )
    assert_one_line_error(proc, "disk", "full", "write")
    after = check_store(db)["rows"]
    assert before <= after < len(unique)
    again = run_logagg("ingest", "--db", db, data)
    assert again.returncode == 0, again.stderr.decode()
    assert set(stored_keys(db)) == unique
    assert check_store(db)["rows"] == len(unique)


def test_disk_full_while_creating_the_store(tmp_path: Path) -> None:
    """No room even for the first page: one-line error, and a later run creates the store."""
    db = tmp_path / "store.db"
    data = write_jsonl(tmp_path / "in.jsonl", _events(20))
    proc = subprocess.run(
        logagg_cmd("ingest", "--db", db, data),
        capture_output=True,
        timeout=60,
        preexec_fn=_file_size_limit(2048),
    )
    assert_one_line_error(proc, "disk", "full", "write")
    again = run_logagg("ingest", "--db", db, data)
    assert again.returncode == 0, again.stderr.decode()
    assert check_store(db)["rows"] == 20
