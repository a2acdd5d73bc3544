"""The ingest pipeline with real files, pipes and SQLite stores."""

from __future__ import annotations

import gzip
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from conftest import event, write_jsonl
from helpers import contents, event_count, unread, wait_for_events, wait_until

from logagg.errors import StoreError
from logagg.gen import GenStats, generate
from logagg.models import Reject, RowBatch
from logagg.pipeline import IngestOptions, IngestReport, ingest
from logagg.sources import Source
from logagg.store import BatchResult
from logagg.store.sqlite import SQLiteStore

WAIT = 10.0  # the most any run may take before it counts as hung


def counts(report: IngestReport) -> tuple[int, int, int, int]:
    return (report.received, report.accepted, report.duplicates, report.invalid)


def run_bounded(target: Callable[[], IngestReport]) -> IngestReport:
    """Run `target` in a thread; fail (instead of hanging) if it takes longer than WAIT."""
    outcome: dict[str, Any] = {}

    def body() -> None:
        try:
            outcome["report"] = target()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), f"ingest did not finish within {WAIT} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["report"]


def sources(*paths: Path | str) -> list[Source]:
    return [Source(str(p)) for p in paths]


# --- reports and results ---------------------------------------------------------------


def test_report_counts_a_file_with_duplicates_invalid_and_blank_lines(
    store: SQLiteStore, db: Path, tmp_path: Path
) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            event(1),
            event(2),
            "",
            event(1),  # duplicate
            "not json",
            event(1, topic="other"),  # same id, another topic: a new event
            "   ",
            {"topic": "t"},  # invalid: fields missing
            event(3),
            event(2, payload={"changed": True}),  # duplicate, whatever its payload
            "[]",
        ],
    )
    started = time.monotonic()
    report = ingest(store, sources(path))
    wall = time.monotonic() - started
    assert counts(report) == (9, 4, 2, 3)
    assert report.source_errors == []
    assert 0 < report.elapsed_seconds <= wall
    assert report.events_per_second == pytest.approx(9 / report.elapsed_seconds)
    assert len(contents(db)) == 4
    assert store.check().ok
    doc = report.to_dict()
    assert set(doc) == {
        "received",
        "accepted",
        "duplicates",
        "invalid",
        "conflicts",
        "pruned",
        "elapsed_seconds",
        "events_per_second",
        "naive_timestamps",
        "assumed_tz",
    }
    assert (doc["received"], doc["accepted"], doc["duplicates"], doc["invalid"]) == (9, 4, 2, 3)
    assert (doc["conflicts"], doc["pruned"]) == (1, 0)  # e2 came again with another payload
    assert (doc["naive_timestamps"], doc["assumed_tz"]) == (0, "UTC")


def test_files_are_read_in_order_and_the_first_copy_wins(
    store: SQLiteStore, db: Path, tmp_path: Path
) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [event(1, payload={"from": "a"})])
    b = write_jsonl(tmp_path / "b.jsonl", [event(1, payload={"from": "b"}), event(2)])
    report = ingest(store, sources(a, b))
    assert counts(report) == (3, 2, 1, 0)
    stored = {r[1]: json.loads(r[4]) for r in contents(db)}
    assert stored["e1"] == {"from": "a"}


def test_ingest_gives_back_the_interpreter_switch_interval(
    store: SQLiteStore, tmp_path: Path
) -> None:
    """Ingest shortens the GIL switch interval while it runs (for its writer), and only
    then: the process (a server, a library's caller) gets its own back, also on failure."""
    a = write_jsonl(tmp_path / "a.jsonl", [event(1), event(2)])
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.004)
        seen: list[float] = []
        report = ingest(store, sources(a), on_commit=lambda _: seen.append(sys.getswitchinterval()))
        assert (report.accepted, sys.getswitchinterval()) == (2, 0.004)
        assert seen and max(seen) < 0.004
        store.close()
        with pytest.raises(StoreError):
            ingest(store, sources(a))
        assert sys.getswitchinterval() == 0.004
    finally:
        sys.setswitchinterval(before)


