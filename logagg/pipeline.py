"""The pipeline: reader -> bounded queue -> the single writer; `ingest` and its report.

`Writer` is the one queue-and-writer: a bounded queue of batches (a full queue blocks
whoever puts, which is the memory bound) and the only thread that writes the store,
committing when it holds `batch_size` events or `flush_interval` after the first
uncommitted item. `ingest` reads sources into it; a long-lived face (the HTTP server)
submits batches and gets a future that resolves once they are committed.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from logagg.errors import LogaggError, SourceError, StoreError
from logagg.follow import ROTATE_WAIT_SECONDS, Notice, follow_chunks
from logagg.mapping import PRESETS, Mapping
from logagg.models import (
    Checkpoint,
    Mapper,
    Reject,
    Row,
    RowBatch,
    decode_lines,
    encode_rows,
    raw_text,
)
from logagg.sources import Chunk, Source, read_chunks
from logagg.store import BatchResult, Store
from logagg.timestamps import NaiveTimes, reading_times, zone_named

PUT_POLL_SECONDS = 0.1
# During `ingest`: the writer takes the GIL back after each statement it runs; behind a
# reader busy in Python it would wait the interpreter's switch interval (5 ms by default)
# every time. (A server keeps the default: its threads are not one busy reader.)
SWITCH_SECONDS = 0.0002
RETRY_FIRST_SECONDS = 0.1  # a writer that heals waits this long before its first retry,
RETRY_MAX_SECONDS = 5.0  # doubling up to this
OnCommit = Callable[[BatchResult], None]  # runs in the writer after each commit
OnHealth = Callable[[str | None], None]  # the writer cannot write (why), or can again (None)
OnTiming = Callable[[float], None]  # seconds one commit took, successful ones only
CLOUDEVENTS = PRESETS["cloudevents"]  # lines with "specversion" are read as CloudEvents


@dataclass(frozen=True, slots=True)
class IngestOptions:
    """Tuning of one ingest run (the CLI's options of the same names)."""

    batch_size: int = 50_000
    flush_interval: float = 0.2
    queue_size: int = 12
    max_line_bytes: int = 1 << 20
    mapping: Mapping | None = None  # how to read lines not in logagg's schema
    follow: bool = False  # read files as they grow, with checkpoints, until stopped
    rotate_wait: float = ROTATE_WAIT_SECONDS  # a rotated file is read until quiet this long
    assume_tz: str = "UTC"  # the zone of times without an offset: an IANA name or "local"
    commit_when_idle: bool = False  # commit at once when nothing else is queued (a server)
    keep_last: bool = False  # a copy of a stored key with other content replaces it
    retain: float | None = None  # seconds: the writer prunes older events as it goes


@dataclass(slots=True)
class IngestReport:
    """What one run did. `received = accepted + duplicates + invalid` (committed only)."""

    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    invalid: int = 0
    conflicts: int = 0  # of the duplicates, copies whose content differed from the stored
    pruned: int = 0  # events the writer pruned (with a retention)
    elapsed_seconds: float = 0.0
    source_errors: list[str] = field(default_factory=list)
    times: NaiveTimes = field(default_factory=NaiveTimes)  # naive times met, and their zone

    @property
    def events_per_second(self) -> float:
        return self.received / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "invalid": self.invalid,
            "conflicts": self.conflicts,
            "pruned": self.pruned,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "events_per_second": round(self.events_per_second, 1),
            "naive_timestamps": self.times.naive,
            "assumed_tz": self.times.name,
        }


@dataclass(slots=True)
class _Ack:
    """A submitted batch waiting for its rows to be committed."""

    future: Future[BatchResult]
    remaining: int  # RowBatches not yet committed
    invalid: int
    received: int = 0
    accepted: int = 0
    per_part: list[int] = field(default_factory=list)  # rows accepted from each RowBatch

    def committed(self, count: int, accepted: int) -> None:
        self.remaining -= 1
        self.received += count
        self.accepted += accepted
        if count:
            self.per_part.append(accepted)
        if self.remaining <= 0:
            dup = self.received - self.accepted
            per_part = tuple(self.per_part)
            self.future.set_result(BatchResult(self.accepted, dup, self.invalid, per_part))


