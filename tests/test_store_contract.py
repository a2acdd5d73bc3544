"""The store contract, once, on both backends: SQLite (a file) and PostgreSQL (a schema of
its own on the session's server, see tests/pg.py).

Dedup by (topic, event_id) with the first copy winning, exact counters and topic counts,
listings with filters, order and limits, checkpoints, stats, check, schema versions and
concurrent writers. What only one backend has is in test_store.py (SQLite) and
test_pgstore.py (PostgreSQL).
"""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

import pytest
from helpers import SEED, Backend, counters, row, stage_every_batch
from pg import PASSWORD

from logagg.errors import SchemaVersionError
from logagg.gen import generate
from logagg.models import Checkpoint, StoredEvent, encode_rows, event_from_fields
from logagg.store import EventQuery, Store, open_store
from logagg.store import base as store_base
from logagg.store import sqlite as sqlitestore
from logagg.store.postgres import PostgresStore, redact
from logagg.store.sqlite import SQLiteStore


@pytest.fixture(params=["sqlite", "sqlite-staged", "sqlite-merging", "postgres"])
def backend(request: pytest.FixtureRequest, db: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """Each contract test runs on a new SQLite file (its batches as JSON text, again as
    database images, and again with recent_keys merged into event_keys after every write)
    and on a new PostgreSQL schema."""
    if request.param == "postgres":
        return Backend("postgres", request.getfixturevalue("pg_url"))
    if request.param == "sqlite-staged":
        stage_every_batch(monkeypatch)
    if request.param == "sqlite-merging":
        monkeypatch.setattr(sqlitestore, "MERGE_AT", 1)
    return Backend("sqlite", str(db))


# --- writing ----------------------------------------------------------------------------------


def test_write_counts_accepted_duplicates_and_invalid(store: Store) -> None:
    result = store.write_batch([row(1), row(2), row(3)], invalid=2)
    assert (result.accepted, result.duplicates, result.invalid) == (3, 0, 2)
    assert result.per_batch == (3,)
    assert counters(store) == (5, 3, 0, 2)


def test_same_key_twice_in_one_batch_first_copy_wins(store: Store, backend: Backend) -> None:
    batch = [
        row(5, "b", payload={"copy": "first"}),
        row(1, "a"),
        row(5, "b", payload={"copy": "second"}, source="other"),
        row(5, "b", payload={"copy": "third"}),
    ]
    result = store.write_batch(batch)
    assert (result.accepted, result.duplicates) == (2, 2)
    stored = {(r[0], r[1]): r for r in backend.raw_rows()}
    assert json.loads(stored[("b", "e5")][4]) == {"copy": "first"}
    assert stored[("b", "e5")][3] == "test"


def test_duplicate_across_batches_is_dropped_whatever_its_payload(
    store: Store, backend: Backend
) -> None:
    store.write_batch([row(1, payload={"v": 1})])
    result = store.write_batch([row(1, payload={"v": 2}, timestamp="2030-01-01T00:00:00Z")])
    assert (result.accepted, result.duplicates) == (0, 1)
    ((_, _, timestamp, _, payload, _, _),) = backend.raw_rows()
    assert json.loads(payload) == {"v": 1}
    assert timestamp == "2025-01-01T00:00:01.000000Z"
    assert counters(store) == (2, 1, 1, 0)


def test_same_event_id_under_two_topics_is_two_events(store: Store) -> None:
    assert store.write_batch([row(1, "deploy"), row(1, "user.login")]).accepted == 2
    again = store.write_batch([row(1, "user.login"), row(1, "deploy"), row(1, "third")])
    assert (again.accepted, again.duplicates) == (1, 2)
    assert {t: s.events for t, s in store.stats().topics.items()} == {
        "deploy": 1,
        "user.login": 1,
        "third": 1,
    }


def test_a_batch_of_only_invalid_lines_is_counted(store: Store) -> None:
    result = store.write_batch([], invalid=4)
    assert (result.accepted, result.duplicates, result.invalid, result.per_batch) == (0, 0, 4, ())
    assert counters(store) == (4, 0, 0, 4)
    assert store.check().ok


def test_counters_invariant_holds_after_many_batches(store: Store, backend: Backend) -> None:
    keys: set[tuple[str, str]] = set()
    total_invalid = 0
    for b in range(20):  # more commits than FOLD_EVERY: deltas are folded on the way
        batch = [row((b * 7 + i) % 40, f"topic{i % 3}") for i in range(9)]
        keys.update((r[0], r[1]) for r in batch)
        store.write_batch(batch, invalid=b % 2)
        total_invalid += b % 2
        received, accepted, duplicates, invalid = counters(store)
        assert received == accepted + duplicates + invalid
        assert accepted == len(backend.raw_rows())
    assert counters(store) == (20 * 9 + total_invalid, len(keys), 20 * 9 - len(keys), total_invalid)
    assert store.check().ok


def test_topic_counts_and_first_last_follow_every_batch(store: Store) -> None:
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
    assert (topics["a"].events, topics["a"].first_timestamp, topics["a"].last_timestamp) == (
        4,
        "2024-12-31T23:00:00.000000Z",
        "2025-06-01T00:00:00.000000Z",
    )
    assert topics["b"].events == 1
    assert topics["b"].first_timestamp == topics["b"].last_timestamp
    store.write_batch([row(6, "a", timestamp="2025-04-01T00:00:00Z")])  # inside the range
    a = store.stats().topics["a"]
    assert (a.events, a.first_timestamp, a.last_timestamp) == (
        5,
        "2024-12-31T23:00:00.000000Z",
        "2025-06-01T00:00:00.000000Z",
    )


def test_payload_and_extra_are_returned_unchanged(store: Store) -> None:
    payload = {"z": 2**70, "a": [1.5, None, "é", "\u0000"], "nested": {"b": True}, "0": 1e-7}
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


def test_new_events_in_input_order_and_per_batch_counts(store: Store) -> None:
    store.write_batch([row(2, "b")])
    batches = [
        encode_rows([row(9, "z"), row(2, "b"), row(3, "a")]),
        encode_rows([]),
        encode_rows([row(1, "m"), row(9, "z"), row(0, "a")]),
    ]
    result = store.write_rows(batches, 1, new_events=True)
    assert result.per_batch == (2, 0, 2)
    assert (result.accepted, result.duplicates, result.invalid) == (4, 2, 1)
    assert [(e.topic, e.event_id) for e in result.new] == [
        ("z", "e9"),
        ("a", "e3"),
        ("m", "e1"),
        ("a", "e0"),
    ]
    assert all(e.ingested_at == result.new[0].ingested_at for e in result.new)
    assert store.write_rows(batches, new_events=True).new == ()


def test_checkpoints_round_trip_with_their_rows(store: Store) -> None:
    assert store.checkpoints() == {}
    first = Checkpoint("/var/log/a.log", 1, 2, 300, 4)
    store.write_rows([encode_rows([row(1)])], checkpoints=[first])
    moved = Checkpoint("/var/log/a.log", 1, 9, 10, 1)
    other = Checkpoint("/var/log/b.log", 2**40, 2**50, 2**41, 7)
    store.write_rows([], checkpoints=[other, moved])
    assert store.checkpoints() == {moved.path: moved, other.path: other}


def test_reopening_keeps_the_data(backend: Backend) -> None:
    with backend.open() as first:
        first.write_batch([row(1), row(2)])
    with open_store(backend.location, create=False) as second:
        assert counters(second) == (2, 2, 0, 0)
        assert [e.event_id for e in second.events(EventQuery(limit=None))] == ["e2", "e1"]


# --- listing ----------------------------------------------------------------------------------


def test_events_come_back_as_stored_events(store: Store) -> None:
    store.write_batch([row(1, payload={"a": 1})])
    (stored,) = store.events(EventQuery())
    assert isinstance(stored, StoredEvent)
    assert stored.timestamp == "2025-01-01T00:00:01.000000Z"
    assert stored.source == "test"
    assert stored.ingested_at.endswith("Z")


def test_events_of_an_empty_store(store: Store) -> None:
    assert list(store.events(EventQuery(limit=None))) == []


def fill(store: Store) -> None:
    """Three topics, two sources, equal timestamps across and within topics, two batches."""
    first, second = [], []
    for n in range(60):
        topic = ("alpha", "beta", "gamma")[n % 3]
        source = "web" if n % 4 else "job"
        when = f"2025-01-01T00:{n // 6:02d}:00Z"  # six events share each minute
        (first if n % 2 else second).append(
            row(n, topic, timestamp=when, source=source, payload={"n": n})
        )
    store.write_batch(first)
    store.write_batch(second)


def expected(backend: Backend, query: EventQuery) -> list[tuple[str, str]]:
    """What `events(query)` must return, computed in Python from the raw rows."""
    rows = [
        r
        for r in backend.raw_rows()
        if (query.topic is None or r[0] == query.topic)
        and (query.source is None or r[3] == query.source)
        and (query.since is None or r[2] >= query.since)
        and (query.until is None or r[2] < query.until)
    ]
    rows.sort(key=lambda r: (r[2], r[6]), reverse=query.newest_first)
    return [(r[0], r[1]) for r in rows[: query.limit]]


QUERIES = [
    EventQuery(),
    EventQuery(limit=None),
    EventQuery(limit=1),
    EventQuery(limit=7),
    EventQuery(topic="beta", limit=None),
    EventQuery(topic="beta", limit=3),
    EventQuery(topic="nope"),
    EventQuery(source="job", limit=None),
    EventQuery(source="web", topic="gamma", limit=None),
    EventQuery(since="2025-01-01T00:03:00.000000Z", limit=None),
    EventQuery(until="2025-01-01T00:03:00.000000Z", limit=None),
    EventQuery(since="2025-01-01T00:02:00.000000Z", until="2025-01-01T00:05:00.000000Z"),
    EventQuery(since="2025-01-01T00:02:00.000000Z", until="2025-01-01T00:02:00.000000Z"),
    EventQuery(source="web", since="2025-01-01T00:04:00.000000Z", limit=5),
]


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "single"])
def test_events_match_a_sort_in_python(
    store: Store, backend: Backend, monkeypatch: pytest.MonkeyPatch, merge: bool
) -> None:
    """Filters, both orders and limits; ties of timestamp in insertion order."""
    if not merge:
        monkeypatch.setattr(store_base, "MERGE_MAX_TOPICS", 1)
    fill(store)
    for base in QUERIES:
        for newest_first in (True, False):
            query = EventQuery(
                topic=base.topic,
                source=base.source,
                since=base.since,
                until=base.until,
                limit=base.limit,
                newest_first=newest_first,
            )
            got = [(e.topic, e.event_id) for e in store.events(query)]
            assert got == expected(backend, query), query


