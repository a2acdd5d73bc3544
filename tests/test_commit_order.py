"""Positions in commit order and cursors, on both backends: `read_after` never skips an
event, also while writers that took lower positions are still in flight (PostgreSQL)."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
from helpers import SEED, Backend, pg_sql, row, wait_until
from pg import PgServer, drop_schema, fresh_schema

from logagg.models import encode_rows
from logagg.store import EventQuery, Store


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, db: Path) -> Backend:
    if request.param == "postgres":
        return Backend("postgres", request.getfixturevalue("pg_url"))
    return Backend("sqlite", str(db))


ALL = EventQuery(limit=None)


def drain(store: Store, position: int, query: EventQuery = ALL, page: int = 1000) -> list:
    events = []
    while True:
        found = store.read_after(position, query, page)
        events += found.events
        assert found.next >= position
        position = found.next
        if not found.full:
            return events


def test_positions_follow_commit_order_and_pages_continue(store: Store) -> None:
    store.write_batch([row(3, "b"), row(1, "a"), row(2, "a")])
    store.write_batch([row(0, "c"), row(1, "a")])
    first = store.read_after(0, ALL, 2)
    assert [e.event_id for e in first.events] == ["e3", "e1"]
    assert first.full and first.next == first.events[-1].seq
    rest = store.read_after(first.next, ALL, 10)
    assert [e.event_id for e in rest.events] == ["e2", "e0"]
    assert not rest.full
    seqs = [e.seq for e in (*first.events, *rest.events)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    assert store.read_after(rest.next, ALL, 10).events == ()
    store.write_batch([row(9, "a")])
    (late,) = store.read_after(rest.next, ALL, 10).events
    assert late.event_id == "e9" and late.seq is not None and late.seq > rest.next


def test_filters_apply_and_the_position_still_moves_past_what_they_leave_out(
    store: Store,
) -> None:
    store.write_batch([row(n, "a" if n % 2 else "b") for n in range(10)])
    only_a = store.read_after(0, EventQuery(topic="a"), 100)
    assert [e.event_id for e in only_a.events] == ["e1", "e3", "e5", "e7", "e9"]
    everything = store.read_after(0, ALL, 100)
    assert only_a.next == everything.next == everything.events[-1].seq
    store.write_batch([row(20, "b")])
    assert store.read_after(only_a.next, EventQuery(topic="a"), 100).events == ()


def test_start_position_of_the_last_matches_and_since(store: Store) -> None:
    store.write_batch([row(n, "a" if n < 5 else "b") for n in range(10)])
    start = store.start_position(EventQuery(topic="a"), 2)
    assert [e.event_id for e in drain(store, start, EventQuery(topic="a"))] == ["e3", "e4"]
    assert drain(store, store.start_position(ALL, 100)) == drain(store, 0)
    since = EventQuery(since="2025-01-01T00:00:07.000000Z")
    got = drain(store, store.start_position(since, None), since)
    assert [e.event_id for e in got] == ["e7", "e8", "e9"]


def test_a_replaced_event_moves_to_a_new_position(store: Store) -> None:
    store.write_batch([row(1), row(2)])
    seen = store.read_after(0, ALL, 100)
    store.configure(keep_last=True)
    store.write_batch([row(1, payload={"v": 2})])
    (moved,) = store.read_after(seen.next, ALL, 100).events
    assert (moved.event_id, moved.payload_json) == ("e1", '{"v":2}')
    assert [e.event_id for e in drain(store, 0)] == ["e2", "e1"]


def test_cursors_are_kept_never_move_back_and_count_their_lag(store: Store) -> None:
    assert store.cursor("c") is None and store.cursors() == []
    store.write_batch([row(n) for n in range(5)])
    page = store.read_after(0, ALL, 3)
    store.save_cursor("c", page.next)
    store.save_cursor("c", 1)  # an older position: ignored
    store.save_cursor("other", 0)
    assert store.cursor("c") == page.next
    listed = {c.name: (c.position, c.lag) for c in store.cursors()}
    assert listed == {"c": (page.next, 2), "other": (0, 5)}
    assert store.delete_cursor("c") and not store.delete_cursor("c")
    assert [c.name for c in store.cursors()] == ["other"]


def test_pruned_events_are_passed_over(store: Store) -> None:
    store.write_batch([row(n) for n in range(6)])
    store.prune("2025-01-01T00:00:03Z")
    got = store.read_after(0, ALL, 100)
    assert [e.event_id for e in got.events] == ["e3", "e4", "e5"]


def test_concurrent_writers_and_a_follower_that_never_skips(backend: Backend) -> None:
    """Three writers commit batches of random sizes while a follower reads after its last
    position as fast as it can: every event it is given comes once, in order, and after
    the writers stop and it drains, it has been given every stored event."""
    backend.open().close()
    rng = random.Random(SEED)
    plans = [[rng.randint(1, 300) for _ in range(25)] for _ in range(3)]
    done = threading.Event()
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            with backend.open() as mine:
                for b, size in enumerate(plans[index]):
                    rows = [row(b * 1000 + i, f"w{index}") for i in range(size)]
                    half = size // 2 or 1
                    mine.write_rows([encode_rows(rows[:half]), encode_rows(rows[half:])])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    delivered: list = []
    with backend.open() as follower:
        for thread in threads:
            thread.start()
        position = 0

        def writers_done() -> bool:
            return not any(t.is_alive() for t in threads)

        while not done.is_set():
            finished = writers_done()
            page = follower.read_after(position, ALL, 500)
            delivered += page.events
            position = page.next
            if finished and not page.full:
                done.set()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        seqs = [e.seq for e in delivered]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)), "out of order or twice"
        stored = {(r[0], r[1]): r[6] for r in backend.raw_rows()}
        assert len(stored) == sum(sum(p) for p in plans)
        assert {(e.topic, e.event_id): e.seq for e in delivered} == stored, "skipped an event"
        assert follower.check().ok


# --- PostgreSQL: a writer in flight holds the horizon back ------------------------------------

HOLD_KEY = 4242_4242  # the test holds this advisory lock; the slow writer waits for it


def hold_slow_inserts(url: str) -> None:
    """Make an insert of event_id 'slow' into the store at `url` wait, inside its write
    transaction, until the test lets go of HOLD_KEY."""
    pg_sql(
        url,
        "CREATE FUNCTION hold() RETURNS trigger LANGUAGE plpgsql AS"
        f" $$ BEGIN PERFORM pg_advisory_xact_lock({HOLD_KEY}); RETURN NEW; END $$;"
        " CREATE TRIGGER hold BEFORE INSERT ON events FOR EACH ROW"
        " WHEN (NEW.event_id = 'slow') EXECUTE FUNCTION hold()",
    )


def slow_inserts_waiting(url: str) -> int:
    """How many inserts of 'slow' wait for HOLD_KEY (in the whole database)."""
    waiting = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        f" AND objid = {HOLD_KEY}"
    )
    return int(pg_sql(url, waiting)[0][0])


def test_a_writer_in_flight_holds_back_what_a_follower_may_read(pg_url: str) -> None:
    """A's transaction takes its position, then waits inside its insert; B takes higher
    positions and commits. A follower must not pass A's position until A commits: then
    it is given A's event and B's, none skipped."""
    import psycopg

    from logagg.store.postgres import PostgresStore

    PostgresStore.open(pg_url).close()
    hold_slow_inserts(pg_url)
    holder = psycopg.connect(pg_url, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", [HOLD_KEY])
    a_done = threading.Event()

    def slow_writer() -> None:
        with PostgresStore.open(pg_url) as a:
            a.write_batch([row(1, event_id="slow")])
        a_done.set()

    thread = threading.Thread(target=slow_writer)
    try:
        with PostgresStore.open(pg_url) as b, PostgresStore.open(pg_url) as follower:
            thread.start()
            wait_until(lambda: slow_inserts_waiting(pg_url) == 1, 20, "A to wait in its insert")
            b.write_batch([row(2), row(3)])
            early = follower.read_after(0, ALL, 100)
            assert early.events == (), "read past a writer in flight"
            assert not a_done.is_set()
            holder.execute("SELECT pg_advisory_unlock(%s)", [HOLD_KEY])
            thread.join(20)
            assert a_done.is_set()
            late = drain(follower, early.next)
            assert sorted(e.event_id for e in late) == ["e2", "e3", "slow"]
            assert late[0].event_id == "slow"  # it took its position first
    finally:
        holder.close()
        thread.join(20)


def test_reads_in_narrow_windows_skip_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where positions have only a BRIN index (PostgreSQL), a read covers a window of them;
    with a tiny window, and gaps left by duplicates, every event still comes once."""
    monkeypatch.setattr(type(store), "_SPAN", 5)
    for b in range(10):
        store.write_batch([row(n) for n in range(b * 3, b * 3 + 6)])  # half are duplicates
    expected = [e.event_id for e in drain(store, 0, page=1000)]
    assert len(expected) == 33
    monkeypatch.setattr(type(store), "_SPAN", 1)
    assert [e.event_id for e in drain(store, 0, page=2)] == expected
    start = store.start_position(ALL, 7)
    assert [e.event_id for e in drain(store, start, page=2)] == expected[-7:]


