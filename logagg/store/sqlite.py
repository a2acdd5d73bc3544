"""The SQLite store: one file, WAL, one writer at a time.

Duplicates are dropped with one `INSERT ... ON CONFLICT` statement a batch (two when it
holds a key twice); topic counts and counters change in the same IMMEDIATE transaction as
the rows, so they agree with them even after `kill -9`.

- The key: events are found by `key`, a 64-bit hash of `(topic, event_id)` computed by
  the reader (`encode_rows`), not by the two texts. The hash only finds the candidate; the
  stored topic and event_id are always compared. A different event whose hash is taken
  (a collision) is stored beside it with `key` NULL, where a partial unique index over
  `(topic, event_id)` keeps it exact; when the keyed row is deleted, the oldest such
  event of its hash takes the key over.
- Where a key leads: two tables map each key to its event's `seq`. `recent_keys` takes the
  keys of new events and stays small enough for the page cache; past MERGE_AT keys it is
  merged into `event_keys` in key order, so a page of the large table is written once
  a merge rather than once a commit (random keys touch most of its pages in every
  commit). An insert looks its key up in both and, found, goes to that row's upsert path
  (`ON CONFLICT (seq)`); the copies of one key within a chunk after the first go in a
  second statement, once the first is mapped. Triggers of the schema keep both tables in
  step when a row is deleted or moves.

- Commit order: `seq INTEGER PRIMARY KEY AUTOINCREMENT`. Writers are serialised by the
  write lock, so positions are handed out in commit order, and AUTOINCREMENT never hands
  out a position twice (not even once the newest row is deleted).
- Conflicts: a duplicate is compared with the stored row it collides with (the upsert
  reads that row anyway), and only when the content differs does the update path run: a
  TEMP trigger of this connection notes both copies and, keeping the first copy, cancels
  the update (RAISE(IGNORE)); the conflicts are recorded from those notes once the rows
  are in. So identical re-sends cost one row read, and the stored row of a conflict
  changes only with keep-last.
- Retention: a pruned event keeps its row as a tombstone (key, time, content hash), so
  its key still makes re-sends duplicates; listings use a partial index of stored rows.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sqlite3
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson

from logagg.errors import SchemaVersionError, StoreError
from logagg.models import Checkpoint, Row, RowBatch, StoredEvent, content_hash
from logagg.store.base import BatchResult, Counters, Store, newer_schema
from logagg.timestamps import utc_now
from logagg.units import human_bytes

SCHEMA_VERSION = 6
BUSY_TIMEOUT_SECONDS = 60.0
# The page cache: a commit's new rows and recent_keys (at most MERGE_AT keys) fit in it;
# event_keys is only read between merges, so more cache only adds memory.
CACHE_KIB = 32 * 1024
# Of a new store: a commit writes a quarter as many pages as with 4 KiB (the writer 12 %
# quicker at 1M; whole ingest as quick at 5M, 10 % quicker at 20M); 32 and 64 KiB pages
# make each insert dearer.
PAGE_SIZE = 16384
# The WAL: SQLite checkpoints it after commits (every 1000 pages); once it has been copied
# back and no reader uses it, it is reset and truncated to JOURNAL_SIZE_LIMIT. Past
# WAL_CHECK_BYTES logagg checkpoints it itself every WAL_CHECK_SECONDS (TRUNCATE, waiting
# at most CHECKPOINT_WAIT_MS for others), and says once when a reader keeps it growing.
JOURNAL_SIZE_LIMIT = 64 << 20
STAGE_AT_LEAST = 256  # rows of a batch worth a database image (see `encode_rows`)
# recent_keys is merged into event_keys when it holds this many keys (about 5 MB): small
# enough to stay in the page cache with a commit's other pages (125 000 to 1 000 000 were
# measured at 5M events: see bench/RESULTS.md).
MERGE_AT = 250_000
WAL_CHECK_BYTES = 128 << 20
WAL_CHECK_SECONDS = 2.0
CHECKPOINT_WAIT_MS = 100

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

# Version 4: positions in commit order, tombstones, conflicts and cursors. The events
# table is rebuilt once (a primary key cannot change in place), copied in rowid order so
# that every event keeps its position.
_V4 = """
CREATE TABLE events_v4 (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,  -- position in commit order
    topic       TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    timestamp   TEXT NOT NULL,   -- UTC, 2025-01-01T12:00:00.000000Z
    source      TEXT,            -- NULL once pruned
    payload     TEXT,            -- JSON object, NULL once pruned (a tombstone)
    extra       TEXT,            -- JSON object of unknown top-level fields, or NULL
    ingested_at TEXT,            -- UTC, when its transaction committed (NULL once pruned)
    hash        INTEGER          -- a tombstone's content hash (NULL while stored)
);
INSERT INTO events_v4 (seq, topic, event_id, timestamp, source, payload, extra, ingested_at)
    SELECT rowid, topic, event_id, timestamp, source, payload, extra, ingested_at
    FROM events ORDER BY rowid;
