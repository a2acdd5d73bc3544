"""Retention on both backends: pruned events keep their keys (a re-send stays a duplicate),
counters and `check` stay exact after every step, `--forget-keys`, `--dry-run`, the
writer's `--retain`, and a prune killed with -9 then run again."""

from __future__ import annotations

import json
import random
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import check_store, event, invoke, logagg_cmd, run_logagg, write_jsonl
from helpers import (
    SEED,
    Backend,
    _read,
    assert_one_line_error,
    counters,
    jsonl,
    one_line_error,
    row,
    wait_until,
)
from typer.testing import CliRunner

from logagg.store import EventQuery, Store
from logagg.store import base as store_base
from logagg.store.sqlite import SQLiteStore


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, db: Path) -> Backend:
    if request.param == "postgres":
        return Backend("postgres", request.getfixturevalue("pg_url"))
    return Backend("sqlite", str(db))


def healthy(store: Store) -> dict:
    result = store.check()
    assert result.ok, result.problems
    return result.facts


def at(second: int) -> str:
    return f"2025-01-01T00:00:{second:02d}Z"


def test_pruned_keys_stay_duplicates_and_counters_stay_exact(store: Store) -> None:
    store.write_batch([row(n, "a" if n % 2 else "b") for n in range(10)], invalid=1)
    result = store.prune(at(6))
    assert (result.events, result.keys, result.pruned) == (6, 0, {"a": 3, "b": 3})
    facts = healthy(store)
    assert (facts["rows"], facts["pruned"], facts["tombstones"]) == (4, 6, 6)
    assert facts["unique_processed"] == facts["rows"] + facts["pruned"]
    again = store.write_batch([row(n, "a" if n % 2 else "b") for n in range(12)])
    assert (again.accepted, again.duplicates, again.conflicts) == (2, 10, 0)
    assert counters(store) == (23, 12, 10, 1)
    topics = store.stats().topics
    assert (topics["a"].events, topics["a"].pruned, topics["a"].first_timestamp) == (
        3,
        3,
        "2025-01-01T00:00:07.000000Z",
    )
    listed = [e.event_id for e in store.events(EventQuery(limit=None, newest_first=False))]
    assert listed == ["e6", "e7", "e8", "e9", "e10", "e11"]
    healthy(store)


def test_a_pruned_key_resent_with_other_content_is_a_conflict_and_stays_pruned(
    store: Store,
) -> None:
    store.write_batch([row(1), row(2)])
    store.prune(at(5))
    store.configure(keep_last=True)  # not even keep-last brings a pruned event back
    result = store.write_batch([row(1, payload={"other": True}), row(2)])
    assert (result.accepted, result.duplicates, result.conflicts) == (0, 2, 1)
    assert list(store.events(EventQuery())) == []
    (conflict,) = store.conflicts()
    assert (conflict.event_id, conflict.copies) == ("e1", 1)
    facts = healthy(store)
    assert (facts["tombstones"], facts["conflicts"]) == (2, 1)


def test_forget_keys_drops_them_and_such_events_are_accepted_again(store: Store) -> None:
    store.write_batch([row(n) for n in range(6)])
    store.prune(at(2))  # e0, e1: tombstones
    result = store.prune(at(4), forget_keys=True)  # e2, e3 pruned; e0..e3 forgotten
    assert (result.events, result.keys) == (2, 4)
    facts = healthy(store)
    assert (facts["pruned"], facts["forgotten"], facts["tombstones"], facts["rows"]) == (4, 4, 0, 2)
    again = store.write_batch([row(n) for n in range(6)])
    assert (again.accepted, again.duplicates) == (4, 2)
    assert healthy(store)["unique_processed"] == 10


def test_dry_run_counts_and_changes_nothing(store: Store, backend: Backend) -> None:
    store.write_batch([row(n, "a" if n < 3 else "b") for n in range(8)])
    store.prune(at(1))
    before = sorted(backend.raw_rows())
    dry = store.prune(at(5), dry_run=True)
    assert (dry.dry_run, dry.pruned, dry.forgotten) == (True, {"a": 2, "b": 2}, {})
    forget = store.prune(at(5), forget_keys=True, dry_run=True)
    assert forget.forgotten == {"a": 3, "b": 2}
    assert sorted(backend.raw_rows()) == before
    assert healthy(store)["pruned"] == 1


