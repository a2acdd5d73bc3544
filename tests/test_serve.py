"""`logagg serve` against a real uvicorn server on 127.0.0.1 and a free port, with httpx.

Most tests run `python -m logagg serve` as a process (so `kill -9` and restarts are real);
the backpressure and error tests run the same app in a uvicorn server thread, to set a
short queue bound and reach the service's writer.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from conftest import check_store, event, logagg_cmd, run_logagg, write_jsonl  # noqa: E402

from logagg.errors import StoreError  # noqa: E402
from logagg.http import create_app  # noqa: E402
from logagg.pipeline import IngestOptions  # noqa: E402
from logagg.units import human_duration  # noqa: E402

WAIT = 15.0  # the most a server may take to start or to stop
HTTP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A `logagg serve` process on one store; `restart` keeps the store and the port."""

    def __init__(
        self, db: Path, log: Path, log_level: str = "warning", by_env: bool = False
    ) -> None:
        self.db = db
        self.log = log
        self.log_level = log_level
        self.by_env = by_env  # settings from LOGAGG_DB, PORT and LOG_LEVEL instead of options
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.http: httpx.Client | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        for _ in range(3):  # another process may take a free port before the server does
            settings = {
                "LOGAGG_DB": str(self.db),
                "PORT": str(self.port),
                "LOG_LEVEL": self.log_level,
            }
            args = ["--db", self.db, "--port", str(self.port), "--log-level", self.log_level]
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen(
                    logagg_cmd("serve", *([] if self.by_env else args)),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **settings} if self.by_env else None,
                )
            if self._ready():
                self.http = httpx.Client(base_url=self.url, timeout=HTTP_TIMEOUT)
                return self
            self.port = free_port()
        raise AssertionError(f"the server did not start:\n{self.log.read_text()}")

    def _ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"no /health within {WAIT} s:\n{self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, nothing more committed."""
        self._close_http()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(WAIT)

    def stop(self) -> int:
        """SIGTERM: commit what is queued and exit; returns the exit status."""
        assert self.proc is not None
        self._close_http()
        self.proc.terminate()
        return self.proc.wait(WAIT)

    def restart(self) -> Server:
        return self.start()

    def _close_http(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None

    def post(self, body: Any) -> httpx.Response:
        """POST /publish with `body` as JSON, or as raw bytes when it is bytes."""
        assert self.http is not None
        if isinstance(body, bytes):
            return self.http.post("/publish", content=body)
        return self.http.post("/publish", json=body)

    def get(self, path: str, **params: Any) -> httpx.Response:
        assert self.http is not None
        return self.http.get(path, params=params)

    def stats(self) -> dict[str, Any]:
        response = self.get("/stats")
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start `logagg serve` on a store (default: the test's); every server is killed at the end."""
    servers: list[Server] = []

    def start(db: Path | None = None, **options: Any) -> Server:
        log = tmp_path / f"serve-{len(servers)}.log"
        server = Server(db or tmp_path / "store.db", log, **options)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.kill()


def counts(doc: dict[str, Any]) -> tuple[int, int, int, int]:
    return (doc["received"], doc["accepted"], doc["duplicates"], doc["invalid"])


def totals(doc: dict[str, Any]) -> tuple[int, int, int, int]:
    return (doc["received"], doc["unique_processed"], doc["duplicate_dropped"], doc["invalid"])


def assert_consistent(doc: dict[str, Any]) -> None:
    assert doc["received"] == doc["unique_processed"] + doc["duplicate_dropped"] + doc["invalid"]


# --- publishing ---------------------------------------------------------------------------


def test_one_event_is_stored_with_its_payload_and_extra_fields(
    serve: Callable[..., Server],
) -> None:
    server = serve()
    body = event(1, topic="user.login", region="eu")
    body["payload"] = {"user": "zoë", "nested": {"list": [1, 2.5, None, True]}, "big": 2**70}
    response = server.post(body)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert counts(doc) == (1, 1, 0, 0)
    assert doc["message"] == "event accepted"
    assert doc["errors"] == []

    found = server.get("/events", topic="user.login")
    assert found.status_code == 200
    page = found.json()
    assert (page["topic"], page["count"]) == ("user.login", 1)
    stored = page["events"][0]
    assert stored == {**body, "timestamp": "2025-01-01T00:00:01.000000Z"}
    assert '"big":1180591620717411303424' in found.text  # beyond 64 bits, kept exactly


def test_a_batch_as_an_object_or_an_array(serve: Callable[..., Server]) -> None:
    server = serve()
    response = server.post({"events": [event(n) for n in range(50)]})
    assert response.status_code == 200, response.text
    assert counts(response.json()) == (50, 50, 0, 0)

    response = server.post([event(n) for n in range(40, 60)])
    assert response.status_code == 200, response.text
    assert counts(response.json()) == (20, 10, 10, 0)

    empty = server.post({"events": []})
    assert empty.status_code == 200
    assert counts(empty.json()) == (0, 0, 0, 0)
    assert totals(server.stats()) == (70, 60, 10, 0)


def test_duplicates_inside_one_batch_are_counted_exactly_and_the_first_copy_wins(
    serve: Callable[..., Server],
) -> None:
    server = serve()
    first = {**event(1), "payload": {"copy": "first"}}
    later = {**event(1), "payload": {"copy": "later"}}
    batch = [first, event(2), later, event(2), event(3), event(1)]
    response = server.post({"events": batch})
    assert response.status_code == 200, response.text
    assert counts(response.json()) == (6, 3, 3, 0)

    page = server.get("/events", topic="t", order="asc").json()
    assert [e["event_id"] for e in page["events"]] == ["e1", "e2", "e3"]
    assert page["events"][0]["payload"] == {"copy": "first"}
    assert totals(server.stats()) == (6, 3, 3, 0)


def test_a_duplicate_across_requests(serve: Callable[..., Server]) -> None:
    server = serve()
    assert counts(server.post(event(7)).json()) == (1, 1, 0, 0)
    again = server.post({**event(7), "payload": {"changed": True}})
    assert again.status_code == 200
    assert counts(again.json()) == (1, 0, 1, 0)
    assert again.json()["message"] == "duplicate event dropped (already stored)"
    assert counts(server.post({"events": [event(7), event(8)]}).json()) == (2, 1, 1, 0)
    # the same event_id under another topic is another event
    assert counts(server.post(event(7, topic="other")).json()) == (1, 1, 0, 0)
    page = server.get("/events", topic="t").json()
    assert [e["payload"] for e in page["events"] if e["event_id"] == "e7"] == [{"n": 7}]
    assert totals(server.stats()) == (5, 3, 2, 0)


def test_concurrent_clients_with_overlaps_get_exact_totals(
    serve: Callable[..., Server], db: Path
) -> None:
    server = serve()
    clients, per_client, size = 20, 500, 100
    plans: list[list[list[int]]] = []
    for c in range(clients):
        ids = [c * 250 + i for i in range(per_client)]  # half of it overlaps the next client
        batches = [ids[i : i + size] for i in range(0, per_client, size)]
        for batch in batches:
            batch[-10:] = batch[:10]  # and ten repeats inside every batch
        plans.append(batches)
    sent = [n for plan in plans for batch in plan for n in batch]
    unique = len(set(sent))

    def client(plan: list[list[int]]) -> list[dict[str, Any]]:
        answers = []
        with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT) as http:
            for batch in plan:
                body = {"events": [event(n, topic=f"topic.{n % 3}") for n in batch]}
                response = http.post("/publish", json=body)
                assert response.status_code == 200, response.text
                answers.append(response.json())
        return answers

    with ThreadPoolExecutor(max_workers=clients) as pool:
        answers = [a for done in pool.map(client, plans, timeout=60) for a in done]
    assert len(answers) == clients * per_client // size
    assert sum(a["received"] for a in answers) == len(sent) == 10_000
    assert sum(a["accepted"] for a in answers) == unique
    assert sum(a["duplicates"] for a in answers) == len(sent) - unique
    assert sum(a["invalid"] for a in answers) == 0

    doc = server.stats()
    assert totals(doc) == (len(sent), unique, len(sent) - unique, 0)
    assert doc["topics"] == {f"topic.{k}": len({n for n in sent if n % 3 == k}) for k in range(3)}
    assert check_store(db)["rows"] == unique


def test_invalid_bodies(serve: Callable[..., Server], db: Path) -> None:
    """Unreadable bodies count nothing; invalid events are counted; batches partly accepted."""
    server = serve()
    for body in (b"not json", b"", b'"text"', b"42", b'{"events": {"a": 1}}', b'{"x": NaN}'):
        response = server.post(body)
        assert response.status_code == 422, body
        assert isinstance(response.json()["detail"], str)
    assert "not valid JSON" in server.post(b"{oops").json()["detail"]
    assert totals(server.stats()) == (0, 0, 0, 0)

    junk = server.post([1, "x", None, [], {}])
    assert junk.status_code == 200
    doc = junk.json()
    assert counts(doc) == (5, 0, 0, 5)
    assert [e["index"] for e in doc["errors"]] == [0, 1, 2, 3, 4]
    assert doc["errors"][0]["error"] == "expected a JSON object, got number"

    missing = {k: v for k, v in event(1).items() if k != "source"}
    response = server.post(missing)
    assert response.status_code == 422
    doc = response.json()
    assert counts(doc) == (1, 0, 0, 1)
    assert doc["errors"] == [{"index": 0, "error": "missing field 'source'"}]
    assert "missing field 'source'" in doc["detail"]

    bad_time = {**event(2), "timestamp": "2025-13-45T99:00:00Z"}
    response = server.post({"events": [event(3), bad_time, event(4), {**event(5), "topic": ""}]})
    assert response.status_code == 200
    doc = response.json()
    assert counts(doc) == (4, 2, 0, 2)
    assert [e["index"] for e in doc["errors"]] == [1, 3]
    assert doc["errors"][0]["error"].startswith("timestamp: not an ISO-8601 time")
    assert doc["errors"][1]["error"].startswith("topic:")

    doc = server.stats()
    assert totals(doc) == (10, 2, 0, 8)
    assert_consistent(doc)
    assert check_store(db)["invalid"] == 8


# --- durability, restarts, other writers --------------------------------------------------


def test_kill_9_right_after_a_200_keeps_the_events(serve: Callable[..., Server], db: Path) -> None:
    server = serve()
    batch = [event(n) for n in range(300)]
    response = server.post({"events": batch})
    assert response.status_code == 200
    assert counts(response.json()) == (300, 300, 0, 0)
    server.kill()

    server.restart()
    page = server.get("/events", topic="t", limit=1000, order="asc").json()
    assert page["count"] == 300
    assert page["events"] == [{**e, "timestamp": e["timestamp"][:-1] + ".000000Z"} for e in batch]
    again = server.post({"events": batch})
    assert counts(again.json()) == (300, 0, 300, 0)
    assert totals(server.stats()) == (600, 300, 300, 0)
    check_store(db)


def test_counters_persist_across_restarts(serve: Callable[..., Server], db: Path) -> None:
    server = serve()
    server.post({"events": [event(1), event(2), event(1), {"topic": "t"}]})
    first = server.stats()
    assert totals(first) == (4, 2, 1, 1)
    assert server.stop() in (-signal.SIGTERM, 143)

    server.restart()
    assert totals(server.stats()) == (4, 2, 1, 1)
    server.post({"events": [event(2), event(3), "junk"]})
    doc = server.stats()
    assert totals(doc) == (7, 3, 2, 2)
    assert_consistent(doc)
    assert doc["topics"] == {"t": 3}
    check_store(db)


def test_ingest_from_another_process_while_the_server_runs(
    serve: Callable[..., Server], db: Path, tmp_path: Path
) -> None:
    server = serve()
    assert counts(server.post({"events": [event(n) for n in range(100)]}).json()) == (
        100,
        100,
        0,
        0,
    )
    path = write_jsonl(tmp_path / "more.jsonl", [event(n) for n in range(50, 250)])
    proc = run_logagg("ingest", "--db", db, "--json", path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert counts(json.loads(proc.stdout)) == (200, 150, 50, 0)

    # the server sees the other process's events and counters, and drops its copies
    assert counts(server.post({"events": [event(n) for n in range(240, 260)]}).json()) == (
        20,
        10,
        10,
        0,
    )
    assert totals(server.stats()) == (320, 260, 60, 0)
    assert server.get("/events", topic="t", limit=1000).json()["count"] == 260
    check_store(db)


# --- reading ------------------------------------------------------------------------------


def test_events_filters_and_limits(serve: Callable[..., Server]) -> None:
    server = serve()
    batch = [
        event(n, topic="a" if n % 2 else "b", source="s1" if n < 10 else "s2") for n in range(20)
    ]
    assert server.post({"events": batch}).status_code == 200

    page = server.get("/events", topic="a").json()
    assert (page["topic"], page["count"]) == ("a", 10)
    assert [e["event_id"] for e in page["events"]] == [f"e{n}" for n in range(19, 0, -2)]
    assert server.get("/events").json()["count"] == 20
    assert server.get("/events", topic="nope").json() == {"topic": "nope", "count": 0, "events": []}

    page = server.get("/events", topic="b", source="s1", order="asc").json()
    assert [e["event_id"] for e in page["events"]] == ["e0", "e2", "e4", "e6", "e8"]

    # since inclusive, until exclusive; an offset is converted to UTC
    page = server.get(
        "/events", since="2025-01-01T00:00:05Z", until="2025-01-01T01:00:08+01:00", order="asc"
    ).json()
    assert [e["event_id"] for e in page["events"]] == ["e5", "e6", "e7"]

    page = server.get("/events", limit=3).json()
    assert [e["event_id"] for e in page["events"]] == ["e19", "e18", "e17"]
    assert server.get("/events", limit=1000).json()["count"] == 20
    for params in ({"limit": 0}, {"limit": 1001}, {"limit": "x"}, {"order": "up"}):
        assert server.get("/events", **params).status_code == 422, params
    response = server.get("/events", since="yesterday")
    assert response.status_code == 422
    assert response.json()["detail"].startswith("since: not an ISO-8601 time")
    assert server.get("/events", until="2025-02-30").status_code == 422


def test_stats_health_and_docs(serve: Callable[..., Server]) -> None:
    server = serve()
    server.post({"events": [event(1), event(2, topic="x"), event(1)]})
    doc = server.stats()
    assert totals(doc) == (3, 2, 1, 0)
    assert doc["topics"] == {"t": 1, "x": 1}
    assert doc["uptime_seconds"] >= 0
    assert doc["uptime_human"].endswith("s")

    health = server.get("/health")
    assert health.status_code == 200
    doc = health.json()
    assert set(doc) == {"status", "consumer_running", "queue_size", "timestamp"}
    assert (doc["status"], doc["consumer_running"], doc["queue_size"]) == ("ok", True, 0)
    assert doc["timestamp"].endswith("Z")

    assert server.get("/docs").status_code == 200
    schema = server.get("/openapi.json").json()
    assert {"/publish", "/events", "/stats", "/health"} <= set(schema["paths"])


def test_settings_from_the_environment_and_logs_without_payloads(
    serve: Callable[..., Server], db: Path
) -> None:
    server = serve(log_level="debug", by_env=True)
    secret = {**event(1), "payload": {"token": "s3cr3t-t0ken"}}
    assert counts(server.post(secret).json()) == (1, 1, 0, 0)
    bad = server.post([{"topic": "t", "event_id": "x", "source": "s3cr3t-source"}])
    assert counts(bad.json()) == (1, 0, 0, 1)
    assert db.exists()
    assert server.stop() in (-signal.SIGTERM, 143)
    log = server.log.read_text()
    assert "publish: 1 received, 1 accepted, 0 duplicates, 0 invalid" in log
    assert "writer stopped: 2 received, 1 accepted, 0 duplicates, 1 invalid" in log
    assert "s3cr3t" not in log


def test_serve_command_errors(serve: Callable[..., Server], tmp_path: Path) -> None:
    server = serve()
    taken = run_logagg("serve", "--db", tmp_path / "other.db", "--port", str(server.port))
    assert taken.returncode == 1
    assert taken.stderr.decode().startswith("logagg: error: cannot listen on 127.0.0.1:")
    level = run_logagg("serve", "--db", server.db, "--port", "1", "--log-level", "loud")
    assert level.returncode == 2
    assert "--log-level 'loud'" in level.stderr.decode()
    foreign = tmp_path / "foreign.db"
    foreign.write_text("not a database")
    proc = run_logagg("serve", "--db", foreign, "--port", str(free_port()))
    assert proc.returncode == 1
    assert proc.stderr.decode() == f"logagg: error: {foreign}: not a SQLite database\n"


def test_human_duration() -> None:
    assert human_duration(0.4) == "0s"
    assert human_duration(125) == "2m 5s"
    assert human_duration(3723.9) == "1h 2m 3s"
    assert human_duration(90_000) == "1d 1h 0m 0s"


def test_the_original_readme_walkthrough(serve: Callable[..., Server]) -> None:
    server = serve()
    body = {
        "topic": "user.login",
        "event_id": "evt-001",
        "timestamp": "2025-01-01T10:00:00Z",
        "source": "auth-service",
        "payload": {"user": "alice", "ip": "10.0.0.7"},
    }
    first = server.post(body)
    assert first.status_code == 200
    assert counts(first.json()) == (1, 1, 0, 0)

    second = server.post(body)
    assert second.status_code == 200
    assert counts(second.json()) == (1, 0, 1, 0)

    doc = server.stats()
    assert totals(doc) == (2, 1, 1, 0)
    assert doc["topics"] == {"user.login": 1}

    page = server.get("/events", topic="user.login").json()
    assert page["count"] == 1
    assert page["events"][0]["payload"] == {"user": "alice", "ip": "10.0.0.7"}
    assert page["events"][0]["event_id"] == "evt-001"

    server.stop()
    server.restart()
    third = server.post(body)
    assert third.status_code == 200
    assert counts(third.json()) == (1, 0, 1, 0)
    assert totals(server.stats()) == (3, 1, 2, 0)


# --- backpressure and errors: the app in a server thread ----------------------------------


@contextmanager
def app_server(db: Path, **kwargs: Any) -> Iterator[tuple[str, Any]]:
    """create_app(db, **kwargs) served by uvicorn in a thread; yields its URL and the app."""
    app = create_app(str(db), **kwargs)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=free_port(), log_level="warning", log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "the server thread did not start"
    try:
        yield f"http://127.0.0.1:{config.port}", app
    finally:
        server.should_exit = True
        thread.join(WAIT)
        assert not thread.is_alive()


def test_a_full_queue_waits_then_answers_503_and_drops_nothing(db: Path) -> None:
    options = IngestOptions(queue_size=1, flush_interval=0.01)
    with (
        app_server(db, options=options, queue_timeout=0.5) as (url, _app),
        httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as http,
        ThreadPoolExecutor(max_workers=8) as pool,
    ):
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the writer's next commit waits for this lock
        try:

            def post(first: int) -> httpx.Response:
                with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as own:
                    return own.post("/publish", json=[event(n) for n in range(first, first + 10)])

            def queue_size() -> int:
                return http.get("/health").json()["queue_size"]

            def queue_stays_full() -> bool:
                """One batch waits in the queue: the writer is blocked in its commit."""
                deadline = time.monotonic() + 0.5
                while time.monotonic() < deadline:
                    if queue_size() == 1:
                        time.sleep(0.2)
                        if queue_size() == 1:
                            return True
                    time.sleep(0.02)
                return False

            waiting = []
            for k in range(6):
                waiting.append(pool.submit(post, 10 * k))
                if queue_stays_full():
                    break
            assert queue_size() == 1, "the queue never filled"

            refused = http.post("/publish", json=[event(n) for n in range(1000, 1010)])
            assert refused.status_code == 503
            assert refused.headers["Retry-After"] == "1"
            assert "retry" in refused.json()["detail"]
            assert all(not f.done() for f in waiting)  # acknowledged only after the commit
            # reads never wait for the writer
            assert http.get("/stats").status_code == 200
        finally:
            lock.execute("ROLLBACK")
            lock.close()

        answers = [f.result(timeout=WAIT) for f in waiting]
        assert all(a.status_code == 200 for a in answers)
        sent = 10 * len(waiting)
        assert sum(a.json()["accepted"] for a in answers) == sent
        stats = http.get("/stats").json()
        assert totals(stats) == (sent, sent, 0, 0)  # the refused request left no trace

        retried = http.post("/publish", json=[event(n) for n in range(1000, 1010)])
        assert counts(retried.json()) == (10, 10, 0, 0)
    check_store(db)


def test_body_size_limit(db: Path) -> None:
    with (
        app_server(db, max_body_bytes=4096) as (url, _app),
        httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as http,
    ):
        big = json.dumps([event(n) for n in range(60)]).encode()
        assert len(big) > 4096
        response = http.post("/publish", content=big)
        assert response.status_code == 413
        chunked = http.post("/publish", content=iter([big[:3000], big[3000:]]))
        assert chunked.status_code == 413
        assert counts(http.post("/publish", json=event(1)).json()) == (1, 1, 0, 0)
        assert totals(http.get("/stats").json()) == (1, 1, 0, 0)


def test_errors_and_a_stopped_writer_answer_json(db: Path) -> None:
    with (
        app_server(db) as (url, app),
        httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as http,
    ):
        service = app.state.service

        def broken(*_args: Any) -> Any:
            raise StoreError(f"{db}: disk I/O error")

        service.events = broken
        response = http.get("/events")
        assert response.status_code == 503
        assert response.json() == {"detail": f"store unavailable: {db}: disk I/O error"}

        def failing() -> Any:
            raise RuntimeError("unexpected")

        service.stats = failing
        response = http.get("/stats")
        assert response.status_code == 500
        assert response.json() == {"detail": "internal server error"}

        service.writer.close()  # as if the writer had stopped
        response = http.post("/publish", json=event(1))
        assert response.status_code == 503
        assert "writer is not running" in response.json()["detail"]
        health = http.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "degraded"
        assert health.json()["consumer_running"] is False
