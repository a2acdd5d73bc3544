"""CloudEvents over HTTP from the CloudEvents Python SDK: binary mode (`ce-*` headers) and
structured mode on `POST /publish` and `POST /cloudevents`, and batched mode (the SDK's
JSON event format, one element per event): every mode stores the same event the same way,
and `ingest` reads the same events from a file.

One in-process server for the module; each test uses event types (topics) of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudevents.core.bindings.http import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from conftest import check_store, run_logagg
from serving import AppServer

FORMAT = JSONFormat()
BATCH = "application/cloudevents-batch+json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    db = tmp_path_factory.mktemp("cloudevents") / "store.db"
    server = AppServer(db).start()
    yield server
    server.stop()


def order(n: int, kind: str, **attributes: Any) -> CloudEvent:
    data = attributes.pop("data", {"order": n, "total": f"{n}.50"})
    attrs = {"type": kind, "source": "/shop/eu", "id": f"o-{n}", **attributes}
    return CloudEvent(attributes=attrs, data=data)


def at(second: int) -> datetime:
    return datetime(2025, 1, 1, 10, 0, second, tzinfo=UTC)


def send(server: AppServer, path: str, headers: dict[str, str], body: bytes) -> httpx.Response:
    assert server.http is not None
    return server.http.post(path, headers=headers, content=body)


def counts(response: httpx.Response) -> tuple[int, int, int, int, int]:
    doc = response.json()
    return (
        response.status_code,
        doc["received"],
        doc["accepted"],
        doc["duplicates"],
        doc["invalid"],
    )


def stored(server: AppServer, topic: str) -> list[dict[str, Any]]:
    response = server.get("/events", topic=topic, order="asc", limit=1000)
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


@pytest.mark.parametrize("path", ["/publish", "/cloudevents"])
def test_binary_mode_from_the_sdk(server: AppServer, path: str) -> None:
    kind = f"com.example.order.binary{path.replace('/', '.')}"
    for n in range(10):
        message = to_binary(order(n, kind, partitionkey=f"k{n % 3}"), FORMAT)
        assert "ce-specversion" in message.headers
        response = send(server, path, message.headers, message.body)
        assert counts(response) == (200, 1, 1, 0, 0), response.text
    again = to_binary(order(4, kind), FORMAT)
    assert counts(send(server, path, again.headers, again.body)) == (200, 1, 0, 1, 0)
    events = stored(server, kind)
    assert [e["event_id"] for e in events] == [f"o-{n}" for n in range(10)]  # sorted by time
    first = events[0]
    assert (first["topic"], first["source"]) == (kind, "/shop/eu")
    assert first["payload"] == {"order": 0, "total": "0.50"}
    assert first["cloudevents"]["specversion"] == "1.0"
    assert first["cloudevents"]["partitionkey"] == "k0"  # an extension, from its header


def test_every_mode_stores_the_same_event_the_same_way(server: AppServer, db: Path) -> None:
    """One event sent in binary mode, in structured mode, in a batch and read from a file
    is one event: whichever comes first is stored, the others are duplicates."""
    kind = "com.example.same"
    events = [
        order(1, kind, time=at(0)),
        order(2, kind, time=at(1), datacontenttype="text/plain", data="hi"),
        order(3, kind, time=at(2), datacontenttype="application/octet-stream"),
    ]
    events[2] = CloudEvent(attributes=events[2].get_attributes(), data=b"\x00\xff")
    for event in events:
        message = to_binary(event, FORMAT)
        assert counts(send(server, "/publish", message.headers, message.body))[2] == 1
    by_binary = stored(server, kind)
    assert [e["payload"] for e in by_binary] == [
        {"order": 1, "total": "1.50"},
        {"data": "hi"},  # text data
        {"data_base64": "AP8="},  # binary data
    ]
    for event in events:
        message = to_structured(event, FORMAT)
        assert message.headers["content-type"].startswith("application/cloudevents+json")
        for path in ("/publish", "/cloudevents"):
            assert counts(send(server, path, message.headers, message.body)) == (200, 1, 0, 1, 0)
    batch = b"[" + b",".join(FORMAT.write(event) for event in events) + b"]"
    response = send(server, "/publish", {"content-type": BATCH}, batch)
    assert counts(response) == (200, 3, 0, 3, 0)
    file = db.parent / "events.jsonl"
    file.write_bytes(b"\n".join(FORMAT.write(event) for event in events) + b"\n")
    proc = run_logagg("ingest", "--db", server.db, "--json", file)
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["duplicates"] == 3
    assert stored(server, kind) == by_binary


def test_batched_mode_each_event_on_its_own(server: AppServer) -> None:
    kind = "com.example.batch"
    elements = [FORMAT.write(order(n, kind)) for n in range(5)]
    bad = json.dumps({"specversion": "1.0", "type": kind, "source": "/shop/eu"}).encode()
    body = b"[" + b",".join([*elements[:2], bad, *elements[2:]]) + b"]"
    for path in ("/publish", "/cloudevents"):
        response = send(server, path, {"content-type": BATCH}, body)
        if path == "/publish":
            assert counts(response) == (200, 6, 5, 0, 1)
        else:  # nothing stored and something invalid: 422 (the counts say why)
            assert counts(response) == (422, 6, 0, 5, 1)
        assert response.json()["errors"] == [
            {"index": 2, "error": "missing CloudEvents attribute 'id'"}
        ]
    assert len(stored(server, kind)) == 5
    check_store(server.db)


def test_binary_mode_errors(server: AppServer) -> None:
    kind = "com.example.broken"
    message = to_binary(order(1, kind), FORMAT)
    headers = {k: v for k, v in message.headers.items() if k != "ce-id"}
    response = send(server, "/publish", headers, message.body)
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"index": 0, "error": "missing CloudEvents attribute 'id'"}
    ]
    headers = {**message.headers, "content-type": "application/json"}
    response = send(server, "/cloudevents", headers, b"{not json")
    assert response.status_code == 422 and "data: invalid JSON" in response.text
    response = send(server, "/cloudevents", {"content-type": "text/plain"}, b"{}")
    assert response.status_code == 415  # neither binary mode nor JSON
    assert stored(server, kind) == []