def test_ingesting_the_same_input_again_accepts_nothing(
    store: SQLiteStore, db: Path, tmp_path: Path
) -> None:
    path = tmp_path / "gen.jsonl"
    stats = GenStats()
    path.write_text("".join(generate(3000, dup_rate=0.25, topics=5, seed=3, stats=stats)))
    first = ingest(store, sources(path))
    assert counts(first) == (3000, stats.unique, 3000 - stats.unique, 0)
    again = ingest(store, sources(path))
    assert counts(again) == (3000, 0, 3000, 0)
    assert len(contents(db)) == stats.unique
    assert store.stats().counters.received == 6000
    assert store.check().ok


def test_gzip_and_plain_files_give_the_same_store(tmp_path: Path) -> None:
    lines = "".join(generate(500, dup_rate=0.2, topics=3, seed=9))
    plain = tmp_path / "plain.jsonl"
    plain.write_text(lines)
    packed = tmp_path / "packed.jsonl.gz"
    packed.write_bytes(gzip.compress(lines.encode()))
    results = []
    for name, path in (("a.db", plain), ("b.db", packed)):
        with SQLiteStore.open(str(tmp_path / name)) as s:
            results.append(counts(ingest(s, sources(path))))
    assert results[0] == results[1]
    assert contents(tmp_path / "a.db") == contents(tmp_path / "b.db")


# --- batching ----------------------------------------------------------------------------


def split_input(tmp_path: Path) -> list[Path]:
    """Generated events with bad lines, spread over several files (several chunks)."""
    lines = list(generate(1200, dup_rate=0.3, topics=4, seed=11))
    for i in range(0, len(lines), 97):
        lines.insert(i, "{broken\n")
    paths = []
    for part in range(6):
        path = tmp_path / f"part{part}.jsonl"
        path.write_text("".join(lines[part::6]))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, ...]:
    """The counts and contents of a run with default options."""
    tmp = tmp_path_factory.mktemp("reference")
    db = tmp / "ref.db"
    with SQLiteStore.open(str(db)) as s:
        report = ingest(s, sources(*split_input(tmp)))
    return counts(report), contents(db)


@pytest.mark.parametrize("batch_size", [1, 2, 7, 100, 50_000])
@pytest.mark.parametrize("queue_size", [1, 3])
@pytest.mark.parametrize("flush_interval", [0.001, 5.0])
def test_batch_size_queue_size_and_flush_interval_do_not_change_the_result(
    tmp_path: Path,
    reference: tuple[Any, ...],
    batch_size: int,
    queue_size: int,
    flush_interval: float,
) -> None:
    db = tmp_path / "store.db"
    options = IngestOptions(
        batch_size=batch_size, queue_size=queue_size, flush_interval=flush_interval
    )
    with SQLiteStore.open(str(db)) as s:
        report = run_bounded(lambda: ingest(s, sources(*split_input(tmp_path)), options))
        assert s.check().ok
    assert (counts(report), contents(db)) == reference


class CountingStore(SQLiteStore):
    """A real store that records the size of every batch it is asked to write."""

    sizes: list[int]

    def write_rows(
        self, batches: Sequence[RowBatch], invalid: int = 0, **options: Any
    ) -> BatchResult:
        self.sizes.append(sum(batch.count for batch in batches))
        return super().write_rows(batches, invalid, **options)


@pytest.mark.parametrize("batch_size", [1, 3, 10])
def test_no_transaction_holds_more_than_batch_size_events(
    tmp_path: Path, db: Path, batch_size: int
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [event(n) for n in range(25)])
    s = CountingStore.open(str(db))
    s.sizes = []
    try:
        options = IngestOptions(batch_size=batch_size, flush_interval=5.0)
        report = ingest(s, sources(path), options)
    finally:
        s.close()
    assert report.accepted == 25
    assert sum(s.sizes) == 25
    assert max(s.sizes) <= batch_size
    assert len(s.sizes) == -(-25 // batch_size)


# --- rejects -----------------------------------------------------------------------------


def test_invalid_lines_go_to_on_reject_with_file_and_line(
    store: SQLiteStore, tmp_path: Path
) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [event(1), "oops", "", event(2, timestamp="never")])
    b = write_jsonl(tmp_path / "b.jsonl", ["[1]", "x" * 300, event(3)])
    rejected: list[Reject] = []
    options = IngestOptions(max_line_bytes=150)
    report = ingest(store, sources(a, b), options, on_reject=rejected.append)
    assert counts(report) == (6, 2, 0, 4)
    assert [(r.source, r.line) for r in rejected] == [
        (str(a), 2),
        (str(a), 4),
        (str(b), 1),
        (str(b), 2),
    ]
    assert rejected[0].raw == "oops"
    assert rejected[0].reason.startswith("invalid JSON")
    assert rejected[1].reason.startswith("timestamp: ")
    assert rejected[2].reason == "expected a JSON object, got array"
    assert "over the limit of 150 bytes" in rejected[3].reason
    assert rejected[3].raw.startswith("x")
    assert store.stats().counters.invalid == 4