@dataclass(slots=True)
class _Batch:
    """What the reader makes of one chunk: encoded rows and a count of rejected lines."""

    rows: list[RowBatch]
    invalid: int
    ack: _Ack | None = None
    checkpoint: Checkpoint | None = None


_END = _Batch([], 0)


class WriterDown(StoreError):
    """The writer cannot write now and is retrying; nothing new is taken meanwhile.

    `retry_after`: seconds until its next attempt."""

    def __init__(self, reason: str, retry_after: float) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass(slots=True)
class Healing:
    """How a writer survives a failed commit: roll back, keep what is pending, reopen the
    store with `reopen` after a backoff, and commit it again. Without it a failed commit
    stops the writer (and the run)."""

    reopen: Callable[[], Store]
    on_health: OnHealth | None = None


class _Consumer(threading.Thread):
    """The single writer: batches from the queue into store transactions."""

    def __init__(
        self,
        store: Store,
        inbox: queue.Queue[_Batch],
        options: IngestOptions,
        report: IngestReport,
        stop: threading.Event,
        on_commit: OnCommit | None = None,
        healing: Healing | None = None,
        on_timing: OnTiming | None = None,
    ) -> None:
        super().__init__(name="logagg-consumer", daemon=True)
        self.on_commit = on_commit
        self.healing = healing
        self.on_timing = on_timing
        self.down: str | None = None  # why the last commit failed, while healing
        self.retry_at = 0.0  # monotonic time of the next attempt, while healing
        self.closing = threading.Event()  # set by Writer.finish: heal no longer than once
        self._backoff = RETRY_FIRST_SECONDS
        self._last_try = False  # closing: a failed commit is no longer retried
        self.store = store
        self.inbox = inbox
        self.options = options
        self.report = report
        self.stop = stop
        self.error: BaseException | None = None
        self._pending: list[RowBatch] = []
        self._acks: list[_Ack | None] = []  # one per pending RowBatch
        self._empty_acks: list[_Ack] = []  # submitted batches without rows
        self._count = 0  # events in _pending
        self._invalid = 0
        self._checkpoints: dict[str, Checkpoint] = {}  # saved with the next commit
        self._deadline: float | None = None  # when the oldest pending item must be committed

    def run(self) -> None:
        try:
            self._configure()
            self._loop()
        except BaseException as exc:  # handed to the reader, which re-raises it
            self.error = exc
            self.stop.set()  # a reader waiting on a quiet pipe stops too
            self._fail(exc)

    def _loop(self) -> None:
        size, interval = self.options.batch_size, self.options.flush_interval
        while True:
            deadline = self._deadline
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                batch = self.inbox.get(timeout=timeout)
            except queue.Empty:
                batch = None
            if batch is _END:
                self._commit()
                return
            if batch is not None:
                for rows in batch.rows:  # each holds at most batch_size events
                    if self._count + rows.count > size:
                        self._commit()
                    self._pending.append(rows)
                    self._acks.append(batch.ack)
                    self._count += rows.count
                self._invalid += batch.invalid
                if batch.ack is not None and not batch.rows:
                    self._empty_acks.append(batch.ack)
                if batch.checkpoint is not None:
                    self._checkpoints[batch.checkpoint.path] = batch.checkpoint
                if self._deadline is None and (self._pending or self._invalid or self._checkpoints):
                    self._deadline = time.monotonic() + interval
            if (
                self._count >= size
                or (self._deadline is not None and time.monotonic() >= self._deadline)
                or (self.options.commit_when_idle and batch is not None and self.inbox.empty())
            ):
                self._commit()

    def _commit(self) -> None:
        """Write what is pending in one transaction, then acknowledge what it held."""
        if not self._pending and not self._invalid and not self._checkpoints:
            return
        result = self._write()
        self._checkpoints = {}
        if self.on_commit is not None:
            self.on_commit(result)
        for rows, ack, accepted in zip(self._pending, self._acks, result.per_batch, strict=True):
            if ack is not None:
                ack.committed(rows.count, accepted)
        for ack in self._empty_acks:
            ack.committed(0, 0)
        self._pending, self._acks, self._empty_acks = [], [], []
        self._count, self._invalid, self._deadline = 0, 0, None
        r = self.report
        r.accepted += result.accepted
        r.duplicates += result.duplicates
        r.invalid += result.invalid
        r.received += result.accepted + result.duplicates + result.invalid
        r.conflicts += result.conflicts
        r.pruned += self.store.maintain()  # after the acknowledgements: never delays them

    def _configure(self) -> None:
        self.store.configure(keep_last=self.options.keep_last, retain=self.options.retain)

    def _write(self) -> BatchResult:
        """One transaction of what is pending; with `healing`, until it commits."""
        while True:
            began = time.perf_counter()
            try:
                result = self.store.write_rows(
                    self._pending,
                    self._invalid,
                    new_events=self.on_commit is not None,
                    checkpoints=list(self._checkpoints.values()),
                )
            except StoreError as exc:
                if self.healing is None or self._last_try:
                    raise
                self._heal(exc, self.healing)
                continue
            if self.on_timing is not None:
                self.on_timing(time.perf_counter() - began)
            if self.down is not None:
                self._health(None)
            self._backoff = RETRY_FIRST_SECONDS
            return result

    def _heal(self, exc: StoreError, healing: Healing) -> None:
        """After a failed commit (rolled back by the store): close the store, wait, reopen
        it, waiting twice as long after each failure. Once closing, one last attempt only;
        its failure is raised."""
        self._health(str(exc))
        while True:
            with contextlib.suppress(Exception):
                self.store.close()
            last = self._last_try = self.closing.is_set()
            self.retry_at = time.monotonic() + self._backoff
            if not last:
                self.closing.wait(self._backoff)
            self._backoff = min(self._backoff * 2, RETRY_MAX_SECONDS)
            try:
                self.store = healing.reopen()
                self._configure()
                return
            except StoreError as again:
                if last:
                    raise
                self._health(str(again))

    def _health(self, reason: str | None) -> None:
        self.down = reason
        if self.healing is not None and self.healing.on_health is not None:
            self.healing.on_health(reason)

    def _fail(self, exc: BaseException) -> None:
        """Fail every batch still waiting for a commit, queued or pending."""
        waiting = [a for a in self._acks if a is not None] + self._empty_acks
        while True:
            try:
                batch = self.inbox.get_nowait()
            except queue.Empty:
                break
            if batch.ack is not None:
                waiting.append(batch.ack)
        error = exc if isinstance(exc, StoreError) else StoreError(f"writer failed: {exc!r}")
        for ack in {id(a): a for a in waiting}.values():
            if not ack.future.done():
                ack.future.set_exception(error)


