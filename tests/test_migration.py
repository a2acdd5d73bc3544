"""Stores written by earlier versions, built with their own DDL, opened by this one: every
event keeps its position (its rowid, or id), dedup and counters go on, and a migration
that fails leaves the old store as it was."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from helpers import counters, pg_sql, row

from logagg.errors import StoreError
from logagg.store import EventQuery
from logagg.store import postgres as pgstore
from logagg.store import sqlite as sqlitestore
from logagg.store.postgres import PostgresStore
from logagg.store.sqlite import SQLiteStore

OLD_ROWS = [  # rowid, topic, event_id, timestamp: rowids with gaps, not in time order
    (3, "a", "e1", "2025-01-01T00:00:05.000000Z"),
    (7, "b", "e2", "2025-01-01T00:00:01.000000Z"),
    (8, "a", "e3", "2025-01-01T00:00:03.000000Z"),
    (12, "a", "e4", "2025-01-01T00:00:03.000000Z"),
]


def old_sqlite_store(db: Path, version: int) -> None:
    """A store as logagg wrote it at `version`, with OLD_ROWS and matching counters."""
    conn = sqlite3.connect(db)
    for step in range(version):
        conn.executescript(sqlitestore.MIGRATIONS[step])
    for rowid, topic, event_id, ts in OLD_ROWS:
        conn.execute(
            "INSERT INTO events (rowid, topic, event_id, timestamp, source, payload, extra,"
            " ingested_at) VALUES (?, ?, ?, ?, 'old', '{\"n\":1}', NULL, ?)",
            (rowid, topic, event_id, ts, ts),
        )
    conn.execute(
        "INSERT INTO topics SELECT topic, count(*), min(timestamp), max(timestamp) FROM events"
        " GROUP BY topic"
    )
    conn.execute("UPDATE counters SET received = 6, accepted = 4, duplicates = 2")
    conn.execute("INSERT INTO meta VALUES ('created_at', '2025-01-01T00:00:00.000000Z')")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("version", [2, 3])
def test_an_older_sqlite_store_keeps_every_position(db: Path, version: int) -> None:
    old_sqlite_store(db, version)
    with SQLiteStore.open(str(db)) as store:
        assert store.check().ok, store.check().problems
        page = store.read_after(0, EventQuery(), 100)
        assert [(e.seq, e.event_id) for e in page.events] == [(r[0], r[2]) for r in OLD_ROWS]
        listed = [e.event_id for e in store.events(EventQuery(newest_first=False))]
        assert listed == ["e2", "e3", "e4", "e1"]  # time order, ties in the old rowid order
        result = store.write_batch([row(1, "a", event_id="e1"), row(9, "c")])
        assert (result.accepted, result.duplicates, result.conflicts) == (1, 1, 1)
        (new,) = store.read_after(page.next, EventQuery(), 100).events
        assert new.event_id == "e9" and new.seq is not None and new.seq > 12
        assert counters(store) == (8, 5, 3, 0)
        assert store.check().ok
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlitestore.SCHEMA_VERSION
        names = {n for (n,) in conn.execute("SELECT name FROM sqlite_schema")}
        assert {"conflicts", "cursors", "event_keys", "recent_keys", "events_pruned"} <= names
    finally:
        conn.close()


def test_a_sqlite_migration_that_fails_leaves_the_old_store(db: Path) -> None:
    old_sqlite_store(db, 3)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE cursors (x)")  # in the way of the new table
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="cursors already exists"):
        SQLiteStore.open(str(db))
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        rows = conn.execute("SELECT rowid, topic, event_id, timestamp FROM events ORDER BY rowid")
        assert rows.fetchall() == OLD_ROWS
        assert conn.execute("SELECT accepted FROM counters").fetchone() == (4,)
    finally:
        conn.close()


def test_an_older_postgresql_store_keeps_every_position(pg_url: str) -> None:
    for step in range(2):
        pg_sql(pg_url, pgstore.MIGRATIONS[step])
    pg_sql(pg_url, "INSERT INTO logagg_meta VALUES ('schema_version', '2')")
    for rowid, topic, event_id, ts in OLD_ROWS:
        pg_sql(
            pg_url,
            'INSERT INTO events (id, topic, event_id, "timestamp", source, payload, ingested_at)'
            " VALUES (%s, %s, %s, %s, 'old', '{\"n\":1}', %s)",
            (rowid, topic, event_id, ts, ts),
        )
    pg_sql(pg_url, "SELECT setval('events_id_seq', 12)")
    pg_sql(
        pg_url,
        "INSERT INTO topic_deltas (topic, events, first_timestamp, last_timestamp)"
        ' SELECT topic, count(*), min("timestamp"), max("timestamp") FROM events GROUP BY topic;'
        " INSERT INTO counter_deltas (received, accepted, duplicates, invalid, at)"
        " VALUES (6, 4, 2, 0, '2025-01-01T00:00:00.000000Z')",
    )
    with PostgresStore.open(pg_url) as store:
        assert store.check().ok, store.check().problems
        page = store.read_after(0, EventQuery(), 100)
        assert [(e.seq, e.event_id) for e in page.events] == [(r[0], r[2]) for r in OLD_ROWS]
        result = store.write_batch([row(1, "a", event_id="e1"), row(9, "c")])
        assert (result.accepted, result.duplicates, result.conflicts) == (1, 1, 1)
        (new,) = store.read_after(page.next, EventQuery(), 100).events
        assert new.event_id == "e9" and new.seq is not None and new.seq > 12
        assert counters(store) == (8, 5, 3, 0)
        assert store.check().ok
    assert pg_sql(pg_url, "SELECT value FROM logagg_meta WHERE key = 'schema_version'") == [
        (str(pgstore.SCHEMA_VERSION),)
    ]
