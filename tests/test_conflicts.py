"""Conflicts on both backends: a duplicate whose content differs from the stored copy is
counted and recorded; keep-first never changes the stored row, keep-last replaces it (also
under concurrent writers); the same hashes on both stores; the command line."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pytest
from conftest import check_store, event, run_logagg, write_jsonl
from helpers import SEED, Backend, row

from logagg.models import content_hash, encode_rows, hash_text
from logagg.store import EventQuery, Store


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, db: Path) -> Backend:
    if request.param == "postgres":
        return Backend("postgres", request.getfixturevalue("pg_url"))
    return Backend("sqlite", str(db))


def healthy(store: Store) -> dict:
    result = store.check()
    assert result.ok, result.problems
    return result.facts


def stored(backend: Backend) -> dict[tuple[str, str], tuple]:
    return {(r[0], r[1]): r for r in backend.raw_rows()}


def digest(r: tuple) -> int:
    """The content hash of a row of `Backend.raw_rows`."""
    return content_hash(r[2], r[3], r[4], r[5])


def test_keep_first_counts_and_records_and_never_changes_the_stored_row(
    store: Store, backend: Backend
) -> None:
    store.write_batch([row(1, payload={"v": 1}), row(2)])
    before = stored(backend)
    same = store.write_batch([row(1, payload={"v": 1})])
    assert (same.duplicates, same.conflicts) == (1, 0)
    other = store.write_batch([row(1, payload={"v": 2}), row(1, source="elsewhere")])
    assert (other.accepted, other.duplicates, other.conflicts) == (0, 2, 2)
    assert stored(backend) == before
    (record,) = store.conflicts()
    first = before[("t", "e1")]
    last = row(1, source="elsewhere")
    assert (record.topic, record.event_id, record.copies) == ("t", "e1", 2)
    assert record.first_hash == digest(first)
    assert record.last_hash == content_hash(last[2], last[3], last[4], last[5])
    assert record.first_seen <= record.last_seen
    stats = store.stats()
    assert (stats.counters.conflicts, stats.topics["t"].conflicts) == (2, 2)
    assert healthy(store)["conflicts"] == 2


@pytest.mark.parametrize(("keep_last", "expected"), [(False, 1), (True, 2)])
def test_copies_in_one_batch_are_compared_in_input_order(
    store: Store, backend: Backend, keep_last: bool, expected: int
) -> None:
    """a, b, a of one new key: keep-first stores a and meets one conflict (b); keep-last
    stores a, then b replaces it, then a replaces b: two."""
    store.configure(keep_last=keep_last)
    a, b = row(1, payload={"v": "a"}), row(1, payload={"v": "b"})
    result = store.write_rows([encode_rows([a, b]), encode_rows([row(2), a])])
    assert (result.accepted, result.duplicates, result.conflicts) == (2, 2, expected)
    assert result.per_batch == (1, 1)
    assert json.loads(stored(backend)[("t", "e1")][4]) == {"v": "a"}
    assert healthy(store)["conflicts"] == expected


def test_keep_last_replaces_the_stored_copy_and_widens_its_topic(
    store: Store, backend: Backend
) -> None:
    store.write_batch([row(1), row(2)])
    store.configure(keep_last=True)
    newer = row(1, payload={"v": 2}, timestamp="2026-06-01T00:00:00Z", host="b")
    result = store.write_batch([newer, row(2)])
    assert (result.accepted, result.duplicates, result.conflicts) == (0, 2, 1)
    (event_,) = [e for e in store.events(EventQuery(limit=None)) if e.event_id == "e1"]
    assert json.loads(event_.to_json_bytes()) == {
        **json.loads(event_.to_json_bytes()),
        "payload": {"v": 2},
        "timestamp": "2026-06-01T00:00:00.000000Z",
        "host": "b",
    }
    assert store.stats().topics["t"].last_timestamp == "2026-06-01T00:00:00.000000Z"
    (record,) = store.conflicts()
    assert record.last_hash == digest(stored(backend)[("t", "e1")])
    healthy(store)


@pytest.mark.parametrize("keep_last", [False, True], ids=["keep-first", "keep-last"])
def test_concurrent_writers_sending_other_copies(backend: Backend, keep_last: bool) -> None:
    """Three writers send the same keys, each with its own payload, in its own order: every
    copy after the first one committed conflicts with the copy stored then (also when
    another writer stored the key while this one was writing), and the store ends with
    one writer's copy per key: the first one (keep-first) or the one the conflict record
    names last (keep-last)."""
    backend.open().close()
    rng = random.Random(SEED)
    keys = list(range(60))
    plans = []
    for _ in range(3):
        order = keys[:]
        rng.shuffle(order)
        plans.append(order)
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            with backend.open() as mine:
                mine.configure(keep_last=keep_last)
                order = plans[index]
                for at in range(0, len(order), 7):
                    part = [row(k, f"t{k % 2}", payload={"w": index}) for k in order[at : at + 7]]
                    mine.write_batch(part)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    with backend.open() as store:
        facts = healthy(store)
        assert (facts["unique_processed"], facts["duplicate_dropped"]) == (60, 120)
        assert facts["conflicts"] == 120
        records = {(c.topic, c.event_id): c for c in store.conflicts()}
        rows = stored(backend)
        assert set(records) == set(rows)
        for found_key, found in rows.items():
            assert records[found_key].copies == 2
            kept = records[found_key].last_hash if keep_last else records[found_key].first_hash
            assert kept == digest(found)
            assert json.loads(found[4])["w"] in (0, 1, 2)
        topics = store.stats().topics
        assert topics["t0"].conflicts + topics["t1"].conflicts == 120


def test_both_backends_give_the_same_hashes(pg_url: str, tmp_path: Path) -> None:
    """Conflict records and tombstones name content by the same number on both stores:
    PostgreSQL's md5() in SQL and Python's hashlib agree, byte for byte."""
    from logagg.store.postgres import PostgresStore
    from logagg.store.sqlite import SQLiteStore

    tricky = {"é": "ünï\u2028", "n": 1.50, "big": 2**70, "nul": "\u0000"}
    first = [row(1, payload=tricky, extra_field=["x"]), row(2, source="s\u00e9")]
    later = [row(1, payload={"other": 1}), row(2, source="other")]
    found = []
    for store in (SQLiteStore.open(str(tmp_path / "a.db")), PostgresStore.open(pg_url)):
        with store:
            store.write_batch(first)
            store.write_batch(later)
            store.prune("2030-01-01T00:00:00Z")
            store.write_batch([row(1, payload={"third": True})])
            found.append(sorted((c.event_id, c.first_hash, c.last_hash) for c in store.conflicts()))
    assert found[0] == found[1]
    expected = content_hash(first[0][2], first[0][3], first[0][4], first[0][5])
    assert found[0][0][1] == expected


# --- the command line -----------------------------------------------------------------------


def test_ingest_reports_conflicts_and_lists_them(tmp_path: Path, db: Path) -> None:
    data = write_jsonl(tmp_path / "a.jsonl", [event(1), event(2)])
    assert run_logagg("ingest", "--db", db, data).returncode == 0
    changed = write_jsonl(tmp_path / "b.jsonl", [event(1, payload={"v": 9}), event(2), event(3)])
    proc = run_logagg("ingest", "--db", db, changed)
    assert proc.returncode == 0
    lines = proc.stderr.decode().splitlines()
    assert lines[0].startswith("received 3  accepted 1  duplicates 2  invalid 0  in ")
    assert (
        lines[1]
        == "1 of the duplicates differed from the stored copy (conflicts: see `logagg conflicts`)"
    )
    report = json.loads(run_logagg("ingest", "--db", db, "--json", changed).stdout)
    assert (report["duplicates"], report["conflicts"]) == (3, 1)
    listed = run_logagg("conflicts", "--db", db)
    (doc,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (doc["topic"], doc["event_id"], doc["copies"]) == ("t", "e1", 2)
    assert len(doc["first_hash"]) == 16 and doc["first_hash"] != doc["last_hash"]
    e1 = event(1)
    assert doc["first_hash"] == hash_text(
        content_hash(
            "2025-01-01T00:00:01.000000Z",
            e1["source"],
            json.dumps(e1["payload"]).replace(" ", ""),
            None,
        )
    )
    assert run_logagg("conflicts", "--db", db, "--topic", "nope", "--json").stdout == b"[]\n"
    stats = json.loads(run_logagg("stats", "--db", db, "--json").stdout)
    assert (stats["conflicts"], stats["topic_details"]["t"]["conflicts"]) == (2, 2)
    assert check_store(db)["conflicts"] == 2


def test_ingest_keep_last_replaces(tmp_path: Path, db: Path) -> None:
    assert (
        run_logagg("ingest", "--db", db, write_jsonl(tmp_path / "a.jsonl", [event(1)])).returncode
        == 0
    )
    newer = write_jsonl(tmp_path / "b.jsonl", [event(1, payload={"v": "new"})])
    proc = run_logagg("ingest", "--db", db, "--on-conflict", "keep-last", newer)
    assert proc.returncode == 0, proc.stderr.decode()
    listed = run_logagg("events", "--db", db, "--format", "jsonl")
    assert [json.loads(x)["payload"] for x in listed.stdout.splitlines()] == [{"v": "new"}]
    wrong = run_logagg("ingest", "--db", db, "--on-conflict", "newest", newer)
    assert wrong.returncode == 2 and b"--on-conflict" in wrong.stderr
