"""`logagg serve` speaks the original service's API, and one bad event never costs the good
ones: bodies are read event by event, also when the whole body is not valid JSON.

In-process servers (tests/serving.py AppServer) over real HTTP: nothing here depends on a
process of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from conftest import check_store, event  # noqa: E402
from serving import AppServer  # noqa: E402

from logagg import __version__  # noqa: E402


@pytest.fixture
def server(db: Path) -> Iterator[AppServer]:
    server = AppServer(db).start()
    yield server
    server.stop()


def counts(doc: dict[str, Any]) -> tuple[int, int, int, int]:
    return (doc["received"], doc["accepted"], doc["duplicates"], doc["invalid"])


def totals(doc: dict[str, Any]) -> tuple[int, int, int, int]:
    return (doc["received"], doc["unique_processed"], doc["duplicate_dropped"], doc["invalid"])


def raw(doc: Any) -> bytes:
    return json.dumps(doc).encode()


# --- the original's shapes ------------------------------------------------------------------


def test_the_root_describes_the_service(server: AppServer) -> None:
    response = server.get("/")
    assert response.status_code == 200
    doc = response.json()
    assert (doc["service"], doc["version"]) == ("logagg", __version__)
    endpoints = doc["endpoints"]
    for route in ("POST /publish", "GET /events", "GET /stats", "GET /health", "GET /metrics"):
        assert route in endpoints, route
        assert isinstance(endpoints[route], str) and endpoints[route]


def test_health_says_healthy(server: AppServer) -> None:
    response = server.get("/health")
    assert response.status_code == 200
    doc = response.json()
    assert (doc["status"], doc["consumer_running"], doc["queue_size"]) == ("healthy", True, 0)
    assert doc["error"] is None


def test_stats_topics_is_a_list_of_names_and_counts_are_beside_it(server: AppServer) -> None:
    server.post({"events": [event(1, topic="b"), event(2, topic="a"), event(3, topic="b")]})
    doc = server.stats()
    assert doc["topics"] == ["a", "b"]
    assert doc["topic_counts"] == {"a": 1, "b": 2}
    assert totals(doc) == (3, 3, 0, 0)


def test_the_original_clients_walkthrough(server: AppServer) -> None:
    """What the original's clients do: publish one and a batch, re-send, read back."""
    one = event(1, topic="orders")
    assert server.post(one).status_code == 200
    batch = server.post({"events": [event(n, topic="orders") for n in range(1, 4)]})
    assert (batch.status_code, counts(batch.json())) == (200, (3, 2, 1, 0))
    stats = server.stats()
    assert "orders" in stats["topics"]
    assert (stats["unique_processed"], stats["duplicate_dropped"]) == (3, 1)
    page = server.get("/events", topic="orders").json()
    assert page["count"] == 3
    assert server.get("/health").json()["status"] == "healthy"


# --- one bad event never costs the good ones ---------------------------------------------


BAD_ELEMENTS = {
    "NaN": (b'{"topic": "t", "event_id": "bad", "payload": {"x": NaN}}', "NaN"),
    "lone surrogate": (b'{"topic": "t\\ud800", "event_id": "bad"}', "invalid JSON"),
    "300 levels": (
        b'{"topic": "t", "event_id": "bad", "payload": ' + b"[" * 300 + b"]" * 300 + b"}",
        "recursion limit",
    ),
}


@pytest.mark.parametrize("shape", ["object", "array"])
@pytest.mark.parametrize("bad", list(BAD_ELEMENTS))
def test_an_unreadable_event_in_a_batch_costs_only_itself(
    server: AppServer, db: Path, bad: str, shape: str
) -> None:
    element, reason = BAD_ELEMENTS[bad]
    good = [raw(event(n)) for n in range(6)]
    items = b", ".join([*good[:3], element, *good[3:]])
    body = b'{"events": [' + items + b"]}" if shape == "object" else b"[" + items + b"]"

    first = server.post(body)
    assert first.status_code == 200, first.text
    doc = first.json()
    assert counts(doc) == (7, 6, 0, 1)
    assert [e["index"] for e in doc["errors"]] == [3]
    assert reason in doc["errors"][0]["error"]

    again = server.post(body)  # a retry: the six are stored, the bad one still refused
    assert again.status_code == 422, again.text
    assert counts(again.json()) == (7, 0, 6, 1)
    assert again.json()["errors"][0]["index"] == 3

    assert [e["event_id"] for e in server.get("/events", order="asc").json()["events"]] == [
        f"e{n}" for n in range(6)
    ]
    assert totals(server.stats()) == (14, 6, 6, 2)
    check_store(db)


