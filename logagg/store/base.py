"""What both stores share: the result and query types, and the `Store` base class.

A backend implements the primitives (its SQL, its driver's errors, its snapshot); the
base class builds every public operation from them once.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import orjson

from logagg.errors import SchemaVersionError
from logagg.models import Checkpoint, Row, RowBatch, StoredEvent, encode_rows
from logagg.timestamps import normalize_timestamp

MERGE_MAX_TOPICS = 64  # above this many topics an unfiltered listing sorts instead of merging


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one committed transaction did; `per_batch`: rows accepted from each RowBatch."""

    accepted: int
    duplicates: int
    invalid: int
    per_batch: tuple[int, ...] = ()
    new: tuple[StoredEvent, ...] = ()  # the accepted events, in input order, when asked for
    dropped: tuple[StoredEvent, ...] = ()  # the duplicate copies, in input order, likewise


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
    ) -> EventQuery:
        """A query from a user's filters; times in any ISO-8601 form. Raises BadTime."""
        window = []
        for name, value in (("since", since), ("until", until)):
            try:
                window.append(normalize_timestamp(value) if value is not None else None)
            except ValueError as exc:
                raise BadTime(name, str(exc)) from None
        return cls(topic, source, window[0], window[1], limit, newest_first)


@dataclass(frozen=True, slots=True)
class TopicStats:
    events: int
    first_timestamp: str
    last_timestamp: str


@dataclass(frozen=True, slots=True)
class Counters:
    """The store's counters. Invariant: `received = accepted + duplicates + invalid`."""

    received: int
    accepted: int
    duplicates: int
    invalid: int

    def to_dict(self) -> dict[str, int]:
        """The counters under the names users see (those of the original API)."""
        return {
            "received": self.received,
            "unique_processed": self.accepted,
            "duplicate_dropped": self.duplicates,
            "invalid": self.invalid,
        }


@dataclass(frozen=True, slots=True)
class StoreStats:
    counters: Counters
    topics: dict[str, TopicStats]
    last_ingest_at: str | None
    database: str
    size_bytes: int

    @property
    def first_timestamp(self) -> str | None:
        return min((t.first_timestamp for t in self.topics.values()), default=None)

    @property
    def last_timestamp(self) -> str | None:
        return max((t.last_timestamp for t in self.topics.values()), default=None)

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
                }
                for name, t in self.topics.items()
            },
            "first_timestamp": self.first_timestamp,
            "last_timestamp": self.last_timestamp,
            "last_ingest_at": self.last_ingest_at,
            "database": self.database,
            "size_bytes": self.size_bytes,
        }


@dataclass(slots=True)
class CheckResult:
    """The outcome of `check`: healthy when `problems` is empty."""

    problems: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def newer_schema(path: str, version: int, supported: int) -> SchemaVersionError:
    return SchemaVersionError(
        f"{path}: store schema version {version} is newer than this logagg "
        f"supports ({supported}); upgrade logagg"
    )


