"""`logagg serve`: the HTTP API, one more face over the same pipeline and store.

Endpoints: `POST /publish`, `GET /events`, `GET /stats`, `GET /health`; OpenAPI docs at
`/docs`. One `Writer` (the single writer of `logagg.pipeline`) takes every published
event through the same bounded queue and batched transactions as `logagg ingest`; reads go
through a small pool of read-only store connections, one thread at a time each (WAL:
reads never wait for writes). Other `logagg` processes may use the same store at once.

Publishing
    The body is one event object, `{"events": [...]}`, or a bare JSON array of events. An
    object with an `"events"` key and no `"topic"` key is a batch; any other object is one
    event. Each event is validated by the model of `logagg.models`, with the same rules as
    a line of `logagg ingest`.

    A batch is partly accepted: its valid events are stored, its invalid ones are counted
    as `invalid` and listed in `errors` as `{"index", "error"}` (index in the batch), and
    the answer is 200. Bad input never harms good input, as in `ingest`, and one bad event
    cannot make an at-least-once producer re-send a whole batch forever. A single event
    that is invalid is answered 422, as by the original service, and counted as invalid.
    A body that is not JSON, is neither an object nor an array, or has an `"events"` that
    is not an array is answered 422 and counts nothing (no event could be read from it);
    a body over `max_body_bytes` is answered 413.

    Every answer carries `received`, `accepted`, `duplicates`, `invalid`, `message` and
    `errors`, with `received = accepted + duplicates + invalid`; the store's counters move
    by the same amounts in the same transaction as the rows.

Durability and backpressure
    A request is answered only once the transaction holding its events has committed: a
    200 means the events survive `kill -9` of the server an instant later. Concurrent
    requests share transactions (the writer commits `flush_interval` after the first
    uncommitted event). When the queue is full, a request waits for room up to
    `queue_timeout` seconds, then gets 503 with `Retry-After`; nothing of it was stored or
    counted, so re-sending it is safe. Nothing is ever dropped silently.

Errors are JSON (`{"detail": ...}`): a store that cannot be read or written is 503, any
other failure 500. `/health` is 503 with `"status": "degraded"` once the writer has
stopped. Logs carry counts, never event payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import queue
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
import pydantic_core
import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from logagg import __version__
from logagg.errors import LogaggError, StoreError, UsageError
from logagg.models import EVENT, Row, describe, json_type, normalize_timestamp, validate_row
from logagg.pipeline import IngestOptions, Writer
from logagg.store import BatchResult, EventQuery, Store, open_store, utc_now

logger = logging.getLogger("logagg.serve")

SERVE_OPTIONS = IngestOptions(flush_interval=0.005, queue_size=16)
QUEUE_TIMEOUT_SECONDS = 5.0  # the longest a request waits for room in a full queue
RETRY_AFTER_SECONDS = 1
MAX_BODY_BYTES = 8 << 20  # with SERVE_OPTIONS.queue_size: the memory bound of the queue
READ_POOL_SIZE = 4  # idle read connections kept open
GRACEFUL_SHUTDOWN_SECONDS = 10
WRITER_POLL_SECONDS = 1.0  # how often a waiting request checks that the writer still runs
EVENTS_LIMIT_MAX = 1000
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


# --- response documents (the OpenAPI schema) ----------------------------------------------


class EventError(BaseModel):
    index: int = Field(description="Position of the event in the batch (0 for one event).")
    error: str = Field(description="Why it is invalid, naming the field.")


class PublishResult(BaseModel):
    received: int
    accepted: int = Field(description="Stored now (new).")
    duplicates: int = Field(description="Already stored, or repeated earlier in the batch.")
    invalid: int = Field(description="Not valid events; listed in `errors`.")
    message: str
    errors: list[EventError] = Field(default_factory=list)


class PublishError(PublishResult):
    detail: str = Field(description="Why the event was rejected.")


class Problem(BaseModel):
    detail: str


class EventsPage(BaseModel):
    topic: str | None
    count: int
    events: list[dict[str, Any]] = Field(
        description="Events in the input schema, with their original payloads."
    )


class Stats(BaseModel):
    received: int
    unique_processed: int
    duplicate_dropped: int
    invalid: int
    topics: dict[str, int]
    uptime_seconds: float
    uptime_human: str
    first_timestamp: str | None
    last_timestamp: str | None
    last_ingest_at: str | None


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    consumer_running: bool
    queue_size: int = Field(description="Batches waiting for the writer now.")
    timestamp: str


_EVENT_SCHEMA = EVENT.json_schema()
_PUBLISH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        _EVENT_SCHEMA,
                        {
                            "title": "Batch",
                            "type": "object",
                            "required": ["events"],
                            "properties": {"events": {"type": "array", "items": _EVENT_SCHEMA}},
                        },
                        {"title": "Array", "type": "array", "items": _EVENT_SCHEMA},
                    ]
                },
                "example": {
                    "topic": "user.login",
                    "event_id": "login-1001",
                    "timestamp": "2025-01-01T10:00:37Z",
                    "source": "auth-service",
                    "payload": {"user": "alice"},
                },
            }
        },
    }
}


# --- reading and validating a publish body ------------------------------------------------


@dataclass(slots=True)
class Parsed:
    """A publish body: valid rows, the errors of the invalid events, and its shape."""

    rows: list[Row]
    errors: list[dict[str, Any]]
    single: bool

    @property
    def received(self) -> int:
        return len(self.rows) + len(self.errors)


def parse_body(body: bytes) -> Parsed:
    """Decode a publish body and validate each event; raises HTTPException(422) if unreadable."""
    try:
        doc = pydantic_core.from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        raise HTTPException(422, f"the body is not valid JSON: {exc}") from None
    single = False
    if isinstance(doc, dict) and "events" in doc and "topic" not in doc:
        events = doc["events"]
        if not isinstance(events, list):
            raise HTTPException(
                422, f"'events' must be an array of events, got {json_type(events)}"
            )
    elif isinstance(doc, dict):
        events, single = [doc], True
    elif isinstance(doc, list):
        events = doc
    else:
        raise HTTPException(
            422,
            'the body must be an event object, {"events": [...]} or an array of events,'
            f" got {json_type(doc)}",
        )
    rows, errors = validate_events(events)
    return Parsed(rows, errors, single)


def validate_events(events: Sequence[Any]) -> tuple[list[Row], list[dict[str, Any]]]:
    """Rows of the valid events, and `{"index", "error"}` for each invalid one."""
    rows: list[Row] = []
    errors: list[dict[str, Any]] = []
    for index, event in enumerate(events):
        try:
            rows.append(validate_row(event))
        except ValidationError as exc:
            errors.append({"index": index, "error": describe(exc)})
        except ValueError as exc:
            errors.append({"index": index, "error": str(exc)})
    return rows, errors


def publish_document(parsed: Parsed, result: BatchResult) -> tuple[int, dict[str, Any]]:
    """The status and answer of a publish whose events were committed with `result`."""
    doc: dict[str, Any] = {
        "received": parsed.received,
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "invalid": result.invalid,
        "message": "",
        "errors": parsed.errors,
    }
    if parsed.single and parsed.errors:
        reason = parsed.errors[0]["error"]
        doc["message"] = doc["detail"] = f"invalid event: {reason}"
        return 422, doc
    if parsed.single:
        doc["message"] = (
            "event accepted" if result.accepted else "duplicate event dropped (already stored)"
        )
    else:
        doc["message"] = (
            f"{parsed.received} received: {result.accepted} accepted,"
            f" {result.duplicates} duplicates dropped, {result.invalid} invalid"
        )
    return 200, doc


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


async def committed(
    future: Future[BatchResult], alive: Callable[[], bool], poll: float = WRITER_POLL_SECONDS
) -> BatchResult:
    """Wait for the writer to resolve `future`, never cancelling it (only the writer may).

    Raises StoreError if the writer stops without resolving it (`alive()` turned false).
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[BatchResult] = loop.create_future()

    def settle(done: Future[BatchResult]) -> None:
        if waiter.done():
            return
        error = done.exception()
        if error is None:
            waiter.set_result(done.result())
        else:
            waiter.set_exception(error)

    def wake(done: Future[BatchResult]) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(settle, done)

    future.add_done_callback(wake)
    try:
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(waiter), poll)
            except TimeoutError:
                if not alive() and not future.done():
                    raise StoreError("the writer stopped before committing these events") from None
    finally:
        waiter.cancel()  # when the request itself was cancelled; a no-op once resolved


