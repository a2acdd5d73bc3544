"""Hostile input: every bad line is counted, explained and rejected; it harms nothing around it.

Each case puts one bad line between good ones and checks that every good event is stored,
the bad line is counted invalid, reported as `FILE:LINE: reason` on stderr and written to
`--rejects`, and that the counters stay consistent (`logagg check`).
"""

from __future__ import annotations

import gzip
import json
import random
import sqlite3
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
from conftest import event, invoke, logagg_cmd, run_logagg
from typer.testing import CliRunner

TS = "2025-01-01T00:00:00Z"
BAD_LINE_NO = 3  # the bad line comes after two good ones


def line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def fields(**override: Any) -> bytes:
    """A JSON line of an event with some fields replaced (a value of `...` drops the field)."""
    doc: dict[str, Any] = {
        "topic": "t",
        "event_id": "bad",
        "timestamp": TS,
        "source": "s",
        "payload": {"k": 1},
    }
    for key, value in override.items():
        if value is ...:
            del doc[key]
        else:
            doc[key] = value
    return json.dumps(doc).encode()


def good_lines() -> tuple[list[bytes], list[bytes]]:
    return [line(event(1)), line(event(2))], [line(event(3)), line(event(4))]


def stored(runner: CliRunner, db: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Every stored event by key, as `logagg events --all --format jsonl` returns it."""
    result = invoke(runner, "events", "--db", db, "--all", "--format", "jsonl")
    assert result.exit_code == 0, result.stderr
    docs = [json.loads(x) for x in result.stdout.splitlines() if x.strip()]
    by_key = {(d["topic"], d["event_id"]): d for d in docs}
    assert len(by_key) == len(docs), "the same key listed twice"
    return by_key


def counters(runner: CliRunner, db: Path) -> dict[str, Any]:
    """`logagg check --json`, which must report a healthy store."""
    result = invoke(runner, "check", "--db", db, "--json")
    doc = json.loads(result.stdout)
    assert result.exit_code == 0 and doc["ok"], doc
    return doc


def read_rejects(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x]


UTF8 = ("utf-8", "utf8", "unicode", "json")
CONTROL = ("control", "json")

# (case id, the bad line, words of which the reason must contain at least one)
HOSTILE: list[tuple[str, bytes, tuple[str, ...]]] = [
    ("not-json", b"this is not JSON at all", ("json",)),
    ("not-json-brace", b"{topic: t}", ("json",)),
    ("truncated-json", fields()[:40], ("json", "eof")),
    ("truncated-after-value", fields()[:-1], ("json", "eof")),
    ("array", b'["topic", "t"]', ("object",)),
    ("string", b'"an event"', ("object",)),
    ("number", b"42", ("object",)),
    ("null", b"null", ("object",)),
    ("true", b"true", ("object",)),
    ("missing-topic", fields(topic=...), ("topic",)),
    ("missing-event-id", fields(event_id=...), ("event_id",)),
    ("missing-timestamp", fields(timestamp=...), ("timestamp",)),
    ("missing-source", fields(source=...), ("source",)),
    ("empty-topic", fields(topic=""), ("topic",)),
    ("empty-event-id", fields(event_id=""), ("event_id",)),
    ("empty-source", fields(source=""), ("source",)),
    ("empty-timestamp", fields(timestamp=""), ("timestamp",)),
    ("long-topic", fields(topic="x" * 256), ("topic",)),
    ("long-event-id", fields(event_id="x" * 256), ("event_id",)),
    ("long-source", fields(source="x" * 256), ("source",)),
    ("long-multibyte-event-id", fields(event_id="é" * 256), ("event_id",)),
    ("number-topic", fields(topic=42), ("topic",)),
    ("list-payload", fields(payload=[1, 2]), ("payload",)),
    ("string-payload", fields(payload="k=1"), ("payload",)),
    ("null-payload", fields(payload=None), ("payload",)),
    ("null-event-id", fields(event_id=None), ("event_id",)),
    ("bool-source", fields(source=True), ("source",)),
    ("number-timestamp", fields(timestamp=1735689600), ("timestamp",)),
    ("timestamp-not-a-date", fields(timestamp="yesterday"), ("timestamp",)),
    ("timestamp-impossible-date", fields(timestamp="2025-02-30T10:00:00Z"), ("timestamp",)),
    ("timestamp-hour-25", fields(timestamp="2025-01-01T25:00:00Z"), ("timestamp",)),
    ("timestamp-bad-offset", fields(timestamp="2025-01-01T00:00:00+25:00"), ("timestamp",)),
    ("invalid-utf8-latin1", fields(payload={"note": "caf@@"}).replace(b"@@", b"\xe9"), UTF8),
    ("invalid-utf8-continuation", fields(topic="t@@").replace(b"@@", b"\x80"), UTF8),
    ("invalid-utf8-truncated-sequence", fields(source="s@@").replace(b"@@", b"\xe2\x82"), UTF8),
    ("invalid-utf8-overlong", fields(source="s@@").replace(b"@@", b"\xc0\xaf"), UTF8),
    ("raw-nul-in-string", fields(source="a@@b").replace(b"@@", b"\x00"), CONTROL),
    (
        "raw-escape-in-string",
        fields(payload={"m": "a@@b"}).replace(b"@@", b"\x1b"),
        CONTROL,
    ),
    ("raw-cr-in-string", fields(event_id="a@@b").replace(b"@@", b"\r"), CONTROL),
    ("raw-nul-between-tokens", fields().replace(b", ", b",\x00", 1), ("json",)),
    ("nan-payload", fields().replace(b'{"k": 1}', b'{"k": NaN}'), ("nan", "infinity", "json")),
    ("infinity-payload", fields().replace(b'{"k": 1}', b'{"k": Infinity}'), ("infinity", "json")),
    ("minus-infinity", fields().replace(b'{"k": 1}', b'{"k": [-Infinity]}'), ("infinity", "json")),
    ("nan-extra-field", fields().replace(b'"source"', b'"score": NaN, "source"'), ("nan", "json")),
]


def _case_ids() -> list[str]:
    return [case_id for case_id, _, _ in HOSTILE]


@pytest.mark.parametrize(("case_id", "bad", "words"), HOSTILE, ids=_case_ids())
def test_bad_line_is_rejected_and_harms_nothing_around_it(
    tmp_path: Path, runner: CliRunner, db: Path, case_id: str, bad: bytes, words: tuple[str, ...]
) -> None:
    """The bad line is counted, explained and written to --rejects; the good ones are stored."""
    before, after = good_lines()
    path = tmp_path / f"{case_id}.jsonl"
    path.write_bytes(b"\n".join([*before, bad, *after]) + b"\n")
    rejects = tmp_path / "rejects.jsonl"

    result = invoke(runner, "ingest", "--db", db, "--rejects", rejects, path)

    assert result.exit_code == 0, result.stderr
    prefix = f"{path}:{BAD_LINE_NO}: "
    reported = [x for x in result.stderr.splitlines() if x.startswith(prefix)]
    assert len(reported) == 1, f"no '{prefix}reason' line on stderr:\n{result.stderr}"
    reason = reported[0][len(prefix) :]
    assert any(w in reason.lower() for w in words), f"reason {reason!r} names none of {words}"

    [record] = read_rejects(rejects)
    assert record["file"] == str(path)
    assert record["line"] == BAD_LINE_NO
    assert record["error"] == reason
    assert record["raw"] == bad.decode("utf-8", "backslashreplace")

    events = stored(runner, db)
    assert set(events) == {("t", "e1"), ("t", "e2"), ("t", "e3"), ("t", "e4")}
    for n in (1, 2, 3, 4):
        assert events[("t", f"e{n}")]["payload"] == {"n": n}
    facts = counters(runner, db)
    assert (facts["received"], facts["unique_processed"], facts["invalid"]) == (5, 4, 1)
    assert facts["duplicate_dropped"] == 0


def test_strict_exits_3_on_a_hostile_line(tmp_path: Path, runner: CliRunner, db: Path) -> None:
    """Under --strict a rejected line makes the run exit 3, the good events still stored."""
    before, after = good_lines()
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join([*before, b"[1]", *after]) + b"\n")
    result = invoke(runner, "ingest", "--db", db, "--strict", path)
    assert result.exit_code == 3, result.stderr
    assert len(stored(runner, db)) == 4
    assert counters(runner, db)["invalid"] == 1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("topic", "x" * 255),
        ("event_id", "x" * 255),
        ("source", "x" * 255),
        ("event_id", "é" * 255),
        ("topic", "😀" * 255),
        ("event_id", "1"),
    ],
    ids=[
        "topic-255",
        "event-id-255",
        "source-255",
        "event-id-255-two-byte",
        "topic-255-emoji",
        "one",
    ],
)
def test_names_at_the_length_limits_are_stored(
    tmp_path: Path, runner: CliRunner, db: Path, name: str, value: str
) -> None:
    """1 and 255 characters (not bytes) are inside the rule, so such events are stored."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(fields(**{name: value}) + b"\n")
    result = invoke(runner, "ingest", "--db", db, path)
    assert result.exit_code == 0, result.stderr
    [doc] = stored(runner, db).values()
    assert doc[name] == value
    assert counters(runner, db)["invalid"] == 0


def test_unknown_top_level_fields_are_kept_and_returned(
    tmp_path: Path, runner: CliRunner, db: Path
) -> None:
    """Extra fields are stored in column `extra` and come back at the top level of `events`."""
    extra = {"region": "eu-west-1", "attempt": 3, "tags": ["a", "b"], "meta": {"trace": "x1"}}
    before, after = good_lines()
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join([*before, fields(**extra), *after]) + b"\n")

    result = invoke(runner, "ingest", "--db", db, path)

    assert result.exit_code == 0, result.stderr
    events = stored(runner, db)
    assert len(events) == 5
    doc = events[("t", "bad")]
    for key, value in extra.items():
        assert doc[key] == value, f"extra field {key!r} not returned at the top level: {doc}"
    assert doc["payload"] == {"k": 1}, "extra fields must not leak into the payload"
    assert "region" not in events[("t", "e1")]
    with sqlite3.connect(db) as conn:
        column = conn.execute("SELECT extra FROM events WHERE event_id = 'bad'").fetchone()[0]
        plain = conn.execute("SELECT extra FROM events WHERE event_id = 'e1'").fetchone()[0]
    assert json.loads(column) == extra
    assert plain in (None, "", "{}")
    assert counters(runner, db)["invalid"] == 0


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2025-03-01T07:00:00+07:00", "2025-03-01T00:00:00.000000Z"),
        ("2025-03-01T03:00:00+07:00", "2025-02-28T20:00:00.000000Z"),
        ("2025-03-01T00:30:00-05:30", "2025-03-01T06:00:00.000000Z"),
        ("2025-03-01T00:00:00.000000+00:00", "2025-03-01T00:00:00.000000Z"),
        ("2025-03-01T00:00:00Z", "2025-03-01T00:00:00.000000Z"),
        ("2025-03-01T00:00:00", "2025-03-01T00:00:00.000000Z"),
        ("2025-03-01T00:00:00.5Z", "2025-03-01T00:00:00.500000Z"),
        ("2025-03-01T00:00:00.123Z", "2025-03-01T00:00:00.123000Z"),
        ("2025-03-01T00:00:00.123456Z", "2025-03-01T00:00:00.123456Z"),
        ("2025-03-01T00:00:00.1234567Z", "2025-03-01T00:00:00.123456Z"),
        ("2025-03-01T00:00:00.123456789012Z", "2025-03-01T00:00:00.123456Z"),
        ("2025-03-01T07:00:00.123456789+07:00", "2025-03-01T00:00:00.123456Z"),
        ("2025-03-01 07:00:00+07:00", "2025-03-01T00:00:00.000000Z"),
        ("2025-03-01 00:00:00.000000Z", "2025-03-01T00:00:00.000000Z"),
    ],
)
def test_timestamps_are_stored_as_the_same_instant_in_utc(
    tmp_path: Path, runner: CliRunner, db: Path, given: str, expected: str
) -> None:
    """Offsets become UTC, no offset means UTC, any fractional length is kept to microseconds."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(fields(timestamp=given) + b"\n")
    result = invoke(runner, "ingest", "--db", db, path)
    assert result.exit_code == 0, result.stderr
    [doc] = stored(runner, db).values()
    assert doc["timestamp"] == expected
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT timestamp FROM events").fetchone()[0] == expected


def test_number_overflowing_a_double_is_never_silently_changed(
    tmp_path: Path, runner: CliRunner, db: Path
) -> None:
    """1e400 is valid JSON but not a finite double: rejected, or returned as sent, never null."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(fields().replace(b'{"k": 1}', b'{"k": 1e400}') + b"\n")
    result = invoke(runner, "ingest", "--db", db, path)
    assert result.exit_code == 0, result.stderr
    events = stored(runner, db)
    facts = counters(runner, db)
    if facts["invalid"] == 1:
        assert not events
        return
    out = invoke(runner, "events", "--db", db, "--format", "jsonl").stdout
    assert json.loads(out)["payload"]["k"] is not None, f"payload changed on the way: {out}"


