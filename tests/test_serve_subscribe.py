"""Following the store over HTTP: `GET /events?after=` pages in commit order, and
`GET /subscribe` as Server-Sent Events: live events, resuming after `Last-Event-ID`,
keep-alive comments, and a clean end when the server is stopped."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")

from conftest import event  # noqa: E402
from helpers import wait_until  # noqa: E402
from serving import WAIT, AppServer, ServeProcess  # noqa: E402

from logagg.http import subscribe  # noqa: E402


@pytest.fixture
def serve(db: Path) -> Iterator[Callable[..., AppServer]]:
    servers: list[AppServer] = []

    def start(**options: Any) -> AppServer:
        server = AppServer(db, **options)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def serve_process(db: Path, tmp_path: Path) -> Iterator[ServeProcess]:
    server = ServeProcess(db, tmp_path / "serve.log")
    yield server.start()
    server.kill()


class Stream:
    """The events of an open `GET /subscribe`, read by a thread as they come."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, **params: Any) -> None:
        self.events: list[tuple[int, dict[str, Any]]] = []
        self.comments: list[str] = []
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self._client = httpx.Client(base_url=url, timeout=httpx.Timeout(WAIT, read=None))
        self._response = self._client.send(
            self._client.build_request("GET", "/subscribe", params=params, headers=headers),
            stream=True,
        )
        assert self._response.status_code == 200, self._response.read()
        assert self._response.headers["content-type"].startswith("text/event-stream")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            seq, data = None, None
            for line in self._response.iter_lines():
                if line.startswith(":"):
                    self.comments.append(line)
                elif line.startswith("id: "):
                    seq = int(line[4:])
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                elif line == "" and data is not None:
                    assert seq == data["seq"]
                    self.events.append((seq, data))
                    seq, data = None, None
        except BaseException as exc:  # the server cut the stream
            self.error = exc
        finally:
            self.ended.set()

    def ids(self) -> list[str]:
        return [doc["event_id"] for _, doc in self.events]

    def close(self) -> None:
        """Hang up (the reading thread ends with the connection)."""
        self._response.close()
        self._client.close()


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    wait_until(predicate, WAIT, what)


def test_events_after_pages_in_commit_order(serve: Callable[..., AppServer]) -> None:
    server = serve()
    first = [event(n, "b" if n % 2 else "a") for n in range(5)]
    assert server.post({"events": first}).status_code == 200
    page = server.get("/events", after=0, limit=3).json()
    assert (page["count"], [e["event_id"] for e in page["events"]]) == (3, ["e0", "e1", "e2"])
    seqs = [e["seq"] for e in page["events"]]
    assert seqs == sorted(seqs) and page["next"] == seqs[-1]
    rest = server.get("/events", after=page["next"], limit=3).json()
    assert [e["event_id"] for e in rest["events"]] == ["e3", "e4"]
    only_b = server.get("/events", after=0, topic="b").json()
    assert [e["event_id"] for e in only_b["events"]] == ["e1", "e3"]
    assert only_b["next"] == rest["next"]  # past what the filter left out too
    assert server.get("/events", after=rest["next"]).json() == {
        "topic": None,
        "count": 0,
        "next": rest["next"],
        "events": [],
    }
    assert server.get("/events", after=-1).status_code == 422
    plain = server.get("/events").json()  # without `after`: as before, by time, no seq
    assert [e["event_id"] for e in plain["events"]] == ["e4", "e3", "e2", "e1", "e0"]
    assert "seq" not in plain["events"][0]


def test_subscribe_streams_resumes_and_ends_cleanly_on_sigterm(
    serve_process: ServeProcess,
) -> None:
    server = serve_process
    assert server.post({"events": [event(n) for n in range(5)]}).status_code == 200
    everything = Stream(server.url, after=0)
    wait_for(lambda: len(everything.events) == 5, "the five stored events")
    assert everything.ids() == ["e0", "e1", "e2", "e3", "e4"]
    now = Stream(server.url)  # from now on: only what comes next
    assert server.post({"events": [event(5), event(6)]}).status_code == 200
    wait_for(lambda: len(everything.events) == 7 and len(now.events) == 2, "two live events")
    assert now.ids() == ["e5", "e6"]
    everything.close()

    third = everything.events[2][0]
    resumed = Stream(server.url, headers={"Last-Event-ID": str(third)})
    wait_for(lambda: len(resumed.events) == 4, "the events after the third")
    assert resumed.ids() == ["e3", "e4", "e5", "e6"]
    assert server.post({"events": [event(7)]}).status_code == 200
    wait_for(lambda: resumed.ids()[-1:] == ["e7"], "one more live event")

    began = time.monotonic()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    assert resumed.ended.wait(WAIT) and now.ended.wait(WAIT)
    assert resumed.error is None and now.error is None  # the streams ended, not cut
    assert server.proc.wait(WAIT) in (-signal.SIGTERM, 143)  # death by the signal itself
    assert time.monotonic() - began < 5  # well before the server's 10 s grace period
    resumed.close()
    now.close()


def test_keep_alive_comments_and_a_bad_last_event_id(
    serve: Callable[..., AppServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscribe, "KEEPALIVE_SECONDS", 0.3)
    server = serve()
    stream = Stream(server.url, topic="quiet")
    wait_for(lambda: ": keep-alive" in stream.comments, "a keep-alive comment")
    assert server.app is not None
    subscribe.closing(server.app).set()  # as on SIGTERM: the stream ends
    assert stream.ended.wait(WAIT) and stream.error is None
    stream.close()
    assert server.http is not None
    response = server.http.get("/subscribe", headers={"Last-Event-ID": "not-a-seq"})
    assert response.status_code == 422
    assert "Last-Event-ID" in response.json()["detail"]
