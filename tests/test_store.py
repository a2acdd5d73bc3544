"""The SQLite store against real files: dedup, counters, topics, queries, stats and check."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import event

from logagg.errors import SchemaVersionError, StoreError
from logagg.models import Row, StoredEvent, event_from_fields
from logagg.store import EventQuery, open_store
from logagg.store.sqlite import SCHEMA_VERSION, SQLiteStore


def row(n: int, topic: str = "t", **fields: Any) -> Row:
    """A validated event row numbered `n` (see conftest.event)."""
    return event_from_fields(**event(n, topic, **fields))


@pytest.fixture
def store(db: Path) -> Iterator[SQLiteStore]:
    with SQLiteStore.open(str(db)) as opened:
        yield opened


def raw_rows(db: Path) -> list[tuple[Any, ...]]:
    """Every stored event as read by plain sqlite3, with its rowid."""
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT topic, event_id, timestamp, source, payload, extra, rowid FROM events"
        ).fetchall()


def sql(db: Path, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement in a separate connection and commit."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(statement, params).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def counters(store: SQLiteStore) -> tuple[int, int, int, int]:
    s = store.stats()
    return (s.counters.received, s.counters.accepted, s.counters.duplicates, s.counters.invalid)


# --- opening ---------------------------------------------------------------------------


def test_open_creates_a_wal_store_with_the_schema_version(db: Path) -> None:
    with SQLiteStore.open(str(db)):
        pass
    assert db.exists()
    assert sql(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert sql(db, "PRAGMA journal_mode") == [("wal",)]
    tables = {name for (name,) in sql(db, "SELECT name FROM sqlite_schema WHERE type='table'")}
    assert {"events", "topics", "counters"} <= tables


def test_reopening_keeps_the_data(db: Path) -> None:
    with SQLiteStore.open(str(db)) as first:
        first.write_batch([row(1), row(2)])
    with open_store(str(db), create=False) as second:
        assert counters(second) == (2, 2, 0, 0)
        assert [e.event_id for e in second.events(EventQuery(limit=None))] == ["e2", "e1"]


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


def test_a_newer_schema_version_is_refused(db: Path) -> None:
    with SQLiteStore.open(str(db)) as store:
        store.write_batch([row(1)])
    sql(db, "PRAGMA user_version = 99")
    with pytest.raises(SchemaVersionError, match="newer"):
        SQLiteStore.open(str(db))
    assert sql(db, "PRAGMA user_version") == [(99,)]
    assert len(raw_rows(db)) == 1


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


# --- writing ---------------------------------------------------------------------------


def test_write_batch_counts_accepted_duplicates_and_invalid(store: SQLiteStore) -> None:
    result = store.write_batch([row(1), row(2), row(3)], invalid=2)
    assert (result.accepted, result.duplicates, result.invalid) == (3, 0, 2)
    assert counters(store) == (5, 3, 0, 2)


def test_an_empty_batch_with_only_invalid_lines_is_counted(store: SQLiteStore) -> None:
    result = store.write_batch([], invalid=4)
    assert (result.accepted, result.duplicates, result.invalid) == (0, 0, 4)
    assert counters(store) == (4, 0, 0, 4)
    assert store.check().ok


def test_topic_counts_and_first_last_follow_every_batch(store: SQLiteStore) -> None:
    store.write_batch([row(1, "a", timestamp="2025-03-01T00:00:00Z"), row(2, "b")])
    store.write_batch(
        [
            row(3, "a", timestamp="2025-01-01T00:00:00+01:00"),  # earlier than the first
            row(4, "a", timestamp="2025-06-01T00:00:00Z"),
            row(5, "a", timestamp="2025-02-01T00:00:00Z"),
            row(1, "a", timestamp="2020-01-01T00:00:00Z"),  # a duplicate: ignored
        ]
    )
    topics = store.stats().topics
    assert topics["a"].events == 4
    assert topics["a"].first_timestamp == "2024-12-31T23:00:00.000000Z"
    assert topics["a"].last_timestamp == "2025-06-01T00:00:00.000000Z"
    assert topics["b"].events == 1
    assert topics["b"].first_timestamp == topics["b"].last_timestamp
    store.write_batch([row(6, "a", timestamp="2025-04-01T00:00:00Z")])  # inside the range
    a = store.stats().topics["a"]
    assert (a.events, a.first_timestamp, a.last_timestamp) == (
        5,
        "2024-12-31T23:00:00.000000Z",
        "2025-06-01T00:00:00.000000Z",
    )


def test_payload_and_extra_are_returned_unchanged(store: SQLiteStore) -> None:
    payload = {"z": 2**70, "a": [1.5, None, "é"], "nested": {"b": True}}
    store.write_batch([row(1, payload=payload, host="web-1", tags=["x"])])
    (stored,) = store.events(EventQuery())
    assert json.loads(stored.payload_json) == payload
    assert stored.to_dict() == {
        "topic": "t",
        "event_id": "e1",
        "timestamp": "2025-01-01T00:00:01.000000Z",
        "source": "test",
        "payload": payload,
        "host": "web-1",
        "tags": ["x"],
    }
    assert json.loads(stored.to_json_bytes()) == stored.to_dict()


def test_two_stores_writing_one_file_at_once_never_lock_or_double_count(db: Path) -> None:
    """Two connections, two threads, overlapping keys: every key stored once."""
    SQLiteStore.open(str(db)).close()
    errors: list[BaseException] = []
    accepted = [0, 0]

    def writer(index: int) -> None:
        try:
            with SQLiteStore.open(str(db)) as mine:
                for b in range(30):
                    result = mine.write_batch([row(b * 10 + i, f"t{i % 2}") for i in range(15)])
                    accepted[index] += result.accepted
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    with SQLiteStore.open(str(db)) as store:
        received, unique, duplicates, _ = counters(store)
        assert unique == len(raw_rows(db)) == sum(accepted)
        assert received == 2 * 30 * 15
        assert duplicates == received - unique
        assert store.check().ok


# --- querying --------------------------------------------------------------------------


def test_since_is_inclusive_and_until_exclusive(store: SQLiteStore) -> None:
    store.write_batch([row(n, timestamp=f"2025-01-01T00:00:0{n}Z") for n in range(5)])
    query = EventQuery(
        since="2025-01-01T00:00:01.000000Z",
        until="2025-01-01T00:00:03.000000Z",
        newest_first=False,
    )
    assert [e.event_id for e in store.events(query)] == ["e1", "e2"]


def test_default_limit_is_100_and_none_means_all(store: SQLiteStore) -> None:
    store.write_batch([row(n) for n in range(150)])
    assert len(list(store.events(EventQuery()))) == 100
    assert len(list(store.events(EventQuery(limit=None)))) == 150


def test_events_come_back_as_stored_events(store: SQLiteStore) -> None:
    store.write_batch([row(1, payload={"a": 1})])
    (stored,) = store.events(EventQuery())
    assert isinstance(stored, StoredEvent)
    assert stored.timestamp == "2025-01-01T00:00:01.000000Z"
    assert stored.source == "test"
    assert stored.ingested_at.endswith("Z")


def test_events_of_an_empty_store(store: SQLiteStore) -> None:
    assert list(store.events(EventQuery(limit=None))) == []


# --- stats -----------------------------------------------------------------------------


def test_stats_of_a_new_store(store: SQLiteStore, db: Path) -> None:
    s = store.stats()
    assert counters(store) == (0, 0, 0, 0)
    assert s.topics == {}
    assert s.first_timestamp is None and s.last_timestamp is None
    assert s.last_ingest_at is None
    assert s.database == os.path.abspath(db)
    assert s.size_bytes > 0


def test_stats_after_writes(store: SQLiteStore) -> None:
    store.write_batch(
        [row(1, "a", timestamp="2025-05-01T00:00:00Z"), row(2, "b"), row(3, "b")], invalid=1
    )
    store.write_batch([row(2, "b"), row(9, "c", timestamp="2026-01-01T00:00:00Z")])
    s = store.stats()
    assert (
        s.counters.received,
        s.counters.accepted,
        s.counters.duplicates,
        s.counters.invalid,
    ) == (6, 4, 1, 1)
    assert {name: t.events for name, t in s.topics.items()} == {"a": 1, "b": 2, "c": 1}
    assert list(s.topics) == ["b", "a", "c"]  # most events first, then by name
    assert s.first_timestamp == "2025-01-01T00:00:02.000000Z"
    assert s.last_timestamp == "2026-01-01T00:00:00.000000Z"
    assert s.last_ingest_at is not None and s.last_ingest_at.endswith("Z")


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


# --- check -----------------------------------------------------------------------------


def test_check_of_a_healthy_store(store: SQLiteStore) -> None:
    store.write_batch([row(1, "a"), row(2, "b"), row(1, "a")], invalid=3)
    result = store.check()
    assert result.ok, result.problems
    assert result.problems == []
    assert result.facts["rows"] == 2
    assert result.facts["integrity"] == "ok"
    assert result.facts["schema_version"] == SCHEMA_VERSION
    assert result.facts["received"] == 6


def test_check_detects_a_wrong_schema_version(store: SQLiteStore, db: Path) -> None:
    sql(db, "PRAGMA user_version = 0")
    result = store.check()
    assert any("schema version 0" in p for p in result.problems)