DROP TABLE events;
ALTER TABLE events_v4 RENAME TO events;
CREATE UNIQUE INDEX events_key ON events (topic, event_id);
CREATE INDEX events_topic_time ON events (topic, timestamp) WHERE payload IS NOT NULL;
CREATE INDEX events_pruned ON events (topic, timestamp) WHERE payload IS NULL;
CREATE TABLE topics_v4 (
    topic           TEXT PRIMARY KEY,
    events          INTEGER NOT NULL,          -- stored (not pruned)
    first_timestamp TEXT,                      -- NULL while none is stored
    last_timestamp  TEXT,
    conflicts       INTEGER NOT NULL DEFAULT 0,
    pruned          INTEGER NOT NULL DEFAULT 0
);
INSERT INTO topics_v4 (topic, events, first_timestamp, last_timestamp)
    SELECT topic, events, first_timestamp, last_timestamp FROM topics;
DROP TABLE topics;
ALTER TABLE topics_v4 RENAME TO topics;
ALTER TABLE counters ADD COLUMN conflicts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE counters ADD COLUMN pruned INTEGER NOT NULL DEFAULT 0;
ALTER TABLE counters ADD COLUMN forgotten INTEGER NOT NULL DEFAULT 0;
CREATE TABLE conflicts (
    topic      TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    first_hash INTEGER NOT NULL,  -- the stored copy's content when the first conflict came
    last_hash  INTEGER NOT NULL,  -- the latest copy that differed from the stored one
    first_seen TEXT NOT NULL,
    last_seen  TEXT NOT NULL,
    copies     INTEGER NOT NULL,  -- copies that differed
    PRIMARY KEY (topic, event_id)
);
CREATE TABLE cursors (
    name       TEXT PRIMARY KEY,
    position   INTEGER NOT NULL,  -- every event with seq <= position was delivered
    updated_at TEXT NOT NULL
);
"""

# Version 5: the unique index over the 64-bit `key` (see the module's docstring). Rows are
# keyed in position order, so of two keys with one hash the older keeps it.
_V5 = """
ALTER TABLE events ADD COLUMN key INTEGER;  -- hash of (topic, event_id), NULL for a collision
DROP INDEX events_key;
CREATE UNIQUE INDEX events_key ON events (key);
CREATE UNIQUE INDEX events_aside ON events (topic, event_id) WHERE key IS NULL;
UPDATE OR IGNORE events SET key = logagg_key(topic, event_id);
"""

# Version 6: the unique index over `key` gives way to the two key tables (see the module's
# docstring); every key starts in event_keys, copied in key order.
_V6 = """
CREATE TABLE event_keys (key INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE recent_keys (key INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
INSERT INTO event_keys (key, seq) SELECT key, seq FROM events WHERE key IS NOT NULL ORDER BY key;
DROP INDEX events_key;
CREATE TRIGGER events_key_gone AFTER DELETE ON events WHEN OLD.key IS NOT NULL
BEGIN
    DELETE FROM recent_keys WHERE key = OLD.key AND seq = OLD.seq;
    DELETE FROM event_keys WHERE key = OLD.key AND seq = OLD.seq;
END;
CREATE TRIGGER events_key_moved AFTER UPDATE OF seq ON events WHEN OLD.key IS NOT NULL
BEGIN
    UPDATE recent_keys SET seq = NEW.seq WHERE key = OLD.key AND seq = OLD.seq;
    UPDATE event_keys SET seq = NEW.seq WHERE key = OLD.key AND seq = OLD.seq;
END;
"""

# MIGRATIONS[v] takes a store from version v to v + 1.
MIGRATIONS: list[str] = [_V1, _V2, _V3, _V4, _V5, _V6]
assert len(MIGRATIONS) == SCHEMA_VERSION

# The update path of an upsert on a stored key: a copy whose content differs, or a row that
# is a tombstone, or (on the key's `seq`) another event whose hash is taken.
_ON_STORED = (
    " DO UPDATE SET timestamp = excluded.timestamp, source = excluded.source,"
    " payload = excluded.payload, extra = excluded.extra, ingested_at = excluded.ingested_at"
    " WHERE events.payload IS NULL OR events.payload <> excluded.payload"
    " OR events.timestamp <> excluded.timestamp OR events.source <> excluded.source"
    " OR events.extra IS NOT excluded.extra"
)

# Per connection (TEMP): the conflicts a statement met, and the triggers of the upserts.
# logagg_conflict runs only on the update path (the one statement that sets the timestamp
# of an existing row) of the same event, that is for a duplicate whose content differs or
# whose row is a tombstone; it notes both copies (their hashes are computed afterwards in
# one go: a Python function per row would wait for the GIL each time while the reader
# runs) and, keeping the first copy (or a tombstone), cancels the update.
# logagg_collision runs when the key's row is another event: it stores the new one with
# no key (a duplicate of one stored so goes through the same upsert on the exact key),
# notes it in logagg_aside and cancels the update. logagg_rekey hands a deleted row's key
# to the oldest keyless event of the same hash (the schema's events_key_gone drops the
# deleted row's mapping, before or after).
_CONFLICT_SETUP = (
    "CREATE TEMP TABLE IF NOT EXISTS logagg_clash (n INTEGER PRIMARY KEY, seq INTEGER,"
    " topic TEXT, event_id TEXT, old_hash INTEGER, old_timestamp TEXT, old_source TEXT,"
    " old_payload TEXT, old_extra TEXT, timestamp TEXT, source TEXT, payload TEXT,"
    " extra TEXT, applied INTEGER)",
    "CREATE TEMP TABLE IF NOT EXISTS logagg_aside (n INTEGER PRIMARY KEY)",
    "CREATE TEMP TABLE IF NOT EXISTS logagg_mode (keep_last INTEGER NOT NULL)",
    "INSERT INTO logagg_mode SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM logagg_mode)",
    """CREATE TEMP TRIGGER IF NOT EXISTS logagg_conflict
    BEFORE UPDATE OF timestamp ON main.events
    WHEN OLD.topic = NEW.topic AND OLD.event_id = NEW.event_id
    BEGIN
        INSERT INTO logagg_clash (seq, topic, event_id, old_hash, old_timestamp, old_source,
            old_payload, old_extra, timestamp, source, payload, extra, applied)
        VALUES (OLD.seq, OLD.topic, OLD.event_id, OLD.hash, OLD.timestamp, OLD.source,
            OLD.payload, OLD.extra, NEW.timestamp, NEW.source, NEW.payload, NEW.extra,
            OLD.payload IS NOT NULL AND (SELECT keep_last FROM logagg_mode));
        SELECT RAISE(IGNORE) WHERE OLD.payload IS NULL OR NOT (SELECT keep_last FROM logagg_mode);
    END""",
    f"""CREATE TEMP TRIGGER IF NOT EXISTS logagg_collision
    BEFORE UPDATE OF timestamp ON main.events
    WHEN OLD.topic IS NOT NEW.topic OR OLD.event_id IS NOT NEW.event_id
    BEGIN
        INSERT INTO logagg_aside (n) VALUES (NULL);
        INSERT INTO events (topic, event_id, timestamp, source, payload, extra, ingested_at)
        VALUES (NEW.topic, NEW.event_id, NEW.timestamp, NEW.source, NEW.payload, NEW.extra,
                NEW.ingested_at)
        ON CONFLICT (topic, event_id) WHERE key IS NULL{_ON_STORED};
        SELECT RAISE(IGNORE);
    END""",
    """CREATE TEMP TRIGGER IF NOT EXISTS logagg_rekey
    AFTER DELETE ON main.events WHEN OLD.key IS NOT NULL
    BEGIN
        INSERT OR REPLACE INTO recent_keys (key, seq) SELECT OLD.key, seq FROM events
            WHERE key IS NULL AND logagg_key(topic, event_id) = OLD.key ORDER BY seq LIMIT 1;
        UPDATE events SET key = OLD.key
            WHERE seq = (SELECT seq FROM recent_keys WHERE key = OLD.key) AND seq <> OLD.seq;
    END""",
)

# Two statements a RowBatch: the first copy of each key in it, then, if the batch repeats a
# key, the other copies (once the first ones are mapped). The reader encodes a batch as the
# image of a small in-memory database (`encode_rows`: rows bound in its thread, with their
# keys and `first`); the writer attaches it as `logagg_stage` and copies its table, so the
# writer runs no Python and parses nothing per row; or as JSON text, which SQLite unpacks:
# the first copies, then (after U+001E, which JSON text never holds) the other copies, each
# with its place in the batch.
# A row whose key is mapped carries that row's seq and so takes its upsert path; a new one
# gets the next position. Setting topic and event_id shows the triggers which event came
# (they never change a stored row's).
_ON_SEQ = (
    " ON CONFLICT (seq)"
    + _ON_STORED.replace("SET", "SET topic = excluded.topic, event_id = excluded.event_id,", 1)
    + " OR events.topic <> excluded.topic OR events.event_id <> excluded.event_id"
)
_COLUMNS = "(seq, topic, event_id, timestamp, source, payload, extra, ingested_at, key)"
_MAPPED = (
    "coalesce((SELECT seq FROM main.recent_keys AS r WHERE r.key = {0}),"
    " (SELECT seq FROM main.event_keys AS m WHERE m.key = {0}))"
)
_INSERT_STAGED = (
    f"INSERT INTO main.events {_COLUMNS} SELECT {_MAPPED.format('b.key')}, topic, event_id,"
    " timestamp, source, payload, nullif(extra, ''), ?1, key FROM logagg_stage.batch AS b"
    " WHERE first = ?2 ORDER BY rowid" + _ON_SEQ
)
_INSERT = (
    f"INSERT INTO events {_COLUMNS}"
    f" SELECT {_MAPPED.format('k')}, t, e, json_extract(value, '$[2]'),"
    " json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]'),"
    " ?2, k FROM (SELECT value, json_extract(value, '$[0]') AS t,"
    " json_extract(value, '$[1]') AS e, json_extract(value, '$[6]') AS k FROM json_each(?1))"
    " WHERE true" + _ON_SEQ  # WHERE true: tells ON CONFLICT from a join
)
_REPEATS = "\x1e"  # between a JSON batch's first copies and the others
_MAP_NEW = (  # the keys of the rows a statement stored (a collision's row has none)
    "INSERT INTO recent_keys (key, seq) SELECT key, seq FROM events NOT INDEXED"
    " WHERE rowid > ? AND key IS NOT NULL ORDER BY key"
)
# A merge in MERGE_PARTS statements by key range: a statement keeps the original of every
# page it changes in memory (its journal, to undo it alone) until it ends, and a merge
# changes most of event_keys (in one statement: peak RSS 199 MiB at 5M instead of 116).
_MERGE = (
    "INSERT INTO event_keys (key, seq) SELECT key, seq FROM recent_keys"
    " WHERE key BETWEEN ? AND ? ORDER BY key"
)
MERGE_PARTS = 64
_MERGE_RANGES = [
    (-(1 << 63) + (i << 58), -(1 << 63) + ((i + 1) << 58) - 1) for i in range(MERGE_PARTS)
]
_STAGE = (
    "CREATE TABLE batch (topic TEXT, event_id TEXT, timestamp TEXT, source TEXT,"
    " payload TEXT, extra TEXT, key INTEGER, first INTEGER)"
)
_STAGE_ROW = "INSERT INTO batch VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_NO_EXTRA = ""  # an image's `extra` of an event without one (JSON text is never empty)
_APPLIED = "SELECT count(*) FROM logagg_clash WHERE applied"
_WRONG_KEYS = (
    "SELECT count(*) FROM events WHERE key IS NOT NULL AND key <> logagg_key(topic, event_id)"
)
_LOOSE_KEYLESS = (
    "SELECT count(*) FROM (SELECT logagg_key(topic, event_id) AS k FROM events"
    " WHERE key IS NULL) WHERE NOT EXISTS (SELECT 1 FROM recent_keys WHERE key = k)"
    " AND NOT EXISTS (SELECT 1 FROM event_keys WHERE key = k)"
)
_UNMAPPED = (  # keyed rows that neither key table leads to
    "SELECT count(*) FROM events AS e WHERE key IS NOT NULL"
    " AND NOT EXISTS (SELECT 1 FROM recent_keys AS r WHERE r.key = e.key AND r.seq = e.seq)"
    " AND NOT EXISTS (SELECT 1 FROM event_keys AS m WHERE m.key = e.key AND m.seq = e.seq)"
)
_MISMAPPED = (  # keys that lead to no row of that key, or are in both tables
    "SELECT (SELECT count(*) FROM recent_keys AS r WHERE NOT EXISTS"
    " (SELECT 1 FROM events AS e WHERE e.seq = r.seq AND e.key = r.key))"
    " + (SELECT count(*) FROM event_keys AS m WHERE NOT EXISTS"
    " (SELECT 1 FROM events AS e WHERE e.seq = m.seq AND e.key = m.key))"
    " + (SELECT count(*) FROM recent_keys JOIN event_keys USING (key))"
)
_COUNT_AFTER = "SELECT count(*) FROM events NOT INDEXED WHERE rowid > ?"
# NOT INDEXED: read only the rows of this batch by rowid, never the topic index.
_NEW_PER_TOPIC = (
    "SELECT topic, count(*), min(timestamp), max(timestamp) FROM events NOT INDEXED"
    " WHERE rowid > ? GROUP BY topic"
)
_UPSERT_TOPIC = (
    "INSERT INTO topics (topic, events, first_timestamp, last_timestamp) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (topic) DO UPDATE SET events = events + excluded.events,"
    " first_timestamp = min(coalesce(first_timestamp, excluded.first_timestamp),"
    " excluded.first_timestamp),"  # NULL once every event of the topic was pruned
    " last_timestamp = max(coalesce(last_timestamp, excluded.last_timestamp),"
    " excluded.last_timestamp)"
)
_ADD_COUNTERS = (
    "UPDATE counters SET received = received + ?, accepted = accepted + ?,"
    " duplicates = duplicates + ?, invalid = invalid + ?, conflicts = conflicts + ? WHERE id = 1"
)
# One statement each way, whatever the number of rows: fetching or inserting row by row,
# the writer would wait for the GIL after every row while the reader runs.
_CLASH = (
    "SELECT json_group_array(json_array(seq, topic, event_id, old_hash, old_timestamp,"
    " old_source, old_payload, old_extra, timestamp, source, payload, extra, applied))"
    " FROM (SELECT * FROM logagg_clash ORDER BY n)"
)
_NEW_EVENTS = (  # the events a transaction stored, as one JSON array (like _CLASH)
    "SELECT json_group_array(json_array(topic, event_id, timestamp, source, payload, extra,"
    " ingested_at, seq)) FROM (SELECT * FROM events WHERE seq > ? ORDER BY seq)"
)
_BATCH_ROWS = (
    "SELECT json_group_array(json_array(topic, event_id, timestamp, source, payload,"
    " nullif(extra, ''), key)) FROM (SELECT * FROM batch ORDER BY rowid)"
)
_RECORD_CONFLICTS = (
    "INSERT INTO conflicts (topic, event_id, first_hash, last_hash, first_seen, last_seen,"
    " copies) SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, ?2, ?2, value ->> 4"
    " FROM json_each(?1) WHERE true ON CONFLICT (topic, event_id) DO UPDATE SET"
    " last_hash = excluded.last_hash, last_seen = excluded.last_seen,"
    " copies = copies + excluded.copies"
)
_TOPIC_CONFLICTS = "UPDATE topics SET conflicts = conflicts + ? WHERE topic = ?"
_TOPIC_WIDEN = (  # a replacing copy's time widens its topic's range
    "UPDATE topics SET"
    " first_timestamp = CASE WHEN first_timestamp IS NULL OR ?1 < first_timestamp"
    "   THEN ?1 ELSE first_timestamp END,"
    " last_timestamp = CASE WHEN last_timestamp IS NULL OR ?2 > last_timestamp"
    "   THEN ?2 ELSE last_timestamp END"
    " WHERE topic = ?3"
)
# One prune step of a topic: the oldest stored events become tombstones.
_TOMBSTONE = (
    "UPDATE events SET hash = logagg_hash(timestamp, source, payload, extra),"
    " source = NULL, payload = NULL, extra = NULL, ingested_at = NULL"
    " WHERE seq IN (SELECT seq FROM events WHERE topic = ? AND payload IS NOT NULL"
    " AND timestamp < ? ORDER BY timestamp LIMIT ?)"
)
_FORGET = (
    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE topic = ?"
    " AND payload IS NULL AND timestamp < ? ORDER BY timestamp LIMIT ?)"
)
_AFTER_PRUNE = (
    "UPDATE topics SET events = events - ?1, pruned = pruned + ?1,"
    " first_timestamp = (SELECT min(timestamp) FROM events"
    "   WHERE topic = ?2 AND payload IS NOT NULL),"
    " last_timestamp = CASE WHEN events = ?1 THEN NULL ELSE last_timestamp END"
    " WHERE topic = ?2"
)
_SAVE_CHECKPOINT = (
    "INSERT INTO checkpoints (path, device, inode, offset, line, head, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET device = excluded.device,"
    " inode = excluded.inode, offset = excluded.offset, line = excluded.line,"
    " head = excluded.head, updated_at = excluded.updated_at"
)
_SELECT_EVENTS = (
    "SELECT topic, event_id, timestamp, source, payload, extra, ingested_at, seq FROM events"
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
    _GREATEST = "max"
    _SELECT = _SELECT_EVENTS

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self._conn = conn
        self.path = path
        self._recent: int | None = None  # keys in recent_keys, counted at the first write
        self._wal_blocked = 0  # WAL checks in a row that a reader kept from completing
        self._wal_warned = False
        self._next_wal_check = 0.0

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
        if version == 0:  # only a new file takes it (before WAL: then it is fixed)
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        self._enable_wal()
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.create_function("logagg_hash", 4, _hash, deterministic=True)
        conn.create_function("logagg_key", 2, event_key, deterministic=True)
        if version < SCHEMA_VERSION:
            self._migrate()
        for statement in _CONFLICT_SETUP:
            conn.execute(statement)
        conn.execute("ATTACH ':memory:' AS logagg_stage")

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
        """Create or upgrade the schema in one transaction: a crash leaves the old one."""
        with self._write():
            version = self._check_version()  # again: another process may have created it
            for step in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[step]):
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

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._write():
            yield

    def _query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        yield from self._conn.execute(sql, params)

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    def _counters(self) -> tuple[Counters, str | None]:
        row = self._conn.execute(
            "SELECT received, accepted, duplicates, invalid, conflicts, pruned, forgotten,"
            " (SELECT value FROM meta WHERE key = 'last_ingest_at') FROM counters"
        ).fetchone()
        return Counters(*row[:7]), row[7]

    def _topic_rows(self) -> list[tuple[str, int, str | None, str | None, int, int]]:
        return self._conn.execute(
            "SELECT topic, events, first_timestamp, last_timestamp, conflicts, pruned"
            " FROM topics ORDER BY events DESC, topic"
        ).fetchall()

    def _topic_names(self, limit: int) -> list[str]:
        return [
            row[0]
            for row in self._conn.execute(
                "SELECT topic FROM topics WHERE events > 0 LIMIT ?", (limit,)
            )
        ]

    def _size(self) -> tuple[int, int | None]:
        main = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        wal = self._wal_size()
        return main + wal, wal

    def _wal_size(self) -> int:
        try:
            return os.path.getsize(self.path + "-wal")
        except OSError:
            return 0

    def _integrity(self, problems: list[str]) -> str:
        integrity = [row[0] for row in self._conn.execute("PRAGMA integrity_check")]
        if integrity == ["ok"]:
            self._check_keys(problems)
            return "ok"
        found = "; ".join(integrity[:5])
        problems.append(f"integrity check failed: {found}")
        return found

    def _check_keys(self, problems: list[str]) -> None:
        """Deduplication holds only while every row's `key` is the hash of its topic and
        event_id, and the hash of every keyless row is held by another row."""
        wrong = self._conn.execute(_WRONG_KEYS).fetchone()[0]
        if wrong:
            problems.append(
                f"{wrong:,} events have a key that is not the hash of their topic and event_id"
                " (written to by something else than logagg): duplicates of them would be"
                " stored again"
            )
        loose = self._conn.execute(_LOOSE_KEYLESS).fetchone()[0]
        if loose:
            problems.append(f"{loose:,} events without a key have a hash that no event holds")
        unmapped = self._conn.execute(_UNMAPPED).fetchone()[0]
        if unmapped:
            problems.append(
                f"{unmapped:,} events are missing from the key tables (recent_keys,"
                " event_keys): duplicates of them would be stored again"
            )
        mismapped = self._conn.execute(_MISMAPPED).fetchone()[0]
        if mismapped:
            problems.append(
                f"{mismapped:,} entries of the key tables lead to no event of their key"
            )

    def _stored_version(self) -> int | None:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _horizon(self) -> int:
        # Writers are serialised and AUTOINCREMENT only grows: whatever commits later
        # gets a position above every one committed now.
        return int(self._conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])

    # --- writing -------------------------------------------------------------------------

    def encode_rows(self, rows: Sequence[Row], *, writer_behind: bool = False) -> RowBatch:
        """Rows with each one's key (`event_key`), computed in the caller's thread (the
        reader's) so that the writer runs no Python per row: as JSON text, which the
        writer's SQLite unpacks; or, `writer_behind`, as the image of an in-memory database
        holding them in one table, which costs this thread more and the writer less."""
        seen: set[int] = set()
        if not writer_behind or len(rows) < STAGE_AT_LEAST:
            firsts, repeats = [], []
            for n, r in enumerate(rows):
                key = event_key(r[0], r[1])
                if key in seen:
                    repeats.append((*r, key, n))
                else:
                    seen.add(key)
                    firsts.append((*r, key))
            text = orjson.dumps(firsts).decode()
            if repeats:
                text += _REPEATS + orjson.dumps(repeats).decode()
            return RowBatch(text, len(rows), len(seen))
        # Only str and int: binding None or a bool costs the sqlite3 module a failed
        # adaptation (an exception built and dropped) per value, a third of the time.
        keyed: list[tuple[str, str, str, str, str, str, int, int]] = []
        append, add = keyed.append, seen.add
        for topic, event_id, timestamp, source, payload, extra in rows:
            key = event_key(topic, event_id)
            append(
                (
                    topic,
                    event_id,
                    timestamp,
                    source,
                    payload,
                    _NO_EXTRA if extra is None else extra,
                    key,
                    0 if key in seen else 1,
                )
            )
            add(key)
        stage = sqlite3.connect(":memory:", isolation_level=None)
        try:
            stage.execute("PRAGMA journal_mode = OFF")
            stage.execute(_STAGE)
            stage.execute("BEGIN")
            stage.executemany(_STAGE_ROW, keyed)
            stage.execute("COMMIT")
            return RowBatch(stage.serialize(), len(rows), len(seen))
        finally:
            stage.close()

    def decode_rows(self, batch: RowBatch) -> Sequence[Sequence[Any]]:
        if isinstance(batch.data, str):
            firsts, _, repeats = batch.data.partition(_REPEATS)
            rows: list[list[Any]] = orjson.loads(firsts)
            for *row, n in orjson.loads(repeats) if repeats else ():
                rows.insert(n, row)
            return rows
        stage = sqlite3.connect(":memory:")
        try:
            stage.deserialize(batch.data)
            staged: list[list[Any]] = orjson.loads(stage.execute(_BATCH_ROWS).fetchone()[0])
            return staged
        finally:
            stage.close()

    def configure(self, *, keep_last: bool = False, retain: float | None = None) -> None:
        super().configure(keep_last=keep_last, retain=retain)
        with self._guard():
            self._conn.execute("UPDATE logagg_mode SET keep_last = ?", (int(keep_last),))

    def _insert(
        self,
        batches: Sequence[RowBatch],
        invalid: int,
        new_events: bool,
        checkpoints: Sequence[Checkpoint],
    ) -> BatchResult:
        now = utc_now()
        received = sum(batch.count for batch in batches)
        keep_last = self.keep_last
        with self._write() as conn:
            before = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
            per_batch = []
            replaced = 0
            mapped = 0
            top = before
            for b in batches:
                if b.keys is None:  # not made by `encode_rows`: without keys
                    b = self.encode_rows(self.decode_rows(b))  # type: ignore[arg-type]
                if isinstance(b.data, bytes):
                    conn.deserialize(b.data, name="logagg_stage")
                    changed = conn.execute(_INSERT_STAGED, (now, 1)).rowcount
                    if changed:
                        mapped += conn.execute(_MAP_NEW, (top,)).rowcount
                    if (b.keys or 0) < b.count:
                        changed += conn.execute(_INSERT_STAGED, (now, 0)).rowcount
                else:
                    firsts, _, repeats = b.data.partition(_REPEATS)
                    changed = conn.execute(_INSERT, (firsts, now)).rowcount
                    if changed:
                        mapped += conn.execute(_MAP_NEW, (top,)).rowcount
                    if repeats:
                        changed += conn.execute(_INSERT, (repeats, now)).rowcount
                if conn.execute("SELECT EXISTS (SELECT 1 FROM logagg_aside)").fetchone()[0]:
                    # a collision stored an event from a trigger, which rowcount leaves out
                    conn.execute("DELETE FROM logagg_aside")
                    changed = conn.execute(_COUNT_AFTER, (top,)).fetchone()[0]
                    replaced = conn.execute(_APPLIED).fetchone()[0]
                elif keep_last:  # the update path counts as a change; it stored nothing new
                    applied = conn.execute(_APPLIED).fetchone()[0]
                    changed -= applied - replaced
                    replaced = applied
                top = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
                per_batch.append(changed)
            noted = conn.execute(_CLASH).fetchone()[0]
            clash = _conflicts(noted) if noted != "[]" else []
            if noted != "[]":
                conn.execute("DELETE FROM logagg_clash")
            new: tuple[StoredEvent, ...] = ()
            if new_events:
                stored = conn.execute(_NEW_EVENTS, (before,)).fetchone()[0]
                new = tuple(StoredEvent(*row) for row in orjson.loads(stored))
            per_topic = conn.execute(_NEW_PER_TOPIC, (before,)).fetchall()
            if per_topic:
                conn.executemany(_UPSERT_TOPIC, per_topic)
            if clash:
                self._record_conflicts(conn, clash, now)
            accepted = sum(count for _, count, _, _ in per_topic)
            duplicates = received - accepted
            conn.execute(
                _ADD_COUNTERS, (received + invalid, accepted, duplicates, invalid, len(clash))
            )
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
            if self._recent is None:  # this connection's first write: count them (these too)
                recent = int(conn.execute("SELECT count(*) FROM recent_keys").fetchone()[0])
            else:
                recent = self._recent + mapped
            if recent >= MERGE_AT:
                conn.executemany(_MERGE, _MERGE_RANGES)
                conn.execute("DELETE FROM recent_keys")
                recent = 0
        self._recent = recent
        return BatchResult(accepted, duplicates, invalid, tuple(per_batch), new, (), len(clash))

    def _record_conflicts(
        self, conn: sqlite3.Connection, clash: list[tuple[Any, ...]], now: str
    ) -> None:
        """Record the conflicts one transaction met (in input order); move each replaced
        event to a new position, after every one committed before."""
        records: dict[tuple[str, str], list[int]] = {}
        moved: dict[int, str] = {}  # seq of a replaced row -> its new time
        for seq, topic, event_id, stored, new, applied, timestamp in clash:
            record = records.setdefault((topic, event_id), [stored, new, 0])
            record[1] = new
            record[2] += 1
            if applied:
                moved[seq] = timestamp
        rows = [(t, e, first, last, n) for (t, e), (first, last, n) in records.items()]
        conn.execute(_RECORD_CONFLICTS, (orjson.dumps(rows).decode(), now))
        per_topic = Counter(row[1] for row in clash)
        conn.executemany(_TOPIC_CONFLICTS, [(n, t) for t, n in per_topic.items()])
        if not moved:
            return
        top = conn.execute(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0),"
            " (SELECT coalesce(max(seq), 0) FROM events))"
        ).fetchone()[0]
        topics: dict[str, tuple[str, str]] = {}
        for seq, timestamp in sorted(moved.items()):
            top += 1
            conn.execute("UPDATE events SET seq = ? WHERE seq = ?", (top, seq))
            topic = conn.execute("SELECT topic FROM events WHERE seq = ?", (top,)).fetchone()[0]
            low, high = topics.get(topic, (timestamp, timestamp))
            topics[topic] = (min(low, timestamp), max(high, timestamp))
        conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'events'", (top,))
        conn.executemany(_TOPIC_WIDEN, [(lo, hi, t) for t, (lo, hi) in topics.items()])

    def checkpoints(self) -> dict[str, Checkpoint]:
        with self._guard():
            rows = self._conn.execute(
                "SELECT path, device, inode, offset, line, head FROM checkpoints"
            ).fetchall()
        return {row[0]: Checkpoint(*row) for row in rows}

    # --- retention and space -------------------------------------------------------------

    def _prune_step(self, topic: str, before: str, forget: bool, limit: int) -> tuple[int, int]:
        with self._write() as conn:
            pruned = conn.execute(_TOMBSTONE, (topic, before, limit)).rowcount
            forgotten = conn.execute(_FORGET, (topic, before, limit)).rowcount if forget else 0
            if pruned:
                conn.execute(_AFTER_PRUNE, (pruned, topic))
            if pruned or forgotten:
                conn.execute(
                    "UPDATE counters SET pruned = pruned + ?, forgotten = forgotten + ?",
                    (pruned, forgotten),
                )
        return pruned, forgotten

    def _maintain(self) -> None:
        """Keep the WAL bounded: past WAL_CHECK_BYTES, checkpoint and truncate it; when a
        reader keeps a checkpoint from completing twice in a row, say so once."""
        wal = self._wal_size()
        if wal <= WAL_CHECK_BYTES:
            self._wal_blocked = 0
            return
        now = time.monotonic()
        if now < self._next_wal_check:
            return
        self._next_wal_check = now + WAL_CHECK_SECONDS
        with self._guard():
            busy, log, done = self._checkpoint("PASSIVE", wait=False)
            if log >= 0 and done >= log:  # all copied back: reset and truncate the file
                self._checkpoint("TRUNCATE", wait=True)
                self._wal_blocked = 0
                return
        self._wal_blocked += 1
        if self._wal_blocked >= 2 and not self._wal_warned:
            self._wal_warned = True
            database = os.path.getsize(self.path)
            self.notice(
                f"{self.path}: the WAL file has grown to {human_bytes(self._wal_size())}"
                f" (the database is {human_bytes(database)}) and cannot be checkpointed:"
                " another connection has held a read transaction open since (SQLite cannot"
                " tell which process); it keeps growing until that reader ends: close"
                " long-running readers (a `sqlite3` shell, a paused `logagg events`, a"
                " backup), then it is emptied at the next checkpoint"
            )

    def _checkpoint(self, mode: str, *, wait: bool) -> tuple[int, int, int]:
        """(busy, frames in the WAL, frames copied back); waits at most CHECKPOINT_WAIT_MS
        for other connections when `wait`."""
        conn = self._conn
        if not wait:
            row = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            return int(row[0]), int(row[1]), int(row[2])
        conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
        try:
            row = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        return int(row[0]), int(row[1]), int(row[2])

    def vacuum(self) -> str:
        """VACUUM: rewrite the file without the space pruned events left (a tombstone is
        smaller than the row it replaces, so that space is spread over many pages, which
        only a rewrite returns). It holds the write lock while it runs."""
        conn = self._conn
        with self._guard():
            before = os.path.getsize(self.path)
            began = time.monotonic()
            conn.execute("VACUUM")
            self._checkpoint("TRUNCATE", wait=True)
            after = os.path.getsize(self.path)
        return (
            f"{self.path}: rewritten with VACUUM in {time.monotonic() - began:.1f} s:"
            f" {human_bytes(before)} -> {human_bytes(after)}"
        )

    def backup(self, target: str) -> None:
        """Copy the store to the new file `target` with SQLite's backup API, in one step:
        one read transaction, so the copy is one consistent snapshot while writers go on.
        Written to a temporary name first, renamed when complete."""
        if os.path.lexists(target):
            raise StoreError(f"{target}: already exists; name a new file")
        partial = f"{target}.partial-{os.getpid()}"
        try:
            copy = sqlite3.connect(partial, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(_describe(exc, target)) from None
        try:
            try:
                self._conn.backup(copy, pages=-1)
                copy.execute("PRAGMA journal_mode = WAL")
            finally:
                copy.close()
            os.replace(partial, target)
        except sqlite3.Error as exc:
            raise StoreError(f"{target}: backup failed: {_describe(exc, self.path)}") from None
        except OSError as exc:
            raise StoreError(f"{target}: backup failed: {exc.strerror or exc}") from None
        finally:
            for leftover in (partial, partial + "-wal", partial + "-shm", partial + "-journal"):
                if os.path.exists(leftover):
                    os.unlink(leftover)


def _statements(script: str) -> Iterator[str]:
    """The statements of `script`, a trigger's body kept whole."""
    statement = ""
    for part in script.split(";"):
        statement += part + ";"
        if sqlite3.complete_statement(statement):
            if statement.strip(" \n;"):
                yield statement
            statement = ""


def _conflicts(noted: str) -> list[tuple[Any, ...]]:
    """The conflicts among the copies logagg_clash noted (a JSON array of its rows, in
    order): (seq, topic, event_id, stored hash, new hash, applied, new time) of each copy
    whose content differs from the stored one (a tombstone's content is its hash)."""
    found = []
    for (
        seq,
        topic,
        event_id,
        old_hash,
        *old,
        timestamp,
        source,
        payload,
        extra,
        applied,
    ) in orjson.loads(noted):
        stored = old_hash if old[2] is None else content_hash(*old)
        new = content_hash(timestamp, source, payload, extra)
        if stored != new:
            found.append((seq, topic, event_id, stored, new, applied, timestamp))
    return found


def event_key(topic: str, event_id: str) -> int:
    """The 64-bit key of `(topic, event_id)`: the first 8 bytes of the MD5 of both joined
    by U+001F, signed. Equal events have equal keys; different ones almost always differ,
    and when they do not, the store tells them apart by their texts."""
    key: int = _first_8(_md5(f"{topic}\x1f{event_id}".encode("utf-8", "surrogatepass")).digest())[0]
    return key


_first_8 = struct.Struct(">q").unpack_from
_md5: Callable[[bytes], Any]
try:  # CPython's own MD5: for texts this short, about twice as quick as OpenSSL's
    from _md5 import md5 as _md5  # type: ignore[import-not-found,no-redef]
except ImportError:  # a build without it
    _md5 = functools.partial(hashlib.md5, usedforsecurity=False)


def _hash(timestamp: str, source: str, payload: str, extra: str | None) -> int:
    return content_hash(timestamp, source, payload, extra)
