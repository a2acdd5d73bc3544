"""The HTTP API: routes over the service, errors as JSON.

Endpoints: `GET /` (what this service is), `POST /publish`, `GET /events`, `GET /stats`,
`GET /health`, `GET /metrics`; OpenAPI docs at `/docs`. Shippers' protocols are adapters
of their own over the same service: Elasticsearch bulk (es.py, `/es/...`), OTLP logs
(otlp.py, `/v1/logs`), CloudEvents (cloudevents.py, `/cloudevents`, binary mode on
`/publish`), NDJSON and compressed publish bodies (formats.py). Every request passes the
metrics, the error boundary and the access rules (security.Guard) first. Behaviour is
documented in the README ("serve: the HTTP API", "Send from your shipper").
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
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from logagg import __version__
from logagg.errors import StoreError
from logagg.http import cloudevents, es, otlp, subscribe
from logagg.http.body import NotEvents, publish_document
from logagg.http.formats import publish_other
from logagg.http.intake import ClientGone, json_media, read_body
from logagg.http.metrics import CONTENT_TYPE, RequestMetrics
from logagg.http.schemas import (
    _PUBLISH_BODY,
    EventsPage,
    Health,
    Problem,
    PublishError,
    PublishResult,
    ServiceInfo,
    Stats,
)
from logagg.http.security import Access, Guard
from logagg.http.service import QUEUE_TIMEOUT_SECONDS, SERVE_OPTIONS, Service, committed
from logagg.pipeline import IngestOptions, WriterDown
from logagg.store import BadTime, BatchResult, EventQuery
from logagg.timestamps import utc_now

logger = logging.getLogger("logagg.serve")

RETRY_AFTER_SECONDS = 1
MAX_BODY_BYTES = 8 << 20  # with SERVE_OPTIONS.queue_size: the memory bound of the queue
EVENTS_LIMIT_MAX = 1000
ENDPOINTS = {
    "POST /publish": "store one event, {'events': [...]} or an array (CloudEvents too),"
    " or NDJSON (one event a line; ?preset=)",
    "POST /cloudevents": "store CloudEvents: binary, structured or batched mode",
    "POST /es/_bulk": "the Elasticsearch bulk API, for shippers (also /es/{index}/_bulk)",
    "POST /v1/logs": "OpenTelemetry logs (OTLP/HTTP, protobuf or JSON)",
    "GET /events": "stored events: topic, source, since, until, limit, order",
    "GET /stats": "counters and topics of the store",
    "GET /health": "whether the writer can write (no token needed)",
    "GET /metrics": "metrics in the Prometheus text format",
    "GET /docs": "interactive API documentation",
}


class InternalErrors:
    """ASGI middleware: an unexpected exception becomes a JSON 500 (its traceback is logged);
    a client that went away is one log line."""

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
        except (ClientGone, ClientDisconnect) as exc:
            got = f" after {exc.received} bytes" if isinstance(exc, ClientGone) else ""
            client = scope.get("client")
            who = f"{client[0]}:{client[1]}" if client else "a client"
            logger.info(
                "%s %s: %s went away before sending its whole body%s; nothing of it was stored",
                scope["method"],
                scope["path"],
                who,
                got,
            )
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
    token: str | None = None,
    insecure: bool = False,
    source: str | None = None,
) -> FastAPI:
    """The API on the store at `db`; the writer runs from app start-up to shutdown.

    `token`: every route but /health needs it. Without one only loopback Host names are
    served (`insecure`: IP addresses too). `source`: of events that name none (shippers'
    documents, OTLP records, NDJSON lines), instead of the client's address.
    """
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
        description="Keep every event of an at-least-once stream exactly once.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.source = source

    @app.exception_handler(StoreError)
    async def store_error(_request: Request, exc: StoreError) -> JSONResponse:
        logger.error("store error: %s", service.clean(str(exc)))
        return JSONResponse({"detail": f"store unavailable: {service.public(str(exc))}"}, 503)

    @app.exception_handler(WriterDown)
    async def writer_down(_request: Request, exc: WriterDown) -> JSONResponse:
        wait = service.retry_after(exc)
        detail = (
            f"the store cannot be written now: {exc}; these events are not committed:"
            f" send them again in {wait} s (a re-send is safe: duplicates are dropped)"
        )
        return JSONResponse({"detail": detail}, 503, headers={"Retry-After": str(wait)})

    @app.exception_handler(NotEvents)
    async def not_events(_request: Request, exc: NotEvents) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 422)

    app.add_middleware(Guard, access=Access(token, insecure))
    app.add_middleware(InternalErrors)
    app.add_middleware(RequestMetrics, metrics=service.metrics)

    @app.get("/", response_model=ServiceInfo)
    def root() -> dict[str, Any]:
        """What this service is: name, version and endpoints."""
        return {
            "service": "logagg",
            "version": __version__,
            "description": "keeps every event of an at-least-once stream exactly once",
            "endpoints": ENDPOINTS,
            "docs": "/docs",
        }

    @app.post(
        "/publish",
        response_model=PublishResult,
        responses={
            413: {"model": Problem, "description": "The body is too large."},
            415: {"model": Problem, "description": "The body is not sent as JSON."},
            422: {
                "model": PublishError,
                "description": "Nothing stored and something invalid, or not events at all.",
            },
            503: {
                "model": Problem,
                "description": "The queue stayed full or the store cannot be written now;"
                " see Retry-After.",
            },
        },
        openapi_extra=_PUBLISH_BODY,
    )
    async def publish(request: Request) -> JSONResponse:
        """Store one event or a batch; answered once the events are committed.

        A batch is partly accepted: invalid events are counted and listed in `errors`.
        """
        other = await publish_other(request, service, max_body_bytes)
        if other is not None:
            return other
        is_cloudevents = json_media(request)
        body = await read_body(request, max_body_bytes)
        deadline = time.monotonic() + service.queue_timeout
        try:
            parsed, future = await run_in_threadpool(
                service.publish, body, deadline, is_cloudevents
            )
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
            result = await committed(future, service.check)
        service.metrics.events(parsed.received, result)
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
        after: Annotated[int | None, Query(ge=0, description=subscribe.AFTER)] = None,
    ) -> Response:
        """Stored events, newest first, in the input schema with their original payloads."""
        if after is not None:
            return subscribe.events_after(service, after, topic, source, since, until, limit)
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
        """Counters and topics of the store (all processes, across restarts)."""
        return service.stats()

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health() -> JSONResponse:
        """`healthy` while the writer can write; `unhealthy` (503) and why while it cannot."""
        problem = service.problem()
        doc: dict[str, Any] = {
            "status": "healthy" if problem is None else "unhealthy",
            "consumer_running": service.running,
            "queue_size": service.queue_size,
            "timestamp": utc_now(),
            "error": None if problem is None else problem[0],
            "retry_after_seconds": None,
        }
        headers = {}
        if problem is not None and problem[1] is not None:
            doc["retry_after_seconds"] = round(problem[1], 3)
            headers["Retry-After"] = str(service.retry_after(WriterDown("", problem[1])))
        return JSONResponse(doc, status_code=200 if problem is None else 503, headers=headers)

    es.register(app, service, max_body_bytes)
    otlp.register(app, service, max_body_bytes)
    cloudevents.register(app, service, max_body_bytes)
    subscribe.register(app, service)

    @app.get("/metrics", response_class=Response)
    def metrics() -> Response:
        """Metrics in the Prometheus text format."""
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    return app