# --- the service --------------------------------------------------------------------------


class ReadPool:
    """Store handles for reading, one thread at a time each; idle ones are kept for reuse."""

    def __init__(self, path: str, size: int = READ_POOL_SIZE) -> None:
        self.path = path
        self.size = size
        self._idle: list[Store] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def store(self) -> Iterator[Store]:
        """A store for this thread only; one whose use raised is closed, not reused."""
        with self._lock:
            store = self._idle.pop() if self._idle else None
        if store is None:
            store = open_store(self.path, create=False)
        try:
            yield store
        except BaseException:
            store.close()
            raise
        with self._lock:
            if not self._closed and len(self._idle) < self.size:
                self._idle.append(store)
                return
        store.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for store in idle:
            store.close()


class Service:
    """What the app runs on: the writer, the read pool and the start time."""

    def __init__(self, db: str, options: IngestOptions, queue_timeout: float) -> None:
        self.db = db
        self.options = options
        self.queue_timeout = queue_timeout
        self.started = time.monotonic()
        self._store: Store | None = None
        self._writer: Writer | None = None
        self.reads = ReadPool(db)

    def start(self) -> None:
        """Open the store (creating it if needed) and start the writer."""
        self._store = open_store(self.db)
        self._writer = Writer(self._store, self.options).start()
        self.started = time.monotonic()
        logger.info(
            "store %s: writer started (flush interval %.3f s, queue of %d batches)",
            self.db,
            self.options.flush_interval,
            self.options.queue_size,
        )

    def close(self) -> None:
        """Commit what is queued, stop the writer, close every connection."""
        try:
            if self._writer is not None:
                self._writer.close()
                r = self._writer.report
                logger.info(
                    "writer stopped: %d received, %d accepted, %d duplicates, %d invalid",
                    r.received,
                    r.accepted,
                    r.duplicates,
                    r.invalid,
                )
        except StoreError as exc:
            logger.error("writer failed: %s", exc)
        finally:
            if self._store is not None:
                self._store.close()
            self.reads.close()

    @property
    def writer(self) -> Writer:
        if self._writer is None:
            raise StoreError("the writer is not running")
        return self._writer

    @property
    def running(self) -> bool:
        return self._writer is not None and self._writer.running

    @property
    def queue_size(self) -> int:
        return self._writer.queue_size if self._writer is not None else 0

    def publish(self, body: bytes, deadline: float) -> tuple[Parsed, Future[BatchResult] | None]:
        """Validate a body and queue its rows and invalid count (nothing to queue: None).

        Raises HTTPException(422) for a body that is not events, queue.Full if no room
        came before `deadline` (then nothing is queued).
        """
        parsed = parse_body(body)
        if parsed.received == 0:
            return parsed, None
        timeout = max(0.0, deadline - time.monotonic())
        return parsed, self.writer.submit(parsed.rows, len(parsed.errors), timeout=timeout)

    def events(self, query: EventQuery) -> list[bytes]:
        with self.reads.store() as store:
            return [event.to_json_bytes() for event in store.events(query)]

    def stats(self) -> dict[str, Any]:
        with self.reads.store() as store:
            stats = store.stats()
        uptime = time.monotonic() - self.started
        return {
            "received": stats.received,
            "unique_processed": stats.unique_processed,
            "duplicate_dropped": stats.duplicate_dropped,
            "invalid": stats.invalid,
            "topics": {name: topic.events for name, topic in stats.topics.items()},
            "uptime_seconds": round(uptime, 3),
            "uptime_human": human_duration(uptime),
            "first_timestamp": stats.first_timestamp,
            "last_timestamp": stats.last_timestamp,
            "last_ingest_at": stats.last_ingest_at,
        }