def test_elements_are_split_exactly_whatever_their_strings_hold(server: AppServer) -> None:
    """Brackets, commas, quotes and escapes inside strings do not split an element."""
    tricky = event(1, payload={"s": 'a],[{"x": 1}, \\"q\\" }', "t": "\\\\", "u": "é\n"})
    body = b"[" + raw(tricky) + b", NaN, " + raw(event(2)) + b",\n" + raw([1, {"a": "]"}]) + b"]"
    response = server.post(body)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert counts(doc) == (4, 2, 0, 2)
    assert [e["index"] for e in doc["errors"]] == [1, 3]
    page = server.get("/events", order="asc").json()
    assert page["events"][0]["payload"] == tricky["payload"]


def test_what_is_not_events_is_refused_whole_and_counts_nothing(server: AppServer) -> None:
    good = raw(event(1))
    for body in (
        b"[" + good + b", " + good[:20],  # cut off
        b'{"events": [' + good + b'], "x": NaN}',  # the fault is outside the events
        b'{"events": [' + good + b'], "events": []}',  # the key twice
        b"[" + good + b"] trailing",
        b'{"topic": "t", "event_id": "x", "payload": {"v": NaN}}',  # one event, unreadable
    ):
        response = server.post(body)
        assert response.status_code == 422, body
        assert isinstance(response.json()["detail"], str), body
    assert totals(server.stats()) == (0, 0, 0, 0)


def test_nothing_accepted_and_something_invalid_is_never_a_success(server: AppServer) -> None:
    junk = server.post([1, "x", None, [], {}])
    assert junk.status_code == 422
    doc = junk.json()
    assert counts(doc) == (5, 0, 0, 5)
    assert [e["index"] for e in doc["errors"]] == [0, 1, 2, 3, 4]
    assert "no event" in doc["detail"]

    assert server.post([event(1)]).status_code == 200
    duplicates_only = server.post([event(1), event(1)])
    assert (duplicates_only.status_code, counts(duplicates_only.json())) == (200, (2, 0, 2, 0))
    mixed = server.post([event(1), {"topic": "t"}])
    assert (mixed.status_code, counts(mixed.json())) == (422, (2, 0, 1, 1))

    empty = server.post({"events": []})
    assert (empty.status_code, counts(empty.json())) == (200, (0, 0, 0, 0))
    assert totals(server.stats()) == (10, 1, 3, 6)


def cloudevent(n: int, **fields: Any) -> dict[str, Any]:
    doc = {
        "specversion": "1.0",
        "id": f"ce-{n}",
        "source": "/shop",
        "type": "order.created",
        "time": "2025-01-01T00:00:00Z",
        "data": {"n": n},
    }
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not None}


def test_cloudevents_batches(server: AppServer, db: Path) -> None:
    """A CloudEvents batch (its own media type, or an array of CloudEvents) is read as in
    `ingest`; one that holds no valid event is refused, naming each fault."""
    batch = [cloudevent(1), cloudevent(2, id=None), cloudevent(3, subject="x")]
    headers = {"content-type": "application/cloudevents-batch+json"}
    response = server.post(raw(batch), **headers)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert counts(doc) == (3, 2, 0, 1)
    assert doc["errors"] == [{"index": 1, "error": "missing CloudEvents attribute 'id'"}]
    stored = server.get("/events", topic="order.created", order="asc").json()["events"]
    assert [(e["event_id"], e["payload"]) for e in stored] == [
        ("ce-1", {"n": 1}),
        ("ce-3", {"n": 3}),
    ]
    assert stored[1]["cloudevents"] == {"specversion": "1.0", "subject": "x"}

    invalid = [cloudevent(4, type=None), cloudevent(5, specversion="2.0")]
    refused = server.post(raw(invalid), **headers)
    assert refused.status_code == 422, refused.text
    doc = refused.json()
    assert counts(doc) == (2, 0, 0, 2)
    assert [e["index"] for e in doc["errors"]] == [0, 1]
    assert "'type'" in doc["errors"][0]["error"]

    single = server.post(raw(cloudevent(6)), **{"content-type": "application/cloudevents+json"})
    assert (single.status_code, counts(single.json())) == (200, (1, 1, 0, 0))
    assert totals(server.stats()) == (6, 3, 0, 3)
    check_store(db)


def test_counts_are_events_and_a_single_bad_event_stays_422(server: AppServer) -> None:
    missing = {k: v for k, v in event(1).items() if k != "source"}
    response = server.post(missing)
    assert response.status_code == 422
    assert counts(response.json()) == (1, 0, 0, 1)
    assert response.json()["errors"] == [{"index": 0, "error": "missing field 'source'"}]
    assert totals(server.stats()) == (1, 0, 0, 1)