class Writer:
    """The single writer: a bounded queue of batches and the one thread that commits them.

    `put` queues a batch read by `ingest`; `submit` queues rows for a face and returns a
    future that resolves once they are committed (a durable acknowledgement), with their
    own counts. `stop` is set when the writer fails, so that a reader stops too. Other
    processes may write the store at the same time.

    With `healing`, a failed commit does not stop the writer: it keeps what is pending,
    reopens the store with a backoff and commits it once the store can be written again;
    meanwhile `down` says why, and `put` / `submit` raise WriterDown at once.
    `on_timing(seconds)` is told how long each commit took.
    """

    def __init__(
        self,
        store: Store,
        options: IngestOptions | None = None,
        *,
        on_commit: OnCommit | None = None,
        stop: threading.Event | None = None,
        healing: Healing | None = None,
        on_timing: OnTiming | None = None,
    ) -> None:
        self.options = options or IngestOptions()
        self.report = IngestReport()
        self.stop = stop or threading.Event()
        self._inbox: queue.Queue[_Batch] = queue.Queue(maxsize=self.options.queue_size)
        self._consumer = _Consumer(
            store,
            self._inbox,
            self.options,
            self.report,
            self.stop,
            on_commit,
            healing,
            on_timing,
        )

    def start(self) -> Writer:
        self._consumer.start()
        return self

    @property
    def running(self) -> bool:
        return self._consumer.is_alive()

    @property
    def queue_size(self) -> int:
        """Batches waiting in the queue now."""
        return self._inbox.qsize()

    @property
    def store(self) -> Store:
        """The store the writer writes now (a healing writer replaces the one it was given,
        which it closes): the caller closes this one after `finish`."""
        return self._consumer.store

    @property
    def down(self) -> str | None:
        """Why the writer cannot write now (it is retrying), or None."""
        return self._consumer.down if self._consumer.is_alive() else None

    @property
    def retry_after(self) -> float:
        """Seconds until a writer that is down tries again (0 when it is up)."""
        if self.down is None:
            return 0.0
        return max(0.0, self._consumer.retry_at - time.monotonic())

    def submit(
        self,
        rows: Sequence[Row],
        invalid: int = 0,
        timeout: float | None = None,
        *,
        each: bool = False,
    ) -> Future[BatchResult]:
        """Queue rows for the writer; raises queue.Full if no room came within `timeout`.

        The future cannot be cancelled: once submitted, a batch is written. `each`: the
        result's `per_batch` says of every row, in order, whether it was stored (1) or was
        a duplicate (0).
        """
        future: Future[BatchResult] = Future()
        future.set_running_or_notify_cancel()
        if not rows and not invalid:
            future.set_result(BatchResult(0, 0, 0))
            return future
        size = 1 if each else self.options.batch_size
        encode = self.store.encode_rows
        parts = [encode(rows[i : i + size]) for i in range(0, len(rows), size)]
        self.put(_Batch(parts, invalid, _Ack(future, len(parts), invalid)), timeout)
        return future

    def put(self, batch: _Batch, timeout: float | None = None) -> None:
        """Queue a batch, waiting for room while the writer runs; raises queue.Full after
        `timeout`, WriterDown while the writer cannot write, and the writer's error once it
        has stopped (nothing waits on a dead one)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not self._consumer.is_alive():
                self.raise_error()
                raise StoreError("the writer is not running")
            down = self._consumer.down
            if down is not None and batch is not _END:
                raise WriterDown(down, self.retry_after)
            wait = PUT_POLL_SECONDS
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    raise queue.Full
            try:
                self._inbox.put(batch, timeout=wait)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Commit what is queued and stop the writer (its error, if any, is kept)."""
        if self._consumer.is_alive():
            self._consumer.closing.set()  # a writer that is down tries once more, no longer
            with contextlib.suppress(StoreError):
                self.put(_END)
            self._consumer.join()

    def raise_error(self) -> None:
        """Raise the error that stopped the writer, if one did."""
        error = self._consumer.error
        if error is None:
            return
        if isinstance(error, LogaggError):
            raise error
        raise StoreError(f"writer failed: {error!r}") from error

    def close(self) -> None:
        """`finish`, then `raise_error`."""
        self.finish()
        self.raise_error()


