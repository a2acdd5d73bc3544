"""The HTTP API: routes over the service, errors as JSON.

Endpoints: `POST /publish`, `GET /events`, `GET /stats`, `GET /health`; OpenAPI docs at
`/docs`. Behaviour is documented in the README ("serve: the HTTP API").
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import orjson
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from logagg import __version__
from logagg.errors import StoreError
from logagg.http.schemas import (
    _PUBLISH_BODY,
    EventsPage,
    Health,
    Problem,
    PublishError,
    PublishResult,
    Stats,
    publish_document,
)
from logagg.http.service import QUEUE_TIMEOUT_SECONDS, SERVE_OPTIONS, Service, committed
from logagg.pipeline import IngestOptions
from logagg.store import BadTime, BatchResult, EventQuery
from logagg.timestamps import utc_now

logger = logging.getLogger("logagg.serve")

RETRY_AFTER_SECONDS = 1
MAX_BODY_BYTES = 8 << 20  # with SERVE_OPTIONS.queue_size: the memory bound of the queue
EVENTS_LIMIT_MAX = 1000


async def read_body(request: Request, limit: int) -> bytes:
    """The request body; raises HTTPException(413) beyond `limit` bytes, without reading on."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the body is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class InternalErrors:
    """ASGI middleware: an unexpected exception becomes a JSON 500 (its traceback is logged)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            logger.exception("internal error in %s %s", scope["method"], scope["path"])
            if started:
                raise
            response = JSONResponse({"detail": "internal server error"}, status_code=500)
            await response(scope, receive, send)


def create_app(
    db: str,
    options: IngestOptions | None = None,
    *,
    queue_timeout: float = QUEUE_TIMEOUT_SECONDS,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The API on the store at `db`; the writer runs from app start-up to shutdown."""
    service = Service(db, options or SERVE_OPTIONS, queue_timeout)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.start)
        try:
            yield
        finally:
            await run_in_threadpool(service.close)

    app = FastAPI(
        title="logagg",
        version=__version__,
        description="Keep every event of an at-least-once stream exactly once, in SQLite.",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(StoreError)
    async def store_error(_request: Request, exc: StoreError) -> JSONResponse:
        logger.error("store error: %s", exc)
        return JSONResponse({"detail": f"store unavailable: {exc}"}, status_code=503)

    app.add_middleware(InternalErrors)

    @app.post(
        "/publish",
        response_model=PublishResult,
        responses={
            413: {"model": Problem, "description": "The body is too large."},
            422: {
                "model": PublishError,
                "description": "One invalid event (counted), or a body that is not events.",
            },
            503: {"model": Problem, "description": "The queue stayed full; see Retry-After."},
        },
        openapi_extra=_PUBLISH_BODY,
    )
    async def publish(request: Request) -> JSONResponse:
        """Store one event or a batch; answered once the events are committed.

        A batch is partly accepted: invalid events are counted and listed in `errors`.
        """
        body = await read_body(request, max_body_bytes)
        deadline = time.monotonic() + service.queue_timeout
        try:
            parsed, future = await run_in_threadpool(service.publish, body, deadline)
        except queue.Full:
            logger.warning("the write queue stayed full for %g s: 503", service.queue_timeout)
            raise HTTPException(
                503,
                f"the write queue stayed full for {service.queue_timeout:g} s;"
                " nothing was stored, retry later",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None
        if future is None:
            result = BatchResult(0, 0, 0)
        else:
            result = await committed(future, lambda: service.running)
        status, doc = publish_document(parsed, result)
        logger.debug(
            "publish: %d received, %d accepted, %d duplicates, %d invalid",
            parsed.received,
            result.accepted,
            result.duplicates,
            result.invalid,
        )
        return JSONResponse(doc, status_code=status)

    @app.get(
        "/events",
        response_model=EventsPage,
        responses={422: {"description": "A bad limit or time."}},
    )
    def events(
        topic: Annotated[str | None, Query(description="Only this topic (exact match).")] = None,
        source: Annotated[str | None, Query(description="Only this source (exact match).")] = None,
        since: Annotated[str | None, Query(description="From this ISO-8601 time.")] = None,
        until: Annotated[str | None, Query(description="Before this ISO-8601 time.")] = None,
        limit: Annotated[int, Query(ge=1, le=EVENTS_LIMIT_MAX)] = 100,
        order: Annotated[
            Literal["desc", "asc"], Query(description="By timestamp, newest first by default.")
        ] = "desc",
    ) -> Response:
        """Stored events, newest first, in the input schema with their original payloads."""
        try:
            query = EventQuery.parse(
                topic=topic,
                source=source,
                since=since,
                until=until,
                limit=limit,
                newest_first=order == "desc",
            )
        except BadTime as exc:
            raise HTTPException(422, f"{exc.name}: {exc}") from None
        found = service.events(query)
        doc = {"topic": topic, "count": len(found), "events": [orjson.Fragment(e) for e in found]}
        return Response(orjson.dumps(doc), media_type="application/json")

    @app.get("/stats", response_model=Stats)
    def stats() -> dict[str, Any]:
        """Counters and per-topic counts of the store (all processes, across restarts)."""
        return service.stats()

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health() -> JSONResponse:
        """`ok` while the writer runs; `degraded` (503) once it has stopped."""
        running = service.running
        doc = {
            "status": "ok" if running else "degraded",
            "consumer_running": running,
            "queue_size": service.queue_size,
            "timestamp": utc_now(),
        }
        return JSONResponse(doc, status_code=200 if running else 503)

    return app
