"""What only the SQLite store has: a WAL file, opening and refusing files, `PRAGMA
user_version` and its migrations, and how `stats` reads. The contract both backends keep
is in test_store_contract.py."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from helpers import counters, row, stored_ids

from logagg.errors import SchemaVersionError, StoreError
from logagg.store.sqlite import _V1, PAGE_SIZE, SCHEMA_VERSION, SQLiteStore


def sql(db: Path, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement in a separate connection and commit."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(statement, params).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


# --- opening ---------------------------------------------------------------------------


def test_open_creates_a_wal_store_with_the_schema_version(db: Path) -> None:
    with SQLiteStore.open(str(db)):
        pass
    assert db.exists()
    assert sql(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert sql(db, "PRAGMA journal_mode") == [("wal",)]
    tables = {name for (name,) in sql(db, "SELECT name FROM sqlite_schema WHERE type='table'")}
    assert {"events", "topics", "counters"} <= tables


def test_an_empty_file_becomes_a_store(db: Path) -> None:
    db.write_bytes(b"")
    with SQLiteStore.open(str(db), create=False) as store:
        assert counters(store) == (0, 0, 0, 0)
        assert store.check().ok


def test_missing_file_with_create_false_is_an_error_and_creates_nothing(db: Path) -> None:
    with pytest.raises(StoreError, match=str(db)):
        SQLiteStore.open(str(db), create=False)
    assert not db.exists()


def test_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "store.db"
    with pytest.raises(StoreError, match="does not exist"):
        SQLiteStore.open(str(path))
    assert not path.parent.exists()


def test_a_directory_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="directory"):
        SQLiteStore.open(str(tmp_path))


@pytest.mark.parametrize("content", [b"hello", b"x" * 100, b"not sqlite\n" * 1000])
def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(db: Path, content: bytes) -> None:
    db.write_bytes(content)
    with pytest.raises(StoreError, match="not a SQLite database"):
        SQLiteStore.open(str(db))
    assert db.read_bytes() == content


def test_a_sqlite_database_that_is_not_a_store_is_refused_and_left_as_it_was(db: Path) -> None:
    """Another application's database: refused, not converted and not changed."""
    sql(db, "CREATE TABLE people (name TEXT)")
    sql(db, "INSERT INTO people VALUES ('ada')")
    with pytest.raises(SchemaVersionError, match="not a logagg store"):
        SQLiteStore.open(str(db))
    assert sql(db, "SELECT name FROM sqlite_schema") == [("people",)]
    assert sql(db, "SELECT name FROM people") == [("ada",)]
    assert sql(db, "PRAGMA user_version") == [(0,)]
    assert sql(db, "PRAGMA journal_mode") == [("delete",)]


# --- migration -------------------------------------------------------------------------


def test_a_version_1_store_is_migrated_with_its_events(db: Path) -> None:
    """A version 1 store gains the checkpoints table and keeps its events and counters."""
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
        assert counters(store) == (1, 1, 0, 0)
    assert sql(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert "checkpoints" in {n for (n,) in sql(db, "SELECT name FROM sqlite_schema")}
    assert stored_ids(db) == ["e1"]


# --- stats -----------------------------------------------------------------------------


def test_stats_reads_no_events(store: SQLiteStore) -> None:
    """Its cost does not grow with the events table: no statement reads it."""
    store.write_batch([row(n) for n in range(10)])
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    try:
        store.stats()
    finally:
        store._conn.set_trace_callback(None)
    assert any("counters" in s for s in statements)
    assert not [s for s in statements if re.search(r"\b(from|join)\s+events\b", s, re.IGNORECASE)]


# --- the key deduplication runs on ---------------------------------------------------------


def test_check_finds_keys_that_are_not_the_hash_of_their_event(db: Path) -> None:
    """A row or a key-table entry that something else changed: check says so."""
    with SQLiteStore.open(str(db)) as store:
        store.write_batch([row(n) for n in range(5)])
        assert store.check().ok
    sql(db, "UPDATE events SET key = key + 1 WHERE event_id = 'e3'")
    with SQLiteStore.open(str(db)) as store:
        result = store.check()
        assert not result.ok
        assert any("1 events have a key that is not the hash" in p for p in result.problems)
        assert any("1 events are missing from the key tables" in p for p in result.problems)
        store.write_batch([row(3)])  # the key table still leads to e3
    assert sql(db, "SELECT count(*) FROM events WHERE event_id = 'e3'") == [(1,)]
    sql(db, "UPDATE events SET key = NULL WHERE event_id = 'e3'")
    sql(db, "DELETE FROM recent_keys WHERE seq = (SELECT seq FROM events WHERE event_id = 'e3')")
    with SQLiteStore.open(str(db)) as store:
        result = store.check()
        assert any(
            "1 events without a key have a hash that no event holds" in p for p in result.problems
        )
    sql(db, "DELETE FROM recent_keys WHERE seq = (SELECT seq FROM events WHERE event_id = 'e2')")
    with SQLiteStore.open(str(db)) as store:
        assert any("missing from the key tables" in p for p in store.check().problems)
        store.write_batch([row(2)])  # what a lost key costs: its duplicate goes in
    assert sql(db, "SELECT count(*) FROM events WHERE event_id = 'e2'") == [(2,)]


def test_a_batch_is_a_database_image_while_the_writer_is_behind(db: Path) -> None:
    """The reader's two forms of a batch hold the same rows, keys included, and store the
    same: JSON text by default, a database image when the writer is behind. An event
    without unknown fields keeps none (NULL), one with them keeps them as they were."""
    rows = [
        row(i, topic=f"t{i % 3}", payload={"n": i, "x": 1.50}, **({"zone": i} if i % 2 else {}))
        for i in range(300)
    ]
    assert rows[0][5] is None and rows[1][5] == '{"zone":1}'
    with SQLiteStore.open(str(db)) as store:
        text, image = store.encode_rows(rows), store.encode_rows(rows, writer_behind=True)
        assert isinstance(text.data, str) and isinstance(image.data, bytes)
        assert [tuple(r) for r in store.decode_rows(image)] == [
            tuple(r) for r in store.decode_rows(text)
        ]
        assert tuple(store.decode_rows(image)[7][:6]) == rows[7]
        first = store.write_rows([image], new_events=True)
        again = store.write_rows([text])
        assert (first.accepted, again.duplicates, again.conflicts) == (300, 300, 0)
        assert [e.payload_json for e in first.new] == [r[4] for r in rows]
        assert [e.extra_json for e in first.new] == [r[5] for r in rows]
        assert store.check().ok
    assert sql(db, "SELECT count(*) FROM events WHERE extra IS NULL") == [(150,)]


def test_a_new_store_takes_the_page_size_and_an_older_one_keeps_its_own(tmp_path: Path) -> None:
    def page_size(path: Path) -> int:
        conn = sqlite3.connect(path)
        try:
            return int(conn.execute("PRAGMA page_size").fetchone()[0])
        finally:
            conn.close()

    new, old = tmp_path / "new.db", tmp_path / "old.db"
    SQLiteStore.open(str(new)).close()
    conn = sqlite3.connect(old)
    conn.execute("PRAGMA page_size = 8192")
    conn.executescript(_V1 + "PRAGMA user_version = 1;")
    conn.close()
    SQLiteStore.open(str(old)).close()
    assert (page_size(new), page_size(old)) == (PAGE_SIZE, 8192)