def _too_long(source: str, line: int, size: int, head: bytes, limit: int) -> Reject:
    return Reject(
        source,
        line,
        f"line is {size} bytes, over the limit of {limit} bytes (--max-line-bytes)",
        raw_text(head) + "...",
    )


def ingest(
    store: Store,
    sources: Sequence[Source],
    options: IngestOptions | None = None,
    *,
    stop: threading.Event | None = None,
    on_reject: Callable[[Reject], None] | None = None,
    on_progress: Callable[[Source, int, int, int], None] | None = None,
    on_commit: OnCommit | None = None,
    stdin: BinaryIO | None = None,
    on_notice: Notice | None = None,
) -> IngestReport:
    """Read `sources` in order into `store`; return the report of what was committed.

    `stop` ends the reading between reads; what was read is committed. `on_commit(result)`
    runs in the writer after each commit (with `result.new` and `result.dropped`).

    A source that cannot be read is recorded in `report.source_errors` and the next one is
    read. With `follow`, a file that cannot be read for a while is reported through
    `on_notice(message, True)` once (and `on_notice(message, False)` once it can be again;
    without on_notice, problems go to `report.source_errors`). A store failure stops the
    run and is raised as StoreError once the reader has stopped; nothing waits forever on
    the queue.
    """
    options = options or IngestOptions()
    checkpoints = store.checkpoints() if options.follow else {}  # before the writer starts
    writer = Writer(store, options, on_commit=on_commit, stop=stop).start()
    stop = writer.stop
    report = writer.report
    started = time.monotonic()
    lines_read = [0]  # lines read so far, for progress

    def mapper(source: Source) -> Mapper | None:
        """The mapper of one input (it numbers identical lines of that input)."""
        if options.mapping is None:
            return None
        return options.mapping.with_default_source(source.label).for_input()

    report.times = zone_named(options.assume_tz)
    store_encode = writer.store.encode_rows
    # With on_commit the writer runs Python for every event, and needs the GIL the
    # reader would spend on the writer's behalf: then it never counts as behind.
    balance = on_commit is None

    def encode(rows: Sequence[Row]) -> RowBatch:
        """The store's form of a batch, made in this thread; with more work here while the
        writer is behind (a batch waits in its queue), so that both threads keep busy."""
        return store_encode(rows, writer_behind=balance and writer.queue_size > 0)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, SWITCH_SECONDS))
    try:
        with reading_times(report.times):
            if options.follow:
                mappers = {source: mapper(source) for source in sources}
                try:
                    # A chunk holds at most batch_size lines, so that its rows and its
                    # checkpoint always commit together.
                    for source, chunk in follow_chunks(
                        sources,
                        options.max_line_bytes,
                        stop,
                        checkpoints,
                        options.batch_size,
                        options.rotate_wait,
                        on_notice or _to_source_errors(report),
                    ):
                        writer.put(
                            _decode(chunk, source.name, options, on_reject, mappers[source], encode)
                        )
                except SourceError as exc:
                    report.source_errors.append(str(exc))
            for source in [] if options.follow else sources:
                if stop.is_set():
                    break

                def progress(position: int, size: int, source: Source = source) -> None:
                    if on_progress is not None:
                        on_progress(source, position, size, lines_read[0])

                read = mapper(source)
                try:
                    for chunk in read_chunks(
                        source,
                        options.max_line_bytes,
                        stop,
                        stdin,
                        progress if on_progress else None,
                    ):
                        lines_read[0] += len(chunk.lines) + len(chunk.too_long)
                        writer.put(_decode(chunk, source.name, options, on_reject, read, encode))
                except SourceError as exc:
                    report.source_errors.append(str(exc))
    finally:
        writer.finish()
        sys.setswitchinterval(switch)
        report.elapsed_seconds = time.monotonic() - started
    writer.raise_error()
    return report


def _to_source_errors(report: IngestReport) -> Notice:
    def note(message: str, problem: bool) -> None:
        if problem:
            report.source_errors.append(message)

    return note


def _decode(
    chunk: Chunk,
    name: str,
    options: IngestOptions,
    on_reject: Callable[[Reject], None] | None,
    mapper: Mapper | None = None,
    encode: Callable[[Sequence[Row]], RowBatch] = encode_rows,
) -> _Batch:
    rows, rejects = decode_lines(chunk.lines, name, mapper, CLOUDEVENTS.events)
    limit, size = options.max_line_bytes, options.batch_size
    rejects.extend(_too_long(name, line, n, head, limit) for line, n, head in chunk.too_long)
    if on_reject:
        for reject in rejects:
            on_reject(reject)
    parts = [encode(rows[i : i + size]) for i in range(0, len(rows), size)]
    return _Batch(parts, len(rejects), checkpoint=chunk.checkpoint)