# --- handled, not rejected -----------------------------------------------------------------


def test_bom_on_the_first_line_is_skipped(tmp_path: Path, runner: CliRunner, db: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + line(event(1)) + b"\n" + line(event(2)) + b"\n")
    result = invoke(runner, "ingest", "--db", db, path)
    assert result.exit_code == 0, result.stderr
    assert set(stored(runner, db)) == {("t", "e1"), ("t", "e2")}
    assert counters(runner, db)["invalid"] == 0


def test_bom_on_stdin_is_skipped(runner: CliRunner, db: Path) -> None:
    data = b"\xef\xbb\xbf" + line(event(1)) + b"\n" + line(event(2)) + b"\n"
    result = invoke(runner, "ingest", "--db", db, "-", input=data)
    assert result.exit_code == 0, result.stderr
    assert set(stored(runner, db)) == {("t", "e1"), ("t", "e2")}
    assert counters(runner, db)["invalid"] == 0


def test_crlf_line_endings(tmp_path: Path, runner: CliRunner, db: Path) -> None:
    """CRLF lines are events; a bad CRLF line is reported with its own line number."""
    path = tmp_path / "crlf.jsonl"
    lines = [line(event(1)), line(event(2)), b"[1]", line(event(3)), b"", line(event(4))]
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    result = invoke(runner, "ingest", "--db", db, path)
    assert result.exit_code == 0, result.stderr
    assert f"{path}:3: " in result.stderr
    events = stored(runner, db)
    assert set(events) == {("t", f"e{n}") for n in (1, 2, 3, 4)}
    assert all("\r" not in json.dumps(doc) for doc in events.values())
    facts = counters(runner, db)
    assert (facts["received"], facts["invalid"]) == (5, 1)


