"""`GET /metrics` in the Prometheus text format, and the commit timing behind the latency
of one-at-a-time producers: a lone request is committed at once, concurrent ones share a
commit. In-process servers over real HTTP (tests/serving.py AppServer).
"""

from __future__ import annotations

import dataclasses
import sqlite3
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
parser = pytest.importorskip("prometheus_client.parser")

from conftest import event  # noqa: E402
from helpers import wait_until  # noqa: E402
from serving import HTTP_TIMEOUT, WAIT, AppServer  # noqa: E402

from logagg.http.service import SERVE_OPTIONS  # noqa: E402
from logagg.pipeline import Writer  # noqa: E402

SLOW_TIMER = 2.0  # a group-commit timer no lone request may wait for


def in_commit(writer: Writer) -> bool:
    """True while the writer's thread is inside a commit."""
    frame = sys._current_frames().get(writer._consumer.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == "_commit":
            return True
        frame = frame.f_back
    return False


def samples(server: AppServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = server.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = {}
    for family in parser.text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
def server(db: Path) -> Iterator[AppServer]:
    server = AppServer(db).start()
    yield server
    server.stop()


def test_metrics(server: AppServer) -> None:
    server.post([event(1), event(2), event(3), event(1), {"topic": "t"}])
    server.post([{"topic": "t"}])  # 422: nothing stored
    server.get("/no-such-page")
    server.get("/events", limit=0)
    found = samples(server)

    def value(name: str, **labels: str) -> float:
        return found[(name, tuple(sorted(labels.items())))]

    assert value("logagg_events_received_total") == 6
    assert value("logagg_events_accepted_total") == 3
    assert value("logagg_events_duplicates_total") == 1
    assert value("logagg_events_invalid_total") == 2
    assert value("logagg_http_requests_total", route="/publish", method="POST", status="200") == 1
    assert value("logagg_http_requests_total", route="/publish", method="POST", status="422") == 1
    assert value("logagg_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert value("logagg_http_requests_total", route="/events", method="GET", status="422") == 1
    assert value("logagg_http_request_duration_seconds_count", route="/publish") == 2
    assert value("logagg_commit_duration_seconds_count") == 2
    assert value("logagg_queue_depth") == 0
    assert value("logagg_writer_up") == 1
    assert value("logagg_store_up") == 1
    stats = server.stats()
    assert value("logagg_store_events_received_total") == stats["received"] == 6
    assert value("logagg_store_events_accepted_total") == stats["unique_processed"]
    assert value("logagg_store_events_duplicates_total") == stats["duplicate_dropped"]
    assert value("logagg_store_events_invalid_total") == stats["invalid"]
    assert value("logagg_store_topics") == 1


def test_a_lone_request_does_not_wait_for_the_group_timer(db: Path) -> None:
    server = AppServer(db, options=dataclasses.replace(SERVE_OPTIONS, flush_interval=SLOW_TIMER))
    server.start()
    try:
        for n in range(3):
            began = time.monotonic()
            response = server.post(event(n))
            took = time.monotonic() - began
            assert response.status_code == 200
            assert took < SLOW_TIMER / 2, f"a lone request took {took:.3f} s"
    finally:
        server.stop()


def test_requests_that_arrive_during_a_commit_share_the_next_one(db: Path) -> None:
    """The writer is held in a commit (the test holds the lock it needs) while requests
    queue: once it is released, everything queued is committed in one transaction."""
    server = AppServer(db).start()
    try:
        server.post(event(0))  # the store exists
        writer = server.service.writer
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")

        def post(n: int) -> httpx.Response:
            with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT) as own:
                return own.post("/publish", json=event(n))

        with ThreadPoolExecutor(max_workers=6) as pool:
            try:
                first = pool.submit(post, 1)
                wait_until(lambda: in_commit(writer), WAIT, "the writer to wait for the lock")
                rest = [pool.submit(post, n) for n in range(2, 7)]
                wait_until(lambda: writer.queue_size == 5, WAIT, "five requests queued")
                before = samples(server)[("logagg_commit_duration_seconds_count", ())]
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            answers = [f.result(timeout=WAIT) for f in (first, *rest)]
        assert [a.status_code for a in answers] == [200] * 6
        after = samples(server)[("logagg_commit_duration_seconds_count", ())]
        assert after - before == 2  # the held one, then the five together
    finally:
        server.stop()
