"""OpenTelemetry logs: `ingest --preset otlp` reads the OTLP/JSON export requests the
Collector's file exporter writes (one a line), one event per log record; protobuf requests
(what the SDKs send) map to the same events. Data: the real OpenTelemetry Python SDK."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import check_store, run_logagg, write_jsonl

from logagg.models import parse_json
from logagg.otlp import events, request_from_protobuf

REAL_LOGS = Path(__file__).resolve().parent / "data" / "real-logs"
SAMPLE = REAL_LOGS / "otlp-logs.jsonl"


def ingest(db: Path, *args: str | Path) -> tuple[dict[str, Any], str]:
    proc = run_logagg("ingest", "--db", db, "--json", "--preset", "otlp", *args)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout), proc.stderr.decode()


def stored(db: Path) -> list[dict[str, Any]]:
    proc = run_logagg("events", "--db", db, "--all", "--order", "asc", "-f", "jsonl")
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_each_log_record_of_a_real_export_is_an_event(db: Path) -> None:
    records = sum(
        len(sl["logRecords"])
        for line in SAMPLE.read_text().splitlines()
        for rl in json.loads(line)["resourceLogs"]
        for sl in rl["scopeLogs"]
    )
    report, stderr = ingest(db, SAMPLE)
    assert (report["accepted"], report["invalid"]) == (records, 0), stderr
    got = stored(db)
    assert {e["topic"] for e in got} == {"checkout"}  # service.name
    assert {e["source"] for e in got} == {"checkout-7f9c"}  # service.instance.id
    slow = [e for e in got if e["payload"]["body"] == "payment slow"]
    assert [e["event_id"] for e in slow] == ["01J9Z8Q6P5T4R3"]  # log.record.uid
    placed = next(e for e in got if e["payload"]["body"] == "order placed")
    assert placed["payload"]["severity_text"] == "INFO"
    assert placed["payload"]["attributes"]["amount"] == 12.5
    assert placed["payload"]["attributes"]["items"] == 3  # intValue "3" is the integer 3
    assert placed["payload"]["resource"]["service.name"] == "checkout"
    assert placed["payload"]["scope"] == {"name": "orders"}
    line = json.loads(SAMPLE.read_text().splitlines()[0])
    nanos = int(line["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["timeUnixNano"])
    assert placed["timestamp"][:19].replace("T", " ") == _utc(nanos)
    assert len([e for e in got if e["payload"]["body"] == "retrying"]) == 2
    again, _ = ingest(db, SAMPLE)
    assert (again["accepted"], again["duplicates"]) == (0, records)
    check_store(db)


def _utc(nanos: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(nanos // 10**9, UTC).strftime("%Y-%m-%d %H:%M:%S")


def test_observed_time_stands_in_and_a_record_without_any_time_is_refused_alone(
    db: Path, tmp_path: Path
) -> None:
    def record(body: str, **times: str) -> dict[str, Any]:
        return {"body": {"stringValue": body}, **times}

    request = {
        "resourceLogs": [
            {
                "resource": {"attributes": []},
                "scopeLogs": [
                    {
                        "logRecords": [
                            record("a", timeUnixNano="1735689600000000000"),
                            record("b", observedTimeUnixNano="1735689601000000000"),
                            record("c", timeUnixNano="0"),
                        ]
                    }
                ],
            }
        ]
    }
    path = write_jsonl(tmp_path / "otel.jsonl", [request])
    report, stderr = ingest(db, path)
    assert (report["received"], report["accepted"], report["invalid"]) == (3, 2, 1)
    assert (
        "otel.jsonl:1#3: missing timestamp: neither timeUnixNano nor observedTimeUnixNano" in stderr
    )
    got = stored(db)
    assert [(e["topic"], e["timestamp"]) for e in got] == [
        ("otel", "2025-01-01T00:00:00.000000Z"),
        ("otel", "2025-01-01T00:00:01.000000Z"),
    ]


def test_protobuf_and_json_give_the_same_events() -> None:
    from_json = events(parse_json(SAMPLE.read_text().splitlines()[0]))
    from_protobuf = events(request_from_protobuf((REAL_LOGS / "otlp-logs.pb").read_bytes()))
    assert [e["event_id"] for e in from_protobuf] == [e["event_id"] for e in from_json]
    assert len(from_json) == 4