def test_last_line_without_newline(tmp_path: Path, runner: CliRunner, db: Path) -> None:
    path = tmp_path / "no-eol.jsonl"
    path.write_bytes(line(event(1)) + b"\n" + line(event(2)))
    result = invoke(runner, "ingest", "--db", db, path)
    assert result.exit_code == 0, result.stderr
    assert set(stored(runner, db)) == {("t", "e1"), ("t", "e2")}
    assert counters(runner, db)["received"] == 2


def test_bad_last_line_without_newline_is_counted(
    tmp_path: Path, runner: CliRunner, db: Path
) -> None:
    path = tmp_path / "no-eol.jsonl"
    path.write_bytes(line(event(1)) + b"\n" + b'{"topic": "t", "event_id"')
    result = invoke(runner, "ingest", "--db", db, path)
    assert result.exit_code == 0, result.stderr
    assert f"{path}:2: " in result.stderr
    facts = counters(runner, db)
    assert (facts["received"], facts["unique_processed"], facts["invalid"]) == (2, 1, 1)


def test_blank_and_whitespace_lines_are_skipped_and_not_counted(
    tmp_path: Path, runner: CliRunner, db: Path
) -> None:
    """Blank lines are not events, but they keep their numbers for the line of a reject."""
    path = tmp_path / "blank.jsonl"
    lines = [b"", line(event(1)), b"   ", b"\t", b" \t \r", line(event(2)), b"", b"nope", b"  "]
    path.write_bytes(b"\n".join(lines) + b"\n\n\n")
    result = invoke(runner, "ingest", "--db", db, path)
    assert result.exit_code == 0, result.stderr
    assert f"{path}:8: " in result.stderr
    assert set(stored(runner, db)) == {("t", "e1"), ("t", "e2")}
    facts = counters(runner, db)
    assert (facts["received"], facts["unique_processed"], facts["invalid"]) == (3, 2, 1)


