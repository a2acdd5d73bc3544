"""Every command and option of the `logagg` command line."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import SAMPLES, event, invoke, run_logagg, write_jsonl
from helpers import contents, jsonl, one_line_error, report_counts
from typer.testing import CliRunner

from logagg import __version__

REPORT_KEYS = {
    "naive_timestamps",
    "assumed_tz",
    "conflicts",
    "pruned",
    "received",
    "accepted",
    "duplicates",
    "invalid",
    "elapsed_seconds",
    "events_per_second",
}


def stats_json(runner: CliRunner, db: Path) -> dict[str, Any]:
    result = invoke(runner, "stats", "--db", db, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def events_jsonl(runner: CliRunner, db: Path, *args: str) -> list[dict[str, Any]]:
    result = invoke(runner, "events", "--db", db, "--format", "jsonl", *args)
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


# --- ingest ----------------------------------------------------------------------------


def test_ingest_files_prints_the_report_on_stderr_only(
    runner: CliRunner, db: Path, tmp_path: Path
) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [event(1), event(2)])
    b = write_jsonl(tmp_path / "b.jsonl", [event(2), event(3), event(1, topic="other")])
    result = invoke(runner, "ingest", "--db", db, a, b)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert report_counts(result.stderr) == (5, 4, 1, 0)
    assert len(contents(db)) == 4


@pytest.mark.parametrize("args", [["-"], []], ids=["dash", "no-path"])
def test_ingest_reads_stdin(runner: CliRunner, db: Path, args: list[str]) -> None:
    text = jsonl(event(1), event(2), "", event(1))
    result = invoke(runner, "ingest", "--db", db, "--json", *args, input=text)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["received"], report["accepted"], report["duplicates"]) == (3, 2, 1)


def test_ingest_stdin_twice_is_a_usage_error(runner: CliRunner, db: Path) -> None:
    result = invoke(runner, "ingest", "--db", db, "-", "-", input=jsonl(event(1)))
    assert result.exit_code == 2
    assert result.stderr == "logagg: error: stdin ('-') can be read only once\n"
    assert not db.exists()


def test_ingest_json_report_has_exactly_the_documented_keys(
    runner: CliRunner, db: Path, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [event(1), event(1), "bad", event(2)])
    result = invoke(runner, "ingest", "--db", db, "--json", path)
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert set(report) == REPORT_KEYS
    assert (report["received"], report["accepted"], report["duplicates"], report["invalid"]) == (
        4,
        2,
        1,
        1,
    )
    assert isinstance(report["elapsed_seconds"], float | int)
    assert isinstance(report["events_per_second"], float | int)
    assert result.stdout.count("\n") == 1
    assert "received 4" not in result.stderr


def test_ingest_reports_rejects_on_stderr_with_file_and_line(
    runner: CliRunner, db: Path, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [event(1), "", "oops", event(2, source="")])
    result = invoke(runner, "ingest", "--db", db, path)
    assert result.exit_code == 0
    assert f"{path}:3: invalid JSON" in result.stderr
    assert f"{path}:4: source: " in result.stderr


def test_ingest_shows_the_first_rejects_then_a_count(
    runner: CliRunner, db: Path, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [f"bad {n}" for n in range(25)])
    result = invoke(runner, "ingest", "--db", db, path)
    assert result.exit_code == 0
    assert len(re.findall(rf"^{re.escape(str(path))}:\d+: ", result.stderr, re.M)) == 10
    assert "15 more invalid lines" in result.stderr
    assert stats_json(runner, db)["invalid"] == 25


def test_ingest_rejects_file_holds_file_line_error_raw(
    runner: CliRunner, db: Path, tmp_path: Path
) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [event(1), "not json", "", '["an", "array"]', event(2, timestamp="2025-02-30T00:00:00Z")],
    )
    rejects = tmp_path / "rejects.jsonl"
    result = invoke(runner, "ingest", "--db", db, "--rejects", rejects, path)
    assert result.exit_code == 0
    docs = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [set(d) for d in docs] == [{"file", "line", "error", "raw"}] * 3
    assert [(d["file"], d["line"]) for d in docs] == [
        (str(path), 2),
        (str(path), 4),
        (str(path), 5),
    ]
    assert docs[0]["raw"] == "not json"
    assert docs[1]["error"] == "expected a JSON object, got array"
    assert docs[1]["raw"] == '["an", "array"]'
    assert docs[2]["error"].startswith("timestamp: ")
    assert json.loads(docs[2]["raw"])["event_id"] == "e2"


def test_ingest_rejects_from_stdin_are_named_stdin(
    runner: CliRunner, db: Path, tmp_path: Path
) -> None:
    rejects = tmp_path / "rejects.jsonl"
    result = invoke(runner, "ingest", "--db", db, "--rejects", rejects, "-", input="x\n")
    assert result.exit_code == 0
    (doc,) = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert (doc["file"], doc["line"], doc["raw"]) == ("<stdin>", 1, "x")


def test_ingest_rejects_file_is_written_for_every_reject_even_when_quiet(
    runner: CliRunner, db: Path, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [f"bad {n}" for n in range(30)])
    rejects = tmp_path / "rejects.jsonl"
    result = invoke(runner, "ingest", "--db", db, "--quiet", "--rejects", rejects, path)
    assert result.exit_code == 0
    assert len(rejects.read_text().splitlines()) == 30


def test_ingest_strict_exits_3_when_a_line_was_rejected(
    runner: CliRunner, db: Path, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [event(1), "bad", event(2)])
    result = invoke(runner, "ingest", "--db", db, "--strict", path)
    assert result.exit_code == 3
    assert len(contents(db)) == 2  # the good lines are still stored


def test_ingest_strict_exits_0_when_every_line_is_valid(
    runner: CliRunner, db: Path, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [event(1), "", event(1)])
    assert invoke(runner, "ingest", "--db", db, "--strict", path).exit_code == 0


def test_ingest_without_strict_exits_0_despite_rejects(
    runner: CliRunner, db: Path, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", ["bad"])
    assert invoke(runner, "ingest", "--db", db, path).exit_code == 0


@pytest.mark.parametrize("flag", ["--quiet", "-q"])
def test_ingest_quiet_prints_nothing_but_still_counts(
    runner: CliRunner, db: Path, tmp_path: Path, flag: str
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [event(1), "bad", event(2)])
    result = invoke(runner, "ingest", "--db", db, flag, path)
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == ""
    assert stats_json(runner, db)["invalid"] == 1


def test_ingest_missing_file_is_exit_1_and_the_others_are_ingested(
    runner: CliRunner, db: Path, tmp_path: Path
) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [event(1)])
    missing = tmp_path / "missing.jsonl"
    result = invoke(runner, "ingest", "--db", db, missing, good)
    assert result.exit_code == 1
    assert f"logagg: error: {missing}: no such file\n" in result.stderr
    assert report_counts(result.stderr) == (1, 1, 0, 0)
    assert len(contents(db)) == 1


@pytest.mark.parametrize(
    "options",
    [
        ["--batch-size", "1"],
        ["--batch-size", "3", "--queue-size", "1"],
        ["--flush-interval", "0.001"],
        ["--flush-interval", "30", "--queue-size", "2"],
        ["--max-line-bytes", "100000"],
    ],
)
def test_ingest_tuning_options_give_the_same_store(
    runner: CliRunner, tmp_path: Path, options: list[str]
) -> None:
    path = SAMPLES / "events.jsonl"
    plain, tuned = tmp_path / "plain.db", tmp_path / "tuned.db"
    first = invoke(runner, "ingest", "--db", plain, "--json", path)
    second = invoke(runner, "ingest", "--db", tuned, "--json", *options, path)
    assert first.exit_code == second.exit_code == 0
    keep = ("received", "accepted", "duplicates", "invalid")
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert [a[k] for k in keep] == [b[k] for k in keep]
    assert contents(plain) == contents(tuned)


def test_ingest_max_line_bytes_rejects_longer_lines(
    runner: CliRunner, db: Path, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [event(1), event(2, payload={"pad": "x" * 500})])
    result = invoke(runner, "ingest", "--db", db, "--max-line-bytes", "200", "--json", path)
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert (report["accepted"], report["invalid"]) == (1, 1)
    assert f"{path}:2: line is" in result.stderr


# The lines of samples/bad.jsonl that are not valid events (the others are).
BAD_SAMPLE_LINES = {2, 4, 5, 7, 9, 10, 11}


def test_ingest_of_the_samples(runner: CliRunner, db: Path) -> None:
    """The sample files: duplicates across files, one id under two topics, bad lines."""
    paths = [SAMPLES / "events.jsonl", SAMPLES / "resend.jsonl", SAMPLES / "bad.jsonl"]
    received, valid, keys = 0, 0, set()
    for path in paths:
        for number, text in enumerate(path.read_text().splitlines(), 1):
            if not text.strip():
                continue  # blank lines are not counted
            received += 1
            if path.name == "bad.jsonl" and number in BAD_SAMPLE_LINES:
                continue
            doc = json.loads(text)
            keys.add((doc["topic"], doc["event_id"]))
            valid += 1
    ids = [event_id for _, event_id in keys]
    assert len(set(ids)) < len(ids), "the samples hold one id under two topics"
    expected = (received, len(keys), valid - len(keys), len(BAD_SAMPLE_LINES))
    assert expected[2] > 0

    result = invoke(runner, "ingest", "--db", db, "--json", *paths)
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    counts = (report["received"], report["accepted"], report["duplicates"], report["invalid"])
    assert counts == expected
    bad = re.escape(str(SAMPLES / "bad.jsonl"))
    rejected = {int(n) for n in re.findall(rf"^{bad}:(\d+): ", result.stderr, re.M)}
    assert rejected == BAD_SAMPLE_LINES
    again = invoke(runner, "ingest", "--db", db, "--json", SAMPLES / "events.jsonl")
    assert json.loads(again.stdout)["accepted"] == 0
    assert invoke(runner, "check", "--db", db).exit_code == 0


# --- publish ---------------------------------------------------------------------------


def test_publish_accepts_then_reports_a_duplicate(runner: CliRunner, db: Path) -> None:
    args = ["publish", "--db", db, "--topic", "deploy", "--event-id", "build-417", "--source", "ci"]
    first = invoke(runner, *args, "-p", "status=ok")
    assert first.exit_code == 0
    assert (first.stdout, first.stderr) == ("", "accepted: deploy build-417\n")
    second = invoke(runner, *args, "-p", "status=changed")
    assert second.exit_code == 0
    assert second.stderr == "duplicate (already stored): deploy build-417\n"
    assert len(contents(db)) == 1
    assert json.loads(contents(db)[0][4]) == {"status": "ok"}
    doc = stats_json(runner, db)
    assert (doc["received"], doc["unique_processed"], doc["duplicate_dropped"]) == (2, 1, 1)


def test_publish_json_shape(runner: CliRunner, db: Path) -> None:
    args = ["publish", "--db", db, "--topic", "t", "--event-id", "x", "--json"]
    first = invoke(runner, *args)
    assert json.loads(first.stdout) == {"accepted": True, "topic": "t", "event_id": "x"}
    second = invoke(runner, *args)
    assert second.exit_code == 0
    assert json.loads(second.stdout) == {"accepted": False, "topic": "t", "event_id": "x"}


def test_publish_default_event_id_is_a_new_uuid_that_is_printed(
    runner: CliRunner, db: Path
) -> None:
    first = invoke(runner, "publish", "--db", db, "--topic", "t", "--json")
    second = invoke(runner, "publish", "--db", db, "--topic", "t")
    id1 = json.loads(first.stdout)["event_id"]
    id2 = second.stderr.split()[-1]
    assert str(uuid.UUID(id1)) == id1
    assert str(uuid.UUID(id2)) == id2
    assert id1 != id2
    assert sorted(r[1] for r in contents(db)) == sorted([id1, id2])


def test_publish_defaults_source_cli_and_timestamp_now(runner: CliRunner, db: Path) -> None:
    before = datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    invoke(runner, "publish", "--db", db, "--topic", "t", "--event-id", "a")
    after = datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    ((_, _, timestamp, source, payload, extra),) = contents(db)
    assert source == "cli"
    assert before <= timestamp <= after
    assert payload == "{}"
    assert extra is None


def test_publish_timestamp_is_stored_in_utc(runner: CliRunner, db: Path) -> None:
    result = invoke(
        runner, "publish", "--db", db, "--topic", "t", "--timestamp", "2025-01-01T12:00:00+07:00"
    )
    assert result.exit_code == 0
    assert contents(db)[0][2] == "2025-01-01T05:00:00.000000Z"


def test_publish_payload_and_fields(runner: CliRunner, db: Path) -> None:
    result = invoke(
        runner,
        "publish",
        "--db",
        db,
        "--topic",
        "t",
        "--event-id",
        "a",
        "--payload",
        '{"keep": 1, "over": "old", "big": 123456789012345678901234567890}',
        "-p",
        "status=ok",
        "-p",
        "count:=3",
        "--field",
        'tags:=["a", {"b": null}]',
        "-p",
        "over=new",
        "-p",
        "eq=a=b",
        "-p",
        'text:="quoted"',
    )
    assert result.exit_code == 0, result.stderr
    payload = json.loads(contents(db)[0][4])
    assert payload == {
        "keep": 1,
        "over": "new",
        "big": 123456789012345678901234567890,
        "status": "ok",
        "count": 3,
        "tags": ["a", {"b": None}],
        "eq": "a=b",
        "text": "quoted",
    }


@pytest.mark.parametrize(
    "args",
    [
        ["--timestamp", "yesterday"],
        ["--timestamp", "2025-02-30T00:00:00Z"],
        ["--payload", "not json"],
        ["--payload", "[1, 2]"],
        ["-p", "novalue"],
        ["-p", "=x"],
        ["-p", "k:=not json"],
        ["--event-id", ""],
        ["--topic", ""],
        ["--source", "x" * 256],
    ],
    ids=lambda a: " ".join(a)[:24] or "empty",
)
def test_publish_bad_values_are_usage_errors_and_store_nothing(
    runner: CliRunner, db: Path, args: list[str]
) -> None:
    result = invoke(runner, "publish", "--db", db, "--topic", "t", *args)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith("logagg: error: ")
    assert result.stderr.count("\n") == 1
    assert not db.exists() or contents(db) == []


def test_publish_without_topic_is_a_usage_error(runner: CliRunner, db: Path) -> None:
    result = invoke(runner, "publish", "--db", db)
    assert result.exit_code == 2
    assert "missing --topic" in one_line_error(result.stderr)
    assert not db.exists()


def test_published_event_goes_through_the_same_store(
    runner: CliRunner, db: Path, tmp_path: Path
) -> None:
    """A published event and an ingested copy of it are one event."""
    invoke(
        runner,
        "publish",
        "--db",
        db,
        "--topic",
        "t",
        "--event-id",
        "e1",
        "--timestamp",
        "2025-01-01T00:00:01Z",
    )
    result = invoke(runner, "ingest", "--db", db, "--json", "-", input=jsonl(event(1)))
    assert json.loads(result.stdout)["duplicates"] == 1


# --- events ----------------------------------------------------------------------------


@pytest.fixture
def filled(runner: CliRunner, db: Path) -> Path:
    """A store with three topics, two sources and known times."""
    docs = []
    for n in range(12):
        docs.append(
            event(
                n,
                topic=("a", "b", "c")[n % 3],
                source="web" if n % 2 else "job",
                timestamp=f"2025-01-01T00:00:{n:02d}Z",
            )
        )
    result = invoke(runner, "ingest", "--db", db, "-", input=jsonl(*docs))
    assert result.exit_code == 0
    return db


def ids(docs: list[dict[str, Any]]) -> list[str]:
    return [d["event_id"] for d in docs]


def test_events_default_is_newest_first_jsonl_when_piped(runner: CliRunner, filled: Path) -> None:
    result = invoke(runner, "events", "--db", filled)
    assert result.exit_code == 0
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert ids(docs) == [f"e{n}" for n in range(11, -1, -1)]
    assert set(docs[0]) == {"topic", "event_id", "timestamp", "source", "payload"}


def test_events_filters(runner: CliRunner, filled: Path) -> None:
    assert ids(events_jsonl(runner, filled, "--topic", "b")) == ["e10", "e7", "e4", "e1"]
    assert ids(events_jsonl(runner, filled, "--source", "job", "--topic", "a")) == [
        "e6",
        "e0",
    ]
    assert ids(events_jsonl(runner, filled, "--since", "2025-01-01T00:00:09Z")) == [
        "e11",
        "e10",
        "e9",
    ]
    assert ids(events_jsonl(runner, filled, "--until", "2025-01-01T00:00:02Z")) == ["e1", "e0"]
    assert ids(
        events_jsonl(
            runner,
            filled,
            "--since",
            "2025-01-01T02:00:03+02:00",  # 00:00:03 UTC, inclusive
            "--until",
            "2025-01-01T00:00:06",  # exclusive
            "--order",
            "asc",
        )
    ) == ["e3", "e4", "e5"]
    assert events_jsonl(runner, filled, "--topic", "nope") == []


def test_events_limit_all_and_order(runner: CliRunner, db: Path) -> None:
    docs = [
        event(n, timestamp=f"2025-01-01T{n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}Z")
        for n in range(150)
    ]
    invoke(runner, "ingest", "--db", db, "-", input=jsonl(*docs))
    assert len(events_jsonl(runner, db)) == 100
    assert ids(events_jsonl(runner, db, "--limit", "3")) == ["e149", "e148", "e147"]
    assert ids(events_jsonl(runner, db, "--limit", "3", "--order", "asc")) == ["e0", "e1", "e2"]
    everything = events_jsonl(runner, db, "--all", "--order", "asc")
    assert ids(everything) == [f"e{n}" for n in range(150)]
    assert len(events_jsonl(runner, db, "--all", "--limit", "5")) == 150


def test_events_json_format_is_one_array(runner: CliRunner, filled: Path) -> None:
    result = invoke(runner, "events", "--db", filled, "--format", "json", "--limit", "2")
    docs = json.loads(result.stdout)
    assert ids(docs) == ["e11", "e10"]
    empty = invoke(runner, "events", "--db", filled, "--format", "json", "--topic", "none")
    assert json.loads(empty.stdout) == []


def test_events_csv_format(runner: CliRunner, filled: Path) -> None:
    result = invoke(runner, "events", "--db", filled, "-f", "csv", "--topic", "a", "--limit", "2")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["event_id"] for r in rows] == ["e9", "e6"]
    assert rows[0]["topic"] == "a"
    assert rows[0]["timestamp"] == "2025-01-01T00:00:09.000000Z"
    assert rows[0]["source"] == "web"
    assert json.loads(rows[0]["payload"]) == {"n": 9}


def test_events_table_format(runner: CliRunner, filled: Path) -> None:
    result = invoke(runner, "events", "--db", filled, "--format", "table", "--topic", "c")
    assert result.exit_code == 0
    header, rule, *rows = result.stdout.splitlines()
    assert header.split() == ["timestamp", "topic", "event_id", "source", "payload"]
    assert set(rule.replace(" ", "")) == {"─"}
    cells = [re.split(r"\s{2,}", line) for line in rows]
    assert [(c[1], c[2]) for c in cells] == [("c", f"e{n}") for n in (11, 8, 5, 2)]
    assert cells[0] == ["2025-01-01T00:00:11Z", "c", "e11", "web", '{"n":11}']


def test_events_return_payload_and_extra_fields_unchanged(runner: CliRunner, db: Path) -> None:
    payload = {
        "z": 1,
        "a": [1.5, -0.25, None, True, "ü ✓"],
        "big": 123456789012345678901234567890,
        "neg": -18446744073709551617,
        "nested": {"k": {"l": []}},
    }
    doc = event(1, payload=payload, host="web-1", level=3)
    invoke(runner, "ingest", "--db", db, "-", input=jsonl(doc))
    for fmt in ("jsonl", "json"):
        result = invoke(runner, "events", "--db", db, "--format", fmt)
        text = result.stdout
        got = json.loads(text)[0] if fmt == "json" else json.loads(text)
        assert got["payload"] == payload
        assert list(got["payload"]) == list(payload)
        assert (got["host"], got["level"]) == ("web-1", 3)
        assert "123456789012345678901234567890" in text


def test_events_round_trip_copies_a_store(runner: CliRunner, db: Path, tmp_path: Path) -> None:
    """`events --all --format jsonl | ingest --db copy.db -` gives an identical store."""
    docs = [
        event(n, topic=f"t{n % 4}", timestamp=f"2025-01-01T00:00:{n % 5:02d}+01:00")
        for n in range(40)
    ]
    docs.append(event(99, payload={"big": 2**80, "s": 'é\n"q"', "f": 0.1}, labels={"x": [1]}))
    invoke(runner, "ingest", "--db", db, "-", input=jsonl(*docs))
    exported = invoke(runner, "events", "--db", db, "--all", "--format", "jsonl")
    assert exported.exit_code == 0
    copy = tmp_path / "copy.db"
    result = invoke(runner, "ingest", "--db", copy, "--json", "-", input=exported.stdout)
    report = json.loads(result.stdout)
    assert (report["received"], report["accepted"], report["invalid"]) == (41, 41, 0)
    assert contents(copy) == contents(db)
    again = invoke(runner, "events", "--db", copy, "--all", "--format", "jsonl").stdout
    assert sorted(again.splitlines()) == sorted(exported.stdout.splitlines())
    assert invoke(runner, "check", "--db", copy).exit_code == 0


def test_events_bad_times_are_usage_errors(runner: CliRunner, filled: Path) -> None:
    for option in ("--since", "--until"):
        result = invoke(runner, "events", "--db", filled, option, "last week")
        assert result.exit_code == 2
        line = one_line_error(result.stderr)
        assert line.startswith(f"logagg: error: {option}: not an ISO-8601 time: 'last week'")
        assert result.stdout == ""


def test_events_of_a_missing_store_is_exit_1_and_creates_nothing(
    runner: CliRunner, db: Path
) -> None:
    result = invoke(runner, "events", "--db", db)
    assert result.exit_code == 1
    assert result.stderr == (
        f"logagg: error: {db}: no such store (ingest or publish something first)\n"
    )
    assert not db.exists()


# --- stats and check -------------------------------------------------------------------


def test_stats_json(runner: CliRunner, filled: Path) -> None:
    invoke(runner, "ingest", "--db", filled, "-", input=jsonl(event(0, topic="a"), "bad"))
    doc = stats_json(runner, filled)
    assert {"received", "unique_processed", "duplicate_dropped", "invalid", "topics"} <= set(doc)
    assert (doc["received"], doc["unique_processed"], doc["duplicate_dropped"]) == (14, 12, 1)
    assert doc["invalid"] == 1
    assert doc["topics"] == {"a": 4, "b": 4, "c": 4}
    assert doc["first_timestamp"] == "2025-01-01T00:00:00.000000Z"
    assert doc["last_timestamp"] == "2025-01-01T00:00:11.000000Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", doc["last_ingest_at"])
    assert doc["database"] == str(filled.resolve())
    wal = filled.with_name(filled.name + "-wal")
    assert doc["size_bytes"] == filled.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def test_stats_is_json_when_piped_and_a_table_on_request(runner: CliRunner, filled: Path) -> None:
    piped = invoke(runner, "stats", "--db", filled)
    assert json.loads(piped.stdout)["unique_processed"] == 12
    table = invoke(runner, "stats", "--db", filled, "--format", "table")
    assert table.exit_code == 0
    counters = {
        name: int(value)
        for name, value in re.findall(r"^(\w+) +(\d+)$", table.stdout, re.M)
        if name in ("received", "unique_processed", "duplicate_dropped", "invalid")
    }
    assert counters == {
        "received": 12,
        "unique_processed": 12,
        "duplicate_dropped": 0,
        "invalid": 0,
    }


def test_stats_of_a_missing_store_is_exit_1(runner: CliRunner, db: Path) -> None:
    result = invoke(runner, "stats", "--db", db)
    assert result.exit_code == 1
    assert result.stderr == (
        f"logagg: error: {db}: no such store (ingest or publish something first)\n"
    )
    assert not db.exists()


def test_check_healthy_exits_0(runner: CliRunner, filled: Path) -> None:
    result = invoke(runner, "check", "--db", filled)
    assert result.exit_code == 0
    assert result.stdout == ""  # the verdict is a message; its data form is --json
    assert result.stderr.startswith(
        "ok: 12 events, counters consistent (received 12 = 12 unique + 0 duplicate + 0 invalid)"
    )
    doc = json.loads(invoke(runner, "check", "--db", filled, "--json").stdout)
    assert doc["ok"] is True
    assert doc["problems"] == []
    assert doc["rows"] == 12


def test_check_of_a_tampered_store_exits_1_naming_the_problem(
    runner: CliRunner, filled: Path
) -> None:
    with sqlite3.connect(filled) as conn:
        conn.execute("UPDATE counters SET duplicates = duplicates + 5")
    result = invoke(runner, "check", "--db", filled)
    assert result.exit_code == 1
    problem = (
        "counters disagree: received 12 != unique_processed 12 + duplicate_dropped 5 + invalid 0"
    )
    assert f"problem: {problem}\n" in result.stderr
    doc = json.loads(invoke(runner, "check", "--db", filled, "--json").stdout)
    assert doc["ok"] is False
    assert doc["problems"] == [problem]


def test_check_of_a_missing_store_is_exit_1(runner: CliRunner, db: Path) -> None:
    result = invoke(runner, "check", "--db", db)
    assert result.exit_code == 1
    assert result.stderr == (
        f"logagg: error: {db}: no such store (ingest or publish something first)\n"
    )
    assert not db.exists()


# --- the store location ------------------------------------------------------------------


def test_logagg_db_environment_variable(
    runner: CliRunner, db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOGAGG_DB", str(db))
    assert invoke(runner, "ingest", "-", input=jsonl(event(1))).exit_code == 0
    assert invoke(runner, "publish", "--topic", "t", "--event-id", "p").exit_code == 0
    assert len(contents(db)) == 2
    assert json.loads(invoke(runner, "stats").stdout)["unique_processed"] == 2
    assert len(invoke(runner, "events").stdout.splitlines()) == 2
    assert invoke(runner, "check").exit_code == 0
    other = tmp_path / "other.db"
    invoke(runner, "ingest", "--db", other, "-", input=jsonl(event(5)))
    assert [r[1] for r in contents(other)] == ["e5"]


def test_default_store_is_logagg_db_in_the_current_directory(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOGAGG_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    assert invoke(runner, "ingest", "-", input=jsonl(event(1))).exit_code == 0
    assert [r[1] for r in contents(tmp_path / "logagg.db")] == ["e1"]


@pytest.mark.parametrize("command", ["ingest", "publish", "events", "stats", "check"])
def test_a_missing_db_directory_is_exit_1_with_one_line(
    runner: CliRunner, tmp_path: Path, command: str
) -> None:
    db = tmp_path / "no" / "such" / "store.db"
    args = {"publish": ["--topic", "t"]}.get(command, [])
    result = invoke(runner, command, "--db", db, *args, input="")
    assert result.exit_code == 1
    one_line_error(result.stderr)
    assert str(db) in result.stderr
    assert not db.parent.exists()


@pytest.mark.parametrize("command", ["ingest", "publish", "events", "stats", "check"])
def test_a_db_that_is_not_sqlite_is_exit_1_with_one_line(
    runner: CliRunner, tmp_path: Path, command: str
) -> None:
    db = tmp_path / "notes.txt"
    db.write_text("these are my notes, not a database\n" * 20)
    args = {"publish": ["--topic", "t"]}.get(command, [])
    result = invoke(runner, command, "--db", db, *args, input="")
    assert result.exit_code == 1
    assert "not a SQLite database" in one_line_error(result.stderr)
    assert db.read_text() == "these are my notes, not a database\n" * 20


# --- version, usage errors and real processes ----------------------------------------------


def test_version(runner: CliRunner) -> None:
    result = invoke(runner, "--version")
    assert result.exit_code == 0
    assert result.stdout == f"logagg {__version__}\n"


def test_python_m_logagg_version() -> None:
    proc = run_logagg("--version", timeout=30)
    assert proc.returncode == 0
    assert proc.stdout.decode() == f"logagg {__version__}\n"
    assert proc.stderr == b""


@pytest.mark.parametrize(
    "args",
    [
        ["ingest", "--no-such-option"],
        ["events", "--format", "xml"],
        ["events", "--order", "sideways"],
        ["events", "--limit", "0"],
        ["ingest", "--batch-size", "0"],
        ["ingest", "--queue-size", "0"],
        ["ingest", "--batch-size", "many"],
        ["no-such-command"],
        ["publish"],
        ["publish", "--topic", "t", "--timestamp", "later"],
        ["events", "--since", "later"],
    ],
    ids=lambda a: " ".join(a),
)
def test_usage_errors_exit_2_with_one_line_and_no_traceback(
    tmp_path: Path, args: list[str]
) -> None:
    db = tmp_path / "store.db"
    proc = run_logagg(*args, "--db", db, input=b"", timeout=30)
    assert proc.returncode == 2, proc.stderr
    one_line_error(proc.stderr)
    assert proc.stdout == b""


def test_no_arguments_shows_help_without_an_empty_error() -> None:
    proc = run_logagg(timeout=30)
    text = proc.stdout.decode() + proc.stderr.decode()
    assert "ingest" in text and "publish" in text
    assert not re.search(r"error:\s*(\(|$)", proc.stderr.decode(), re.M), proc.stderr


@pytest.mark.parametrize(
    ("setup", "message"),
    [("missing-dir", "does not exist"), ("not-sqlite", "not a SQLite database")],
)
def test_bad_db_in_a_real_process_is_exit_1_with_one_line(
    tmp_path: Path, setup: str, message: str
) -> None:
    if setup == "missing-dir":
        db = tmp_path / "nowhere" / "store.db"
    else:
        db = tmp_path / "file.db"
        db.write_bytes(b"\x00binary junk" * 100)
    proc = run_logagg("ingest", "--db", db, "-", input=jsonl(event(1)).encode(), timeout=30)
    assert proc.returncode == 1
    assert message in one_line_error(proc.stderr)


def test_report_on_a_piped_stderr_is_one_line(tmp_path: Path) -> None:
    """Large counts must not wrap the report when stderr is not a terminal."""
    data = jsonl(*(event(n, topic=f"topic-{n % 7}") for n in range(12000)))
    proc = run_logagg("ingest", "--db", tmp_path / "s.db", input=data.encode(), timeout=60)
    assert proc.returncode == 0
    report = proc.stderr.decode()
    assert report.count("\n") == 1, report
    assert report.startswith("received 12,000  accepted 12,000  "), report
    assert report_counts(report) == (12000, 12000, 0, 0)
    assert re.search(r" s \([\d,]+ events/s\)$", report.rstrip("\n")), report