def test_since_is_inclusive_until_exclusive_and_limits(store: Store) -> None:
    store.write_batch([row(n, timestamp=f"2025-01-01T00:00:0{n}Z") for n in range(5)])
    store.write_batch([row(n) for n in range(10, 160)])
    query = EventQuery(
        since="2025-01-01T00:00:01.000000Z",
        until="2025-01-01T00:00:03.000000Z",
        newest_first=False,
    )
    assert [e.event_id for e in store.events(query)] == ["e1", "e2"]
    assert len(list(store.events(EventQuery()))) == 100
    assert len(list(store.events(EventQuery(limit=None)))) == 155


def test_many_topics_list_in_the_same_order(store: Store, backend: Backend) -> None:
    topics = store_base.MERGE_MAX_TOPICS + 6
    store.write_batch(
        [
            row(n, f"topic{n % topics:03d}", timestamp=f"2025-01-01T00:00:{n % 7:02d}Z")
            for n in range(300)
        ]
    )
    for query in (EventQuery(limit=None), EventQuery(limit=50, newest_first=False)):
        assert [(e.topic, e.event_id) for e in store.events(query)] == expected(backend, query)


# --- stats and check --------------------------------------------------------------------------


def test_stats_of_a_new_store_and_after_writes(store: Store, backend: Backend) -> None:
    s = store.stats()
    assert counters(store) == (0, 0, 0, 0)
    assert (s.topics, s.first_timestamp, s.last_timestamp, s.last_ingest_at) == (
        {},
        None,
        None,
        None,
    )
    assert s.size_bytes > 0
    if backend.name == "postgres":
        assert s.database == redact(backend.location) and PASSWORD not in s.database
    else:
        assert s.database == os.path.abspath(backend.location)
        assert s.size_bytes == os.path.getsize(backend.location) + (
            os.path.getsize(backend.location + "-wal")
            if os.path.exists(backend.location + "-wal")
            else 0
        )
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