@pytest.mark.parametrize("via", ["file", "stdin"])
def test_line_numbers_stay_right_across_read_boundaries(
    tmp_path: Path, runner: CliRunner, db: Path, via: str
) -> None:
    """Bad lines far into a large input, one of them cut by every read size, keep their numbers."""
    lines = [line(event(n, payload={"pad": "p" * (n % 97)})) for n in range(12_000)]
    offsets, position = [], 0
    for raw in lines:
        offsets.append(position)
        position += len(raw) + 1
    bad_numbers = {2, 5000}
    for boundary in (1 << 16, 3 << 16, 1 << 20):  # a pipe read and a file read
        bad_numbers.add(max(i for i, start in enumerate(offsets) if start < boundary) + 1)
    for number in bad_numbers:
        lines[number - 1] = b'{"broken": ' + b"x" * (number % 200)
    data = b"\n".join(lines) + b"\n"
    rejects = tmp_path / "rejects.jsonl"
    args = ["ingest", "--db", db, "--rejects", rejects]
    if via == "file":
        path = tmp_path / "big.jsonl"
        path.write_bytes(data)
        result = invoke(runner, *args, path)
    else:
        result = invoke(runner, *args, "-", input=data)
    assert result.exit_code == 0, result.stderr
    assert {r["line"] for r in read_rejects(rejects)} == bad_numbers
    for record in read_rejects(rejects):
        assert record["raw"] == lines[record["line"] - 1].decode()
    facts = counters(runner, db)
    assert facts["invalid"] == len(bad_numbers)
    assert facts["unique_processed"] == len(lines) - len(bad_numbers)