def test_a_line_just_over_the_limit_is_rejected_and_the_rest_is_read(
    store: SQLiteStore, tmp_path: Path
) -> None:
    ok = json.dumps(event(1))
    limit = len(ok)
    path = write_jsonl(tmp_path / "in.jsonl", [ok, json.dumps(event(22)) + " " * limit, event(3)])
    rejected: list[Reject] = []
    options = IngestOptions(max_line_bytes=limit)
    report = ingest(store, sources(path), options, on_reject=rejected.append)
    assert counts(report) == (3, 2, 0, 1)
    assert [r.line for r in rejected] == [2]


# --- sources that fail -------------------------------------------------------------------


def test_a_source_error_leaves_the_other_sources_ingested(
    store: SQLiteStore, db: Path, tmp_path: Path
) -> None:
    good1 = write_jsonl(tmp_path / "good1.jsonl", [event(1), event(2)])
    missing = tmp_path / "missing.jsonl"
    folder = tmp_path / "folder"
    folder.mkdir()
    good2 = write_jsonl(tmp_path / "good2.jsonl", [event(3)])
    report = ingest(store, sources(good1, missing, folder, good2))
    assert counts(report) == (3, 3, 0, 0)
    assert len(report.source_errors) == 2
    assert str(missing) in report.source_errors[0]
    assert str(folder) in report.source_errors[1]
    assert [r[1] for r in contents(db)] == ["e1", "e2", "e3"]
    assert store.check().ok


