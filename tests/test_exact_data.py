"""Keys and numbers are stored exactly, or the event is refused with a reason: on both
stores, through real `logagg` processes (what a user runs) and through the store itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import check_store, event, run_logagg, write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logagg.models import decode_lines
from logagg.store import EventQuery, open_store


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new store on each backend."""
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return str(tmp_path / "store.db")


def ingest(location: str, path: Path, *args: str) -> tuple[dict[str, Any], str]:
    proc = run_logagg("ingest", "--db", location, "--json", *args, path)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout), proc.stderr.decode()


def listed(location: str, *args: str) -> list[bytes]:
    """Every stored event as `events` prints it (JSON lines, oldest first)."""
    proc = run_logagg("events", "--db", location, "--all", "--order", "asc", "-f", "jsonl", *args)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.splitlines()


# --- keys --------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["event_id", "topic", "source", "timestamp"])
def test_u0000_in_a_name_or_the_time_is_refused_on_every_store(
    location: str, tmp_path: Path, field: str
) -> None:
    """Once `a\\u0000b`, `a\\u0000c` and `a` were ONE event `a` in SQLite, and silently
    invalid in PostgreSQL."""
    value = {"event_id": "a", "topic": "t", "source": "s", "timestamp": "2025-01-01T00:00:00Z"}
    base = value[field]
    lines = [
        {**event(1), field: base + "\u0000b"},
        {**event(2), field: base + "\u0000c"},
        {**event(3), field: base},
    ]
    if field != "event_id":
        for n, line in enumerate(lines, 1):
            line["event_id"] = f"e{n}"
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    rejects = tmp_path / "rejects.jsonl"
    report, stderr = ingest(location, path, "--rejects", str(rejects))
    assert (report["accepted"], report["duplicates"], report["invalid"]) == (1, 0, 2)
    for line in (1, 2):
        assert f"in.jsonl:{line}: {field}: contains U+0000" in stderr
    written = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["line"], r["error"].split(":")[0]) for r in written] == [(1, field), (2, field)]
    stored = "2025-01-01T00:00:00.000000Z" if field == "timestamp" else base
    assert [json.loads(e)[field] for e in listed(location)] == [stored]
    check_store(location)


KEY_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=40,
)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_any_accepted_key_comes_back_byte_identical(
    backend: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> None:
    """Whatever (topic, event_id, source) is accepted is returned with the same bytes."""
    if backend == "postgres":
        url = str(request.getfixturevalue("pg_url"))
    counter = iter(range(10**6))
    first_source: dict[tuple[str, str], str] = {}  # of the key, in the store of the example

    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(topic=KEY_TEXT, event_id=KEY_TEXT, source=KEY_TEXT)
    def check(topic: str, event_id: str, source: str) -> None:
        n = next(counter)
        if backend == "postgres":  # one store takes every example
            where = url
        else:
            where = str(tmp_path_factory.mktemp("k") / "s.db")
            first_source.clear()
        raw = json.dumps(
            {
                "topic": topic,
                "event_id": event_id,
                "timestamp": "2025-01-01T00:00:00Z",
                "source": source,
                "payload": {"n": n},
            },
            ensure_ascii=n % 2 == 0,
        ).encode()
        rows, rejects = decode_lines([(1, raw)], "in.jsonl")
        assert rejects == [] and len(rows) == 1
        expected = first_source.setdefault((topic, event_id), source)
        with open_store(where) as store:
            store.write_batch(rows)
            found = [
                (e.topic, e.event_id, e.source)
                for e in store.events(EventQuery(topic=topic, limit=None))
                if e.event_id == event_id
            ]
        assert found == [(topic, event_id, expected)]

    check()


def test_source_id_key_never_merges_two_pairs(tmp_path: Path, db: Path) -> None:
    """`("billing eu", "42")` and `("billing", "eu 42")` were both `billing eu 42`."""
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {**event(0), "source": "billing eu", "event_id": "42"},
            {**event(0), "source": "billing", "event_id": "eu 42"},
            {**event(0), "source": "billing%20eu", "event_id": "42"},
        ],
    )
    report, _ = ingest(str(db), path, "--key", "source,event_id")
    assert (report["accepted"], report["duplicates"]) == (3, 0)
    ids = sorted(json.loads(e)["event_id"] for e in listed(str(db)))
    assert ids == ["billing eu 42", "billing%20eu 42", "billing%2520eu 42"]
    again, _ = ingest(str(db), path, "--key", "source,event_id")
    assert (again["accepted"], again["duplicates"]) == (0, 3)


