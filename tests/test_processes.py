"""Real `logagg` processes: live pipes, signals, crashes and repeated or concurrent ingests."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import check_store, event, logagg_cmd, run_logagg, stats
from helpers import (
    event_count,
    jsonl_bytes,
    listed_ids,
    report_counts,
    wait_for_events,
    wait_until_read,
)

WAIT = 15.0  # the most a process may take to finish once it has been told to


def visible_ids(db: Path, count: int) -> list[str]:
    """Once the store holds `count` events: the ids another `logagg events` process lists."""
    wait_for_events(db, count)
    return listed_ids(db)


@pytest.fixture
def live() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by a test; any still running at the end are killed."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=WAIT)


def start_ingest(live: list[subprocess.Popen[bytes]], *args: str | Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        logagg_cmd("ingest", *args),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    live.append(proc)
    return proc


def send(proc: subprocess.Popen[bytes], data: bytes) -> None:
    assert proc.stdin is not None
    proc.stdin.write(data)
    proc.stdin.flush()


def test_live_pipe_events_are_visible_before_the_writer_closes(
    db: Path, live: list[subprocess.Popen[bytes]]
) -> None:
    proc = start_ingest(live, "--db", db, "-")
    send(proc, jsonl_bytes(event(1), event(2), "", event(3)))
    assert visible_ids(db, 3) == ["e1", "e2", "e3"]
    assert proc.poll() is None, "ingest ended although its input is still open"

    send(proc, jsonl_bytes(event(4), event(2), "not json"))
    assert visible_ids(db, 4) == ["e1", "e2", "e3", "e4"]
    assert proc.poll() is None
    check_store(db)

    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err.decode()
    assert out == b""
    assert report_counts(err) == (6, 4, 1, 1)
    assert check_store(db)["unique_processed"] == 4


@pytest.mark.parametrize(
    ("signum", "code"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_commits_what_was_read_prints_the_report_and_exits(
    db: Path, live: list[subprocess.Popen[bytes]], signum: int, code: int
) -> None:
    """A long flush interval: nothing is committed before the signal, all of it after."""
    proc = start_ingest(live, "--db", db, "--flush-interval", "60", "-")
    send(proc, jsonl_bytes(*(event(n) for n in range(20)), event(3), "bad"))
    wait_until_read(proc)
    assert event_count(db) == 0, "committed before the flush interval or the signal"
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == code, err.decode()
    assert out == b""
    report = err.decode()
    assert "Traceback" not in report
    assert report_counts(report) == (22, 20, 1, 1)
    assert "<stdin>:22: invalid JSON" in report
    doc = check_store(db)
    assert (doc["received"], doc["unique_processed"], doc["invalid"]) == (22, 20, 1)
    assert listed_ids(db) == [f"e{n}" for n in range(20)]


def test_sigterm_with_json_prints_the_report_on_stdout(
    db: Path, live: list[subprocess.Popen[bytes]]
) -> None:
    proc = start_ingest(live, "--db", db, "--json", "--flush-interval", "60", "-")
    send(proc, jsonl_bytes(event(1), event(2)))
    wait_until_read(proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 143, err.decode()
    report = json.loads(out)
    assert (report["received"], report["accepted"]) == (2, 2)
    check_store(db)


def test_a_signal_after_earlier_commits_keeps_everything(
    db: Path, live: list[subprocess.Popen[bytes]]
) -> None:
    proc = start_ingest(live, "--db", db, "-")
    send(proc, jsonl_bytes(event(1), event(2)))
    assert visible_ids(db, 2) == ["e1", "e2"]
    send(proc, jsonl_bytes(event(3)))
    wait_until_read(proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 130, err.decode()
    assert report_counts(err) == (3, 3, 0, 0)
    assert listed_ids(db) == ["e1", "e2", "e3"]
    check_store(db)


def generated(tmp_path: Path, count: int, seed: int) -> tuple[Path, int]:
    """A file from `logagg gen` and its number of unique events."""
    path = tmp_path / f"gen-{seed}.jsonl"
    proc = run_logagg("gen", str(count), "--seed", str(seed), "--dup-rate", "0.3", timeout=60)
    assert proc.returncode == 0
    path.write_bytes(proc.stdout)
    match = re.match(r"(\d+) unique events in (\d+) lines", proc.stderr.decode())
    assert match and int(match.group(2)) == count
    return path, int(match.group(1))


def ingest_json(db: Path, *paths: Path) -> dict[str, Any]:
    proc = run_logagg("ingest", "--db", db, "--json", *paths, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def test_two_ingests_of_the_same_file_the_second_accepts_nothing(db: Path, tmp_path: Path) -> None:
    path, unique = generated(tmp_path, 5000, seed=1)
    first = ingest_json(db, path)
    assert (first["received"], first["accepted"]) == (5000, unique)
    assert first["duplicates"] == 5000 - unique
    assert check_store(db)["unique_processed"] == unique

    second = ingest_json(db, path)
    assert (second["received"], second["accepted"], second["duplicates"]) == (5000, 0, 5000)
    doc = check_store(db)
    assert (doc["received"], doc["unique_processed"]) == (10000, unique)
    assert sum(stats(db)["topics"].values()) == unique


def test_two_ingests_of_the_same_file_at_once_store_each_event_once(
    db: Path, tmp_path: Path, live: list[subprocess.Popen[bytes]]
) -> None:
    """Two writers on one store: neither fails with 'database is locked', nothing is doubled."""
    path, unique = generated(tmp_path, 20000, seed=2)
    procs = []
    for _ in range(2):
        proc = subprocess.Popen(
            logagg_cmd("ingest", "--db", db, "--json", "--batch-size", "500", path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        live.append(proc)
        procs.append(proc)
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        reports.append(json.loads(out))
    assert sum(r["accepted"] for r in reports) == unique
    assert all(r["received"] == 20000 for r in reports)
    doc = check_store(db)
    assert (doc["received"], doc["unique_processed"]) == (40000, unique)


def test_rerunning_after_kill_9_stores_every_event_exactly_once(
    db: Path, tmp_path: Path, live: list[subprocess.Popen[bytes]]
) -> None:
    """A crash loses at most the uncommitted tail; sending everything again completes it."""
    docs = [event(n, topic=f"t{n % 3}") for n in range(200)]
    proc = start_ingest(live, "--db", db, "--flush-interval", "0.05", "-")
    send(proc, jsonl_bytes(*docs[:120]))
    assert visible_ids(db, 120) == [f"e{n}" for n in range(120)]
    send(proc, jsonl_bytes(*docs[120:150]))
    proc.kill()
    proc.communicate(timeout=WAIT)
    check_store(db)

    everything = tmp_path / "all.jsonl"
    everything.write_bytes(jsonl_bytes(*docs))
    report = ingest_json(db, everything)
    assert report["accepted"] + report["duplicates"] == 200
    assert 120 <= report["duplicates"] <= 150, "the committed events are duplicates now"
    doc = check_store(db)
    assert doc["unique_processed"] == 200
    assert stats(db)["topics"] == {"t0": 67, "t1": 67, "t2": 66}
