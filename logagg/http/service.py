"""The service behind the HTTP API: the writer (which heals itself), a pool of read
connections, the metrics, and waiting for a commit without ever cancelling it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, TypeVar

from logagg.errors import StoreError
from logagg.http.body import Parsed, parse_body
from logagg.http.metrics import Metrics
from logagg.pipeline import Healing, IngestOptions, Writer, WriterDown
from logagg.store import BatchResult, EventQuery, Store, StoreStats, is_postgres, open_store
from logagg.units import human_duration

logger = logging.getLogger("logagg.serve")
T = TypeVar("T")

# Commit at once when nothing else waits; under load, what arrives during a commit is
# grouped into the next one (and at most 5 ms after the first waiting event).
SERVE_OPTIONS = IngestOptions(flush_interval=0.005, queue_size=16, commit_when_idle=True)
QUEUE_TIMEOUT_SECONDS = 5.0  # the longest a request waits for room in a full queue
READ_POOL_SIZE = 4  # idle read connections kept open
WRITER_POLL_SECONDS = 0.1  # how often a waiting request checks that the writer can write


async def committed(
    future: Future[BatchResult], check: Callable[[], None], poll: float = WRITER_POLL_SECONDS
) -> BatchResult:
    """Wait for the writer to resolve `future`, never cancelling it (only the writer may).

    Every `poll` seconds until then, `check()` may raise: WriterDown while the writer
    cannot write (the events stay queued and may still be committed), StoreError once it
    has stopped.
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
                if not future.done():
                    check()
    finally:
        waiter.cancel()  # when the request itself was cancelled; a no-op once resolved


def store_label(db: str) -> str:
    """How logs name the store: a PostgreSQL URL without its password, a SQLite path as
    given when relative, else its file name (no absolute path in a log line)."""
    if is_postgres(db):
        from logagg.store.postgres import redact

        return redact(db)
    return os.path.basename(db) if os.path.isabs(db) else db