# --- size and depth --------------------------------------------------------------------


@pytest.mark.parametrize("at_end", [False, True], ids=["middle", "last-without-newline"])
def test_over_long_line_is_rejected_and_the_next_line_read(
    tmp_path: Path, runner: CliRunner, db: Path, at_end: bool
) -> None:
    """A line over --max-line-bytes is one invalid line, wherever the read boundaries fall."""
    big = fields(payload={"blob": "z" * 5000})
    path = tmp_path / "long.jsonl"
    if at_end:
        path.write_bytes(line(event(1)) + b"\n" + line(event(2)) + b"\n" + big)
    else:
        path.write_bytes(b"\n".join([line(event(1)), big, line(event(2))]) + b"\n")
    rejects = tmp_path / "rejects.jsonl"
    result = invoke(
        runner, "ingest", "--db", db, "--max-line-bytes", "1000", "--rejects", rejects, path
    )
    assert result.exit_code == 0, result.stderr
    number = 3 if at_end else 2
    assert f"{path}:{number}: " in result.stderr
    [record] = read_rejects(rejects)
    assert record["line"] == number
    assert len(record["raw"]) < len(big)
    assert set(stored(runner, db)) == {("t", "e1"), ("t", "e2")}
    facts = counters(runner, db)
    assert (facts["received"], facts["invalid"]) == (3, 1)


_MAXRSS = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(code)\n"
)


def _peak_rss_kib(*args: str | Path) -> tuple[int, subprocess.CompletedProcess[bytes]]:
    """Run `logagg` in a fresh process; return its peak resident memory (KiB) and the run."""
    proc = subprocess.run(
        [sys.executable, "-c", _MAXRSS, *logagg_cmd(*args)], capture_output=True, timeout=120
    )
    return int(proc.stdout.split()[-1]), proc


