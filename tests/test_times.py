"""Time is right, or the user is told: RFC 3339 in full, naive times in a zone the user
names (and counted in the report), epoch numbers of any unit, fallback time fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import check_store, event, run_logagg, write_jsonl

REAL_LOGS = Path(__file__).resolve().parent / "data" / "real-logs"


def ingest(db: Path, path: Path, *args: str) -> tuple[dict[str, Any], str]:
    proc = run_logagg("ingest", "--db", db, "--json", *args, path)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout), proc.stderr.decode()


def stored_times(db: Path) -> list[str]:
    proc = run_logagg("events", "--db", db, "--all", "--order", "asc", "-f", "jsonl")
    assert proc.returncode == 0, proc.stderr.decode()
    return [json.loads(line)["timestamp"] for line in proc.stdout.splitlines()]


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2025-01-01t12:00:00z", "2025-01-01T12:00:00.000000Z"),
        ("2025-01-01T12:00:00z", "2025-01-01T12:00:00.000000Z"),
        ("2025-01-01t12:00:00+01:00", "2025-01-01T11:00:00.000000Z"),
        ("2016-12-31T23:59:60Z", "2016-12-31T23:59:60.000000Z"),
        ("2016-12-31T23:59:60.5Z", "2016-12-31T23:59:60.500000Z"),
        ("2017-01-01T00:59:60+01:00", "2016-12-31T23:59:60.000000Z"),
        ("2026-11-28 11:40:52,082", "2026-11-28T11:40:52.082000Z"),
    ],
)
def test_every_rfc3339_form_is_accepted(db: Path, tmp_path: Path, given: str, stored: str) -> None:
    """Lower-case t/z, a leap second and the common log form were refused."""
    path = write_jsonl(tmp_path / "in.jsonl", [{**event(1), "timestamp": given}])
    report, stderr = ingest(db, path)
    assert report["accepted"] == 1, stderr
    assert stored_times(db) == [stored]


def test_a_leap_second_sorts_between_its_neighbours(db: Path, tmp_path: Path) -> None:
    times = ["2017-01-01T00:00:00Z", "2016-12-31T23:59:60Z", "2016-12-31T23:59:59.9Z"]
    path = write_jsonl(
        tmp_path / "in.jsonl", [{**event(n), "timestamp": t} for n, t in enumerate(times)]
    )
    ingest(db, path)
    assert stored_times(db) == [
        "2016-12-31T23:59:59.900000Z",
        "2016-12-31T23:59:60.000000Z",
        "2017-01-01T00:00:00.000000Z",
    ]


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("0001-01-01T00:00:00+01:00", "is outside the years 1..9999 once converted to UTC"),
        ("9999-12-31T23:59:59-01:00", "is outside the years 1..9999 once converted to UTC"),
        ("2025-01-01T12:30:60Z", "a leap second (:60) comes only at 23:59:60 UTC"),
        ("2025-01-01T12:00:00Z\u0000junk", "contains U+0000"),
    ],
)
def test_times_that_cannot_be_stored_exactly_get_their_reason(
    db: Path, tmp_path: Path, given: str, reason: str
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{**event(1), "timestamp": given}])
    report, stderr = ingest(db, path)
    assert report["invalid"] == 1
    assert "in.jsonl:1: timestamp: " in stderr and reason in stderr


def test_naive_times_are_taken_in_utc_and_the_report_says_so(db: Path, tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {**event(1), "timestamp": "2025-01-01T12:00:00"},
            {**event(2), "timestamp": "2025-01-01 12:00:01"},
            {**event(3), "timestamp": "2025-01-01T12:00:02Z"},
        ],
    )
    proc = run_logagg("ingest", "--db", db, path)
    assert proc.returncode == 0
    assert "2 timestamps had no offset: taken as UTC (--assume-tz)" in proc.stderr.decode()
    report, _ = ingest(db, path)
    assert (report["naive_timestamps"], report["assumed_tz"]) == (2, "UTC")


def test_python_asctime_in_a_utc_plus_1_zone_lands_at_the_right_instant(
    db: Path, tmp_path: Path
) -> None:
    """python-json-logger's asctime is local time without an offset: once one hour off."""
    source = REAL_LOGS / "jsonlogger-asctime.jsonl"
    args = ["--topic", "billing", "--id-from-content", "--map", "timestamp=asctime"]
    report, stderr = ingest(db, source, *args, "--assume-tz", "Europe/Berlin")
    assert (report["accepted"], report["naive_timestamps"]) == (2, 2), stderr
    assert report["assumed_tz"] == "Europe/Berlin"
    local = json.loads(source.read_text().splitlines()[0])["asctime"]  # 2026-11-28 13:38:27,093
    assert stored_times(db)[0] == "2026-11-28T12:38:27.093000Z"
    assert local == "2026-11-28 13:38:27,093"