def test_check_of_a_healthy_store(store: Store, backend: Backend) -> None:
    store.write_batch([row(1, "a"), row(2, "b"), row(1, "a")], invalid=3)
    result = store.check()
    assert result.ok, result.problems
    assert result.problems == []
    assert result.facts["rows"] == 2
    assert result.facts["received"] == 6
    assert result.facts["schema_version"] == backend.schema_version
    if backend.name == "postgres":  # amcheck is not installed in the shared database
        assert result.facts["integrity"] == "not verified (the amcheck extension is not installed)"
    else:
        assert result.facts["integrity"] == "ok"


# name: (SQLite statement, PostgreSQL statement, the problem `check` must name)
TAMPERING = {
    "received": ("UPDATE counters SET received = received + 1",) * 2 + ("counters disagree",),
    "invalid": ("UPDATE counters SET invalid = invalid + 2",) * 2 + ("counters disagree",),
    "accepted": (
        "UPDATE counters SET accepted = accepted + 1, received = received + 1",
        "UPDATE counters SET accepted = accepted + 1, received = received + 1",
        "unique_processed 4 != 3 rows",
    ),
    "topic": (
        "UPDATE topics SET events = events + 1 WHERE topic = 'a'",
        "INSERT INTO topic_deltas (topic, events, first_timestamp, last_timestamp)"
        " VALUES ('a', 1, '2025', '2025')",
        "topic 'a'",
    ),
    "deleted": ("DELETE FROM events WHERE event_id = 'e2'",) * 2 + ("3 != 2 rows",),
    "inserted": (
        "INSERT INTO events (topic, event_id, timestamp, source, payload, ingested_at)"
        " VALUES ('z', 'x', '2025-01-01T00:00:00.000000Z', 's', '{}', '2025')",
        'INSERT INTO events (topic, event_id, "timestamp", source, payload, ingested_at)'
        " VALUES ('z', 'x', '2025-01-01T00:00:00.000000Z', 's', '{}', '2025')",
        "topic 'z': counted 0, stored 1",
    ),
    "topics": ("DELETE FROM topics", "DELETE FROM topics; DELETE FROM topic_deltas")
    + ("topic counts sum to 0",),
}