def test_a_corrupt_gzip_is_a_source_error_and_the_next_file_is_read(
    store: SQLiteStore, db: Path, tmp_path: Path
) -> None:
    packed = gzip.compress("".join(generate(3000, seed=5)).encode())
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(packed[: len(packed) // 2])
    after = write_jsonl(tmp_path / "after.jsonl", [event(1, topic="after")])
    report = ingest(store, sources(bad, after))
    assert len(report.source_errors) == 1
    assert str(bad) in report.source_errors[0]
    assert ("after", "e1") in [(r[0], r[1]) for r in contents(db)]
    assert report.received == report.accepted + report.duplicates + report.invalid
    assert store.check().ok


# --- pipes and stopping ------------------------------------------------------------------


def start_ingest(
    store: SQLiteStore, reader: BinaryIO, stop: threading.Event, options: IngestOptions
) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def body() -> None:
        try:
            outcome["report"] = ingest(store, [Source("-")], options, stop=stop, stdin=reader)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, outcome


def test_live_pipe_events_are_committed_while_the_writer_stays_open(
    store: SQLiteStore, db: Path, pipe: tuple[int, BinaryIO]
) -> None:
    w, reader = pipe
    stop = threading.Event()
    thread, outcome = start_ingest(store, reader, stop, IngestOptions(flush_interval=0.05))
    os.write(w, (json.dumps(event(1)) + "\n" + json.dumps(event(2)) + "\n").encode())
    assert wait_for_events(db, 2) == 2
    assert thread.is_alive()
    os.write(w, (json.dumps(event(3)) + "\n").encode())
    assert wait_for_events(db, 3) == 3
    os.close(w)
    thread.join(WAIT)
    assert not thread.is_alive()
    assert counts(outcome["report"]) == (3, 3, 0, 0)


def test_elapsed_time_spans_the_whole_run_of_a_live_pipe(
    store: SQLiteStore, db: Path, pipe: tuple[int, BinaryIO]
) -> None:
    """The report's time runs from the start to the end of the input, quiet spells too."""
    w, reader = pipe
    started = time.monotonic()
    thread, outcome = start_ingest(
        store, reader, threading.Event(), IngestOptions(flush_interval=0.01)
    )
    os.write(w, (json.dumps(event(1)) + "\n" + json.dumps(event(2)) + "\n").encode())
    wait_for_events(db, 2)
    quiet = 0.3  # the producer keeps its end open and writes nothing for a while
    time.sleep(quiet)
    os.close(w)
    thread.join(WAIT)
    wall = time.monotonic() - started
    assert not thread.is_alive()
    report = outcome["report"]
    assert counts(report) == (2, 2, 0, 0)
    assert quiet <= report.elapsed_seconds <= wall
    assert report.to_dict()["elapsed_seconds"] == round(report.elapsed_seconds, 3)
    assert report.events_per_second == pytest.approx(2 / report.elapsed_seconds)


def test_stop_commits_what_was_read_and_returns(
    store: SQLiteStore, db: Path, pipe: tuple[int, BinaryIO]
) -> None:
    """With a long flush interval nothing is committed until the stop; then all of it is."""
    w, reader = pipe
    stop = threading.Event()
    options = IngestOptions(flush_interval=60.0)
    thread, outcome = start_ingest(store, reader, stop, options)
    os.write(w, "".join(json.dumps(event(n)) + "\n" for n in range(5)).encode())
    os.write(w, b"bad line\n")
    wait_until(lambda: unread(w) == 0, WAIT, "the reader to take the input")
    time.sleep(0.2)  # a quiet spell, far shorter than the flush interval
    assert event_count(db) == 0, "committed before the flush interval or the stop"
    stop.set()
    thread.join(WAIT)
    assert not thread.is_alive(), "ingest did not return after stop"
    assert counts(outcome["report"]) == (6, 5, 0, 1)
    assert len(contents(db)) == 5


def test_stop_set_before_the_run_reads_nothing(store: SQLiteStore, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [event(1)])
    stop = threading.Event()
    stop.set()
    report = ingest(store, sources(path), stop=stop)
    assert counts(report) == (0, 0, 0, 0)


# --- store failures ------------------------------------------------------------------------


class FailingStore(SQLiteStore):
    """A real store whose database stops accepting writes after `good` batches.

    `how` is "readonly" (SQLite refuses the write) or "closed" (the connection is gone).
    """

    good: int
    how: str
    calls: int

    def write_rows(
        self, batches: Sequence[RowBatch], invalid: int = 0, **options: Any
    ) -> BatchResult:
        self.calls += 1
        if self.calls == self.good + 1:
            if self.how == "readonly":
                self._conn.execute("PRAGMA query_only = 1")
            else:
                self._conn.close()
        return super().write_rows(batches, invalid, **options)


def failing_store(db: Path, how: str, good: int = 1) -> FailingStore:
    s = FailingStore.open(str(db))
    s.good, s.how, s.calls = good, how, 0
    return s


@pytest.mark.parametrize("how", ["readonly", "closed"])
def test_a_store_error_ends_the_run_with_store_error_and_no_hang(
    tmp_path: Path, db: Path, how: str
) -> None:
    """Many small files and a queue of one: the reader is blocked when the writer fails."""
    paths = [write_jsonl(tmp_path / f"f{i}.jsonl", [event(i)]) for i in range(40)]
    s = failing_store(db, how)
    options = IngestOptions(batch_size=1, queue_size=1, flush_interval=0.001)
    try:
        with pytest.raises(StoreError):
            run_bounded(lambda: ingest(s, sources(*paths), options))
    finally:
        s.close()
    with SQLiteStore.open(str(db)) as reopened:
        assert reopened.check().ok
        assert reopened.stats().counters.accepted == 1


def test_a_store_error_during_a_quiet_live_pipe_ends_the_run(
    tmp_path: Path, db: Path, pipe: tuple[int, BinaryIO]
) -> None:
    """The writer keeps the pipe open and sends nothing more: the failure still ends the run."""
    w, reader = pipe
    s = failing_store(db, "readonly")
    stop = threading.Event()
    try:
        thread, outcome = start_ingest(s, reader, stop, IngestOptions(flush_interval=0.01))
        os.write(w, (json.dumps(event(1)) + "\n").encode())
        assert wait_for_events(db, 1) == 1
        os.write(w, (json.dumps(event(2)) + "\n").encode())
        thread.join(3)
        hung = thread.is_alive()
        if hung:
            os.close(w)  # let the thread end before the store is closed
            thread.join(WAIT)
    finally:
        s.close()
    assert not hung, "ingest kept reading the pipe after the store failed"
    assert isinstance(outcome.get("error"), StoreError)
