"""`logagg serve` heals itself: real faults under real server processes.

A full disk (a small tmpfs the test mounts, filled and then freed) under a SQLite store,
and a PostgreSQL restart (a server of the test's own): meanwhile requests get 503 with
Retry-After and nothing is answered 200 that is not committed, /health says why, and the
writer recovers by itself once the fault clears.
"""

from __future__ import annotations

import errno
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from conftest import check_store, event  # noqa: E402
from helpers import wait_until  # noqa: E402
from pg import PASSWORD, PgServer, fresh_database, start_server  # noqa: E402
from serving import ServeProcess  # noqa: E402

QUICK = 1.0  # a request refused while the store cannot be written is answered this fast
HEAL = 20.0  # the most a writer may take to notice that the fault has cleared


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of the test's own (mounting needs root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(path: Path) -> int:
    """Write `path` until the file system is full; return the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as out:
        for size in (1 << 16, 1 << 12, 1 << 9):
            while True:
                try:
                    written += out.write(b"\0" * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written


def counts(doc: dict[str, Any]) -> tuple[int, int, int, int]:
    return (doc["received"], doc["accepted"], doc["duplicates"], doc["invalid"])


def assert_refused_while_down(server: ServeProcess, body: list[dict[str, Any]]) -> str:
    """A request is answered 503 with Retry-After at once; /health says why (returned)."""
    began = time.monotonic()
    refused = server.post(body)
    took = time.monotonic() - began
    assert refused.status_code == 503, refused.text
    assert took < QUICK, f"a refusal took {took:.2f} s"
    assert int(refused.headers["retry-after"]) >= 1
    assert "send them again" in refused.json()["detail"]
    health = server.get("/health")
    assert health.status_code == 503
    doc = health.json()
    assert (doc["status"], doc["consumer_running"]) == ("unhealthy", True)
    assert doc["retry_after_seconds"] is not None
    assert "retry-after" in health.headers
    error: str = doc["error"]
    return error


def wait_healthy(server: ServeProcess) -> None:
    wait_until(
        lambda: server.get("/health").status_code == 200, HEAL, "the writer to heal by itself"
    )


def test_a_full_disk_then_freed(small_disk: Path, tmp_path: Path) -> None:
    db = small_disk / "store.db"
    log = tmp_path / "serve.log"
    server = ServeProcess(db, log, log_level="info").start()
    try:
        assert counts(server.post([event(n) for n in range(50)]).json()) == (50, 50, 0, 0)
        filler = small_disk / "filler"
        assert fill(filler) > 0
        pad = "x" * 2000  # 300 such events need pages the store does not have
        big = [event(n, payload={"n": n, "pad": pad}) for n in range(100, 400)]

        first = server.post(big)  # the commit fails: answered 503, never 200
        assert first.status_code == 503, first.text
        assert "full" in first.json()["detail"]
        error = assert_refused_while_down(server, [event(999)])
        assert "full" in error
        assert str(small_disk) not in error and "store.db" not in error
        assert server.get("/stats").status_code == 200  # reads go on

        filler.unlink()
        wait_healthy(server)
        again = server.post(big)  # the refused batch may have been committed since: safe
        assert again.status_code == 200, again.text
        assert counts(again.json())[0] == 300
        assert sum(counts(again.json())[1:3]) == 300
        late = server.post([event(999)])  # refused before, never queued: new now
        assert counts(late.json()) == (1, 1, 0, 0)
        stats = server.stats()
        assert stats["unique_processed"] == 50 + 300 + 1
        metrics = server.get("/metrics").text
        assert "logagg_writer_up 1.0" in metrics
        assert "logagg_commit_failures_total 0.0" not in metrics
        assert server.stop() in (-15, 143)
    finally:
        server.kill()
    check_store(db)
    text = log.read_text()
    assert "Traceback" not in text
    assert str(small_disk) not in text
    assert sum("cannot be written:" in line for line in text.splitlines()) == 1
    assert "written again after" in text


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    """A PostgreSQL server for this test alone: it is restarted mid-test."""
    try:
        server = start_server()
    except RuntimeError as exc:
        pytest.fail(f"cannot start a PostgreSQL server: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.destroy()


def test_a_postgresql_restart(own_pg: PgServer, tmp_path: Path) -> None:
    url = fresh_database(own_pg)
    log = tmp_path / "serve.log"
    server = ServeProcess(url, log, log_level="info").start()
    try:
        assert counts(server.post([event(n) for n in range(20)]).json()) == (20, 20, 0, 0)
        assert server.get("/stats").status_code == 200  # a pooled read connection
        own_pg.stop()
        batch = [event(n) for n in range(100, 130)]

        first = server.post(batch)
        assert first.status_code == 503, first.text
        error = assert_refused_while_down(server, [event(999)])
        assert PASSWORD not in error and PASSWORD not in first.text

        own_pg.start()
        wait_healthy(server)
        assert server.get("/stats").status_code == 200  # a stale pooled connection is replaced
        again = server.post(batch)
        assert again.status_code == 200, again.text
        assert sum(counts(again.json())[1:3]) == 30
        assert counts(server.post([event(999)]).json()) == (1, 1, 0, 0)
        assert server.stats()["unique_processed"] == 20 + 30 + 1
        assert server.stop() in (-15, 143)
    finally:
        server.kill()
    check_store(url)
    text = log.read_text()
    assert PASSWORD not in text
    assert "Traceback" not in text
    assert "written again after" in text