def test_a_50_mb_line_is_rejected_without_being_held_in_memory(tmp_path: Path) -> None:
    """The default 1 MiB limit rejects a 50 MB line, reads the next one, memory stays bounded."""
    db = tmp_path / "store.db"
    small = tmp_path / "small.jsonl"
    small.write_bytes(line(event(1)) + b"\n" + line(event(2)) + b"\n")
    huge = tmp_path / "huge.jsonl"
    with open(huge, "wb") as f:
        f.write(line(event(1)) + b"\n")
        f.write(b'{"topic": "t", "event_id": "huge", "timestamp": "' + TS.encode())
        f.write(b'", "source": "s", "payload": {"blob": "')
        block = b"a" * (1 << 20)
        for _ in range(50):
            f.write(block)
        f.write(b'"}}\n')
        f.write(line(event(2)) + b"\n")
    rejects = tmp_path / "rejects.jsonl"

    baseline, first = _peak_rss_kib("ingest", "--db", tmp_path / "base.db", small)
    assert first.returncode == 0, first.stderr.decode()
    peak, proc = _peak_rss_kib("ingest", "--db", db, "--rejects", rejects, huge)

    assert proc.returncode == 0, proc.stderr.decode()
    assert f"{huge}:2: " in proc.stderr.decode()
    [record] = read_rejects(rejects)
    assert record["line"] == 2
    assert len(record["raw"]) < 100_000
    growth_mib = (peak - baseline) / 1024
    assert growth_mib < 20, f"peak memory grew by {growth_mib:.1f} MiB for a 50 MB line"
    huge.unlink()
    facts = json.loads(run_logagg("check", "--db", db, "--json").stdout)
    assert facts["ok"], facts
    assert (facts["received"], facts["unique_processed"], facts["invalid"]) == (3, 2, 1)


def test_payload_nested_100000_levels_is_rejected_without_crash_or_hang(tmp_path: Path) -> None:
    """Deep objects and deep arrays are rejected lines; the process neither crashes nor hangs."""
    depth = 100_000
    deep_object = fields().replace(b'{"k": 1}', b'{"a": ' * depth + b"1" + b"}" * depth)
    deep_array = fields().replace(b'{"k": 1}', b'{"a": ' + b"[" * depth + b"]" * depth + b"}")
    path = tmp_path / "deep.jsonl"
    path.write_bytes(
        b"\n".join([line(event(1)), deep_object, line(event(2)), deep_array, line(event(3))])
        + b"\n"
    )
    db = tmp_path / "store.db"

    proc = run_logagg("ingest", "--db", db, path, timeout=60)

    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "RecursionError" not in stderr, stderr
    assert f"{path}:2: " in stderr and f"{path}:4: " in stderr, stderr
    facts = json.loads(run_logagg("check", "--db", db, "--json").stdout)
    assert facts["ok"], facts
    assert (facts["received"], facts["unique_processed"], facts["invalid"]) == (5, 3, 2)


def test_publish_with_a_deeply_nested_payload_is_a_usage_error(tmp_path: Path) -> None:
    """`publish --payload` / `-p k:=` nested past any parser's limit: one line, no traceback."""
    depth = 40_000  # a single argument must stay under the kernel's 128 KiB limit
    nested = "[" * depth + "]" * depth
    db = tmp_path / "store.db"
    for option in (["--payload", '{"a": ' + nested + "}"], ["-p", "a:=" + nested]):
        proc = run_logagg("publish", "--db", db, "--topic", "t", "--event-id", "x", *option)
        stderr = proc.stderr.decode()
        assert "Traceback" not in stderr, f"{option[0]}: {stderr[-800:]}"
        assert proc.returncode in (0, 2), stderr
        if proc.returncode == 2:
            assert len(stderr.strip().splitlines()) == 1, stderr


# --- gzip damage and bad paths ---------------------------------------------------------


def _random_events(count: int, seed: int) -> list[bytes]:
    """Events with incompressible payloads, so the gzip file is large enough to damage."""
    rng = random.Random(seed)
    return [
        line(event(n, topic="gz", payload={"noise": rng.randbytes(120).hex()}))
        for n in range(count)
    ]