def test_source_id_key_keeps_cloudevents_detection(tmp_path: Path, db: Path) -> None:
    """`--key source,id` without `--preset cloudevents` once rejected every CloudEvent."""
    ces = [
        {
            "specversion": "1.0",
            "type": "order.placed",
            "source": "/shop",
            "id": "1",
            "time": "2025-01-01T00:00:00Z",
            "data": {"n": 1},
        },
        {
            "specversion": "1.0",
            "type": "order.placed",
            "source": "/legacy",
            "id": "1",
            "time": "2025-01-01T00:00:01Z",
            "data": {"n": 2},
        },
    ]
    path = write_jsonl(tmp_path / "ce.jsonl", ces)
    report, stderr = ingest(str(db), path, "--key", "source,id")
    assert (report["accepted"], report["invalid"]) == (2, 0), stderr
    events = [json.loads(e) for e in listed(str(db))]
    assert [(e["topic"], e["event_id"], e["source"]) for e in events] == [
        ("order.placed", "/shop 1", "/shop"),
        ("order.placed", "/legacy 1", "/legacy"),
    ]


# --- numbers -----------------------------------------------------------------------------

NUMBERS = [
    "1e-400",
    "12345678901234567890.55",
    "1.50",
    "1E5",
    "-0.0",
    "-0",
    "123456789012345678901234567890",
    "-9223372036854775809",
    "0.1",
    "2.5e+300",
]


def test_every_number_comes_back_with_the_same_digits(location: str, tmp_path: Path) -> None:
    """`1e-400` was stored as `0.0`, `12345678901234567890.55` as `1.2345678901234567e+19`,
    the integer `-0` as `0`."""
    lines = []
    for n, number in enumerate(NUMBERS):
        lines.append(
            f'{{"topic": "t", "event_id": "e{n}", "timestamp": "2025-01-01T00:00:{n:02d}Z",'
            f' "source": "s", "payload": {{"x": {number}, "list": [{number}]}},'
            f' "extra_field": {number}}}'
        )
    path = write_jsonl(tmp_path / "numbers.jsonl", lines)
    report, stderr = ingest(location, path)
    assert (report["accepted"], report["invalid"]) == (len(NUMBERS), 0), stderr
    out = listed(location)
    for number, line in zip(NUMBERS, out, strict=True):
        text = line.decode()
        assert f'"payload":{{"x":{number},"list":[{number}]}}' in text
        assert text.endswith(f'"extra_field":{number}}}')
    for fmt in ("json", "csv"):
        proc = run_logagg("events", "--db", location, "--all", "-f", fmt)
        assert proc.returncode == 0, proc.stderr.decode()
        for number in NUMBERS:
            assert number.encode() in proc.stdout
    check_store(location)


def test_a_stored_integer_beyond_64_bits_never_breaks_a_reader(tmp_path: Path, db: Path) -> None:
    """An extra field of 2**70 made `events` die with a traceback and `--emit new` emit
    nothing (exit 1)."""
    big = 2**70
    line = {**event(1), "trace": big}
    path = write_jsonl(tmp_path / "in.jsonl", [line])
    emit = run_logagg("ingest", "--db", db, "--emit", "new", "-q", path)
    assert emit.returncode == 0, emit.stderr.decode()
    assert json.loads(emit.stdout)["trace"] == big
    assert f'"trace":{big}'.encode() in emit.stdout
    for fmt in ("jsonl", "json", "csv", "table"):
        proc = run_logagg("events", "--db", db, "-f", fmt)
        assert proc.returncode == 0, proc.stderr.decode()
        assert b"Traceback" not in proc.stderr
        assert (b"e1" if fmt == "table" else str(big).encode()) in proc.stdout


def test_a_key_given_twice_in_one_object_is_refused(tmp_path: Path, db: Path) -> None:
    """The last copy silently replaced the first: data changed on the way in."""
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            '{"topic": "t", "event_id": "e1", "timestamp": "2025-01-01T00:00:00Z",'
            ' "source": "s", "payload": {"amount": 1, "amount": 2}}',
            '{"topic": "t", "event_id": "e2", "event_id": "e3", "timestamp":'
            ' "2025-01-01T00:00:00Z", "source": "s"}',
            json.dumps(event(4)),
        ],
    )
    report, stderr = ingest(str(db), path)
    assert (report["accepted"], report["invalid"]) == (1, 2)
    assert 'in.jsonl:1: invalid JSON: the key "amount" twice' in stderr
    assert 'in.jsonl:2: invalid JSON: the key "event_id" twice' in stderr


def test_nan_and_a_lone_surrogate_are_refused_one_by_one(tmp_path: Path, db: Path) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            json.dumps(event(1)),
            json.dumps(event(2))[:-1] + ', "x": NaN}',
            json.dumps(event(3))[:-1] + ', "x": "\\ud800"}',
            json.dumps(event(4)),
        ],
    )
    report, stderr = ingest(str(db), path)
    assert (report["accepted"], report["invalid"]) == (2, 2)
    assert "in.jsonl:2: invalid JSON: NaN and Infinity are not JSON" in stderr
    assert "in.jsonl:3: invalid JSON:" in stderr
    check_store(db)