@pytest.mark.parametrize("tamper", list(TAMPERING))
def test_check_detects_tampering(store: Store, backend: Backend, tamper: str) -> None:
    sqlite_sql, pg_statement, problem = TAMPERING[tamper]
    store.write_batch([row(1, "a"), row(2, "a"), row(3, "b")], invalid=1)
    backend.sql(pg_statement if backend.name == "postgres" else sqlite_sql)
    result = store.check()
    assert not result.ok
    assert any(problem in p for p in result.problems), result.problems


def test_check_detects_a_wrong_schema_version(store: Store, backend: Backend) -> None:
    backend.set_version(0)
    result = store.check()
    assert not result.ok
    assert f"schema version 0, expected {backend.schema_version}" in result.problems


def test_a_newer_schema_is_refused_and_left_alone(backend: Backend) -> None:
    with backend.open() as store:
        store.write_batch([row(1)])
    backend.set_version(99)
    with pytest.raises(SchemaVersionError, match="newer"):
        backend.open()
    assert backend.stored_version() == 99
    assert len(backend.raw_rows()) == 1


# --- several writers --------------------------------------------------------------------------


def test_two_stores_writing_at_once_never_lock_or_double_count(backend: Backend) -> None:
    """Two connections, two threads, overlapping keys: every key stored once."""
    backend.open().close()
    errors: list[BaseException] = []
    accepted = [0, 0]

    def writer(index: int) -> None:
        try:
            with backend.open() as mine:
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
    assert not errors, errors
    with backend.open() as store:
        received, unique, duplicates, _ = counters(store)
        assert unique == len(backend.raw_rows()) == sum(accepted)
        assert received == 2 * 30 * 15
        assert duplicates == received - unique
        assert store.check().ok


