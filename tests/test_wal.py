"""SQLite's WAL under long readers: bounded while nobody blocks it, one warning while a real
`sqlite3` process holds a read transaction, back to its bound once that reader ends;
`check` and `stats` show it; `backup` and `vacuum` of a live store."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import check_store, event, invoke, logagg_cmd, run_logagg, write_jsonl
from helpers import accepted_count, assert_one_line_error, row, wait_until
from typer.testing import CliRunner

from logagg.store import base as store_base
from logagg.store import sqlite as sqlite_store
from logagg.store.sqlite import SQLiteStore

BOUND = 1 << 20  # the WAL size logagg checkpoints at, for these tests


@pytest.fixture
def small_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "WAL_CHECK_BYTES", BOUND)
    monkeypatch.setattr(sqlite_store, "WAL_CHECK_SECONDS", 0.0)
    monkeypatch.setattr(store_base, "WAL_WARN_MIN_BYTES", BOUND)


def end(reader: subprocess.Popen[bytes]) -> None:
    assert reader.stdin is not None
    reader.stdin.write(b"COMMIT;\n.quit\n")
    reader.stdin.close()
    assert reader.wait(10) == 0


def wal(db: Path) -> int:
    path = Path(f"{db}-wal")
    return path.stat().st_size if path.exists() else 0


def write_some(store: SQLiteStore, start: int, batches: int) -> list[int]:
    """Commits of 500 new events each, each followed by the writer's housekeeping; the
    WAL's size after each."""
    sizes = []
    blob = "x" * 400
    for b in range(batches):
        first = start + b * 500
        store.write_batch([row(n, payload={"blob": blob}) for n in range(first, first + 500)])
        store.maintain()
        sizes.append(wal(Path(store.path)))
    return sizes


def test_without_a_blocking_reader_the_wal_stays_bounded(db: Path, small_bound: None) -> None:
    notices: list[str] = []
    with SQLiteStore.open(str(db)) as store:
        store.on_notice = notices.append
        one = write_some(store, 0, 1)[0]
        sizes = write_some(store, 500, 60)
    assert max(sizes) <= BOUND + 2 * one, sizes
    assert notices == []


def test_a_blocking_reader_is_reported_once_and_the_wal_shrinks_after_it(
    db: Path, small_bound: None
) -> None:
    notices: list[str] = []
    with SQLiteStore.open(str(db)) as store:
        store.on_notice = notices.append
        write_some(store, 0, 2)
        with_reader = subprocess.Popen(
            ["sqlite3", str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        try:
            assert with_reader.stdin is not None and with_reader.stdout is not None
            with_reader.stdin.write(b"BEGIN;\nSELECT count(*) FROM events;\n")
            with_reader.stdin.flush()
            assert with_reader.stdout.readline().strip() == b"1000"
            grown = write_some(store, 1000, 40)
            assert grown[-1] > 4 * BOUND  # a reader pins it: SQLite cannot reuse it
            assert len(notices) == 1, notices
            assert "read transaction" in notices[0] and "WAL" in notices[0]
            result = store.check()
            assert result.ok and len(result.warnings) == 1, result.warnings
            assert "a connection holding a read transaction open" in result.warnings[0]
            assert store.stats().wal_bytes == wal(db)
            end(with_reader)
        finally:
            if with_reader.poll() is None:
                with_reader.kill()
            with_reader.wait(10)
        after = write_some(store, 30_000, 3)
        assert after[-1] <= BOUND, after  # emptied at the next checkpoint, as said
        assert len(notices) == 1
        assert store.check().warnings == []


def test_ingest_warns_once_on_stderr(
    tmp_path: Path, db: Path, small_bound: None, runner: CliRunner
) -> None:
    blob = "y" * 400
    first = write_jsonl(tmp_path / "a.jsonl", [event(n, payload={"b": blob}) for n in range(10)])
    assert invoke(runner, "ingest", "--db", db, first).exit_code == 0
    proc = subprocess.Popen(["sqlite3", str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"BEGIN;\nSELECT count(*) FROM events;\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == b"10"
        big = write_jsonl(
            tmp_path / "b.jsonl", [event(n, payload={"b": blob}) for n in range(10, 20_010)]
        )
        result = invoke(runner, "ingest", "--db", db, "--batch-size", "300", big)
        assert result.exit_code == 0, result.stderr
        warnings = [x for x in result.stderr.splitlines() if x.startswith("logagg: warning: ")]
        assert len(warnings) == 1, result.stderr
        assert "cannot be checkpointed" in warnings[0]
        checked = invoke(runner, "check", "--db", db)
        assert checked.exit_code == 0
        assert "warning: the WAL file is" in checked.stderr
    finally:
        proc.kill()
        proc.wait(10)


# --- backup and vacuum -----------------------------------------------------------------------


def test_backup_of_a_store_while_an_ingest_writes(tmp_path: Path, db: Path) -> None:
    data = write_jsonl(tmp_path / "a.jsonl", [event(n) for n in range(60_000)])
    writer = subprocess.Popen(
        logagg_cmd("ingest", "--db", db, "--batch-size", "500", "--quiet", data),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: accepted_count(db) >= 5000, 60, "the ingest to be under way")
        copy = tmp_path / "copy.db"
        made = run_logagg("backup", "--db", db, copy)
        assert made.returncode == 0, made.stderr.decode()
        assert made.stderr.decode().startswith(f"{copy}: a copy of {db} (")
        running = writer.poll() is None
    finally:
        assert writer.wait(60) == 0, writer.stderr.read().decode()  # type: ignore[union-attr]
    facts = check_store(copy)  # one consistent snapshot: counters agree with its rows
    assert 5000 <= facts["rows"] <= 60_000 and facts["rows"] == facts["unique_processed"]
    assert running or facts["rows"] == 60_000
    assert not list(tmp_path.glob("copy.db.partial-*"))
    again = run_logagg("backup", "--db", db, copy)
    assert_one_line_error(again, "already exists", code=2)


def test_backup_refuses_postgresql(pg_url: str, tmp_path: Path) -> None:
    proc = run_logagg("backup", "--db", pg_url, tmp_path / "x.db")
    assert_one_line_error(proc, "pg_dump", code=2)


def test_vacuum_returns_the_space_pruning_left(tmp_path: Path, db: Path) -> None:
    blob = "z" * 1000
    docs = [event(n, payload={"b": blob}) for n in range(5000)]
    assert run_logagg("ingest", "--db", db, write_jsonl(tmp_path / "a.jsonl", docs)).returncode == 0
    assert run_logagg("prune", "--db", db, "--before", "2030-01-01").returncode == 0
    before = json.loads(run_logagg("stats", "--db", db, "--json").stdout)["size_bytes"]
    proc = run_logagg("vacuum", "--db", db)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "rewritten with VACUUM" in proc.stderr.decode()
    after = json.loads(run_logagg("stats", "--db", db, "--json").stdout)["size_bytes"]
    assert after < before / 4, (before, after)
    facts = check_store(db)
    assert (facts["rows"], facts["tombstones"]) == (0, 5000)
    again = run_logagg("ingest", "--db", db, "--json", write_jsonl(tmp_path / "a.jsonl", docs))
    assert json.loads(again.stdout)["accepted"] == 0  # the keys outlive the vacuum


def test_vacuum_on_postgresql_says_what_the_server_does(pg_url: str) -> None:
    assert run_logagg("ingest", "--db", pg_url, os.devnull).returncode == 0
    proc = run_logagg("vacuum", "--db", pg_url)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "VACUUM FULL" in proc.stderr.decode() and "reusable" in proc.stderr.decode()