def _dropped(batches: Sequence[RowBatch], new: Sequence[StoredEvent]) -> tuple[StoredEvent, ...]:
    """The rows of `batches` that a transaction which stored `new` dropped as duplicates,
    in input order (the first copy of a stored key is the stored one)."""
    stored = {(e.topic, e.event_id) for e in new}
    dropped = []
    for batch in batches:
        for row in orjson.loads(batch.json):
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
    # The dialect: parameter mark, the quoted timestamp column, the insertion-order column.
    _MARK: ClassVar[str]
    _TIMESTAMP: ClassVar[str] = '"timestamp"'
    _ORDER: ClassVar[str]
    _SELECT: ClassVar[str]  # topic, event_id, timestamp, source, payload, extra, ingested_at, order

    # --- primitives ----------------------------------------------------------------------

    @abstractmethod
    def _guard(self) -> AbstractContextManager[None]:
        """Turns the driver's errors into StoreError."""

    @abstractmethod
    def _snapshot(self) -> AbstractContextManager[None]:
        """One consistent read snapshot for the reads inside it."""

    @abstractmethod
    def _query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        """The rows of a read statement, streamed."""

    @abstractmethod
    def _counters(self) -> tuple[Counters, str | None]:
        """The counters and the time of the last write."""

    @abstractmethod
    def _topic_rows(self) -> list[tuple[str, int, str, str]]:
        """(topic, events, first, last) as kept, most events first, then by name."""

    @abstractmethod
    def _topic_names(self, limit: int) -> list[str]:
        """At most `limit` topic names."""

    @abstractmethod
    def _size(self) -> int:
        """Bytes the store takes."""

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
    def checkpoints(self) -> dict[str, Checkpoint]:
        """The saved position of every file followed into this store, by absolute path."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

        Within the batches (in order) and against the store, the first copy of a key wins.
        With `new_events`, the result also holds the events this transaction stored and
        the copies it dropped, in input order. `checkpoints` (of followed files) are saved
        in the same transaction as the rows.
        """
        result = self._insert(batches, invalid, new_events, checkpoints)
        if new_events:
            result = replace(result, dropped=_dropped(batches, result.new))
        return result

    def write_batch(self, rows: Sequence[Row], invalid: int = 0) -> BatchResult:
        """Insert `rows` and count `invalid` rejected lines, all in one transaction."""
        return self.write_rows([encode_rows(rows)] if rows else [], invalid)

    def events(self, query: EventQuery) -> Iterator[StoredEvent]:
        """Stored events matching `query`, ordered by timestamp (ties: insertion order)."""
        with self._guard(), self._snapshot():
            topics = self._topic_names(MERGE_MAX_TOPICS + 1) if query.topic is None else []
            if 1 < len(topics) <= MERGE_MAX_TOPICS:
                rows = self._merged(query, topics)
            else:
                rows = self._query(*self._select(query))
            for row in rows:
                yield StoredEvent(*row[:7])

    def _merged(self, query: EventQuery, topics: list[str]) -> Iterator[tuple[Any, ...]]:
        # One index range per topic, merged: an unfiltered listing never sorts the table.
        streams = [self._query(*self._select(query, topic)) for topic in topics]
        merged = heapq.merge(*streams, key=lambda r: (r[2], r[7]), reverse=query.newest_first)
        for n, row in enumerate(merged):
            if query.limit is not None and n >= query.limit:
                break
            yield row

    def _select(self, query: EventQuery, topic: str | None = None) -> tuple[str, list[Any]]:
        """The listing statement with the query's filters, order and limit; every value is
        a bound parameter, so filters match literally. `topic` overrides the query's."""
        mark, timestamp = self._MARK, self._TIMESTAMP
        where: list[str] = []
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
        direction = "DESC" if query.newest_first else "ASC"
        sql = self._SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {timestamp} {direction}, {self._ORDER} {direction}"
        if query.limit is not None:
            sql += f" LIMIT {mark}"
            params.append(query.limit)
        return sql, params

    def stats(self) -> StoreStats:
        """Counters and per-topic counts; reads only small tables, never the events."""
        with self._guard():
            with self._snapshot():
                counters, last_ingest_at = self._counters()
                topics = {
                    topic: TopicStats(int(count), first, last)
                    for topic, count, first, last in self._topic_rows()
                }
            size = self._size()
        return StoreStats(counters, topics, last_ingest_at, self.path, size)

    def check(self) -> CheckResult:
        """Integrity, schema version, and that counters and topic counts agree with the rows."""
        result = CheckResult()
        with self._guard():
            result.facts["integrity"] = self._integrity(result.problems)
            version = self._stored_version()
            result.facts["schema_version"] = version
            if version != self.schema_version:
                result.problems.append(f"schema version {version}, expected {self.schema_version}")
            with self._snapshot():
                counters, _ = self._counters()
                kept = {t: int(n) for t, n, _, _ in self._topic_rows()}
                actual = {
                    t: int(n)
                    for t, n in self._query("SELECT topic, count(*) FROM events GROUP BY topic")
                }
        _check_counters(result, counters, kept, actual)
        return result


def _check_counters(
    result: CheckResult, counters: Counters, kept: dict[str, int], actual: dict[str, int]
) -> None:
    """Record the counters in `result` and every way they disagree with the rows.

    `kept`: the topic counts the store keeps; `actual`: the rows per topic.
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
    if c.accepted != rows:
        problems.append(f"unique_processed {c.accepted} != {rows} rows in events")
    if sum(kept.values()) != rows:
        problems.append(f"topic counts sum to {sum(kept.values())}, events has {rows} rows")
    for topic in sorted(set(kept) | set(actual)):
        if kept.get(topic, 0) != actual.get(topic, 0):
            problems.append(
                f"topic {topic!r}: counted {kept.get(topic, 0)}, stored {actual.get(topic, 0)}"
            )
