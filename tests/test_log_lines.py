"""A log line that repeats is a second event; presets read only the fields they name; a
file's default source survives compression and rotation; every event of a CloudEvents
batch is stored or refused on its own. Data: real output of pino, bunyan and structlog."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import check_store, run_logagg, write_jsonl

REAL_LOGS = Path(__file__).resolve().parent / "data" / "real-logs"


def ingest(db: Path, *args: str | Path, input: bytes | None = None) -> tuple[dict[str, Any], str]:
    proc = run_logagg("ingest", "--db", db, "--json", *args, input=input)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout), proc.stderr.decode()


def stored(db: Path) -> list[dict[str, Any]]:
    proc = run_logagg("events", "--db", db, "--all", "--order", "asc", "-f", "jsonl")
    assert proc.returncode == 0, proc.stderr.decode()
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.parametrize(
    ("preset", "sample", "repeated", "message"),
    [
        ("pino", "pino-repeats.jsonl", 20, "retrying connection"),
        ("bunyan", "bunyan-repeats.jsonl", 10, "tick"),
    ],
)
def test_n_identical_log_lines_are_n_events_and_a_reread_adds_none(
    db: Path, tmp_path: Path, preset: str, sample: str, repeated: int, message: str
) -> None:
    """20 real pino warnings in the same millisecond were stored as ONE event."""
    path = REAL_LOGS / sample
    lines = [line for line in path.read_text().splitlines() if line]
    first, _ = ingest(db, "--preset", preset, path)
    assert (first["accepted"], first["duplicates"], first["invalid"]) == (len(lines), 0, 0)
    assert sum(1 for e in stored(db) if e["payload"].get("msg") == message) == repeated
    again, _ = ingest(db, "--preset", preset, path)  # the same file again
    assert (again["accepted"], again["duplicates"]) == (0, len(lines))
    packed = tmp_path / (sample + ".gz")
    packed.write_bytes(gzip.compress(path.read_bytes()))
    as_gz, _ = ingest(db, "--preset", preset, packed)  # its .gz copy
    assert (as_gz["accepted"], as_gz["duplicates"]) == (0, len(lines))
    piped, _ = ingest(db, "--preset", preset, "-", input=path.read_bytes())
    assert piped["accepted"] == 0  # the same stream on stdin
    check_store(db)


def test_structlog_health_checks_at_second_resolution_are_each_kept(db: Path) -> None:
    """7 of 10 structlog health checks were dropped as duplicates of one another."""
    report, _ = ingest(db, "--preset", "structlog", REAL_LOGS / "structlog-local.jsonl")
    assert (report["accepted"], report["duplicates"]) == (11, 0)


def test_occurrences_are_counted_within_a_bounded_window(db: Path, tmp_path: Path) -> None:
    """Identical lines farther apart than the window are taken as a re-send (README)."""
    from logagg.mapping import OCCURRENCE_WINDOW

    same = '{"msg": "heartbeat", "time": 1735689600000}'
    filler = [f'{{"msg": "line {n}", "time": 1735689600000}}' for n in range(OCCURRENCE_WINDOW)]
    path = write_jsonl(tmp_path / "app.log", [same, same, *filler, same])
    report, _ = ingest(db, "--topic", "app", "--id-from-content", "--map", "timestamp=time", path)
    assert (report["accepted"], report["duplicates"]) == (OCCURRENCE_WINDOW + 2, 1)


@pytest.mark.parametrize("preset", ["pino", "bunyan", "structlog", "docker"])
def test_presets_never_take_an_application_field_as_identity_or_source(
    db: Path, tmp_path: Path, preset: str
) -> None:
    """21 pino lines carrying `event_id: "evt-N"` were stored as 10; an object event_id
    rejected the line."""
    time = {"pino": 1735689600000, "bunyan": "2025-01-01T00:00:00Z"}.get(preset)
    base: dict[str, Any] = {"msg": "order placed", "hostname": "web-1", "name": "shop"}
    if preset == "structlog":
        base = {"event": "order placed", "timestamp": "2025-01-01T00:00:00Z"}
    elif preset == "docker":
        base = {"log": "order placed\n", "stream": "stdout", "time": "2025-01-01T00:00:00Z"}
    else:
        base["time"] = time
    lines = [
        {**base, "seq": n, "event_id": f"evt-{n % 10}", "source": "app-field"} for n in range(21)
    ]
    lines.append({**base, "seq": 99, "event_id": {"nested": True}})
    path = write_jsonl(tmp_path / "app.log", lines)
    report, stderr = ingest(db, "--preset", preset, path)
    assert (report["accepted"], report["invalid"]) == (22, 0), stderr
    events = stored(db)
    assert all(e["source"] != "app-field" for e in events)
    assert all(not e["event_id"].startswith("evt-") for e in events)
    assert sorted(str(e["payload"]["event_id"]) for e in events)[0] == "evt-0"


def test_real_pino_and_bunyan_application_fields_stay_in_the_payload(db: Path) -> None:
    ingest(db, "--preset", "pino", REAL_LOGS / "pino-repeats.jsonl")
    placed = [e for e in stored(db) if e["payload"].get("msg", "").startswith("order placed")]
    assert [e["payload"]["event_id"] for e in placed] == ["evt-1", "evt-1"]
    assert {e["source"] for e in placed} == {"vm"}  # pino's hostname, not the app's source


@pytest.mark.parametrize(
    "name",
    ["app.log", "app.log.gz", "app.log.1", "app.log.1.zst", "app.log-20251128.gz", "app.log.2.gz"],
)
def test_the_default_source_survives_compression_and_rotation(
    db: Path, tmp_path: Path, name: str
) -> None:
    data = b'{"msg": "a", "time": 1735689600}\n'
    if name.endswith(".gz"):
        data = gzip.compress(data)
    elif name.endswith(".zst"):
        zstandard = pytest.importorskip("zstandard")
        data = zstandard.ZstdCompressor().compress(data)
    path = tmp_path / name
    path.write_bytes(data)
    ingest(db, "--topic", "t", "--id-from-content", "--map", "timestamp=time", path)
    assert [e["source"] for e in stored(db)] == ["app.log"]


def test_a_cloudevents_batch_stores_every_good_event_and_names_each_bad_one(
    db: Path, tmp_path: Path
) -> None:
    """One bad element stored nothing and counted 1 invalid for the whole line."""

    def ce(n: int, **fields: Any) -> dict[str, Any]:
        doc = {
            "specversion": "1.0",
            "type": "order",
            "source": "/shop",
            "id": str(n),
            "time": "2025-01-01T00:00:00Z",
            "data": {"n": n},
        }
        doc.update(fields)
        return {k: v for k, v in doc.items() if v is not None}

    batch = [ce(n) for n in range(1, 11)]
    batch.insert(3, ce(99, source=None))
    batch.append(ce(100, time="not a time"))
    path = write_jsonl(tmp_path / "ce.jsonl", [json.dumps(ce(0)), json.dumps(batch)])
    rejects = tmp_path / "rejects.jsonl"
    report, stderr = ingest(db, "--rejects", str(rejects), path)
    assert (report["received"], report["accepted"], report["invalid"]) == (13, 11, 2)
    assert "ce.jsonl:2#4: missing CloudEvents attribute 'source'" in stderr
    assert "ce.jsonl:2#12: timestamp: not an ISO-8601 time" in stderr
    written = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["line"], r["index"]) for r in written] == [(2, 4), (2, 12)]
    assert json.loads(written[0]["raw"])["id"] == "99"  # the element itself, to re-send
    assert len(stored(db)) == 11
    check_store(db)
