"""The SQLite store: schema, migrations, batched dedup inserts, queries, stats and check.

All SQL of the project lives here. The file is plain SQLite (schema in the README):
duplicates are dropped by the primary key `(topic, event_id)` with
`INSERT ... ON CONFLICT DO NOTHING`; the per-topic counts and the counters change in the
same IMMEDIATE transaction as the rows, so they agree with them even after `kill -9`.
"""

from __future__ import annotations

import heapq
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from logagg.errors import SchemaVersionError, StoreError
from logagg.models import Checkpoint, EventRow, RowBatch, StoredEvent, encode_rows

SCHEMA_VERSION = 2
BUSY_TIMEOUT_SECONDS = 60.0
CACHE_KIB = 64 * 1024
MERGE_MAX_TOPICS = 64  # above this many topics an unfiltered listing sorts instead of merging

_V1 = """
CREATE TABLE events (
    topic       TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    timestamp   TEXT NOT NULL,   -- UTC, 2025-01-01T12:00:00.000000Z
    source      TEXT NOT NULL,
    payload     TEXT NOT NULL,   -- JSON object
    extra       TEXT,            -- JSON object of unknown top-level fields, or NULL
    ingested_at TEXT NOT NULL,
    PRIMARY KEY (topic, event_id)
);
CREATE INDEX events_topic_time ON events (topic, timestamp);
CREATE TABLE topics (
    topic           TEXT PRIMARY KEY,
    events          INTEGER NOT NULL,
    first_timestamp TEXT NOT NULL,
    last_timestamp  TEXT NOT NULL
);
CREATE TABLE counters (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    received    INTEGER NOT NULL,
    accepted    INTEGER NOT NULL,
    duplicates  INTEGER NOT NULL,
    invalid     INTEGER NOT NULL
);
INSERT INTO counters VALUES (1, 0, 0, 0, 0);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_V2 = """
CREATE TABLE IF NOT EXISTS checkpoints (
    path       TEXT PRIMARY KEY,  -- absolute path of a file read with --follow
    device     INTEGER NOT NULL,
    inode      INTEGER NOT NULL,
    offset     INTEGER NOT NULL,  -- every line before this byte is committed
    line       INTEGER NOT NULL,  -- the number of the last line before offset
    updated_at TEXT NOT NULL
);
"""

# MIGRATIONS[v] takes a store from version v to v + 1.
MIGRATIONS: list[str] = [_V1, _V2]
assert len(MIGRATIONS) == SCHEMA_VERSION

# One statement a RowBatch: SQLite unpacks the JSON array itself, so the whole batch goes
# in without a round trip to Python (and without holding the GIL) per row.
_INSERT = (
    "INSERT INTO events (topic, event_id, timestamp, source, payload, extra, ingested_at)"
    " SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),"
    " json_extract(value, '$[2]'), json_extract(value, '$[3]'),"
    " json_extract(value, '$[4]'), json_extract(value, '$[5]'), ?2"
    " FROM json_each(?1) WHERE true"  # WHERE: lets the parser tell ON CONFLICT from a join
    " ON CONFLICT (topic, event_id) DO NOTHING"
)
# NOT INDEXED: read only the rows of this batch by rowid, never the topic index.
_NEW_PER_TOPIC = (
    "SELECT topic, count(*), min(timestamp), max(timestamp) FROM events NOT INDEXED"
    " WHERE rowid > ? GROUP BY topic"
)
_UPSERT_TOPIC = (
    "INSERT INTO topics (topic, events, first_timestamp, last_timestamp) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (topic) DO UPDATE SET events = events + excluded.events,"
    " first_timestamp = min(first_timestamp, excluded.first_timestamp),"
    " last_timestamp = max(last_timestamp, excluded.last_timestamp)"
)
_ADD_COUNTERS = (
    "UPDATE counters SET received = received + ?, accepted = accepted + ?,"
    " duplicates = duplicates + ?, invalid = invalid + ? WHERE id = 1"
)
_SAVE_CHECKPOINT = (
    "INSERT INTO checkpoints (path, device, inode, offset, line, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET device = excluded.device,"
    " inode = excluded.inode, offset = excluded.offset, line = excluded.line,"
    " updated_at = excluded.updated_at"
)
_SELECT_EVENTS = (
    "SELECT topic, event_id, timestamp, source, payload, extra, ingested_at, rowid FROM events"
)


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one committed batch did; `per_batch`: rows accepted from each RowBatch."""

    accepted: int
    duplicates: int
    invalid: int
    per_batch: tuple[int, ...] = ()
    new: tuple[StoredEvent, ...] = ()  # the accepted events, in input order, when asked for


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Filters for listing events; timestamps are normalised UTC strings; limit None = all."""

    topic: str | None = None
    source: str | None = None
    since: str | None = None  # inclusive
    until: str | None = None  # exclusive
    limit: int | None = 100
    newest_first: bool = True


@dataclass(frozen=True, slots=True)
class TopicStats:
    events: int
    first_timestamp: str
    last_timestamp: str


@dataclass(frozen=True, slots=True)
class StoreStats:
    received: int
    unique_processed: int
    duplicate_dropped: int
    invalid: int
    topics: dict[str, TopicStats]
    first_timestamp: str | None
    last_timestamp: str | None
    last_ingest_at: str | None
    database: str
    size_bytes: int


@dataclass(slots=True)
class CheckResult:
    """The outcome of `check`: healthy when `problems` is empty."""

    problems: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_counters(
    result: CheckResult,
    counters: tuple[int, int, int, int],
    kept: dict[str, int],
    actual: dict[str, int],
) -> None:
    """Record the counters in `result` and every way they disagree with the rows.

    `counters`: received, accepted, duplicates, invalid; `kept`: the topic counts the store
    keeps; `actual`: the rows per topic.
    """
    received, accepted, duplicates, invalid = counters
    rows = sum(actual.values())
    problems = result.problems
    result.facts.update(
        received=received,
        unique_processed=accepted,
        duplicate_dropped=duplicates,
        invalid=invalid,
        rows=rows,
    )
    if received != accepted + duplicates + invalid:
        problems.append(
            f"counters disagree: received {received} != unique_processed {accepted}"
            f" + duplicate_dropped {duplicates} + invalid {invalid}"
        )
    if accepted != rows:
        problems.append(f"unique_processed {accepted} != {rows} rows in events")
    if sum(kept.values()) != rows:
        problems.append(f"topic counts sum to {sum(kept.values())}, events has {rows} rows")
    for topic in sorted(set(kept) | set(actual)):
        if kept.get(topic, 0) != actual.get(topic, 0):
            problems.append(
                f"topic {topic!r}: counted {kept.get(topic, 0)}, stored {actual.get(topic, 0)}"
            )


def select_events(
    base: str,
    query: EventQuery,
    topic: str | None,
    mark: str,
    timestamp: str,
    tiebreak: str,
) -> tuple[str, list[Any]]:
    """`base` with the query's filters, order and limit, and its parameters.

    `topic` overrides the query's (one stream of a merged listing); `mark` is the driver's
    placeholder, `timestamp` and `tiebreak` the dialect's names of the ordering columns.
    Every value is a bound parameter: filters match literally.
    """
    where, params = [], []
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
    sql = base
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {timestamp} {direction}, {tiebreak} {direction}"
    if query.limit is not None:
        sql += f" LIMIT {mark}"
        params.append(query.limit)
    return sql, params


def utc_now() -> str:
    """The current time in the stored timestamp form."""
    return datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _describe(exc: sqlite3.Error, path: str) -> str:
    text = str(exc)
    if "file is not a database" in text:
        return f"{path}: not a SQLite database"
    if "unable to open database file" in text:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            return f"{path}: cannot create the database: directory {parent} does not exist"
        return f"{path}: cannot open the database (check permissions)"
    if "readonly database" in text:
        return f"{path}: the database is read-only (check file and directory permissions)"
    if "disk is full" in text or "disk I/O error" in text:
        return f"{path}: cannot write: {text} (is the disk full?)"
    if "locked" in text or "busy" in text:
        return f"{path}: the database stayed locked for {BUSY_TIMEOUT_SECONDS:.0f} s: {text}"
    return f"{path}: {text}"


class SQLiteStore:
    """One SQLite file. Use `SQLiteStore.open()`; close with `close()` or a `with` block.

    A store may be handed to another thread, but only one thread may use it at a time.
    """

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self._conn = conn
        self.path = path

    # --- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str, *, create: bool = True) -> SQLiteStore:
        """Open (and with `create`, create) the store at `path`, migrating an older schema.

        Raises StoreError when it cannot be opened, SchemaVersionError when it is newer
        than this logagg or not a logagg store.
        """
        if not create and not os.path.exists(path):
            raise StoreError(f"{path}: no such store (ingest or publish something first)")
        if os.path.isdir(path):
            raise StoreError(f"{path}: is a directory, not a database file")
        try:
            conn = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(_describe(exc, path)) from None
        store = cls(conn, path)
        try:
            store._setup()
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(_describe(exc, path)) from None
        except BaseException:
            conn.close()
            raise
        return store

    def _setup(self) -> None:
        conn = self._conn
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        self._check_version(version)  # before anything changes a file that is not ours
        self._enable_wal()
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        conn.execute("PRAGMA foreign_keys = OFF")
        if version < SCHEMA_VERSION:
            self._migrate()

    def _enable_wal(self) -> None:
        """Switch a new file to WAL. Two processes creating one store may race here, and
        SQLite answers the loser at once instead of waiting: so retry, up to the timeout."""
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        while True:
            try:
                mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch to WAL journal mode (got {mode})")

    def _check_version(self, version: int) -> None:
        """Refuse a store of a newer schema, and a SQLite file that is not a logagg store."""
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path}: store schema version {version} is newer than this logagg "
                f"supports ({SCHEMA_VERSION}); upgrade logagg"
            )
        if (
            version == 0
            and self._conn.execute(
                "SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'"
            ).fetchone()[0]
        ):
            raise SchemaVersionError(f"{self.path}: a SQLite database, but not a logagg store")

    def _migrate(self) -> None:
        with self._write():
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            self._check_version(version)  # again: another process may have created it
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('created_at', ?)", (utc_now(),)
            )

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: takes the write lock first, so it never deadlocks."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(_describe(exc, self.path)) from None

    # --- writing -------------------------------------------------------------------------

    def write_batch(self, events: Sequence[EventRow], invalid: int = 0) -> BatchResult:
        """Insert `events` and count `invalid` rejected lines, all in one transaction."""
        return self.write_rows([encode_rows(events)] if events else [], invalid)

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
        With `new_events`, the result also holds the events this transaction stored.
        `checkpoints` (of followed files) are saved in the same transaction as the rows.
        """
        now = utc_now()
        received = sum(batch.count for batch in batches)
        with self._write() as conn:
            before = conn.execute("SELECT coalesce(max(rowid), 0) FROM events").fetchone()[0]
            per_batch = tuple(conn.execute(_INSERT, (b.json, now)).rowcount for b in batches)
            new = ()
            if new_events:
                sql = _SELECT_EVENTS + " WHERE rowid > ? ORDER BY rowid"
                new = tuple(StoredEvent(*row[:7]) for row in conn.execute(sql, (before,)))
            per_topic = conn.execute(_NEW_PER_TOPIC, (before,)).fetchall()
            if per_topic:
                conn.executemany(_UPSERT_TOPIC, per_topic)
            accepted = sum(count for _, count, _, _ in per_topic)
            duplicates = received - accepted
            conn.execute(_ADD_COUNTERS, (received + invalid, accepted, duplicates, invalid))
            if checkpoints:
                conn.executemany(
                    _SAVE_CHECKPOINT,
                    [(c.path, c.device, c.inode, c.offset, c.line, now) for c in checkpoints],
                )
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('last_ingest_at', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (now,),
            )
        return BatchResult(accepted, duplicates, invalid, per_batch, new)

    # --- reading -------------------------------------------------------------------------

    def checkpoints(self) -> dict[str, Checkpoint]:
        """The saved position of every file followed into this store, by absolute path."""
        try:
            rows = self._conn.execute(
                "SELECT path, device, inode, offset, line FROM checkpoints"
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(_describe(exc, self.path)) from None
        return {row[0]: Checkpoint(*row) for row in rows}

    def events(self, query: EventQuery) -> Iterator[StoredEvent]:
        """Stored events matching `query`, ordered by timestamp (ties: insertion order)."""
        try:
            if query.topic is None:
                topics = [
                    row[0]
                    for row in self._conn.execute(
                        f"SELECT topic FROM topics LIMIT {MERGE_MAX_TOPICS + 1}"
                    )
                ]
                if 1 < len(topics) <= MERGE_MAX_TOPICS:
                    yield from self._merged(query, topics)
                    return
            for row in self._conn.execute(*self._select(query)):
                yield StoredEvent(*row[:7])
        except sqlite3.Error as exc:
            raise StoreError(_describe(exc, self.path)) from None

    def _select(self, query: EventQuery, topic: str | None = None) -> tuple[str, list[Any]]:
        return select_events(_SELECT_EVENTS, query, topic, "?", "timestamp", "rowid")

    def _merged(self, query: EventQuery, topics: list[str]) -> Iterator[StoredEvent]:
        # One index range per topic, merged: an unfiltered listing never sorts the table.
        streams = [self._conn.execute(*self._select(query, topic)) for topic in topics]
        merged = heapq.merge(*streams, key=lambda r: (r[2], r[7]), reverse=query.newest_first)
        for n, row in enumerate(merged):
            if query.limit is not None and n >= query.limit:
                break
            yield StoredEvent(*row[:7])

    def stats(self) -> StoreStats:
        """Counters and per-topic counts; reads only small tables, never the events."""
        try:
            conn = self._conn
            conn.execute("BEGIN")  # one snapshot for all the reads below
            try:
                received, accepted, duplicates, invalid = conn.execute(
                    "SELECT received, accepted, duplicates, invalid FROM counters"
                ).fetchone()
                topics = {
                    topic: TopicStats(count, first, last)
                    for topic, count, first, last in conn.execute(
                        "SELECT topic, events, first_timestamp, last_timestamp FROM topics"
                        " ORDER BY events DESC, topic"
                    )
                }
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(_describe(exc, self.path)) from None
        size = sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p))
        return StoreStats(
            received=received,
            unique_processed=accepted,
            duplicate_dropped=duplicates,
            invalid=invalid,
            topics=topics,
            first_timestamp=min((t.first_timestamp for t in topics.values()), default=None),
            last_timestamp=max((t.last_timestamp for t in topics.values()), default=None),
            last_ingest_at=meta.get("last_ingest_at"),
            database=os.path.abspath(self.path),
            size_bytes=size,
        )

    def check(self) -> CheckResult:
        """Integrity, schema version, and that counters and topic counts agree with the rows."""
        result = CheckResult()
        problems, facts = result.problems, result.facts
        try:
            conn = self._conn
            integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            facts["integrity"] = "ok" if integrity == ["ok"] else "; ".join(integrity[:5])
            if integrity != ["ok"]:
                problems.append(f"integrity check failed: {facts['integrity']}")
            facts["schema_version"] = conn.execute("PRAGMA user_version").fetchone()[0]
            if facts["schema_version"] != SCHEMA_VERSION:
                problems.append(
                    f"schema version {facts['schema_version']}, expected {SCHEMA_VERSION}"
                )
            conn.execute("BEGIN")
            try:
                received, accepted, duplicates, invalid = conn.execute(
                    "SELECT received, accepted, duplicates, invalid FROM counters"
                ).fetchone()
                kept = dict(conn.execute("SELECT topic, events FROM topics").fetchall())
                actual = dict(
                    conn.execute("SELECT topic, count(*) FROM events GROUP BY topic").fetchall()
                )
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(_describe(exc, self.path)) from None
        check_counters(result, (received, accepted, duplicates, invalid), kept, actual)
        return result


class Store(Protocol):
    """What the pipeline and the faces use of a store: SQLiteStore, or PostgresStore."""

    path: str

    def write_batch(self, events: Sequence[EventRow], invalid: int = 0) -> BatchResult: ...

    def write_rows(
        self,
        batches: Sequence[RowBatch],
        invalid: int = 0,
        *,
        new_events: bool = False,
        checkpoints: Sequence[Checkpoint] = (),
    ) -> BatchResult: ...

    def events(self, query: EventQuery) -> Iterator[StoredEvent]: ...

    def stats(self) -> StoreStats: ...

    def check(self) -> CheckResult: ...

    def checkpoints(self) -> dict[str, Checkpoint]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Store: ...

    def __exit__(self, *exc: object) -> None: ...


def open_store(location: str, *, create: bool = True) -> Store:
    """Open the store named by `--db`: a `postgresql://` URL, else a SQLite file path."""
    if location.startswith(("postgresql://", "postgres://")):
        try:
            from logagg.pgstore import PostgresStore
        except ImportError as exc:
            raise StoreError(
                f"PostgreSQL stores need the postgres extra: pip install 'logagg[postgres]' ({exc})"
            ) from None
        return PostgresStore.open(location, create=create)
    return SQLiteStore.open(location, create=create)