def test_one_topic_and_small_steps(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.write_batch([row(n, "a" if n % 3 else "b") for n in range(30)])
    result = store.prune(at(20), topic="a", step=4)
    assert result.pruned == {"a": 13}
    assert store.stats().topics["b"].pruned == 0
    healthy(store)


def test_the_writers_retention_prunes_in_steps(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_base, "PRUNE_STEP", 3)
    store.write_batch([row(n, "a" if n % 2 else "b") for n in range(10)])
    store.configure(retain=1.0)  # everything from 2025 is older than a second
    steps = []
    while (pruned := store.maintain()) or not steps:
        steps.append(pruned)
    assert steps == [3, 3, 3, 1]  # each step at most PRUNE_STEP, in its own transactions
    facts = healthy(store)
    assert (facts["rows"], facts["pruned"]) == (0, 10)
    assert store.maintain() == 0  # nothing left: the next look is a second away


def test_prune_everything_then_the_store_goes_on(store: Store) -> None:
    store.write_batch([row(n) for n in range(5)])
    store.prune("2030-01-01T00:00:00Z")
    stats = store.stats()
    assert (stats.stored, stats.topics["t"].first_timestamp, stats.topics["t"].last_timestamp) == (
        0,
        None,
        None,
    )
    store.write_batch([row(9)])
    assert store.stats().topics["t"].first_timestamp == "2025-01-01T00:00:09.000000Z"
    healthy(store)


def test_concurrent_writers_and_a_prune_keep_the_counters_exact(backend: Backend) -> None:
    """Writers re-send old and new keys while a prune removes old ones in small steps."""
    import threading

    with backend.open() as first:
        first.write_batch([row(n) for n in range(300)])
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            with backend.open() as mine:
                for b in range(20):
                    mine.write_batch([row((b * 37 + i * 11 + index) % 600) for i in range(30)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    with backend.open() as pruner:
        result = pruner.prune("2025-01-01T00:02:00Z", step=7)
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    with backend.open() as store:
        facts = healthy(store)
        assert facts["pruned"] == result.events > 0
        assert facts["unique_processed"] == facts["rows"] + facts["pruned"]


# --- the command line -----------------------------------------------------------------------


def test_prune_and_its_report(tmp_path: Path, db: Path) -> None:
    data = write_jsonl(tmp_path / "a.jsonl", [event(n, "a" if n % 2 else "b") for n in range(10)])
    assert run_logagg("ingest", "--db", db, data).returncode == 0
    dry = run_logagg("prune", "--db", db, "--before", "2025-01-01T00:00:04Z", "--dry-run")
    assert dry.returncode == 0 and dry.stdout == b""
    assert dry.stderr.decode() == (
        "would prune 4 events older than 2025-01-01T00:00:04.000000Z (their keys kept as"
        " tombstones) in 2 topics\n"
    )
    done = run_logagg("prune", "--db", db, "--before", "2025-01-01T00:00:04+00:00", "--json")
    assert json.loads(done.stdout) == {
        "before": "2025-01-01T00:00:04.000000Z",
        "dry_run": False,
        "pruned": 4,
        "forgotten": 0,
        "topics": {"a": {"pruned": 2, "forgotten": 0}, "b": {"pruned": 2, "forgotten": 0}},
    }
    facts = check_store(db)
    assert (facts["rows"], facts["pruned"]) == (6, 4)
    again = run_logagg("ingest", "--db", db, "--json", data)
    assert json.loads(again.stdout)["accepted"] == 0
    old = run_logagg("prune", "--db", db, "--older-than", "1d", "--forget-keys")
    assert old.returncode == 0
    assert old.stderr.decode().startswith("pruned 6 events older than ")
    assert "; forgot 10 keys in 2 topics\n" in old.stderr.decode()
    assert check_store(db)["forgotten"] == 10


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((), "--older-than DURATION or --before TIME"),
        (("--older-than", "1d", "--before", "2025-01-01"), "(one)"),
        (("--older-than", "30"), "not a duration"),
        (("--older-than", "0d"), "longer than zero"),
        (("--before", "yesterday"), "--before"),
    ],
)
def test_prune_usage_errors(db: Path, runner: CliRunner, args: tuple[str, ...], words: str) -> None:
    assert invoke(runner, "ingest", "--db", db, "-", input=jsonl(event(1))).exit_code == 0
    result = invoke(runner, "prune", "--db", db, *args)
    assert result.exit_code == 2 and result.stdout == ""
    assert words in one_line_error(result.stderr)
    with SQLiteStore.open(str(db)) as store:
        assert store.stats().counters.pruned == 0


def test_ingest_retain_prunes_as_it_goes(tmp_path: Path, db: Path) -> None:
    old = [event(n) for n in range(50)]
    assert (
        run_logagg("ingest", "--db", db, write_jsonl(tmp_path / "old.jsonl", old)).returncode == 0
    )
    new = [{**event(n), "timestamp": "2100-01-01T00:00:00Z"} for n in range(100, 110)]
    proc = run_logagg(
        "ingest", "--db", db, "--retain", "30d", write_jsonl(tmp_path / "new.jsonl", new)
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert "50 events older than --retain were pruned" in proc.stderr.decode()
    facts = check_store(db)
    assert (facts["rows"], facts["pruned"], facts["tombstones"]) == (10, 50, 50)
    bad = run_logagg(
        "ingest", "--db", db, "--retain", "soon", write_jsonl(tmp_path / "x.jsonl", new)
    )
    assert_one_line_error(bad, "--retain", code=2)


@pytest.mark.slow
def test_kill_9_during_a_prune_then_run_it_again(tmp_path: Path, db: Path) -> None:
    """Each step commits on its own: a prune killed at a seeded moment leaves a healthy
    store with some events pruned, and running it again prunes the rest."""
    rng = random.Random(SEED)
    docs = [
        {**event(n, f"t{n % 7}"), "timestamp": f"2025-01-{1 + n % 28:02d}T00:00:00Z"}
        for n in range(60_000)
    ]
    assert run_logagg("ingest", "--db", db, write_jsonl(tmp_path / "a.jsonl", docs)).returncode == 0
    target = rng.randint(2_000, 30_000)
    proc = subprocess.Popen(
        logagg_cmd("prune", "--db", db, "--before", "2025-01-20T00:00:00Z"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def pruned() -> int:
            rows = _read(db, "SELECT pruned FROM counters")
            return int(rows[0][0]) if rows else 0

        wait_until(lambda: pruned() >= target or proc.poll() is not None, 60, f"{target} pruned")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    first = check_store(db)["pruned"]
    expected = sum(1 for d in docs if d["timestamp"] < "2025-01-20")
    assert 0 < first < expected, f"seed {SEED}: killed at {first} of {expected}"
    again = run_logagg("prune", "--db", db, "--before", "2025-01-20T00:00:00Z", "--json")
    assert again.returncode == 0
    assert json.loads(again.stdout)["pruned"] == expected - first
    facts = check_store(db)
    assert facts["pruned"] == expected and facts["rows"] == len(docs) - expected


def test_a_failing_retention_step_is_said_once_and_tried_again(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from logagg.errors import StoreError

    store.write_batch([row(n) for n in range(4)])
    notices: list[str] = []
    store.on_notice = notices.append
    store.configure(retain=1.0)
    real = type(store)._prune_step

    def locked(*args: object) -> tuple[int, int]:
        raise StoreError("store.db: the database stayed locked for 60 s")

    monkeypatch.setattr(type(store), "_prune_step", locked)
    for _ in range(3):
        assert store.maintain() == 0
        store._next_retain = 0.0  # as if a second had passed
    assert notices == [
        "pruning or checkpointing failed, tried again later: store.db: the database stayed"
        " locked for 60 s"
    ]
    monkeypatch.setattr(type(store), "_prune_step", real)
    assert store.maintain() == 4
    healthy(store)
