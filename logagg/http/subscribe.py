"""Following the store over HTTP: `GET /events?after=SEQ` pages in commit order, and
`GET /subscribe`, a stream of Server-Sent Events.

Both read through the service's read pool, in short reads: a subscriber holds no
connection between polls. A stream's `id:` is the event's position; a client that
reconnects with `Last-Event-ID` (as EventSource does by itself) continues after it, so it
misses nothing (it may see the events after that id again, at least once). A comment
(`: keep-alive`) goes out every KEEPALIVE_SECONDS. Streams end, cleanly, as soon as the
server is told to stop (`end_streams_on_exit`), not after its grace period.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Header, HTTPException, Query
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from logagg.http.service import Service
from logagg.store import BadTime, EventQuery, Page, Store

AFTER = (
    "In commit order: the events committed after this position (an event's `seq`),"
    " oldest first, with `next` to ask after next time; `order` does not apply."
)
PAGE_MAX = 1000  # events one request or one read of a stream returns at most
POLL_SECONDS = 0.2  # a stream looks for new events this often
KEEPALIVE_SECONDS = 15.0


def closing(app: FastAPI) -> threading.Event:
    """Set once the server is told to stop: streams end at their next look."""
    event: threading.Event | None = getattr(app.state, "closing", None)
    if event is None:
        event = app.state.closing = threading.Event()
    return event


def end_streams_on_exit(server: Any) -> None:
    """Make a uvicorn server's SIGINT / SIGTERM end the event streams first: otherwise it
    waits for them to finish until its grace period is over, then cuts them."""
    app = server.config.app
    handle_exit: Callable[[int, Any], None] = server.handle_exit

    def handle(sig: int, frame: Any) -> None:
        closing(app).set()
        handle_exit(sig, frame)

    server.handle_exit = handle


def _query(
    topic: str | None, source: str | None, since: str | None, until: str | None
) -> EventQuery:
    try:
        return EventQuery.parse(topic=topic, source=source, since=since, until=until, limit=None)
    except BadTime as exc:
        raise HTTPException(422, f"{exc.name}: {exc}") from None


def _read(service: Service, position: int, query: EventQuery, limit: int) -> Page:
    def use(store: Store) -> Page:
        return store.read_after(position, query, limit)

    return service.reads.read(use)


def _now(service: Service, query: EventQuery) -> int:
    def use(store: Store) -> int:
        return store.start_position(query, 0)

    return service.reads.read(use)


def events_after(
    service: Service,
    after: int,
    topic: str | None = None,
    source: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int = 100,
) -> Response:
    """`GET /events?after=SEQ`: matching events committed after position SEQ, oldest first,
    each with its `seq`, and `next`: the position to ask after next time (past the events
    the filters left out too)."""
    page = _read(service, after, _query(topic, source, since, until), min(limit, PAGE_MAX))
    doc = {
        "topic": topic,
        "count": len(page.events),
        "next": page.next,
        "events": [orjson.Fragment(e.to_json_bytes(with_seq=True)) for e in page.events],
    }
    return Response(orjson.dumps(doc), media_type="application/json")


def register(app: FastAPI, service: Service) -> None:
    """Add `GET /subscribe` to `app`."""

    @app.get(
        "/subscribe",
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events."},
            422: {"description": "A bad position or time."},
        },
    )
    async def subscribe(
        topic: Annotated[str | None, Query(description="Only this topic (exact match).")] = None,
        source: Annotated[str | None, Query(description="Only this source (exact match).")] = None,
        since: Annotated[str | None, Query(description="From this time on.")] = None,
        until: Annotated[str | None, Query(description="Before this time.")] = None,
        after: Annotated[
            int | None, Query(ge=0, description="Start after this position (0: from the first).")
        ] = None,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        """Stored events as Server-Sent Events, in commit order, as they are committed: each
        `id:` its position, `data:` the event (with `seq`). Resumes after `Last-Event-ID`
        (or `after`); without either, from now on. Keep-alive comments every 15 s."""
        query = _query(topic, source, since, until)
        if last_event_id is not None and last_event_id.strip():
            try:
                position = int(last_event_id)
            except ValueError:
                raise HTTPException(422, "Last-Event-ID: expected an event's seq") from None
        elif after is not None:
            position = after
        else:
            position = await run_in_threadpool(_now, service, query)
        stop = closing(app)
        return StreamingResponse(
            _stream(service, query, position, stop),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


async def _stream(
    service: Service, query: EventQuery, position: int, stop: threading.Event
) -> AsyncIterator[bytes]:
    yield b": logagg events in commit order\n\n"
    quiet_since = time.monotonic()
    while not stop.is_set():
        page = await run_in_threadpool(_read, service, position, query, PAGE_MAX)
        if page.events:
            yield b"".join(
                b"id: %d\ndata: %s\n\n" % (e.seq or 0, e.to_json_bytes(with_seq=True))
                for e in page.events
            )
            quiet_since = time.monotonic()
        position = page.next
        if page.full:
            continue
        if time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
            yield b": keep-alive\n\n"  # also how a client that has gone is noticed
            quiet_since = time.monotonic()
        await asyncio.sleep(POLL_SECONDS)
