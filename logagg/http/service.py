"""The service behind the HTTP API: the writer, a pool of read connections, and waiting
for a commit without ever cancelling it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from logagg.errors import StoreError
from logagg.http.schemas import Parsed, parse_body
from logagg.pipeline import IngestOptions, Writer
from logagg.store import BatchResult, EventQuery, Store, open_store
from logagg.units import human_duration

logger = logging.getLogger("logagg.serve")

SERVE_OPTIONS = IngestOptions(flush_interval=0.005, queue_size=16)
QUEUE_TIMEOUT_SECONDS = 5.0  # the longest a request waits for room in a full queue
READ_POOL_SIZE = 4  # idle read connections kept open
WRITER_POLL_SECONDS = 1.0  # how often a waiting request checks that the writer still runs


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
        doc = stats.to_dict()
        return {
            **{key: doc[key] for key in ("received", "unique_processed", "duplicate_dropped")},
            **{key: doc[key] for key in ("invalid", "topics")},
            "uptime_seconds": round(uptime, 3),
            "uptime_human": human_duration(uptime),
            **{key: doc[key] for key in ("first_timestamp", "last_timestamp", "last_ingest_at")},
        }