def test_concurrent_writers_in_opposite_key_orders_never_deadlock(backend: Backend) -> None:
    """Four stores, overlapping keys in different orders, several RowBatches a transaction:
    no deadlock, no lock error, every key once, counters exact."""
    backend.open().close()
    errors: list[BaseException] = []
    accepted = [0] * 4
    rng = random.Random(SEED)
    plans = []
    for index in range(4):
        keys = list(range(120))
        rng.shuffle(keys) if index >= 2 else keys.sort(reverse=index == 1)
        plans.append(keys)

    def writer(index: int) -> None:
        try:
            with backend.open() as mine:
                keys = plans[index]
                for b in range(0, len(keys), 30):
                    chunk = [row(k, f"t{k % 3}") for k in keys[b : b + 30]]
                    parts = [encode_rows(chunk[i : i + 10]) for i in range(0, 30, 10)]
                    accepted[index] += mine.write_rows(parts).accepted
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    with backend.open() as store:
        assert counters(store) == (480, 120, 360, 0)
        assert sum(accepted) == 120 == len(backend.raw_rows())
        assert store.check().ok


# --- the two backends side by side ------------------------------------------------------------


def test_both_backends_store_and_list_the_same(pg_url: str, tmp_path: Path) -> None:
    """The same batches into SQLite and PostgreSQL: identical listings and stats."""
    rng = random.Random(SEED)
    lines = list(generate(3000, topics=4, seed=SEED))
    docs = [json.loads(line) for line in lines]
    for doc in rng.sample(docs, 300):  # equal timestamps across and within topics
        doc["timestamp"] = "2025-01-01T00:00:01Z"
    rows = [event_from_fields(**d) for d in docs]
    sqlite_store = SQLiteStore.open(str(tmp_path / "a.db"))
    pg_store = PostgresStore.open(pg_url)
    with sqlite_store, pg_store:
        for start in range(0, len(rows), 400):
            part = rows[start : start + 400]
            batches = [encode_rows(part[i : i + 150]) for i in range(0, len(part), 150)]
            a = sqlite_store.write_rows(batches, 2, new_events=True)
            b = pg_store.write_rows(batches, 2, new_events=True)
            assert (a.accepted, a.duplicates, a.invalid, a.per_batch) == (
                b.accepted,
                b.duplicates,
                b.invalid,
                b.per_batch,
            )
            assert [e.to_json_bytes() for e in a.new] == [e.to_json_bytes() for e in b.new]
        for query in [
            EventQuery(limit=None),
            EventQuery(limit=None, newest_first=False),
            EventQuery(topic="topic.01", limit=None),
            EventQuery(since="2025-01-01T00:00:01.000000Z", limit=250, newest_first=False),
            EventQuery(source="gen-03", until="2025-01-01T00:00:02.000000Z", limit=None),
        ]:
            assert [e.to_json_bytes() for e in sqlite_store.events(query)] == [
                e.to_json_bytes() for e in pg_store.events(query)
            ], query
        a_stats, b_stats = sqlite_store.stats(), pg_store.stats()
        for name in ("counters", "topics"):
            assert getattr(a_stats, name) == getattr(b_stats, name), name
        assert list(a_stats.topics) == list(b_stats.topics)
