"""`--since` / `--until` take relative times (`15m`, `3h`, `2d`), `today`, `yesterday` and
`now` besides ISO-8601 times, in the core, so the command line and the HTTP face agree."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import run_logagg

from logagg.store import BadTime, EventQuery
from logagg.timestamps import format_utc, parse_time_filter

NOW = datetime(2025, 3, 10, 15, 30, 45, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", "2025-03-10T15:30:45.123456Z"),
        ("15m", "2025-03-10T15:15:45.123456Z"),
        ("3h", "2025-03-10T12:30:45.123456Z"),
        ("2d", "2025-03-08T15:30:45.123456Z"),
        ("1w", "2025-03-03T15:30:45.123456Z"),
        ("90s", "2025-03-10T15:29:15.123456Z"),
        ("-15m", "2025-03-10T15:15:45.123456Z"),
        ("15min", "2025-03-10T15:15:45.123456Z"),
        ("15 minutes ago", "2025-03-10T15:15:45.123456Z"),
        ("3 hours ago", "2025-03-10T12:30:45.123456Z"),
        ("1 day ago", "2025-03-09T15:30:45.123456Z"),
        ("today", "2025-03-10T00:00:00.000000Z"),
        ("Today", "2025-03-10T00:00:00.000000Z"),
        ("yesterday", "2025-03-09T00:00:00.000000Z"),
        ("2025-01-01", "2025-01-01T00:00:00.000000Z"),
        ("2025-01-01T10:00+02:00", "2025-01-01T08:00:00.000000Z"),
        ("2025-01-01T10:00:00.000000Z", "2025-01-01T10:00:00.000000Z"),
    ],
)
def test_time_filters_against_a_fixed_now(text: str, expected: str) -> None:
    assert parse_time_filter(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["last week", "15", "m", "15x", "1.5h", "-", "", "now-1h"])
def test_what_is_not_a_time_filter_is_refused_with_the_forms_named(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_time_filter(text, now=NOW)
    assert str(caught.value) == (
        f"not an ISO-8601 time: {text!r} (nor 15m, 3h, 2d, today, yesterday or now)"
    )


def test_a_span_too_long_is_refused_in_words() -> None:
    with pytest.raises(ValueError, match="'999999999w' reaches back before the year 1"):
        parse_time_filter("999999999w", now=NOW)


def test_event_query_takes_the_same_forms() -> None:
    query = EventQuery.parse(since="2h", until="now", now=NOW)
    assert (query.since, query.until) == ("2025-03-10T13:30:45.123456Z", format_utc(NOW))
    with pytest.raises(BadTime) as caught:
        EventQuery.parse(until="soon", now=NOW)
    assert caught.value.name == "until"


def stored_at(db: Path, moments: dict[str, datetime]) -> None:
    for event_id, moment in moments.items():
        proc = run_logagg(
            "publish", "--db", db, "--topic", "t", "--event-id", event_id,
            "--timestamp", format_utc(moment),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr.decode()


def listed_ids(db: Path, *args: str) -> list[str]:
    proc = run_logagg("events", "--db", db, "--format", "jsonl", *args)
    assert proc.returncode == 0, proc.stderr.decode()
    return [json.loads(line)["event_id"] for line in proc.stdout.splitlines()]


def test_events_since_and_until_relative_to_the_clock(tmp_path: Path) -> None:
    """At any time of day: what each window holds is worked out from the same clock (it
    once assumed the first hour of the day was over)."""
    db = tmp_path / "s.db"
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    edges = (timedelta(0), timedelta(minutes=10), timedelta(minutes=30), timedelta(hours=1))
    if any(abs(now - midnight - edge) < timedelta(seconds=20) for edge in edges):
        time.sleep(40)  # a window's edge falls between this clock and the command's
        now = datetime.now(UTC)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    times = {
        "three-days": now - timedelta(days=3),
        "before-midnight": midnight - timedelta(seconds=1),
        "three-hours": now - timedelta(hours=3),
        "half-hour": now - timedelta(minutes=30),
        "future": now + timedelta(hours=1),
    }
    stored_at(db, times)

    def held(since: datetime, until: datetime | None = None) -> list[str]:
        return sorted(k for k, t in times.items() if since <= t and (until is None or t < until))

    assert sorted(listed_ids(db, "--since", "1h", "--until", "now")) == held(
        now - timedelta(hours=1), now
    )
    assert held(now - timedelta(hours=1), now) in (["half-hour"], ["before-midnight", "half-hour"])
    ids = listed_ids(db, "--since", "2d", "--until", "10m")
    assert sorted(ids) == held(now - timedelta(days=2), now - timedelta(minutes=10))
    assert sorted(listed_ids(db, "--since", "today")) == held(midnight)
    assert "before-midnight" not in held(midnight)
    yesterday = listed_ids(db, "--since", "yesterday", "--until", "today")
    assert sorted(yesterday) == held(midnight - timedelta(days=1), midnight)
    assert "before-midnight" in yesterday
    assert listed_ids(db, "--since", "now") == ["future"]


def test_the_http_face_takes_the_same_forms(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from logagg.http.app import create_app

    db = tmp_path / "s.db"
    now = datetime.now(UTC)
    stored_at(db, {"old": now - timedelta(hours=3), "new": now - timedelta(minutes=5)})
    with TestClient(create_app(str(db)), base_url="http://localhost") as client:
        found = client.get("/events", params={"since": "1h"})
        assert found.status_code == 200, found.text
        assert [e["event_id"] for e in found.json()["events"]] == ["new"]
        bad = client.get("/events", params={"until": "soon"})
        assert bad.status_code == 422
        assert "not an ISO-8601 time: 'soon'" in bad.text
