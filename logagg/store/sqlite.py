"""The SQLite store: one file, WAL, one writer at a time.

Duplicates are dropped by the primary key `(topic, event_id)` with
`INSERT ... ON CONFLICT DO NOTHING`; topic counts and counters change in the same
IMMEDIATE transaction as the rows, so they agree with them even after `kill -9`.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from logagg.errors import SchemaVersionError, StoreError
from logagg.models import Checkpoint, RowBatch, StoredEvent
from logagg.store.base import BatchResult, Counters, Store, newer_schema
from logagg.timestamps import utc_now

SCHEMA_VERSION = 3
BUSY_TIMEOUT_SECONDS = 60.0
CACHE_KIB = 64 * 1024

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

_V3 = """
-- head: the file's first bytes (up to 256), to tell it from another file at its inode
ALTER TABLE checkpoints ADD COLUMN head BLOB;
"""

# MIGRATIONS[v] takes a store from version v to v + 1.
MIGRATIONS: list[str] = [_V1, _V2, _V3]
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
    "INSERT INTO checkpoints (path, device, inode, offset, line, head, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET device = excluded.device,"
    " inode = excluded.inode, offset = excluded.offset, line = excluded.line,"
    " head = excluded.head, updated_at = excluded.updated_at"
)
_SELECT_EVENTS = (
    "SELECT topic, event_id, timestamp, source, payload, extra, ingested_at, rowid FROM events"
)


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


class SQLiteStore(Store):
    """One SQLite file. Use `SQLiteStore.open()`; close with `close()` or a `with` block."""

    schema_version = SCHEMA_VERSION
    _MARK = "?"
    _ORDER = "rowid"
    _SELECT = _SELECT_EVENTS

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
            with store._guard():
                store._setup()
        except BaseException:
            conn.close()
            raise
        return store

    def _setup(self) -> None:
        conn = self._conn
        version = self._check_version()  # before anything changes a file that is not ours
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

    def _check_version(self) -> int:
        """The schema version; refuses a newer one, and a SQLite file that is not a store.

        Version and tables are read in one statement, so in one snapshot: a store that
        another process is creating right now is seen either empty or complete.
        """
        version, tables = self._conn.execute(
            "SELECT (SELECT user_version FROM pragma_user_version),"
            " (SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%')"
        ).fetchone()
        if version > SCHEMA_VERSION:
            raise newer_schema(self.path, version, SCHEMA_VERSION)
        if version == 0 and tables:
            raise SchemaVersionError(f"{self.path}: a SQLite database, but not a logagg store")
        return int(version)

    def _migrate(self) -> None:
        with self._write():
            version = self._check_version()  # again: another process may have created it
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

    # --- primitives ----------------------------------------------------------------------

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(_describe(exc, self.path)) from None

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            yield
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: takes the write lock first, so it never deadlocks."""
        conn = self._conn
        with self._guard():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        yield from self._conn.execute(sql, params)

    def _counters(self) -> tuple[Counters, str | None]:
        row = self._conn.execute(
            "SELECT received, accepted, duplicates, invalid,"
            " (SELECT value FROM meta WHERE key = 'last_ingest_at') FROM counters"
        ).fetchone()
        return Counters(*row[:4]), row[4]

    def _topic_rows(self) -> list[tuple[str, int, str, str]]:
        return self._conn.execute(
            "SELECT topic, events, first_timestamp, last_timestamp FROM topics"
            " ORDER BY events DESC, topic"
        ).fetchall()

    def _topic_names(self, limit: int) -> list[str]:
        return [row[0] for row in self._conn.execute("SELECT topic FROM topics LIMIT ?", (limit,))]

    def _size(self) -> int:
        return sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p))

    def _integrity(self, problems: list[str]) -> str:
        integrity = [row[0] for row in self._conn.execute("PRAGMA integrity_check")]
        if integrity == ["ok"]:
            return "ok"
        found = "; ".join(integrity[:5])
        problems.append(f"integrity check failed: {found}")
        return found

    def _stored_version(self) -> int | None:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    # --- writing -------------------------------------------------------------------------

    def _insert(
        self,
        batches: Sequence[RowBatch],
        invalid: int,
        new_events: bool,
        checkpoints: Sequence[Checkpoint],
    ) -> BatchResult:
        now = utc_now()
        received = sum(batch.count for batch in batches)
        with self._write() as conn:
            before = conn.execute("SELECT coalesce(max(rowid), 0) FROM events").fetchone()[0]
            per_batch = tuple(conn.execute(_INSERT, (b.json, now)).rowcount for b in batches)
            new: tuple[StoredEvent, ...] = ()
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
                    [
                        (c.path, c.device, c.inode, c.offset, c.line, c.head, now)
                        for c in checkpoints
                    ],
                )
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('last_ingest_at', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (now,),
            )
        return BatchResult(accepted, duplicates, invalid, per_batch, new)

    def checkpoints(self) -> dict[str, Checkpoint]:
        with self._guard():
            rows = self._conn.execute(
                "SELECT path, device, inode, offset, line, head FROM checkpoints"
            ).fetchall()
        return {row[0]: Checkpoint(*row) for row in rows}
