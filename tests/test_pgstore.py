"""The PostgreSQL store: the store contract on both backends, then real `logagg` processes
against a real server (started by tests/pg.py): re-ingest, four writers, kill -9, a server
restart mid-ingest, a refused password, and copying a store between backends."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import check_store, event, logagg_cmd, run_logagg, write_jsonl
from pg import PASSWORD, PgServer, admin_execute, fresh_database, pg_server  # noqa: F401

from logagg.errors import SchemaVersionError, StoreError
from logagg.gen import generate
from logagg.models import Checkpoint, Row, encode_rows, event_from_fields
from logagg.store import EventQuery
from logagg.store import base as store_base
from logagg.store import postgres as pgstore
from logagg.store import sqlite as store_module
from logagg.store.postgres import PostgresStore, describe, redact
from logagg.store.sqlite import SQLiteStore

SEED = int(os.environ.get("LOGAGG_TEST_SEED", "20250101"))
Store = SQLiteStore | PostgresStore


def row(n: int, topic: str = "t", **fields: Any) -> Row:
    """A validated event row numbered `n` (see conftest.event)."""
    return event_from_fields(**event(n, topic, **fields))


def pg_sql(url: str, statement: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the database at `url` in its own connection (autocommit)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


@dataclass
class Backend:
    """One store location and how to reach its tables without logagg."""

    name: str
    location: str

    def open(self, create: bool = True) -> Store:
        if self.name == "postgres":
            return PostgresStore.open(self.location, create=create)
        return SQLiteStore.open(self.location, create=create)

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        if self.name == "postgres":
            return pg_sql(self.location, statement)
        import sqlite3

        conn = sqlite3.connect(self.location)
        try:
            rows = conn.executescript(statement).fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()

    def raw_rows(self) -> list[tuple[Any, ...]]:
        """Every stored event (topic, event_id, timestamp, source, payload, extra, order)."""
        if self.name == "postgres":
            statement = (
                'SELECT topic, event_id, "timestamp", source, payload::text, extra::text, id'
                " FROM events"
            )
            return pg_sql(self.location, statement)
        import sqlite3

        with sqlite3.connect(self.location) as conn:
            return conn.execute(
                "SELECT topic, event_id, timestamp, source, payload, extra, rowid FROM events"
            ).fetchall()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "postgres":
        server: PgServer = request.getfixturevalue("pg_server")
        return Backend("postgres", fresh_database(server))
    return Backend("sqlite", str(tmp_path / "store.db"))


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    with backend.open() as opened:
        yield opened


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:  # noqa: F811
    return fresh_database(pg_server)


def counters(store: Store) -> tuple[int, int, int, int]:
    s = store.stats()
    return (s.counters.received, s.counters.accepted, s.counters.duplicates, s.counters.invalid)


# --- the contract, on both backends ---------------------------------------------------------


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
    assert list(s.topics) == ["b", "a", "c"]  # most events first, then by name
    assert s.first_timestamp == "2025-01-01T00:00:02.000000Z"
    assert s.last_timestamp == "2026-01-01T00:00:00.000000Z"
    assert s.last_ingest_at is not None and s.last_ingest_at.endswith("Z")


def test_check_of_a_healthy_store(store: Store) -> None:
    store.write_batch([row(1, "a"), row(2, "b"), row(1, "a")], invalid=3)
    result = store.check()
    assert result.ok, result.problems
    assert result.facts["rows"] == 2
    assert result.facts["received"] == 6
    assert result.facts["schema_version"] in (store_module.SCHEMA_VERSION, pgstore.SCHEMA_VERSION)


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
        "INSERT INTO events VALUES ('z', 'x', '2025-01-01T00:00:00.000000Z', 's', '{}',"
        " NULL, '2025-01-01T00:00:00.000000Z')",
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


def test_a_newer_schema_is_refused_and_left_alone(backend: Backend) -> None:
    with backend.open() as store:
        store.write_batch([row(1)])
    if backend.name == "postgres":
        backend.sql("UPDATE logagg_meta SET value = '99' WHERE key = 'schema_version'")
    else:
        backend.sql("PRAGMA user_version = 99")
    with pytest.raises(SchemaVersionError, match="newer"):
        backend.open()
    assert len(backend.raw_rows()) == 1


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


# --- PostgreSQL only ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw-123@db.example:5432/logs", "postgresql://u:***@db.example:5432/logs"),
        ("postgres://u@db/logs", "postgres://u@db/logs"),
        ("postgresql://db:5432/logs", "postgresql://db:5432/logs"),
        ("postgresql://u:p%40ss-word@db/logs", "postgresql://u:***@db/logs"),
        ("postgresql://u:p@ss/wd@db/logs", "postgresql://u:***@db/logs"),
        (
            "postgresql://db/logs?sslmode=require&password=hunter22&x=1",
            "postgresql://db/logs?sslmode=require&password=***&x=1",
        ),
    ],
)
def test_redact_hides_every_form_of_password(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_a_message_quoting_the_url_never_shows_the_password() -> None:
    url = "postgresql://u:hunter22@db/logs"
    message = describe(psycopg.OperationalError(f"bad dsn {url} and hunter22 again"), url)
    assert "hunter22" not in message
    assert message.startswith("postgresql://u:***@db/logs: ")
    assert "\n" not in message


def test_the_schema_is_versioned_in_logagg_meta(pg_url: str) -> None:
    with PostgresStore.open(pg_url) as store:
        store.write_batch([row(1)])
    meta = dict(pg_sql(pg_url, "SELECT key, value FROM logagg_meta"))
    assert meta["schema_version"] == str(pgstore.SCHEMA_VERSION)
    assert meta["created_at"].endswith("Z")


def test_several_openers_of_a_new_database_create_one_schema(pg_url: str) -> None:
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            with PostgresStore.open(pg_url) as store:
                store.write_batch([row(1)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    with PostgresStore.open(pg_url, create=False) as store:
        assert counters(store) == (6, 1, 5, 0)


def test_a_database_without_a_store_is_not_created_for_reading(pg_url: str) -> None:
    with pytest.raises(StoreError, match="no logagg store"):
        PostgresStore.open(pg_url, create=False)
    assert pg_sql(pg_url, "SELECT to_regclass('logagg_meta')") == [(None,)]


def test_tables_of_another_application_are_refused_and_left_alone(pg_url: str) -> None:
    pg_sql(pg_url, "CREATE TABLE events (name text)")
    pg_sql(pg_url, "INSERT INTO events VALUES ('ada')")
    with pytest.raises(SchemaVersionError, match="'events'"):
        PostgresStore.open(pg_url)
    assert pg_sql(pg_url, "SELECT name FROM events") == [("ada",)]
    assert pg_sql(pg_url, "SELECT to_regclass('logagg_meta')") == [(None,)]


def test_a_name_with_u0000_is_counted_invalid_and_its_batch_stored(pg_url: str) -> None:
    """PostgreSQL text cannot hold U+0000: that row is invalid, the rest of the batch is kept."""
    with PostgresStore.open(pg_url) as store:
        result = store.write_batch([row(1), row(2, "a\u0000b"), row(3, source="x\u0000")])
        assert (result.accepted, result.duplicates, result.invalid) == (1, 0, 2)
        assert counters(store) == (3, 1, 0, 2)
        assert store.check().ok


def test_stats_reads_no_events(pg_url: str, pg_server: PgServer) -> None:  # noqa: F811
    """A role that may not read `events` still gets stats (and not a listing)."""
    with PostgresStore.open(pg_url) as store:
        store.write_batch([row(n, f"t{n % 2}") for n in range(10)])
    role = f"reader_{os.getpid()}_{time.monotonic_ns()}"
    admin_execute(pg_server, f"CREATE ROLE {role} LOGIN PASSWORD 'reader-pw'")
    pg_sql(pg_url, f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    pg_sql(pg_url, f"REVOKE SELECT ON events FROM {role}")
    database = pg_url.rsplit("/", 1)[1]
    reader_url = f"postgresql://{role}:reader-pw@127.0.0.1:{pg_server.port}/{database}"
    with PostgresStore.open(reader_url, create=False) as reader:
        s = reader.stats()
        assert (s.counters.accepted, {t: x.events for t, x in s.topics.items()}) == (
            10,
            {"t0": 5, "t1": 5},
        )
        with pytest.raises(StoreError, match="permission denied"):
            list(reader.events(EventQuery(topic="t0")))


def test_deltas_are_folded_and_stats_stay_exact(pg_url: str) -> None:
    with PostgresStore.open(pg_url) as store:
        for n in range(pgstore.FOLD_EVERY + 3):
            store.write_batch([row(n, f"t{n % 2}"), row(n, f"t{n % 2}")], invalid=1)
        pending = pg_sql(pg_url, "SELECT count(*) FROM counter_deltas")[0][0]
        assert 0 < pending < pgstore.FOLD_EVERY
        assert counters(store) == (3 * 19, 19, 19, 19)
    assert pg_sql(pg_url, "SELECT count(*) FROM counter_deltas") == [(0,)]  # folded on close
    assert pg_sql(pg_url, "SELECT count(*) FROM topic_deltas") == [(0,)]
    assert pg_sql(pg_url, "SELECT received, accepted FROM counters") == [(57, 19)]
    with PostgresStore.open(pg_url) as store:
        assert store.stats().topics["t0"].events == 10
        assert store.check().ok


def test_writers_wait_neither_for_each_other_nor_for_a_fold(pg_url: str) -> None:
    """Another writer's uncommitted rows and deltas in the same topic, and a fold holding
    the base counter and topic rows: this writer waits for none of them (any lock wait
    fails at once here), and the counts are exact once they commit."""
    with PostgresStore.open(pg_url) as store:
        store.write_batch([row(0, "t")])  # folded on close: the base rows exist
    when = "2025-01-01T00:00:00.000000Z"
    other = psycopg.connect(pg_url)  # a transaction left open
    try:
        other.execute("SELECT pg_advisory_xact_lock(%s)", [pgstore.LOCK_FOLD])
        other.execute("SELECT * FROM counters FOR UPDATE")
        other.execute("SELECT * FROM topics FOR UPDATE")
        other.execute(
            'INSERT INTO events (topic, event_id, "timestamp", source, payload, ingested_at)'
            " VALUES ('t', 'held', %s, 's', '{}', %s)",
            [when, when],
        )
        other.execute(
            "INSERT INTO topic_deltas (topic, events, first_timestamp, last_timestamp)"
            " VALUES ('t', 1, %s, %s)",
            [when, when],
        )
        other.execute(
            "INSERT INTO counter_deltas (received, accepted, duplicates, invalid, at)"
            " VALUES (1, 1, 0, 0, %s)",
            [when],
        )
        impatient = pg_url + "?options=-c%20lock_timeout%3D200"
        with PostgresStore.open(impatient) as store:
            for n in range(1, pgstore.FOLD_EVERY + 2):  # the last one tries to fold first
                store.write_batch([row(n, "t")])
            assert counters(store)[:2] == (pgstore.FOLD_EVERY + 2,) * 2
    finally:
        other.commit()
        other.close()
    with PostgresStore.open(pg_url) as store:
        assert counters(store)[:2] == (pgstore.FOLD_EVERY + 3,) * 2
        assert store.stats().topics["t"].events == pgstore.FOLD_EVERY + 3
        assert store.check().ok


def test_check_verifies_indexes_with_amcheck_when_installed(pg_url: str) -> None:
    with PostgresStore.open(pg_url) as store:
        store.write_batch([row(1)])
        assert "not verified" in store.check().facts["integrity"]
        pg_sql(pg_url, "CREATE EXTENSION amcheck")
        result = store.check()
        assert result.ok and result.facts["integrity"] == "ok"


def test_a_lost_connection_is_a_one_line_store_error(pg_url: str) -> None:
    with PostgresStore.open(pg_url) as store:
        store.write_batch([row(1)])
        pg_sql(
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'logagg' AND datname = current_database()",
        )
        with pytest.raises(StoreError) as caught:
            store.write_batch([row(2)])
    message = str(caught.value)
    assert "lost the connection" in message and "\n" not in message
    assert PASSWORD not in message
    with PostgresStore.open(pg_url) as store:
        assert counters(store) == (1, 1, 0, 0)


def test_unreachable_server_and_refused_password_are_one_line_errors(
    pg_server: PgServer,  # noqa: F811
) -> None:
    with pytest.raises(StoreError, match="cannot connect") as caught:
        PostgresStore.open(f"postgresql://u:{PASSWORD}@127.0.0.1:1/x")
    assert PASSWORD not in str(caught.value)
    with pytest.raises(StoreError, match="authentication refused") as caught:
        PostgresStore.open(pg_server.url("postgres", password="wrong-" + PASSWORD))
    assert PASSWORD not in str(caught.value) and "\n" not in str(caught.value)


# --- real processes through the CLI ---------------------------------------------------------


def _gen(path: Path, count: int, seed: int) -> set[tuple[str, str]]:
    """Write `count` generated lines (with re-sends) to `path`; return their keys."""
    keys = set()
    with open(path, "w") as out:
        for line in generate(count, seed=seed):
            out.write(line)
            doc = json.loads(line)
            keys.add((doc["topic"], doc["event_id"]))
    return keys


def _stored_keys(db: str) -> list[tuple[str, str]]:
    proc = run_logagg("events", "--db", db, "--all", "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr.decode()
    return [(d["topic"], d["event_id"]) for d in map(json.loads, proc.stdout.splitlines())]


def _rows(url: str) -> int:
    try:
        return int(pg_sql(url, "SELECT count(*) FROM events")[0][0])
    except psycopg.Error:
        return 0


def _wait_for(condition: Callable[[], bool], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def _one_line_error(proc: subprocess.CompletedProcess[bytes], *words: str) -> str:
    lines = [x for x in proc.stderr.decode().splitlines() if x.strip()]
    assert proc.returncode == 1, (proc.returncode, lines)
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0] and PASSWORD not in lines[0]
    assert any(w in lines[0] for w in words), lines[0]
    return lines[0]


def test_cli_ingest_then_reingest_accepts_nothing(pg_url: str, tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    unique = _gen(data, 6000, SEED)
    first = run_logagg("ingest", "--db", pg_url, "--json", "--batch-size", "1000", data)
    assert first.returncode == 0, first.stderr.decode()
    assert json.loads(first.stdout)["accepted"] == len(unique)
    again = run_logagg("ingest", "--db", pg_url, "--json", data)
    assert again.returncode == 0, again.stderr.decode()
    report = json.loads(again.stdout)
    assert (report["accepted"], report["duplicates"]) == (0, 6000)
    assert check_store(pg_url)["unique_processed"] == len(unique)  # type: ignore[arg-type]
    stats = json.loads(run_logagg("stats", "--db", pg_url, "--json").stdout)
    assert stats["received"] == 12000 and PASSWORD not in json.dumps(stats)
    published = run_logagg("publish", "--db", pg_url, "--topic", "deploy", "--event-id", "b1")
    assert published.returncode == 0 and b"accepted" in published.stdout
    repeated = run_logagg("publish", "--db", pg_url, "--topic", "deploy", "--event-id", "b1")
    assert repeated.returncode == 0 and b"duplicate" in repeated.stdout


def test_cli_four_concurrent_ingests_with_overlapping_inputs(pg_url: str, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    pool = list(generate(16_000, seed=SEED + 1))
    inputs = []
    for i in range(4):
        lines = rng.sample(pool, 9000) + ["not an event\n"]
        path = tmp_path / f"in{i}.jsonl"
        path.write_text("".join(lines))
        inputs.append(lines)
    union = {(d["topic"], d["event_id"]) for ls in inputs for d in map(json.loads, ls[:-1])}
    total = sum(len(lines) for lines in inputs)
    writers = [
        subprocess.Popen(
            logagg_cmd("ingest", "--db", pg_url, "--batch-size", "500", "--json", "--quiet", p),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for p in (tmp_path / f"in{i}.jsonl" for i in range(4))
    ]
    outputs = [w.communicate(timeout=120) for w in writers]
    for w, (_, err) in zip(writers, outputs, strict=True):
        assert w.returncode == 0, err.decode()
    reports = [json.loads(out) for out, _ in outputs]
    assert sum(r["accepted"] for r in reports) == len(union), reports
    assert sum(r["received"] for r in reports) == total
    assert sum(r["invalid"] for r in reports) == 4
    keys = _stored_keys(pg_url)
    assert len(keys) == len(set(keys)) and set(keys) == union
    facts = check_store(pg_url)  # type: ignore[arg-type]
    assert (facts["received"], facts["unique_processed"], facts["invalid"]) == (
        total,
        len(union),
        4,
    )


def test_cli_kill_9_mid_ingest_then_rerun_is_exact(pg_url: str, tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    unique = _gen(data, 60_000, SEED + 2)
    for round_no in range(2):
        proc = subprocess.Popen(
            logagg_cmd("ingest", "--db", pg_url, "--batch-size", "700", "--quiet", data),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        target = 2000 + round_no * 15_000
        try:
            _wait_for(lambda t=target, p=proc: _rows(pg_url) >= t or p.poll() is not None)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        facts = check_store(pg_url)  # type: ignore[arg-type]
        assert target <= facts["rows"] < len(unique), f"seed {SEED}, round {round_no}: {facts}"
    final = run_logagg("ingest", "--db", pg_url, "--json", data)
    assert final.returncode == 0, final.stderr.decode()
    keys = _stored_keys(pg_url)
    assert len(keys) == len(set(keys)) and set(keys) == unique
    assert check_store(pg_url)["unique_processed"] == len(unique)  # type: ignore[arg-type]


def test_cli_server_restarted_mid_ingest(
    pg_server: PgServer,  # noqa: F811
    pg_url: str,
    tmp_path: Path,
) -> None:
    """A live pipe into the store while the server restarts: a one-line error and exit 1,
    every committed batch kept, and re-running the same input completes the store."""
    data = tmp_path / "in.jsonl"
    unique = _gen(data, 30_000, SEED + 3)
    lines = data.read_bytes().splitlines(keepends=True)
    proc = subprocess.Popen(
        logagg_cmd(
            "ingest", "-", "--db", pg_url, "--batch-size", "500", "--flush-interval", "0.05"
        ),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    stop = threading.Event()

    def feed() -> None:
        assert proc.stdin is not None
        try:
            for start in range(0, len(lines), 500):
                proc.stdin.write(b"".join(lines[start : start + 500]))
                proc.stdin.flush()
                if stop.wait(0.01):
                    break
            proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        _wait_for(lambda: _rows(pg_url) >= 3000)
        pg_server.stop("fast")
        pg_server.start()
        _, err = proc.communicate(timeout=60)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
        feeder.join(30)
        if not pg_server.running():
            pg_server.start()
    failed = subprocess.CompletedProcess(proc.args, proc.returncode, b"", err)
    assert "lost the connection" in _one_line_error(failed, "PostgreSQL")
    facts = check_store(pg_url)  # type: ignore[arg-type]
    assert 3000 <= facts["rows"] < len(unique)
    final = run_logagg("ingest", "--db", pg_url, "--json", data)
    assert final.returncode == 0, final.stderr.decode()
    keys = _stored_keys(pg_url)
    assert len(keys) == len(set(keys)) and set(keys) == unique
    assert check_store(pg_url)["unique_processed"] == len(unique)  # type: ignore[arg-type]


def test_cli_refused_password_and_unreachable_server_never_show_the_password(
    pg_server: PgServer,  # noqa: F811
    pg_url: str,
    tmp_path: Path,
) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", [event(1)])
    wrong = pg_url.replace(PASSWORD, "wrong-" + PASSWORD)
    for command in (
        ["ingest", data],
        ["stats"],
        ["events"],
        ["check"],
        ["publish", "--topic", "x"],
    ):
        proc = run_logagg(*command, "--db", wrong)
        _one_line_error(proc, "authentication refused")
        assert PASSWORD not in proc.stdout.decode()
    unreachable = f"postgresql://u:{PASSWORD}@127.0.0.1:1/x"
    _one_line_error(run_logagg("stats", "--db", unreachable), "cannot connect")
    helped = run_logagg("ingest", "--help", env={"LOGAGG_DB": pg_url})
    assert helped.returncode == 0 and PASSWORD not in helped.stdout.decode()


def test_cli_copy_a_store_between_backends_through_a_pipe(pg_url: str, tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    _gen(data, 3000, SEED + 4)
    sqlite_db = tmp_path / "a.db"
    assert run_logagg("ingest", "--db", sqlite_db, "--quiet", data).returncode == 0
    dump = run_logagg("events", "--all", "--format", "jsonl", "--db", sqlite_db)
    assert dump.returncode == 0
    into_pg = run_logagg("ingest", "-", "--db", pg_url, "--json", input=dump.stdout)
    assert into_pg.returncode == 0, into_pg.stderr.decode()
    from_pg = run_logagg("events", "--all", "--format", "jsonl", "--db", pg_url)
    assert from_pg.stdout == dump.stdout  # the same events, the same order, the same bytes
    back = tmp_path / "b.db"
    assert run_logagg("ingest", "-", "--db", back, "--quiet", input=from_pg.stdout).returncode == 0
    again = run_logagg("events", "--all", "--format", "jsonl", "--db", back)
    assert again.stdout == dump.stdout
    check_store(pg_url)  # type: ignore[arg-type]


def test_serve_on_a_postgresql_store(pg_url: str, tmp_path: Path) -> None:
    """The HTTP face works the same on PostgreSQL, and never logs the password."""
    from test_serve import Server

    log = tmp_path / "serve.log"
    server = Server(pg_url, log).start()  # type: ignore[arg-type]
    try:
        assert server.http is not None
        first = server.http.post("/publish", json=event(1)).json()
        again = server.http.post("/publish", json=event(1)).json()
        assert (first["accepted"], again["duplicates"]) == (1, 1)
        stats = server.http.get("/stats").json()
        counts = (stats["received"], stats["unique_processed"], stats["duplicate_dropped"])
        assert counts == (2, 1, 1)
        listed = server.http.get("/events", params={"topic": "t"}).json()
        assert [e["event_id"] for e in listed["events"]] == ["e1"]
    finally:
        server.kill()
    assert PASSWORD not in log.read_text()
    check_store(pg_url)  # type: ignore[arg-type]