def test_a_writer_in_flight_on_another_store_of_the_database_holds_nothing_back(
    pg_url: str, pg_server: PgServer, pg_shared_database: str
) -> None:
    """Stores in two schemas of one database: a write transaction of one that is still in
    flight must not keep a follower of the other from reading what it committed."""
    import psycopg

    from logagg.store.postgres import PostgresStore

    other = fresh_schema(pg_server, pg_shared_database)
    try:
        PostgresStore.open(other).close()
        hold_slow_inserts(other)
        holder = psycopg.connect(pg_url, autocommit=True)
        holder.execute("SELECT pg_advisory_lock(%s)", [HOLD_KEY])

        def slow_writer() -> None:
            with PostgresStore.open(other) as elsewhere:
                elsewhere.write_batch([row(1, event_id="slow")])

        thread = threading.Thread(target=slow_writer)
        try:
            with PostgresStore.open(pg_url) as ours, PostgresStore.open(pg_url) as follower:
                thread.start()
                wait_until(lambda: slow_inserts_waiting(pg_url) == 1, 20, "the other to wait")
                ours.write_batch([row(2), row(3)])
                seen = follower.read_after(0, ALL, 100)
                assert sorted(e.event_id for e in seen.events) == ["e2", "e3"]
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", [HOLD_KEY])
            holder.close()
            thread.join(20)
    finally:
        drop_schema(pg_server, other)
