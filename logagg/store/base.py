"""What both stores share: the result and query types, and the `Store` base class.

A backend implements the primitives (its SQL, its driver's errors, its snapshot); the
base class builds every public operation from them once.
"""

from __future__ import annotations

import heapq
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import orjson

from logagg.errors import SchemaVersionError, StoreError
from logagg.models import Checkpoint, Row, RowBatch, StoredEvent, encode_rows, hash_text
from logagg.timestamps import format_utc, normalize_timestamp, parse_time_filter, utc_now

MERGE_MAX_TOPICS = 64  # above this many topics an unfiltered listing sorts instead of merging
PRUNE_STEP = 2000  # events one prune transaction removes at most: the write lock stays short
RETAIN_EVERY_SECONDS = 1.0  # how often a writer with a retention looks for events to prune
WAL_WARN_RATIO = 1.0  # `check` warns when the WAL file is larger than the database file...
WAL_WARN_MIN_BYTES = 64 << 20  # ...and larger than this

logger = logging.getLogger("logagg.store")
Notice = Callable[[str], None]  # a warning for the user, said once where it applies


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one committed transaction did; `per_batch`: rows accepted from each RowBatch."""

    accepted: int
    duplicates: int
    invalid: int
    per_batch: tuple[int, ...] = ()
    new: tuple[StoredEvent, ...] = ()  # the accepted events, in input order, when asked for
    dropped: tuple[StoredEvent, ...] = ()  # the duplicate copies, in input order, likewise
    conflicts: int = 0  # duplicates whose content differed from the stored copy


class BadTime(ValueError):
    """A time filter that is not a time; `name` is the filter's (`since`, `until`)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(reason)
        self.name = name


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Filters for listing events; timestamps are in the stored form; limit None = all."""

    topic: str | None = None
    source: str | None = None
    since: str | None = None  # inclusive
    until: str | None = None  # exclusive
    limit: int | None = 100
    newest_first: bool = True

    @classmethod
    def parse(
        cls,
        *,
        topic: str | None = None,
        source: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = 100,
        newest_first: bool = True,
        now: datetime | None = None,
    ) -> EventQuery:
        """A query from a user's filters; times in any ISO-8601 form, or relative to `now`
        (default: the clock) as `parse_time_filter` reads them. Raises BadTime."""
        window = []
        for name, value in (("since", since), ("until", until)):
            try:
                window.append(parse_time_filter(value, now) if value is not None else None)
            except ValueError as exc:
                raise BadTime(name, str(exc)) from None
        return cls(topic, source, window[0], window[1], limit, newest_first)


@dataclass(frozen=True, slots=True)
class TopicStats:
    """A topic's stored events (pruned ones not counted) and the first and last of their
    times (None once none is stored), its conflicts and its pruned events."""

    events: int
    first_timestamp: str | None
    last_timestamp: str | None
    conflicts: int = 0
    pruned: int = 0


@dataclass(frozen=True, slots=True)
class Counters:
    """The store's counters. Invariants: `received = accepted + duplicates + invalid`,
    `accepted = stored events + pruned`, and `pruned - forgotten` keys are kept as
    tombstones. `conflicts`: duplicates whose content differed (counted in duplicates)."""

    received: int
    accepted: int
    duplicates: int
    invalid: int
    conflicts: int = 0
    pruned: int = 0
    forgotten: int = 0

    def to_dict(self) -> dict[str, int]:
        """The counters under the names users see (those of the original API)."""
        return {
            "received": self.received,
            "unique_processed": self.accepted,
            "duplicate_dropped": self.duplicates,
            "invalid": self.invalid,
            "conflicts": self.conflicts,
            "pruned": self.pruned,
            "forgotten": self.forgotten,
        }


@dataclass(frozen=True, slots=True)
class StoreStats:
    counters: Counters
    topics: dict[str, TopicStats]
    last_ingest_at: str | None
    database: str
    size_bytes: int
    wal_bytes: int | None = None  # SQLite: the WAL file's size (part of size_bytes)

    @property
    def first_timestamp(self) -> str | None:
        times = [t.first_timestamp for t in self.topics.values() if t.first_timestamp]
        return min(times, default=None)

    @property
    def last_timestamp(self) -> str | None:
        times = [t.last_timestamp for t in self.topics.values() if t.last_timestamp]
        return max(times, default=None)

    @property
    def stored(self) -> int:
        """Events stored now: accepted ones less those pruned."""
        return self.counters.accepted - self.counters.pruned

    def to_dict(self) -> dict[str, Any]:
        """The stats document of `logagg stats --json` (the original API's counter names)."""
        return {
            **self.counters.to_dict(),
            "topics": {name: t.events for name, t in self.topics.items()},
            "topic_details": {
                name: {
                    "events": t.events,
                    "first_timestamp": t.first_timestamp,
                    "last_timestamp": t.last_timestamp,
                    "conflicts": t.conflicts,
                    "pruned": t.pruned,
                }
                for name, t in self.topics.items()
            },
            "stored": self.stored,
            "first_timestamp": self.first_timestamp,
            "last_timestamp": self.last_timestamp,
            "last_ingest_at": self.last_ingest_at,
            "database": self.database,
            "size_bytes": self.size_bytes,
            "wal_bytes": self.wal_bytes,
        }


@dataclass(slots=True)
class CheckResult:
    """The outcome of `check`: healthy when `problems` is empty."""

    problems: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # worth knowing, not unhealthy

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class Page:
    """Events in commit order after a position, and the position to ask after next.

    `next` is past every event that will ever be committed at or below it: a reader that
    continues after `next` misses nothing, whatever other writers do."""

    events: tuple[StoredEvent, ...]
    next: int
    full: bool  # the page was cut at its limit: more may be ready now


@dataclass(frozen=True, slots=True)
class CursorInfo:
    """A named position kept in the store; `lag`: events committed after it."""

    name: str
    position: int
    lag: int
    updated_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "position": self.position,
            "lag": self.lag,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class Conflict:
    """Copies of one key with different content. `first_hash`: the stored copy's content
    when the first conflict was met; `last_hash`: the latest copy that differed from the
    stored one; `copies`: how many copies did."""

    topic: str
    event_id: str
    first_hash: int
    last_hash: int
    first_seen: str
    last_seen: str
    copies: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "event_id": self.event_id,
            "first_hash": hash_text(self.first_hash),
            "last_hash": hash_text(self.last_hash),
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "copies": self.copies,
        }