class ReadPool:
    """Store handles for reading, one thread at a time each; idle ones are kept for reuse.

    A read that fails on a kept handle (its server restarted meanwhile, say) is tried once
    more on a new one.
    """

    def __init__(self, path: str, size: int = READ_POOL_SIZE) -> None:
        self.path = path
        self.size = size
        self._idle: list[Store] = []
        self._lock = threading.Lock()
        self._closed = False

    def read(self, use: Callable[[Store], T]) -> T:
        """`use(store)` on a store for this thread only; one whose use raised is closed."""
        with self._lock:
            kept = self._idle.pop() if self._idle else None
        if kept is not None:
            try:
                with self._lent(kept) as store:
                    return use(store)
            except StoreError:
                pass  # a connection kept too long: once more on a new one
        with self._lent(open_store(self.path, create=False)) as store:
            return use(store)

    @contextmanager
    def _lent(self, store: Store) -> Iterator[Store]:
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
    """What the app runs on: the writer, the read pool, the metrics and the start time."""

    def __init__(self, db: str, options: IngestOptions, queue_timeout: float) -> None:
        self.db = db
        self.label = store_label(db)
        self.options = options
        self.queue_timeout = queue_timeout
        self.started = time.monotonic()
        self._store: Store | None = None
        self._writer: Writer | None = None
        self._down_since: float | None = None
        self._down_logged: str | None = None
        self.reads = ReadPool(db)
        self.metrics = Metrics(lambda: self.queue_size, lambda: self.writing, self.store_stats)
        absolute = os.path.abspath(db)
        self._locations = sorted(
            {db, absolute, os.path.realpath(db), os.path.dirname(absolute)} - {"", "/"},
            key=len,
            reverse=True,
        )

    # --- the writer --------------------------------------------------------------------

    def start(self) -> None:
        """Open the store (creating it if needed) and start the writer."""
        self._store = open_store(self.db)
        healing = Healing(lambda: open_store(self.db), self._on_health)
        self._writer = Writer(
            self._store,
            self.options,
            healing=healing,
            on_timing=self.metrics.commit_latency.observe,
        ).start()
        self.started = time.monotonic()
        logger.info(
            "store %s: writer started (commits at once when idle, groups for at most %.3f s"
            " under load; queue of %d batches)",
            self.label,
            self.options.flush_interval,
            self.options.queue_size,
        )

    def _on_health(self, reason: str | None) -> None:
        """Told by the writer's thread when a commit or reopening fails, and when it heals."""
        if reason is None:
            down = time.monotonic() - (self._down_since or time.monotonic())
            self._down_since = self._down_logged = None
            logger.warning("store %s: written again after %.1f s; writer healthy", self.label, down)
            return
        self.metrics.commit_failures.inc()
        reason = self.clean(reason)
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.error(
                "store %s cannot be written: %s; retrying with backoff (requests get 503"
                " meanwhile)",
                self.label,
                reason,
            )
        elif reason != self._down_logged:
            logger.error("store %s still cannot be written: %s", self.label, reason)
        self._down_logged = reason

    def close(self) -> None:
        """Commit what is queued, stop the writer, close every connection."""
        writer = self._writer
        try:
            if writer is not None:
                writer.close()
                r = writer.report
                logger.info(
                    "writer stopped: %d received, %d accepted, %d duplicates, %d invalid",
                    r.received,
                    r.accepted,
                    r.duplicates,
                    r.invalid,
                )
        except StoreError as exc:
            logger.error("writer stopped without committing everything: %s", self.clean(str(exc)))
        finally:
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.store.close()  # the store it wrote last (maybe reopened)
            self.reads.close()

    @property
    def writer(self) -> Writer:
        if self._writer is None:
            raise StoreError("the writer is not running")
        return self._writer

    @property
    def running(self) -> bool:
        """The writer's thread runs (it may be retrying)."""
        return self._writer is not None and self._writer.running

    @property
    def writing(self) -> bool:
        """The writer runs and can write."""
        return self.running and self.writer.down is None

    @property
    def queue_size(self) -> int:
        return self._writer.queue_size if self._writer is not None else 0

    def problem(self) -> tuple[str, float | None] | None:
        """Why the writer cannot write and when it tries again (None: stopped), or None."""
        writer = self._writer
        if writer is None:
            return "the writer has not started", None
        if not writer.running:
            try:
                writer.raise_error()
            except StoreError as exc:
                return f"the writer stopped: {self.public(str(exc))}", None
            return "the writer stopped", None
        down = writer.down
        if down is None:
            return None
        return self.public(down), writer.retry_after

    def check(self) -> None:
        """Raise WriterDown while the writer cannot write, StoreError once it has stopped."""
        problem = self.problem()
        if problem is None:
            return
        reason, retry_after = problem
        if retry_after is None:
            raise StoreError(reason)
        raise WriterDown(reason, retry_after)

    # --- messages ------------------------------------------------------------------------

    def clean(self, message: str) -> str:
        """A store message for a log line: the store named by its label, never by an
        absolute path (nor, for PostgreSQL, with its password: the store never says it)."""
        for location in self._locations:
            message = message.replace(location, self.label)
        return message

    def public(self, message: str) -> str:
        """A store message for a response: `clean`, without the store's name in front."""
        return self.clean(message).removeprefix(f"{self.label}: ")

    # --- requests ------------------------------------------------------------------------

    def publish(
        self, body: bytes, deadline: float, cloudevents: bool = False
    ) -> tuple[Parsed, Future[BatchResult] | None]:
        """Validate a body and queue its rows and invalid count (nothing to queue: None).

        Raises NotEvents for a body that is not events, WriterDown while the writer cannot
        write, queue.Full if no room came before `deadline` (then nothing is queued).
        """
        parsed = parse_body(body, cloudevents)
        if parsed.received == 0:
            return parsed, None
        self.check()
        timeout = max(0.0, deadline - time.monotonic())
        return parsed, self.writer.submit(parsed.rows, len(parsed.errors), timeout=timeout)

    def retry_after(self, exc: WriterDown) -> int:
        """Whole seconds a client should wait before sending again (at least 1)."""
        return max(1, math.ceil(exc.retry_after))

    def events(self, query: EventQuery) -> list[bytes]:
        return self.reads.read(lambda store: [e.to_json_bytes() for e in store.events(query)])

    def store_stats(self) -> StoreStats:
        return self.reads.read(lambda store: store.stats())

    def stats(self) -> dict[str, Any]:
        doc = self.store_stats().to_dict()
        uptime = time.monotonic() - self.started
        counts: dict[str, int] = doc["topics"]
        return {
            **{key: doc[key] for key in ("received", "unique_processed", "duplicate_dropped")},
            "invalid": doc["invalid"],
            "topics": sorted(counts),
            "topic_counts": counts,
            "uptime_seconds": round(uptime, 3),
            "uptime_human": human_duration(uptime),
            **{key: doc[key] for key in ("first_timestamp", "last_timestamp", "last_ingest_at")},
        }
