"""The SQLite store's 64-bit key never merges two events: with a hash that collides for
every key, different events are all stored, a true duplicate is still dropped, and
conflicts, keep-last, tombstones, positions and `check` hold as with real hashes."""

from __future__ import annotations

import hashlib
import random
import sqlite3
import threading
from pathlib import Path

import pytest
from helpers import counters, row, stage_every_batch

from logagg.models import encode_rows
from logagg.store import EventQuery
from logagg.store import sqlite as sqlitestore
from logagg.store.sqlite import SQLiteStore


@pytest.fixture(autouse=True, params=["json", "staged", "merging"])
def batch_form(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test with batches as JSON text, as database images, and with recent_keys
    merged into event_keys after every write."""
    if request.param == "staged":
        stage_every_batch(monkeypatch)
    if request.param == "merging":
        monkeypatch.setattr(sqlitestore, "MERGE_AT", 1)


@pytest.fixture
def colliding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every (topic, event_id) hashes to the same key."""
    monkeypatch.setattr(sqlitestore, "event_key", lambda topic, event_id: 42)


def stored(db: Path) -> list[tuple[str, str, int | None, str | None]]:
    """(topic, event_id, key, payload) of every row, in position order."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT topic, event_id, key, payload FROM events ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()


def test_the_key_is_the_documented_hash(db: Path) -> None:
    with SQLiteStore.open(str(db)) as store:
        store.write_batch([row(1, "a")])
    digest = hashlib.md5(b"a\x1fe1").digest()
    assert stored(db)[0][2] == int.from_bytes(digest[:8], "big", signed=True)


def test_colliding_keys_are_all_stored_and_duplicates_still_dropped(
    db: Path, colliding: None
) -> None:
    with SQLiteStore.open(str(db)) as store:
        first = store.write_batch([row(1, "a"), row(2, "a"), row(1, "b"), row(1, "a")])
        assert (first.accepted, first.duplicates, first.conflicts) == (3, 1, 0)
        assert first.per_batch == (3,)
        again = store.write_batch([row(2, "a"), row(1, "b"), row(3, "a"), row(3, "a")])
        assert (again.accepted, again.duplicates, again.conflicts) == (1, 3, 0)
        # without keys (models.encode_rows), the store computes them
        plain = store.write_rows([encode_rows([row(1, "b"), row(4, "a")])])
        assert (plain.accepted, plain.duplicates) == (1, 1)
        assert counters(store) == (10, 5, 5, 0)
        assert store.check().ok, store.check().problems
        listed = [(e.topic, e.event_id) for e in store.read_after(0, EventQuery(), 100).events]
        assert listed == [("a", "e1"), ("a", "e2"), ("b", "e1"), ("a", "e3"), ("a", "e4")]
    rows = stored(db)
    assert [r[2] for r in rows] == [42, None, None, None, None]  # the first keeps the key


def test_a_colliding_event_that_differs_is_a_conflict(db: Path, colliding: None) -> None:
    with SQLiteStore.open(str(db)) as store:
        store.write_batch([row(1, "a"), row(2, "a")])
        result = store.write_batch([row(2, "a", payload={"n": 99}), row(1, "a", source="x")])
        assert (result.accepted, result.duplicates, result.conflicts) == (0, 2, 2)
        assert {(c.topic, c.event_id) for c in store.conflicts()} == {("a", "e1"), ("a", "e2")}
        store.configure(keep_last=True)
        kept = store.write_batch([row(2, "a", payload={"n": 7})])
        assert (kept.accepted, kept.duplicates, kept.conflicts) == (0, 1, 1)
        events = store.read_after(0, EventQuery(), 100).events
        assert [(e.event_id, e.payload_json) for e in events] == [
            ("e1", '{"n":1}'),
            ("e2", '{"n":7}'),
        ]
        assert events[1].seq is not None and events[0].seq is not None
        assert events[1].seq > events[0].seq  # a replaced event moves to a new position
        assert store.check().ok, store.check().problems


def test_pruned_colliding_events_stay_duplicates(db: Path, colliding: None) -> None:
    with SQLiteStore.open(str(db)) as store:
        store.write_batch([row(1, "a"), row(2, "a"), row(3, "a")])
        assert store.prune("2030-01-01T00:00:00Z").pruned == {"a": 3}
        result = store.write_batch([row(1, "a"), row(2, "a"), row(3, "a", payload={"n": 0})])
        assert (result.accepted, result.duplicates) == (0, 3)
        assert store.check().ok, store.check().problems


def test_a_forgotten_key_passes_to_a_colliding_event(db: Path, colliding: None) -> None:
    with SQLiteStore.open(str(db)) as store:
        store.write_batch([row(1, "a")])
        store.write_batch([row(2, "b", timestamp="2031-01-01T00:00:00Z")])
        # e1 (the keyed row) is forgotten; e2 takes its key over and stays a duplicate
        store.prune("2030-01-01T00:00:00Z", forget_keys=True)
        assert [r[:3] for r in stored(db)] == [("b", "e2", 42)]
        result = store.write_batch([row(2, "b", timestamp="2031-01-01T00:00:00Z"), row(1, "a")])
        assert (result.accepted, result.duplicates) == (1, 1)
        assert store.check().ok, store.check().problems
    assert [r[:3] for r in stored(db)] == [("b", "e2", 42), ("a", "e1", None)]


def test_a_version_4_store_with_colliding_keys_migrates(db: Path, colliding: None) -> None:
    conn = sqlite3.connect(db)
    for step in range(4):
        conn.executescript(sqlitestore.MIGRATIONS[step])
    conn.executemany(
        "INSERT INTO events (seq, topic, event_id, timestamp, source, payload, ingested_at)"
        " VALUES (?, 'a', ?, '2025-01-01T00:00:00.000000Z', 'old', '{}', 'x')",
        [(5, "e5"), (2, "e2"), (9, "e9")],
    )
    conn.execute(
        "INSERT INTO topics VALUES ('a', 3, '2025-01-01T00:00:00.000000Z',"
        " '2025-01-01T00:00:00.000000Z', 0, 0)"
    )
    conn.execute("UPDATE counters SET received = 3, accepted = 3")
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()
    with SQLiteStore.open(str(db)) as store:
        assert store.check().ok, store.check().problems
        result = store.write_batch([row(5, "a"), row(9, "a"), row(7, "a")])
        assert (result.accepted, result.duplicates) == (1, 2)
    assert [(r[1], r[2]) for r in stored(db)] == [
        ("e2", 42),
        ("e5", None),
        ("e9", None),
        ("e7", None),
    ]


@pytest.mark.parametrize("version", [2, 4])
def test_an_older_store_gets_its_keys(db: Path, version: int) -> None:
    conn = sqlite3.connect(db)
    for step in range(version):
        conn.executescript(sqlitestore.MIGRATIONS[step])
    conn.executemany(
        "INSERT INTO events (rowid, topic, event_id, timestamp, source, payload, ingested_at)"
        " VALUES (?, ?, ?, '2025-01-01T00:00:00.000000Z', 'old', '{}', 'x')",
        [(3, "a", "e1"), (7, "b", "e1"), (8, "a", "e2")],
    )
    conn.execute(
        "INSERT INTO topics (topic, events, first_timestamp, last_timestamp)"
        " SELECT topic, count(*), min(timestamp), max(timestamp) FROM events GROUP BY topic"
    )
    conn.execute("UPDATE counters SET received = 3, accepted = 3")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    with SQLiteStore.open(str(db)) as store:
        assert store.check().ok, store.check().problems
        result = store.write_batch([row(1, "a", source="old"), row(2, "b")])
        assert (result.accepted, result.duplicates) == (1, 1)
        assert store.check().ok, store.check().problems
    rows = stored(db)
    assert [(t, e, k) for t, e, k, _ in rows] == [
        (t, e, sqlitestore.event_key(t, e))
        for t, e in [("a", "e1"), ("b", "e1"), ("a", "e2"), ("b", "e2")]
    ]
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 6
        names = {n for (n,) in conn.execute("SELECT name FROM sqlite_schema")}
        assert {"events_aside", "events_topic_time", "events_pruned"} <= names
        assert {"event_keys", "recent_keys", "events_key_gone", "events_key_moved"} <= names
        assert "events_key" not in names
    finally:
        conn.close()


def key_tables(db: Path) -> tuple[int, int]:
    """(keys in recent_keys, keys in event_keys)."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT (SELECT count(*) FROM recent_keys), (SELECT count(*) FROM event_keys)"
        ).fetchone()
    finally:
        conn.close()


