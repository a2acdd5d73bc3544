"""OpenTelemetry logs over OTLP/HTTP: `POST /v1/logs` takes what the OpenTelemetry Python
SDK's OTLP HTTP log exporter sends (protobuf, gzip or not) and OTLP/JSON, one event per
log record, and answers in the request's encoding with `partial_success`.

One in-process server with a token for the module; each test writes a service (topic) of
its own.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import check_store, run_logagg, write_jsonl
from google.protobuf.json_format import Parse
from google.rpc.status_pb2 import Status
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    InMemoryLogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.resources import Resource
from serving import AppServer

TOKEN = "otlp-t0ken-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
SAMPLE = Path(__file__).resolve().parent / "data" / "real-logs" / "otlp-logs.jsonl"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    db = tmp_path_factory.mktemp("otlp") / "store.db"
    server = AppServer(db, token=TOKEN).start()
    yield server
    server.stop()


def exporter(server: AppServer, **options: Any) -> OTLPLogExporter:
    return OTLPLogExporter(endpoint=server.url + "/v1/logs", headers=AUTH, **options)


def topic_events(server: AppServer, topic: str) -> list[dict[str, Any]]:
    response = server.get("/events", topic=topic, order="asc", limit=1000)
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def log_through_the_sdk(server: AppServer, service: str, count: int) -> list[ReadableLogRecord]:
    """`count` records emitted through the SDK's logs API and batch processor into the
    OTLP HTTP exporter (protobuf); returns the records as the exporter got them."""
    provider = LoggerProvider(
        resource=Resource.create({"service.name": service, "service.instance.id": "pod-7"})
    )
    kept = InMemoryLogRecordExporter()
    provider.add_log_record_processor(SimpleLogRecordProcessor(kept))
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter(server)))
    logger = provider.get_logger("orders")
    try:
        for n in range(count):
            uid = {"log.record.uid": f"uid-{n}"} if n % 10 == 0 else {}
            logger.emit(
                severity_number=SeverityNumber.INFO,
                severity_text="INFO",
                body=f"order {n} placed",
                attributes={"order": n, **uid},
            )
        assert provider.force_flush(30_000)
    finally:
        provider.shutdown()
    return list(kept.get_finished_logs())


def test_the_sdk_exporter_stores_each_record_once_and_a_resend_adds_nothing(
    server: AppServer,
) -> None:
    records = log_through_the_sdk(server, "checkout", 50)
    assert len(records) == 50
    stored = topic_events(server, "checkout")
    assert len(stored) == 50
    assert {e["source"] for e in stored} == {"pod-7"}  # service.instance.id
    first = next(e for e in stored if e["payload"]["attributes"]["order"] == 0)
    assert first["event_id"] == "uid-0"  # log.record.uid
    assert first["payload"]["body"] == "order 0 placed"
    assert first["payload"]["severity_text"] == "INFO"
    assert first["payload"]["resource"]["service.name"] == "checkout"
    record = next(r.log_record for r in records if r.log_record.body == "order 0 placed")
    assert record.timestamp is None  # emitted without one: the observed time stands in
    assert record.observed_timestamp is not None
    assert first["timestamp"] == _utc(record.observed_timestamp)

    # The exporter sends the same batch again (a retry after a lost answer), then gzip
    for options in ({}, {"compression": Compression.Gzip}):
        again = exporter(server, **options)
        try:
            assert again.export(records) == LogRecordExportResult.SUCCESS
        finally:
            again.shutdown()
    assert topic_events(server, "checkout") == stored
    assert server.stats()["topic_counts"]["checkout"] == 50


def _utc(nanos: int) -> str:
    """An epoch time in nanoseconds as logagg stores it (microseconds, UTC)."""
    from datetime import UTC, datetime, timedelta

    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=nanos // 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _request(*records: dict[str, Any], service: str) -> dict[str, Any]:
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]}
    return {"resourceLogs": [{"resource": resource, "scopeLogs": [{"logRecords": list(records)}]}]}


def _record(body: str, nanos: str = "1735689600000000000", **fields: Any) -> dict[str, Any]:
    return {"timeUnixNano": nanos, "body": {"stringValue": body}, **fields}


def test_otlp_json_identical_records_and_partial_success(server: AppServer) -> None:
    request = _request(
        _record("retrying"),
        _record("retrying"),  # the same record twice in one request: two events
        _record("no time", nanos="0"),
        _record("bad trace", traceId="not-hex"),
        _record("fine", severityText="WARN", severityNumber=13),
        service="json-svc",
    )
    body = json.dumps(request).encode()
    response = server.http.post(  # type: ignore[union-attr]
        "/v1/logs", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    partial = response.json()["partialSuccess"]
    assert int(partial["rejectedLogRecords"]) == 2
    assert "log record 3: missing timestamp" in partial["errorMessage"]
    assert "log record 4: OTLP traceId is not hex" in partial["errorMessage"]
    parsed = Parse(response.text, ExportLogsServiceResponse())  # proto3 JSON, as clients read it
    assert parsed.partial_success.rejected_log_records == 2
    assert [e["payload"]["body"] for e in topic_events(server, "json-svc")] == [
        "retrying",
        "retrying",
        "fine",
    ]
    # the same request gzip-compressed: a re-send, nothing new
    response = server.http.post(  # type: ignore[union-attr]
        "/v1/logs",
        content=gzip.compress(body),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert response.status_code == 200
    assert int(response.json()["partialSuccess"]["rejectedLogRecords"]) == 2
    assert len(topic_events(server, "json-svc")) == 3


def test_protobuf_partial_success_and_errors(server: AppServer) -> None:
    request = Parse(
        json.dumps(_request(_record("ok"), _record("no time", nanos="0"), service="pb-svc")),
        ExportLogsServiceRequest(),
    )
    headers = {"content-type": "application/x-protobuf"}
    response = server.http.post(  # type: ignore[union-attr]
        "/v1/logs", content=request.SerializeToString(), headers=headers
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    answer = ExportLogsServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_log_records == 1
    assert "missing timestamp" in answer.partial_success.error_message
    assert len(topic_events(server, "pb-svc")) == 1

    response = server.http.post(  # type: ignore[union-attr]
        "/v1/logs", content=b"\xff\xff not protobuf", headers=headers
    )
    assert response.status_code == 400
    status = Status.FromString(response.content)
    assert status.code == 3 and "not an OTLP logs request" in status.message
    response = server.http.post(  # type: ignore[union-attr]
        "/v1/logs", content=b"{}", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415


def test_a_record_sent_over_http_and_read_from_a_file_is_one_event(
    server: AppServer, tmp_path: Path
) -> None:
    """Without service.instance.id or host.name in the resource, the source is the
    client's address over HTTP and the file's name for `ingest`: the ids are the same."""
    bare = {"key": "service.name", "value": {"stringValue": "checkout-bare"}}
    lines = []
    for line in SAMPLE.read_text().splitlines():  # written by the OpenTelemetry Python SDK
        request = json.loads(line)
        for resource_logs in request["resourceLogs"]:
            resource_logs["resource"]["attributes"] = [bare]
        lines.append(request)
        response = server.http.post(  # type: ignore[union-attr]
            "/v1/logs", content=json.dumps(request), headers={"content-type": "application/json"}
        )
        assert response.status_code == 200 and response.json() == {}
    sent = topic_events(server, "checkout-bare")
    assert len(sent) == 5 and {e["source"] for e in sent} == {"127.0.0.1"}
    path = write_jsonl(tmp_path / "otel-logs.jsonl", lines)
    proc = run_logagg("ingest", "--db", server.db, "--json", "--preset", "otlp", path)
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert (report["accepted"], report["duplicates"]) == (0, 5)
    check_store(server.db)