def _complete_lines_of_prefix(gz: bytes) -> list[bytes]:
    """The complete lines that decompress from the start of `gz` (which may be damaged)."""
    inflate = zlib.decompressobj(wbits=31)
    try:
        text = inflate.decompress(gz)
    except zlib.error:
        text = b""
    return text.split(b"\n")[:-1]


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "header-only"])
def test_damaged_gzip_names_the_file_and_keeps_what_came_before(
    tmp_path: Path, runner: CliRunner, db: Path, damage: str
) -> None:
    """Exit 1 with an error naming the file; events read before the damage are kept."""
    lines = _random_events(6000, seed=3)
    whole = gzip.compress(b"\n".join(lines) + b"\n", mtime=0)
    cut = len(whole) * 6 // 10
    if damage == "truncated":
        data = whole[:cut]
    elif damage == "corrupt":
        data = whole[:cut] + bytes(b ^ 0x5A for b in whole[cut : cut + 512]) + whole[cut + 512 :]
    else:
        data = whole[:10] + b"\x00" * 5
    gz = tmp_path / "damaged.jsonl.gz"
    gz.write_bytes(data)
    later = tmp_path / "later.jsonl"
    later.write_bytes(line(event(1, topic="later")) + b"\n")

    result = invoke(runner, "ingest", "--db", db, gz, later)

    assert result.exit_code == 1, result.stderr
    errors = [x for x in result.stderr.splitlines() if str(gz) in x and "error" in x.lower()]
    assert errors, f"no error naming {gz}:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    events = stored(runner, db)
    assert ("later", "e1") in events, "the path after the damaged one was not ingested"
    originals = {json.loads(x)["event_id"]: json.loads(x) for x in lines}
    kept = {eid: doc for (topic, eid), doc in events.items() if topic == "gz"}
    for eid, doc in kept.items():
        assert doc["payload"] == originals[eid]["payload"]
    if damage == "truncated":
        before = _complete_lines_of_prefix(data)
        assert {json.loads(x)["event_id"] for x in before} == set(kept)
    elif damage == "corrupt":
        margin = 256 * 1024  # what a decompressor may hold undelivered when the damage shows
        before = _complete_lines_of_prefix(data[: cut - margin])
        missing = [x for x in before if json.loads(x)["event_id"] not in kept]
        assert not missing, f"{len(missing)} of {len(before)} events before the damage were lost"
    else:
        before = []
        assert not kept
    assert len(before) > 1000 or damage == "header-only"
    counters(runner, db)


def test_gzip_input_is_read(tmp_path: Path, runner: CliRunner, db: Path) -> None:
    """An intact .gz file is read whole (the control for the damaged cases)."""
    lines = _random_events(2000, seed=4)
    gz = tmp_path / "ok.jsonl.gz"
    gz.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    result = invoke(runner, "ingest", "--db", db, gz)
    assert result.exit_code == 0, result.stderr
    assert len(stored(runner, db)) == 2000


def test_missing_file_and_directory_among_paths(
    tmp_path: Path, runner: CliRunner, db: Path
) -> None:
    """Each bad path gets a clear error; the other paths are ingested; exit 1 at the end."""
    first = tmp_path / "first.jsonl"
    first.write_bytes(line(event(1)) + b"\n")
    missing = tmp_path / "missing.jsonl"
    directory = tmp_path / "a-directory"
    directory.mkdir()
    last = tmp_path / "last.jsonl"
    last.write_bytes(line(event(2)) + b"\n" + line(event(3)) + b"\n")

    result = invoke(runner, "ingest", "--db", db, first, missing, directory, last)

    assert result.exit_code == 1, result.stderr
    lines = result.stderr.splitlines()
    about_missing = [x for x in lines if str(missing) in x]
    about_directory = [x for x in lines if str(directory) in x]
    assert about_missing and "no such file" in about_missing[0].lower(), result.stderr
    assert about_directory and "directory" in about_directory[0].lower(), result.stderr
    assert "Traceback" not in result.stderr
    assert set(stored(runner, db)) == {("t", "e1"), ("t", "e2"), ("t", "e3")}
    facts = counters(runner, db)
    assert (facts["received"], facts["invalid"]) == (3, 0)


def test_missing_file_only_is_exit_1_with_a_real_process(tmp_path: Path) -> None:
    """The same as a real process: one error line, exit 1, no traceback."""
    proc = run_logagg("ingest", "--db", tmp_path / "s.db", tmp_path / "nope.jsonl")
    stderr = proc.stderr.decode()
    assert proc.returncode == 1, stderr
    assert str(tmp_path / "nope.jsonl") in stderr
    assert "Traceback" not in stderr