def test_a_version_5_store_moves_its_keys_to_the_key_table(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.create_function("logagg_key", 2, sqlitestore.event_key)
    for step in range(5):
        conn.executescript(sqlitestore.MIGRATIONS[step])
    conn.executemany(
        "INSERT INTO events (seq, topic, event_id, timestamp, source, payload, ingested_at, key)"
        " VALUES (?, 'a', ?, '2025-01-01T00:00:00.000000Z', 'old', '{}', 'x', ?)",
        [(n, f"e{n}", sqlitestore.event_key("a", f"e{n}")) for n in (4, 1, 9)],
    )
    conn.execute(
        "INSERT INTO topics VALUES ('a', 3, '2025-01-01T00:00:00.000000Z',"
        " '2025-01-01T00:00:00.000000Z', 0, 0)"
    )
    conn.execute("UPDATE counters SET received = 3, accepted = 3")
    conn.execute("PRAGMA user_version = 5")
    conn.commit()
    conn.close()
    with SQLiteStore.open(str(db)) as store:
        assert store.check().ok, store.check().problems
        assert key_tables(db) == (0, 3)
        # the stored copies' payloads are {}: both re-sends differ from them
        result = store.write_batch([row(4, "a"), row(9, "a"), row(2, "a")])
        assert (result.accepted, result.duplicates, result.conflicts) == (1, 2, 2)
        assert sum(key_tables(db)) == 4
        assert store.check().ok, store.check().problems


@pytest.mark.parametrize("collide", [False, True])
def test_keys_stay_exact_across_merges(
    db: Path, monkeypatch: pytest.MonkeyPatch, collide: bool
) -> None:
    """recent_keys is merged into event_keys every few keys: re-sends of keys on either
    side, repeats within a batch, conflicts, keep-last moves and forgetting all hold."""
    monkeypatch.setattr(sqlitestore, "MERGE_AT", 3)
    if collide:
        monkeypatch.setattr(sqlitestore, "event_key", lambda topic, event_id: 42)
    with SQLiteStore.open(str(db)) as store:
        first = store.write_batch([row(n, "a") for n in (1, 2, 1, 3)])
        assert (first.accepted, first.duplicates) == (3, 1)
        assert key_tables(db) == ((0, 3) if not collide else (1, 0))
        again = store.write_batch([row(n, "a") for n in (4, 1, 4, 5, 2)])
        assert (again.accepted, again.duplicates) == (2, 3)
        changed = store.write_batch([row(1, "a", payload={"n": 0}), row(6, "a")])
        assert (changed.accepted, changed.conflicts) == (1, 1)
        store.configure(keep_last=True)
        kept = store.write_batch([row(5, "a", payload={"n": 0}), row(5, "a")])
        assert (kept.accepted, kept.duplicates, kept.conflicts) == (0, 2, 2)
        assert store.check().ok, store.check().problems
        store.prune("2030-01-01T00:00:00Z", forget_keys=True)
        assert store.check().ok, store.check().problems
        assert key_tables(db) == (0, 0)
        back = store.write_batch([row(n, "a") for n in (1, 2, 3, 4, 5, 6, 7)])
        assert (back.accepted, back.duplicates) == (7, 0)
        assert store.check().ok, store.check().problems
        listed = [e.event_id for e in store.read_after(0, EventQuery(), 100).events]
        assert listed == [f"e{n}" for n in (1, 2, 3, 4, 5, 6, 7)]


def test_rows_deleted_without_logagg_leave_the_key_tables(db: Path) -> None:
    with SQLiteStore.open(str(db)) as store:
        store.write_batch([row(n, "a") for n in (1, 2, 3)])
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM events WHERE event_id = 'e2'")
    conn.commit()
    conn.close()
    with SQLiteStore.open(str(db)) as store:
        problems = store.check().problems  # the counters disagree now; the keys do not
        assert not [p for p in problems if "key" in p], problems
        result = store.write_batch([row(2, "a"), row(3, "a")])
        assert (result.accepted, result.duplicates) == (1, 1)
        listed = [e.event_id for e in store.read_after(0, EventQuery(), 100).events]
        assert listed == ["e1", "e3", "e2"]


@pytest.mark.parametrize(  # on whichever key table holds the key of seq 2
    "damage",
    [
        "DELETE FROM recent_keys WHERE seq = 2; DELETE FROM event_keys WHERE seq = 2",
        "UPDATE recent_keys SET seq = 99 WHERE seq = 2;"
        " UPDATE event_keys SET seq = 99 WHERE seq = 2",
        "INSERT INTO event_keys SELECT key, seq FROM recent_keys WHERE seq = 2;"
        " INSERT OR IGNORE INTO recent_keys SELECT key, seq FROM event_keys WHERE seq = 2",
    ],
)
def test_check_finds_key_tables_out_of_step(db: Path, damage: str) -> None:
    with SQLiteStore.open(str(db)) as store:
        store.write_batch([row(n, "a") for n in (1, 2, 3)])
    conn = sqlite3.connect(db)
    conn.executescript(damage)
    conn.close()
    with SQLiteStore.open(str(db)) as store:
        report = store.check()
        assert not report.ok
        assert any("key tables" in problem for problem in report.problems), report.problems


def test_two_writers_merging_keep_every_key_once(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two connections write overlapping keys at once and each merges on its own count of
    recent_keys (stale when the other writes): every key is stored once."""
    monkeypatch.setattr(sqlitestore, "MERGE_AT", 40)
    SQLiteStore.open(str(db)).close()
    accepted = [0, 0]
    errors: list[BaseException] = []

    def write(n: int) -> None:
        rnd = random.Random(n)  # seeded: a failure replays
        try:
            with SQLiteStore.open(str(db)) as store:
                for _ in range(30):
                    keys = [rnd.randrange(600) for _ in range(25)]
                    accepted[n] += store.write_batch([row(k, "a") for k in keys]).accepted
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    conn = sqlite3.connect(db)
    try:
        ids = [e for (e,) in conn.execute("SELECT event_id FROM events")]
    finally:
        conn.close()
    assert len(ids) == len(set(ids)) == sum(accepted)
    with SQLiteStore.open(str(db)) as store:
        assert store.check().ok, store.check().problems
    assert sum(key_tables(db)) == len(ids)