def test_structlog_local_times_with_assume_tz_local(db: Path, tmp_path: Path) -> None:
    """structlog TimeStamper(utc=False) writes local time; `local` reads it as such."""
    source = REAL_LOGS / "structlog-local.jsonl"
    proc = run_logagg(
        "ingest",
        "--db",
        db,
        "--json",
        "--preset",
        "structlog",
        "--assume-tz",
        "local",
        source,
        env={"TZ": "Europe/Berlin"},
    )
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert report["naive_timestamps"] == report["accepted"] == 11
    assert set(stored_times(db)) == {"2026-11-28T12:38:27.000000Z"}


def test_daylight_saving_gaps_are_refused_and_repeated_hours_counted(
    db: Path, tmp_path: Path
) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {**event(1), "timestamp": "2025-03-30T02:30:00"},  # skipped in Berlin
            {**event(2), "timestamp": "2025-10-26T02:30:00"},  # happens twice in Berlin
            {**event(3), "timestamp": "2025-07-01T12:00:00"},
        ],
    )
    proc = run_logagg("ingest", "--db", db, "--assume-tz", "Europe/Berlin", path)
    stderr = proc.stderr.decode()
    assert proc.returncode == 0
    assert "in.jsonl:1: timestamp: '2025-03-30T02:30:00' does not exist in Europe/Berlin" in stderr
    assert (
        "2 timestamps had no offset: taken as Europe/Berlin (--assume-tz); 1 happen twice" in stderr
    )
    assert stored_times(db) == ["2025-07-01T10:00:00.000000Z", "2025-10-26T00:30:00.000000Z"]
    check_store(db)


def test_an_unknown_zone_is_a_usage_error(db: Path, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [event(1)])
    proc = run_logagg("ingest", "--db", db, "--assume-tz", "Mars/Olympus", path)
    assert proc.returncode == 2
    assert proc.stderr.decode().startswith("logagg: error: --assume-tz: unknown time zone")
    assert not db.exists()


def test_pino_unix_time_seconds_land_in_their_year(db: Path) -> None:
    """`--preset pino` forced milliseconds: stdTimeFunctions.unixTime landed in 1970."""
    report, stderr = ingest(db, REAL_LOGS / "pino-unixtime.jsonl", "--preset", "pino")
    assert report["accepted"] == 2, stderr
    assert all(t.startswith("2026-11-28T") for t in stored_times(db))


def test_an_epoch_of_ambiguous_magnitude_is_refused_never_stored(db: Path, tmp_path: Path) -> None:
    lines = [
        {"msg": "a", "time": 17156784},  # seconds in 1970, or a wrong unit
        {"msg": "b", "time": 1715678467},
    ]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    args = ["--topic", "t", "--id-from-content", "--map", "timestamp=time"]
    report, stderr = ingest(db, path, *args)
    assert (report["accepted"], report["invalid"]) == (1, 1)
    assert "in.jsonl:1: timestamp: epoch 17156784 read as s is 1970-07-18" in stderr
    explicit, _ = ingest(db, path, *args, "--time-unit", "s")
    assert explicit["accepted"] == 1  # the unit given is taken at its word


def test_nanosecond_epochs(db: Path, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [{"msg": "a", "time": 1715678467123456789}])
    args = ["--topic", "t", "--id-from-content", "--map", "timestamp=time"]
    report, _ = ingest(db, path, *args, "--time-unit", "ns")
    assert report["accepted"] == 1
    assert stored_times(db) == ["2024-05-14T09:21:07.123456Z"]


def test_a_timestamp_mapping_may_name_fallbacks(db: Path, tmp_path: Path) -> None:
    """OpenTelemetry records often carry a null `timestamp` and an `observed_timestamp`."""
    lines = [
        {"id": "1", "timestamp": None, "observed_timestamp": "2025-01-01T00:00:01Z", "body": "a"},
        {"id": "2", "timestamp": "2025-01-01T00:00:02Z", "observed_timestamp": "x", "body": "b"},
        {"id": "3", "body": "c"},
    ]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    args = ["--topic", "otel", "--map", "event_id=id"]
    report, stderr = ingest(db, path, *args, "--map", "timestamp=timestamp,observed_timestamp")
    assert (report["accepted"], report["invalid"]) == (2, 1)
    assert "missing timestamp: the line has no 'timestamp,observed_timestamp'" in stderr
    assert stored_times(db) == ["2025-01-01T00:00:01.000000Z", "2025-01-01T00:00:02.000000Z"]
    proc = run_logagg("events", "--db", db, "--all", "--order", "asc", "-f", "jsonl")
    first = json.loads(proc.stdout.splitlines()[0])
    assert first["payload"] == {"timestamp": None, "body": "a"}  # only the field used is taken