@dataclass(slots=True)
class PruneResult:
    """What a prune removed (or, dry, would remove), by topic: events whose rows went
    (their keys kept as tombstones unless forgotten), and keys forgotten."""

    before: str
    pruned: dict[str, int] = field(default_factory=dict)
    forgotten: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False

    @property
    def events(self) -> int:
        return sum(self.pruned.values())

    @property
    def keys(self) -> int:
        return sum(self.forgotten.values())

    def add(self, topic: str, pruned: int, forgotten: int) -> None:
        if pruned:
            self.pruned[topic] = self.pruned.get(topic, 0) + pruned
        if forgotten:
            self.forgotten[topic] = self.forgotten.get(topic, 0) + forgotten

    def to_dict(self) -> dict[str, Any]:
        return {
            "before": self.before,
            "dry_run": self.dry_run,
            "pruned": self.events,
            "forgotten": self.keys,
            "topics": {
                t: {"pruned": self.pruned.get(t, 0), "forgotten": self.forgotten.get(t, 0)}
                for t in sorted(set(self.pruned) | set(self.forgotten))
            },
        }


def cutoff(seconds: float, now: datetime | None = None) -> str:
    """The stored-form time `seconds` before now: events older than it are pruned."""
    moment = (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    return format_utc(moment)


def newer_schema(path: str, version: int, supported: int) -> SchemaVersionError:
    return SchemaVersionError(
        f"{path}: store schema version {version} is newer than this logagg "
        f"supports ({supported}); upgrade logagg"
    )


def _close(rows: Iterator[Any]) -> None:
    """End a reader (a generator) now, while its connection is open."""
    close = getattr(rows, "close", None)
    if close is not None:
        close()


def _dropped(
    batches: Iterable[Sequence[Sequence[Any]]], new: Sequence[StoredEvent]
) -> tuple[StoredEvent, ...]:
    """The rows of `batches` that a transaction which stored `new` dropped as duplicates,
    in input order (the first copy of a stored key is the stored one)."""
    stored = {(e.topic, e.event_id) for e in new}
    dropped = []
    for batch in batches:
        for row in batch:
            key = (row[0], row[1])
            if key in stored:
                stored.discard(key)
            else:
                dropped.append(StoredEvent(row[0], row[1], row[2], row[3], row[4], row[5], ""))
    return tuple(dropped)


class Store(ABC):
    """A logagg store: the contract every backend keeps, built on its primitives.

    Only one thread may use a store at a time; it may be handed to another thread.
    """

    path: str  # how the store is named to users (no password)
    schema_version: ClassVar[int]
    # The dialect: parameter mark, the quoted timestamp column, the insertion-order column,
    # the two-argument maximum.
    _MARK: ClassVar[str]
    _TIMESTAMP: ClassVar[str] = '"timestamp"'
    _ORDER: ClassVar[str] = "seq"
    _GREATEST: ClassVar[str]
    _SELECT: ClassVar[str]  # topic, event_id, timestamp, source, payload, extra, ingested_at, seq
    # Positions one read in commit order covers at most, where seq has only a BRIN index
    # (PostgreSQL); None: a B-tree orders them (SQLite's rowid).
    _SPAN: ClassVar[int | None] = None

    keep_last: bool = False  # a conflicting copy replaces the stored one
    on_notice: Notice | None = None  # where warnings go (else the logagg.store logger)
    _retain: float | None = None  # seconds: `maintain` prunes events older than this
    _next_retain: float = 0.0
    _maintain_failed = False

    # --- primitives ----------------------------------------------------------------------

    @abstractmethod
    def _guard(self) -> AbstractContextManager[None]:
        """Turns the driver's errors into StoreError."""

    @abstractmethod
    def _snapshot(self) -> AbstractContextManager[None]:
        """One consistent read snapshot for the reads inside it."""

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[None]:
        """One write transaction for the statements inside it (`_execute`)."""

    @abstractmethod
    def _query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        """The rows of a read statement, streamed."""

    @abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one writing statement; the number of rows it changed."""

    @abstractmethod
    def _counters(self) -> tuple[Counters, str | None]:
        """The counters and the time of the last write."""

    @abstractmethod
    def _topic_rows(self) -> list[tuple[str, int, str | None, str | None, int, int]]:
        """(topic, events, first, last, conflicts, pruned) as kept, most events first, then
        by name."""

    @abstractmethod
    def _topic_names(self, limit: int) -> list[str]:
        """At most `limit` topic names."""

    @abstractmethod
    def _size(self) -> tuple[int, int | None]:
        """Bytes the store takes, and of those the WAL file's (None: no such file)."""

    @abstractmethod
    def _integrity(self, problems: list[str]) -> str:
        """Verify the storage itself; add what is wrong to `problems`; say what was done."""

    @abstractmethod
    def _stored_version(self) -> int | None:
        """The schema version the store says it has."""

    @abstractmethod
    def _insert(
        self,
        batches: Sequence[RowBatch],
        invalid: int,
        new_events: bool,
        checkpoints: Sequence[Checkpoint],
    ) -> BatchResult:
        """`write_rows` without the dropped copies."""

    @abstractmethod
    def _horizon(self) -> int:
        """A position such that every event at or below it is committed (or never will
        be): read before the snapshot that lists events up to it."""

    @abstractmethod
    def _prune_step(self, topic: str, before: str, forget: bool, limit: int) -> tuple[int, int]:
        """In one short transaction: make at most `limit` stored events of `topic` older
        than `before` tombstones and, with `forget`, delete at most `limit` tombstones
        older than it; counters and topic counts in the same transaction. Returns
        (events pruned, keys forgotten)."""

    @abstractmethod
    def checkpoints(self) -> dict[str, Checkpoint]:
        """The saved position of every file followed into this store, by absolute path."""

    @abstractmethod
    def close(self) -> None: ...

    def _maintain(self) -> None:
        """The backend's housekeeping after a commit (SQLite: the WAL); none by default."""
        return

    def vacuum(self) -> str:
        """Return the space pruned events took; say what was done."""
        raise StoreError(f"{self.path}: vacuum is not available for this store")

    def backup(self, target: str) -> None:
        """Write a consistent copy of the store to the new file `target`."""
        raise StoreError(f"{self.path}: backup copies SQLite stores only")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- configuration -------------------------------------------------------------------

    def configure(self, *, keep_last: bool = False, retain: float | None = None) -> None:
        """How this store writes: `keep_last`: a copy of a stored key with other content
        replaces the stored one (else the first copy stays); `retain`: seconds after which
        `maintain` prunes events (their keys kept), None to keep them all."""
        self.keep_last = keep_last
        self._retain = retain
        self._next_retain = 0.0

    def notice(self, message: str) -> None:
        """Tell the user something worth knowing (once, where it applies)."""
        if self.on_notice is not None:
            self.on_notice(message)
        else:
            logger.warning("%s", message)

    # --- built on them -------------------------------------------------------------------

    def write_rows(
        self,
        batches: Sequence[RowBatch],
        invalid: int = 0,
        *,
        new_events: bool = False,
        checkpoints: Sequence[Checkpoint] = (),
    ) -> BatchResult:
        """Insert every row of `batches` and count `invalid` lines, in one transaction.

        Within the batches (in order) and against the store, the first copy of a key wins
        (with `keep_last`, a copy whose content differs replaces the stored one and takes
        a new position). Copies whose content differs from the stored one are conflicts:
        counted and recorded. With `new_events`, the result also holds the events this
        transaction stored and the copies it dropped, in input order. `checkpoints` (of
        followed files) are saved in the same transaction as the rows.
        """
        result = self._insert(batches, invalid, new_events, checkpoints)
        if new_events:
            rows = (self.decode_rows(batch) for batch in batches)
            result = replace(result, dropped=_dropped(rows, result.new))
        return result

    def write_batch(self, rows: Sequence[Row], invalid: int = 0) -> BatchResult:
        """Insert `rows` and count `invalid` rejected lines, all in one transaction."""
        return self.write_rows([self.encode_rows(rows)] if rows else [], invalid)

    def encode_rows(self, rows: Sequence[Row], *, writer_behind: bool = False) -> RowBatch:
        """`rows` as `write_rows` takes them. It uses no connection: any thread may call it.
        `writer_behind`: the writer has more queued than it keeps up with, so a store may
        choose a form that costs the caller more and the writer less."""
        return encode_rows(rows)

    def decode_rows(self, batch: RowBatch) -> Sequence[Sequence[Any]]:
        """The rows of a batch that `encode_rows` made, in order (topic, event_id, timestamp,
        source, payload, extra, then whatever the store added)."""
        rows: list[list[Any]] = orjson.loads(batch.data)
        return rows

    def maintain(self) -> int:
        """Housekeeping for a writer to run after its commits, each step short: the
        backend's (the WAL), and with a retention, pruning old events. Returns the events
        pruned. It never fails the writer: a step that fails (the store stayed locked, say)
        is said once (while it keeps failing) and tried again later."""
        try:
            self._maintain()
            if self._retain is None or time.monotonic() < self._next_retain:
                return 0
            self._next_retain = time.monotonic() + RETAIN_EVERY_SECONDS
            pruned = self.retention_step(cutoff(self._retain))
        except StoreError as exc:
            if not self._maintain_failed:
                self.notice(f"pruning or checkpointing failed, tried again later: {exc}")
            self._maintain_failed = True
            return 0
        self._maintain_failed = False
        if pruned >= PRUNE_STEP:  # a full step: more may be due, look again after the next commit
            self._next_retain = 0.0
        return pruned

    def retention_step(self, before: str, limit: int | None = None) -> int:
        """Prune at most `limit` (PRUNE_STEP) events older than `before`, in one short
        transaction per topic that has any; returns how many."""
        limit = PRUNE_STEP if limit is None else limit
        done = 0
        for topic, _, first, _, _, _ in self._read_topics():
            if first is None or first >= before or done >= limit:
                continue
            with self._guard():
                pruned, _ = self._prune_step(topic, before, False, limit - done)
            done += pruned
        return done

    def _read_topics(self) -> list[tuple[str, int, str | None, str | None, int, int]]:
        with self._guard(), self._snapshot():
            return self._topic_rows()

    def events(self, query: EventQuery) -> Iterator[StoredEvent]:
        """Stored events matching `query`, ordered by timestamp (ties: commit order)."""
        with self._guard(), self._snapshot():
            topics = self._topic_names(MERGE_MAX_TOPICS + 1) if query.topic is None else []
            if 1 < len(topics) <= MERGE_MAX_TOPICS:
                rows = self._merged(query, topics)
            else:
                rows = self._query(*self._select(query))
            try:
                for row in rows:
                    yield StoredEvent(*row[:8])
            finally:  # readers end with the listing, never after the store is closed
                _close(rows)

    def count(self, query: EventQuery, at_most: int | None = None) -> int:
        """Stored events matching `query`'s filters (its limit and order not used): from
        the topic counts when no filter but the topic is given, else by counting rows, then
        stopping at `at_most` (so that the count of a wide filter on a big store is quick)."""
        if query.source is None and query.since is None and query.until is None:
            rows = self._read_topics()
            return sum(int(n) for name, n, *_ in rows if query.topic in (None, name))
        where, params = self._where(query)
        matches = f"SELECT 1 FROM events WHERE {' AND '.join(where)}"
        if at_most is not None:
            matches += f" LIMIT {int(at_most)}"
        with self._guard(), self._snapshot():
            return int(next(self._query(f"SELECT count(*) FROM ({matches}) AS m", params))[0])

    def _merged(self, query: EventQuery, topics: list[str]) -> Iterator[tuple[Any, ...]]:
        # One index range per topic, merged: an unfiltered listing never sorts the table.
        streams = [self._query(*self._select(query, topic)) for topic in topics]
        merged = heapq.merge(*streams, key=lambda r: (r[2], r[7]), reverse=query.newest_first)
        try:
            for n, row in enumerate(merged):
                if query.limit is not None and n >= query.limit:
                    break
                yield row
        finally:
            for stream in streams:
                _close(stream)

    def _where(self, query: EventQuery, topic: str | None = None) -> tuple[list[str], list[Any]]:
        """The query's filters as conditions on stored (not pruned) events; every value a
        bound parameter, so filters match literally. `topic` overrides the query's."""
        mark, timestamp = self._MARK, self._TIMESTAMP
        where = ["payload IS NOT NULL"]
        params: list[Any] = []
        for column, op, value in (
            ("topic", "=", topic if topic is not None else query.topic),
            ("source", "=", query.source),
            (timestamp, ">=", query.since),
            (timestamp, "<", query.until),
        ):
            if value is not None:
                where.append(f"{column} {op} {mark}")
                params.append(value)
        return where, params

    def _select(self, query: EventQuery, topic: str | None = None) -> tuple[str, list[Any]]:
        """The listing statement with the query's filters, order and limit."""
        where, params = self._where(query, topic)
        direction = "DESC" if query.newest_first else "ASC"
        sql = f"{self._SELECT} WHERE {' AND '.join(where)}"
        sql += f" ORDER BY {self._TIMESTAMP} {direction}, {self._ORDER} {direction}"
        if query.limit is not None:
            sql += f" LIMIT {self._MARK}"
            params.append(query.limit)
        return sql, params

    # --- commit order ----------------------------------------------------------------------

    def read_after(self, position: int, query: EventQuery, limit: int) -> Page:
        """Events matching `query`'s filters committed after `position`, in commit order,
        at most `limit`; `query.limit` and its order are not used."""
        with self._guard():
            horizon = self._horizon()
            if horizon <= position:
                return Page((), position, False)
            upto = horizon
            if self._SPAN is not None:
                upto = min(horizon, position + max(self._SPAN, 4 * limit))
            where, params = self._where(query)
            mark = self._MARK
            where += [f"seq > {mark}", f"seq <= {mark}"]
            sql = f"{self._SELECT} WHERE {' AND '.join(where)} ORDER BY seq LIMIT {mark}"
            with self._snapshot():
                rows = list(self._query(sql, [*params, position, upto, limit]))
        events = tuple(StoredEvent(*row[:8]) for row in rows)
        if len(rows) >= limit:
            return Page(events, int(rows[-1][7]), True)
        return Page(events, upto, upto < horizon)

    def start_position(self, query: EventQuery, last: int | None) -> int:
        """Where reading in commit order starts: before the last `last` events matching
        `query`, or (None) before the first matching one."""
        with self._guard():
            horizon = self._horizon()
            where, params = self._where(query)
            where.append(f"seq <= {self._MARK}")
            params.append(horizon)
            conditions = " AND ".join(where)
            with self._snapshot():
                if last is None:
                    sql = f"SELECT min(seq) FROM events WHERE {conditions}"
                    found = next(self._query(sql, params))[0]
                    return horizon if found is None else int(found) - 1
                if last <= 0:
                    return horizon
                low = self._low_end(conditions, params, horizon, last)
                sql = (
                    f"SELECT seq FROM events WHERE {conditions} AND seq > {self._MARK}"
                    f" ORDER BY seq DESC LIMIT 1 OFFSET {self._MARK}"
                )
                found = next(self._query(sql, [*params, low, last - 1]), None)
        return 0 if found is None else int(found[0]) - 1

    def _low_end(self, conditions: str, params: list[Any], horizon: int, last: int) -> int:
        """A position low enough that at least `last` matches lie above it (or 0): widened
        step by step where seq has no B-tree, so that no read sorts the whole table."""
        if self._SPAN is None:
            return 0
        span = max(self._SPAN, 4 * last)
        while True:
            low = max(0, horizon - span)
            sql = f"SELECT count(*) FROM events WHERE {conditions} AND seq > {self._MARK}"
            if low == 0 or int(next(self._query(sql, [*params, low]))[0]) >= last:
                return low
            span *= 4

    def cursor(self, name: str) -> int | None:
        """The position saved under `name`, or None when there is no such cursor."""
        with self._guard(), self._snapshot():
            sql = f"SELECT position FROM cursors WHERE name = {self._MARK}"
            row = next(self._query(sql, [name]), None)
        return None if row is None else int(row[0])

    def save_cursor(self, name: str, position: int) -> None:
        """Save `position` under `name`, committed; a cursor never moves back."""
        mark = self._MARK
        with self._guard(), self._transaction():
            self._execute(
                f"INSERT INTO cursors (name, position, updated_at) VALUES ({mark}, {mark}, {mark})"
                " ON CONFLICT (name) DO UPDATE SET"
                f" position = {self._GREATEST}(cursors.position, excluded.position),"
                " updated_at = excluded.updated_at",
                [name, position, utc_now()],
            )

    def delete_cursor(self, name: str) -> bool:
        """Delete the cursor `name`; False when there was none."""
        with self._guard(), self._transaction():
            return self._execute(f"DELETE FROM cursors WHERE name = {self._MARK}", [name]) > 0

    def cursors(self) -> list[CursorInfo]:
        """Every cursor with its lag (stored events committed after it), by name."""
        mark = self._MARK
        with self._guard(), self._snapshot():
            rows = list(self._query("SELECT name, position, updated_at FROM cursors ORDER BY name"))
            found = []
            for name, position, updated_at in rows:
                sql = f"SELECT count(*) FROM events WHERE seq > {mark} AND payload IS NOT NULL"
                lag = next(self._query(sql, [position]))[0]
                found.append(CursorInfo(name, int(position), int(lag), updated_at))
        return found

    # --- retention and conflicts -------------------------------------------------------------

    def prune(
        self,
        before: str,  # a time in any ISO-8601 form
        *,
        topic: str | None = None,
        forget_keys: bool = False,
        dry_run: bool = False,
        step: int | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> PruneResult:
        """Make stored events older than `before` (of `topic`, or all) tombstones: their
        rows lose everything but the key, content hash and time, so that a re-send is
        still a duplicate. `forget_keys`: delete the keys too (also those of earlier
        prunes), so that such events would be accepted again. Each step is its own short
        transaction; `stop()` ends the work between steps. `dry_run`: count only."""
        before = normalize_timestamp(before)
        step = PRUNE_STEP if step is None else step
        result = PruneResult(before, dry_run=dry_run)
        topics = [topic] if topic is not None else [t[0] for t in self._read_topics()]
        for name in topics:
            if dry_run:
                result.add(name, *self._prunable(name, before, forget_keys))
                continue
            while not (stop is not None and stop()):
                with self._guard():
                    pruned, forgotten = self._prune_step(name, before, forget_keys, step)
                result.add(name, pruned, forgotten)
                if pruned < step and forgotten < step:
                    break
        return result

    def _prunable(self, topic: str, before: str, forget: bool) -> tuple[int, int]:
        """(stored events, keys) a prune of `topic` before `before` would remove."""
        mark, ts = self._MARK, self._TIMESTAMP
        with self._guard(), self._snapshot():
            counts = {}
            for kind in ("NOT NULL", "NULL"):
                sql = (
                    f"SELECT count(*) FROM events WHERE topic = {mark}"
                    f" AND payload IS {kind} AND {ts} < {mark}"
                )
                counts[kind] = int(next(self._query(sql, [topic, before]))[0])
        stored, tombstones = counts["NOT NULL"], counts["NULL"]
        return stored, (stored + tombstones) if forget else 0

    def conflicts(self, topic: str | None = None, limit: int | None = None) -> list[Conflict]:
        """Recorded conflicts (of `topic`), the latest first."""
        mark = self._MARK
        sql = (
            "SELECT topic, event_id, first_hash, last_hash, first_seen, last_seen, copies"
            " FROM conflicts"
        )
        params: list[Any] = []
        if topic is not None:
            sql += f" WHERE topic = {mark}"
            params.append(topic)
        sql += " ORDER BY last_seen DESC, topic, event_id"
        if limit is not None:
            sql += f" LIMIT {mark}"
            params.append(limit)
        with self._guard(), self._snapshot():
            return [Conflict(*row) for row in self._query(sql, params)]

    # --- stats and check ---------------------------------------------------------------------

    def stats(self) -> StoreStats:
        """Counters and per-topic counts; reads only small tables, never the events."""
        with self._guard():
            with self._snapshot():
                counters, last_ingest_at = self._counters()
                topics = {
                    topic: TopicStats(int(count), first, last, int(conflicts), int(pruned))
                    for topic, count, first, last, conflicts, pruned in self._topic_rows()
                }
            size, wal = self._size()
        return StoreStats(counters, topics, last_ingest_at, self.path, size, wal)

    def check(self) -> CheckResult:
        """Integrity, schema version, and that counters and topic counts agree with the
        rows (and tombstones, conflicts); a warning when the WAL file is large."""
        result = CheckResult()
        with self._guard():
            result.facts["integrity"] = self._integrity(result.problems)
            version = self._stored_version()
            result.facts["schema_version"] = version
            if version != self.schema_version:
                result.problems.append(f"schema version {version}, expected {self.schema_version}")
            with self._snapshot():
                counters, _ = self._counters()
                topic_rows = self._topic_rows()
                actual = {
                    t: int(n)
                    for t, n in self._query(
                        "SELECT topic, count(*) FROM events WHERE payload IS NOT NULL"
                        " GROUP BY topic"
                    )
                }
                tombstones = int(
                    next(self._query("SELECT count(*) FROM events WHERE payload IS NULL"))[0]
                )
                recorded = int(
                    next(self._query("SELECT coalesce(sum(copies), 0) FROM conflicts"))[0]
                )
            size, wal = self._size()
        kept = {t: int(n) for t, n, *_ in topic_rows}
        topic_conflicts = sum(int(row[4]) for row in topic_rows)
        _check_counters(result, counters, kept, actual)
        c = counters
        result.facts.update(tombstones=tombstones, size_bytes=size, wal_bytes=wal)
        if tombstones != c.pruned - c.forgotten:
            result.problems.append(
                f"{tombstones} tombstones != pruned {c.pruned} - forgotten {c.forgotten}"
            )
        if topic_conflicts != c.conflicts:
            result.problems.append(
                f"topic conflicts sum to {topic_conflicts}, counters say {c.conflicts}"
            )
        if recorded != c.conflicts:
            result.problems.append(f"conflict records count {recorded}, counters say {c.conflicts}")
        if wal is not None and wal > WAL_WARN_MIN_BYTES and wal > WAL_WARN_RATIO * (size - wal):
            result.warnings.append(wal_warning(wal, size - wal))
        return result


def wal_warning(wal: int, database: int) -> str:
    """What to say about a WAL file that has grown large."""
    from logagg.units import human_bytes

    return (
        f"the WAL file is {human_bytes(wal)}, more than the database ({human_bytes(database)}):"
        " a connection holding a read transaction open keeps SQLite from reusing it;"
        " end long readers (a paused `logagg events`, a `sqlite3` shell, a backup) and it"
        " is emptied at the next checkpoint"
    )


def _check_counters(
    result: CheckResult, counters: Counters, kept: dict[str, int], actual: dict[str, int]
) -> None:
    """Record the counters in `result` and every way they disagree with the rows.

    `kept`: the topic counts the store keeps; `actual`: the stored rows per topic.
    """
    c = counters
    rows = sum(actual.values())
    problems = result.problems
    result.facts.update(c.to_dict(), rows=rows)
    if c.received != c.accepted + c.duplicates + c.invalid:
        problems.append(
            f"counters disagree: received {c.received} != unique_processed {c.accepted}"
            f" + duplicate_dropped {c.duplicates} + invalid {c.invalid}"
        )
    if c.accepted != rows + c.pruned:
        problems.append(
            f"unique_processed {c.accepted} != {rows} rows in events + {c.pruned} pruned"
        )
    if sum(kept.values()) != rows:
        problems.append(f"topic counts sum to {sum(kept.values())}, events has {rows} rows")
    for topic in sorted(set(kept) | set(actual)):
        if kept.get(topic, 0) != actual.get(topic, 0):
            problems.append(
                f"topic {topic!r}: counted {kept.get(topic, 0)}, stored {actual.get(topic, 0)}"
            )
