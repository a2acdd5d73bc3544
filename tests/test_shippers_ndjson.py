"""NDJSON on `POST /publish` (`Content-Type: application/x-ndjson`): one event a line,
read as `ingest` reads a file (logagg's schema, CloudEvents lines, or `?preset=`), with
an error per invalid line; compressed publish bodies of every form.

One in-process server for the module; each test uses topics of its own.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import check_store, event, run_logagg
from serving import AppServer

NDJSON = {"content-type": "application/x-ndjson"}
REAL_LOGS = Path(__file__).resolve().parent / "data" / "real-logs"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    db = tmp_path_factory.mktemp("ndjson") / "store.db"
    server = AppServer(db).start()
    yield server
    server.stop()


def post(
    server: AppServer, body: bytes, headers: dict[str, str] = NDJSON, **params: str
) -> httpx.Response:
    assert server.http is not None
    return server.http.post("/publish", content=body, headers=headers, params=params)


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


def test_each_line_is_an_event_and_each_bad_line_an_error(server: AppServer) -> None:
    lines = [json.dumps(event(n, topic="nd-orders")) for n in range(1, 101)]
    lines[9] = '{"topic": "nd-orders", "event_id": "e10", "source": "test"}'  # no timestamp
    lines[49] = '{"topic": "nd-orders", broken'
    cloudevent = {"specversion": "1.0", "type": "nd-orders", "source": "/ce", "id": "ce-1"}
    lines.insert(60, json.dumps(cloudevent))
    body = ("\n".join(lines[:30]) + "\r\n\n" + "\n".join(lines[30:])).encode()  # CRLF, blank
    response = post(server, body)
    assert counts(response) == (200, 101, 99, 0, 2), response.text
    assert response.json()["errors"] == [
        {"line": 10, "error": "missing field 'timestamp'"},
        {"line": 51, "error": response.json()["errors"][1]["error"]},
    ]
    assert response.json()["errors"][1]["error"].startswith("invalid JSON")
    # a re-send: nothing new, and (as on every publish) nothing stored + invalid is 422
    assert counts(post(server, body)) == (422, 101, 0, 99, 2)
    events = stored(server, "nd-orders")
    assert len(events) == 99 and sum(e["source"] == "/ce" for e in events) == 1


def test_a_preset_reads_lines_as_ingest_does(server: AppServer, tmp_path: Path) -> None:
    """Real pino output with 20 identical lines: the same events as `ingest --preset pino`
    of the file, so whichever comes second adds nothing."""
    body = (REAL_LOGS / "pino-repeats.jsonl").read_bytes()
    lines = len(body.splitlines())
    response = post(server, body, preset="pino")
    assert counts(response) == (200, lines, lines, 0, 0), response.text
    events = stored(server, "checkout")  # pino's name
    assert len(events) == lines and {e["source"] for e in events} == {"vm"}  # hostname
    proc = run_logagg(
        "ingest", "--db", server.db, "--json", "--preset", "pino", REAL_LOGS / "pino-repeats.jsonl"
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["duplicates"] == lines
    check_store(server.db)


def test_the_source_of_lines_without_one(server: AppServer) -> None:
    line = b'{"event": "health check", "logger": "nd-health", "timestamp": "2026-01-01T00:00:00Z"}'
    assert counts(post(server, line, preset="structlog", source="billing"))[2] == 1
    other = line.replace(b"health check", b"health checked")
    assert counts(post(server, other, preset="structlog"))[2] == 1
    assert [e["source"] for e in stored(server, "nd-health")] == ["billing", "127.0.0.1"]
    response = post(server, line, preset="nope")
    assert response.status_code == 422 and "unknown preset 'nope'" in response.text
    response = post(server, line, source="billing")
    assert response.status_code == 422 and "?source= goes with a ?preset=" in response.text
    response = post(server, b'{"no": "event"}\n{"still": "none"}\n')
    assert counts(response) == (422, 2, 0, 0, 2)  # nothing stored, something invalid


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_bodies(server: AppServer, encoding: str) -> None:
    compress = gzip.compress if encoding == "gzip" else zlib.compress
    topic = f"nd-{encoding}"
    batch = {"events": [event(n, topic=topic) for n in range(20)]}
    headers = {"content-type": "application/json", "content-encoding": encoding}
    response = post(server, compress(json.dumps(batch).encode()), headers)
    assert counts(response) == (200, 20, 20, 0, 0), response.text
    lines = "\n".join(json.dumps(event(n, topic=topic)) for n in range(15, 30)).encode()
    response = post(server, compress(lines), {**NDJSON, "content-encoding": encoding})
    assert counts(response) == (200, 15, 10, 5, 0)
    assert len(stored(server, topic)) == 30
    response = post(server, compress(lines)[:-6], {**NDJSON, "content-encoding": encoding})
    assert response.status_code == 400
    response = post(server, lines, {**NDJSON, "content-encoding": "br"})
    assert response.status_code == 415


def test_a_compressed_body_expanding_past_the_limit_is_refused(tmp_path: Path) -> None:
    server = AppServer(tmp_path / "small.db", max_body_bytes=64 << 10).start()
    try:
        bomb = gzip.compress(b"\n" * (8 << 20))  # 8 MiB of blank lines in ~8 KiB
        assert len(bomb) < 64 << 10
        response = post(server, bomb, {**NDJSON, "content-encoding": "gzip"})
        assert response.status_code == 413
        assert server.stats()["received"] == 0
    finally:
        server.stop()