def human_duration(seconds: float) -> str:
    """`3723.4` -> `"1h 2m 3s"`; leading zero units are left out (`"5s"`, `"2m 0s"`)."""
    rest = int(seconds)
    days, rest = divmod(rest, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    parts: list[str] = []
    for value, unit in ((days, "d"), (hours, "h"), (minutes, "m")):
        if parts or value:
            parts.append(f"{value}{unit}")
    parts.append(f"{secs}s")
    return " ".join(parts)


def _timestamp(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return normalize_timestamp(value)
    except ValueError as exc:
        raise HTTPException(422, f"{name}: {exc}") from None


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
        query = EventQuery(
            topic=topic,
            source=source,
            since=_timestamp("since", since),
            until=_timestamp("until", until),
            limit=limit,
            newest_first=order == "desc",
        )
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


# --- running ------------------------------------------------------------------------------


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging set-up, with logagg's own messages at the same level."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["logagg"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (not yet listening); raises OSError."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def run(db: str, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info") -> None:
    """Serve the API until SIGINT or SIGTERM; what is queued is committed before it returns.

    Raises UsageError for an unknown log level, StoreError when the store cannot be opened
    and LogaggError when host:port cannot be bound or the server fails to start.
    """
    level = log_level.lower()
    if level not in LOG_LEVELS:
        raise UsageError(f"--log-level {log_level!r}: expected one of {', '.join(LOG_LEVELS)}")
    open_store(db).close()  # a bad store is one line of error before anything listens
    try:
        sock = _listen(host, port)
    except OSError as exc:
        raise LogaggError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        config = uvicorn.Config(
            create_app(db),
            host=host,
            port=port,
            log_level=level,
            log_config=_log_config(level),
            lifespan="on",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
        shown = f"[{host}]" if ":" in host else host
        logger.info(
            "logagg %s serving %s on http://%s:%d (docs: /docs)", __version__, db, shown, port
        )
        server = uvicorn.Server(config)
        try:
            server.run(sockets=[sock])
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise LogaggError("the server failed to start (see the log above)") from None
    finally:
        sock.close()
