"""`logagg serve` over real HTTP (httpx) on 127.0.0.1, on a store of the test's own.

Most tests serve the app in a uvicorn server thread of the test process (AppServer in
tests/serving.py): the app `logagg serve` runs, on a port of its own, with the service
behind it in reach. Real `logagg serve` processes (ServeProcess) are kept where the
behaviour depends on one: kill -9 right after a 200, SIGTERM and its exit status,
settings from the environment and the log, binding the port, start-up errors.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from conftest import check_store, event, run_logagg, write_jsonl  # noqa: E402
from helpers import free_port, one_line_error, wait_until  # noqa: E402
from serving import HTTP_TIMEOUT, WAIT, AppServer, ServeProcess  # noqa: E402

from logagg.errors import StoreError  # noqa: E402
from logagg.pipeline import IngestOptions, Writer  # noqa: E402
from logagg.units import human_duration  # noqa: E402


@pytest.fixture
def serve(db: Path) -> Iterator[Callable[..., AppServer]]:
    """Serve the app on a store (default: the test's) in a server thread; every server is
    stopped at the end. Options go to create_app."""
    servers: list[AppServer] = []

    def start(store: Path | None = None, **options: Any) -> AppServer:
        server = AppServer(store or db, **options)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def serve_process(db: Path, tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Start `logagg serve` processes on a store (default: the test's); every one is
    killed at the end."""
    servers: list[ServeProcess] = []

    def start(store: Path | None = None, **options: Any) -> ServeProcess:
        log = tmp_path / f"serve-{len(servers)}.log"
        server = ServeProcess(store or db, log, **options)
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
    serve: Callable[..., AppServer],
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


def test_a_batch_as_an_object_or_an_array(serve: Callable[..., AppServer]) -> None:
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
    serve: Callable[..., AppServer],
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


def test_a_duplicate_across_requests(serve: Callable[..., AppServer]) -> None:
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
    serve: Callable[..., AppServer], db: Path
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
    assert doc["topic_counts"] == {
        f"topic.{k}": len({n for n in sent if n % 3 == k}) for k in range(3)
    }
    assert check_store(db)["rows"] == unique


def test_invalid_bodies(serve: Callable[..., AppServer], db: Path) -> None:
    """Unreadable bodies count nothing; invalid events are counted; batches partly accepted."""
    server = serve()
    for body in (b"not json", b"", b'"text"', b"42", b'{"events": {"a": 1}}', b'{"x": NaN}'):
        response = server.post(body)
        assert response.status_code == 422, body
        assert isinstance(response.json()["detail"], str)
    assert "not valid JSON" in server.post(b"{oops").json()["detail"]
    assert totals(server.stats()) == (0, 0, 0, 0)

    junk = server.post([1, "x", None, [], {}])
    assert junk.status_code == 422  # nothing stored
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


def test_kill_9_right_after_a_200_keeps_the_events(
    serve_process: Callable[..., ServeProcess], db: Path
) -> None:
    """A real process: SIGKILL an instant after the answer, then serve the store again."""
    server = serve_process()
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


def test_counters_persist_across_restarts(serve: Callable[..., AppServer], db: Path) -> None:
    server = serve()
    server.post({"events": [event(1), event(2), event(1), {"topic": "t"}]})
    first = server.stats()
    assert totals(first) == (4, 2, 1, 1)

    server.restart()  # the app shuts down (the store is closed) and starts on it again
    assert totals(server.stats()) == (4, 2, 1, 1)
    server.post({"events": [event(2), event(3), "junk"]})
    doc = server.stats()
    assert totals(doc) == (7, 3, 2, 2)
    assert_consistent(doc)
    assert doc["topic_counts"] == {"t": 3}
    check_store(db)


def test_ingest_from_another_process_while_the_server_runs(
    serve: Callable[..., AppServer], db: Path, tmp_path: Path
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


def test_events_filters_and_limits(serve: Callable[..., AppServer]) -> None:
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
    response = server.get("/events", since="soon")  # (yesterday, 3h, now are times)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("since: not an ISO-8601 time")
    assert server.get("/events", until="2025-02-30").status_code == 422


def test_stats_health_and_docs(serve: Callable[..., AppServer]) -> None:
    before = time.monotonic()
    server = serve()
    server.post({"events": [event(1), event(2, topic="x"), event(1)]})
    doc = server.stats()
    up = time.monotonic() - before
    assert totals(doc) == (3, 2, 1, 0)
    assert (doc["topics"], doc["topic_counts"]) == (["t", "x"], {"t": 1, "x": 1})
    assert 0 <= doc["uptime_seconds"] <= up + 0.001
    assert doc["uptime_human"] in {human_duration(s) for s in (doc["uptime_seconds"], up)}
    assert doc["first_timestamp"] == "2025-01-01T00:00:01.000000Z"
    assert doc["last_timestamp"] == "2025-01-01T00:00:02.000000Z"

    health = server.get("/health")
    assert health.status_code == 200
    doc = health.json()
    assert set(doc) == {
        "status",
        "consumer_running",
        "queue_size",
        "timestamp",
        "error",
        "retry_after_seconds",
    }
    assert (doc["status"], doc["consumer_running"], doc["queue_size"]) == ("healthy", True, 0)
    assert doc["timestamp"].endswith("Z")

    assert server.get("/docs").status_code == 200
    schema = server.get("/openapi.json").json()
    assert {"/", "/publish", "/events", "/stats", "/health", "/metrics"} <= set(schema["paths"])


def test_settings_from_the_environment_and_logs_without_payloads(
    serve_process: Callable[..., ServeProcess], db: Path
) -> None:
    """A real process: LOGAGG_DB, PORT and LOG_LEVEL; SIGTERM commits and exits 143."""
    server = serve_process(log_level="debug", by_env=True)
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


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_a_signal_stops_the_server_after_its_last_commit(
    serve_process: Callable[..., ServeProcess], db: Path, signum: int, code: int
) -> None:
    """A real process: Ctrl-C or SIGTERM stops the writer after its last commit, and the
    exit status a shell shows names the signal (130 / 143; death by the signal itself,
    after the shutdown, shows the same)."""
    server = serve_process(log_level="info")
    assert counts(server.post({"events": [event(n) for n in range(5)]}).json()) == (5, 5, 0, 0)
    assert counts(server.post([event(4), event(5), "junk"]).json()) == (3, 1, 1, 1)
    status = server.stop(signum)
    assert (status if status >= 0 else 128 - status) == code
    log = server.log.read_text()
    assert "writer stopped: 8 received, 6 accepted, 1 duplicates, 1 invalid" in log
    assert "Traceback" not in log
    facts = check_store(db)
    assert (facts["rows"], facts["received"]) == (6, 8)


def test_serve_command_errors(db: Path, tmp_path: Path) -> None:
    """Real processes: a port another socket listens on, a bad log level, a foreign file."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        taken = run_logagg("serve", "--db", tmp_path / "other.db", "--port", str(port))
    assert taken.returncode == 1
    assert one_line_error(taken.stderr).startswith(
        f"logagg: error: cannot listen on 127.0.0.1:{port}: "
    )
    level = run_logagg("serve", "--db", db, "--port", "1", "--log-level", "loud")
    assert level.returncode == 2
    assert one_line_error(level.stderr) == (
        "logagg: error: --log-level 'loud': expected one of critical, error, warning, info, debug\n"
    )
    assert not db.exists()
    foreign = tmp_path / "foreign.db"
    foreign.write_text("not a database")
    proc = run_logagg("serve", "--db", foreign, "--port", str(free_port()))
    assert proc.returncode == 1
    assert proc.stderr.decode() == f"logagg: error: {foreign}: not a SQLite database\n"
    assert foreign.read_text() == "not a database"


def test_human_duration() -> None:
    assert human_duration(0.4) == "0s"
    assert human_duration(125) == "2m 5s"
    assert human_duration(3723.9) == "1h 2m 3s"
    assert human_duration(90_000) == "1d 1h 0m 0s"


def test_the_original_readme_walkthrough(serve: Callable[..., AppServer]) -> None:
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
    assert doc["topics"] == ["user.login"]

    page = server.get("/events", topic="user.login").json()
    assert page["count"] == 1
    assert page["events"][0]["payload"] == {"user": "alice", "ip": "10.0.0.7"}
    assert page["events"][0]["event_id"] == "evt-001"

    server.restart()
    third = server.post(body)
    assert third.status_code == 200
    assert counts(third.json()) == (1, 0, 1, 0)
    assert totals(server.stats()) == (3, 1, 2, 0)


# --- backpressure and errors -------------------------------------------------------------


def in_commit(writer: Writer) -> bool:
    """True while the writer's thread is inside a commit (the test holds the lock it needs)."""
    frame = sys._current_frames().get(writer._consumer.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == "_commit":
            return True
        frame = frame.f_back
    return False


def test_a_full_queue_waits_then_answers_503_and_drops_nothing(
    serve: Callable[..., AppServer], db: Path
) -> None:
    """The writer blocked in a commit and a queue of one batch, full: a further request waits
    for room, then gets 503 and leaves no trace; the waiting ones are answered after the
    commit."""
    server = serve(options=IngestOptions(queue_size=1, flush_interval=0.01), queue_timeout=0.5)
    writer = server.service.writer

    def post(first: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT) as own:
            return own.post("/publish", json=[event(n) for n in range(first, first + 10)])

    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # the writer's next commit waits for this lock
    with ThreadPoolExecutor(max_workers=2) as pool:
        try:
            first = pool.submit(post, 0)
            wait_until(lambda: in_commit(writer), WAIT, "the writer to wait for the lock")
            second = pool.submit(post, 10)
            wait_until(lambda: writer.queue_size == 1, WAIT, "the second batch in the queue")

            refused = server.post([event(n) for n in range(1000, 1010)])
            assert refused.status_code == 503
            assert refused.headers["Retry-After"] == "1"
            assert "retry" in refused.json()["detail"]
            assert not first.done() and not second.done()  # answered only after the commit
            assert server.get("/health").json()["queue_size"] == 1
            assert server.get("/stats").status_code == 200  # reads never wait for the writer
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        answers = [first.result(timeout=WAIT), second.result(timeout=WAIT)]

    assert [a.status_code for a in answers] == [200, 200]
    assert [counts(a.json()) for a in answers] == [(10, 10, 0, 0)] * 2
    assert totals(server.stats()) == (20, 20, 0, 0)  # the refused request left no trace
    retried = server.post([event(n) for n in range(1000, 1010)])
    assert counts(retried.json()) == (10, 10, 0, 0)
    server.stop()
    check_store(db)


def test_body_size_limit(serve: Callable[..., AppServer]) -> None:
    server = serve(max_body_bytes=4096)
    big = json.dumps([event(n) for n in range(60)]).encode()
    assert len(big) > 4096
    response = server.post(big)
    assert response.status_code == 413
    assert response.json() == {"detail": "the body is over the limit of 4096 bytes"}
    assert server.http is not None
    chunked = server.http.post(
        "/publish",
        content=iter([big[:3000], big[3000:]]),
        headers={"content-type": "application/json"},
    )
    assert chunked.status_code == 413
    assert counts(server.post(event(1)).json()) == (1, 1, 0, 0)
    assert totals(server.stats()) == (1, 1, 0, 0)


def test_errors_and_a_stopped_writer_answer_json(serve: Callable[..., AppServer], db: Path) -> None:
    server = serve()
    service = server.service

    def broken(*_args: Any) -> Any:
        raise StoreError(f"{db}: disk I/O error")

    service.events = broken
    response = server.get("/events")
    assert response.status_code == 503
    assert response.json() == {"detail": "store unavailable: disk I/O error"}  # no path

    def failing() -> Any:
        raise RuntimeError("unexpected")

    service.stats = failing
    response = server.get("/stats")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}

    service.writer.close()  # as if the writer had stopped
    response = server.post(event(1))
    assert response.status_code == 503
    assert response.json()["detail"] == "store unavailable: the writer stopped"
    health = server.get("/health")
    assert health.status_code == 503
    assert health.json()["status"] == "unhealthy"
    assert health.json()["consumer_running"] is False
    assert health.json()["error"] == "the writer stopped"
