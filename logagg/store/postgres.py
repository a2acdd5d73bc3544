"""The PostgreSQL store: the same contract as SQLite, for many writers at once.

Selected by a `postgresql://` or `postgres://` URL as `--db`; psycopg 3 (the `postgres`
extra) is imported by this module only. Text columns use the "C" collation so that order
is byte order, as in SQLite; payload and extra are `json` (the text as received).

Many writers at once:

- One write transaction is one statement: every RowBatch goes to the server as JSON text
  and is unpacked there, inserted, counted and summarised by data-modifying CTEs.
- Keys are inserted in (topic, event_id) order after the first copy of each key is
  chosen: every transaction takes its key locks in one global order, so writers racing
  on the same keys wait for each other but never deadlock.
- Counters and topic counts are *delta rows* appended in the writer's transaction (no
  hot row to queue on); reads add the base rows to the deltas, and every `FOLD_EVERY`
  commits a writer folds the deltas into the base rows under a non-blocking advisory
  lock, so the delta tables stay small.
- Commit order: positions (`seq`) come from a sequence, so they are taken before commit
  and a transaction can commit after another that took higher ones. Each write
  transaction therefore first takes a *shared* advisory lock whose key holds the
  sequence's value at that moment (`low`); all its positions are above `low`. A reader
  learns how far it may read (`_horizon`) without waiting for anyone: it reads the
  sequence (L), then the lowest `low` among the locks held (pg_locks), and may read up to
  min(L, lows). A writer missing from pg_locks has either finished (its rows are visible
  to any snapshot taken afterwards: locks are released after the commit becomes visible)
  or had not taken its lock yet, so its positions come after L. Writers never wait for
  this lock: shared locks do not conflict, and no one takes it exclusively.
- Conflicts: the write statement finds the few keys that may hold one (a duplicate whose
  stored row differs, or that another writer stored meanwhile; copies of one key in the
  batch that differ); a second statement locks just those rows, reads their latest
  content and settles them in input order, as SQLite does.

PostgreSQL text cannot hold U+0000: events with one in a name or the time are refused when
they are validated, on both backends, so no row here has one.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson
import psycopg
from psycopg import conninfo

from logagg.errors import SchemaVersionError, StoreError
from logagg.models import Checkpoint, RowBatch, StoredEvent, content_hash
from logagg.store.base import BatchResult, Counters, Store, newer_schema
from logagg.timestamps import utc_now
from logagg.units import human_bytes

SCHEMA_VERSION = 3
CONNECT_TIMEOUT_SECONDS = 10
FOLD_EVERY = 16  # commits of one store between folds of the delta rows
FETCH_ROWS = 2000  # rows a listing fetches from the server at a time
WORK_MEM = "64MB"  # a transaction's sorts stay in memory
# Advisory lock keys ("logagg" in ASCII, then 1 and 2): creating the schema, folding deltas.
LOCK_SCHEMA = 0x6C6F67616767_01
LOCK_FOLD = 0x6C6F67616767_02
# A write transaction's commit-order lock: a tag of the store's schema in the top 16 bits
# (stores in other schemas of the database hold their own), the sequence's value when the
# transaction began in the other 48.
LOCK_WRITING_TAG = 0x4000  # never a small key another application might lock
LOCK_WRITING_TAG_BITS = 0x3FFF
TABLES = (
    "events",
    "topics",
    "topic_deltas",
    "counters",
    "counter_deltas",
    "checkpoints",
    "conflicts",
    "cursors",
)

_V1 = """
CREATE TABLE logagg_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE events (
    id          bigserial NOT NULL,          -- insertion order: ties of timestamp
    topic       text COLLATE "C" NOT NULL,
    event_id    text COLLATE "C" NOT NULL,
    "timestamp" text COLLATE "C" NOT NULL,   -- UTC, 2025-01-01T12:00:00.000000Z
    source      text COLLATE "C" NOT NULL,
    payload     json NOT NULL,               -- JSON object, the text as received
    extra       json,                        -- unknown top-level fields, or NULL
    ingested_at text COLLATE "C" NOT NULL,
    PRIMARY KEY (topic, event_id)
);
CREATE INDEX events_topic_time ON events (topic, "timestamp", id);
CREATE TABLE topics (
    topic           text COLLATE "C" PRIMARY KEY,
    events          bigint NOT NULL,
    first_timestamp text COLLATE "C" NOT NULL,
    last_timestamp  text COLLATE "C" NOT NULL
);
CREATE TABLE topic_deltas (
    id              bigserial PRIMARY KEY,
    topic           text COLLATE "C" NOT NULL,
    events          bigint NOT NULL,
    first_timestamp text COLLATE "C" NOT NULL,
    last_timestamp  text COLLATE "C" NOT NULL
);
CREATE TABLE counters (
    id             integer PRIMARY KEY CHECK (id = 1),
    received       bigint NOT NULL,
    accepted       bigint NOT NULL,
    duplicates     bigint NOT NULL,
    invalid        bigint NOT NULL,
    last_ingest_at text COLLATE "C"
);
INSERT INTO counters VALUES (1, 0, 0, 0, 0, NULL);
CREATE TABLE counter_deltas (
    id         bigserial PRIMARY KEY,
    received   bigint NOT NULL,
    accepted   bigint NOT NULL,
    duplicates bigint NOT NULL,
    invalid    bigint NOT NULL,
    at         text COLLATE "C" NOT NULL
);
CREATE TABLE checkpoints (
    path       text COLLATE "C" PRIMARY KEY,
    device     bigint NOT NULL,
    inode      bigint NOT NULL,
    "offset"   bigint NOT NULL,
    line       bigint NOT NULL,
    updated_at text NOT NULL
);
"""

_V2 = """
-- head: the file's first bytes (up to 256), to tell it from another file at its inode
ALTER TABLE checkpoints ADD COLUMN head bytea;
"""

_V3 = """
-- positions in commit order, tombstones, conflicts and cursors
ALTER TABLE events RENAME COLUMN id TO seq;
ALTER SEQUENCE events_id_seq RENAME TO events_seq_seq;
ALTER TABLE events ALTER COLUMN source DROP NOT NULL, ALTER COLUMN payload DROP NOT NULL,
    ALTER COLUMN ingested_at DROP NOT NULL,
    ADD COLUMN hash bigint;  -- a tombstone's content hash
-- positions grow with the table: a BRIN index finds a range of them at almost no cost
-- to writers (reads in commit order cover at most _SPAN positions at a time)
CREATE INDEX events_seq ON events USING brin (seq) WITH (autosummarize = on);
DROP INDEX events_topic_time;
CREATE INDEX events_topic_time ON events (topic, "timestamp", seq) WHERE payload IS NOT NULL;
CREATE INDEX events_pruned ON events (topic, "timestamp") WHERE payload IS NULL;
ALTER TABLE topics ALTER COLUMN first_timestamp DROP NOT NULL,
    ALTER COLUMN last_timestamp DROP NOT NULL,
    ADD COLUMN conflicts bigint NOT NULL DEFAULT 0, ADD COLUMN pruned bigint NOT NULL DEFAULT 0;
ALTER TABLE topic_deltas ALTER COLUMN first_timestamp DROP NOT NULL,
    ALTER COLUMN last_timestamp DROP NOT NULL,
    ADD COLUMN conflicts bigint NOT NULL DEFAULT 0, ADD COLUMN pruned bigint NOT NULL DEFAULT 0;
ALTER TABLE counters ADD COLUMN conflicts bigint NOT NULL DEFAULT 0,
    ADD COLUMN pruned bigint NOT NULL DEFAULT 0, ADD COLUMN forgotten bigint NOT NULL DEFAULT 0;
ALTER TABLE counter_deltas ALTER COLUMN at DROP NOT NULL,
    ADD COLUMN conflicts bigint NOT NULL DEFAULT 0,
    ADD COLUMN pruned bigint NOT NULL DEFAULT 0, ADD COLUMN forgotten bigint NOT NULL DEFAULT 0;
CREATE TABLE conflicts (
    topic      text COLLATE "C" NOT NULL,
    event_id   text COLLATE "C" NOT NULL,
    first_hash bigint NOT NULL,
    last_hash  bigint NOT NULL,
    first_seen text COLLATE "C" NOT NULL,
    last_seen  text COLLATE "C" NOT NULL,
    copies     bigint NOT NULL,
    PRIMARY KEY (topic, event_id)
);
CREATE TABLE cursors (
    name       text COLLATE "C" PRIMARY KEY,
    position   bigint NOT NULL,
    updated_at text COLLATE "C" NOT NULL
);
"""

# MIGRATIONS[v] takes a store from version v to v + 1.
MIGRATIONS: list[str] = [_V1, _V2, _V3]
assert len(MIGRATIONS) == SCHEMA_VERSION

# The whole transaction in one statement. `numbered` gives every input row its position
# in input order; `firsts` keeps the first copy of each key and yields them in key order,
# the order in which the insert takes its locks; the deltas are appended from what was
# inserted. `suspects`: the keys that may hold a conflict, settled by `_settle`.
_WRITE_HEAD = """
WITH input AS (
    SELECT b.bn, r.n, r.e
    FROM unnest(%(docs)b::text[]) WITH ORDINALITY AS b(doc, bn),
         jsonb_array_elements(b.doc::jsonb) WITH ORDINALITY AS r(e, n)
    ORDER BY b.bn, r.n
), numbered AS MATERIALIZED (
    SELECT nextval('events_seq_seq') AS seq, bn,
           (e ->> 0) COLLATE "C" AS topic, (e ->> 1) COLLATE "C" AS event_id,
           (e ->> 2) AS ts, (e ->> 3) AS source, (e ->> 4) AS payload, (e ->> 5) AS extra
    FROM input
), firsts AS (
    SELECT DISTINCT ON (topic, event_id) * FROM numbered ORDER BY topic, event_id, seq
), ins AS (
    INSERT INTO events (seq, topic, event_id, "timestamp", source, payload, extra, ingested_at)
    SELECT seq, topic, event_id, ts, source, payload::json, extra::json, %(now)s
    FROM firsts ORDER BY topic, event_id
    ON CONFLICT DO NOTHING
    RETURNING {returning}
), topic_rows AS (
    INSERT INTO topic_deltas (topic, events, first_timestamp, last_timestamp)
    SELECT topic, count(*), min("timestamp"), max("timestamp") FROM ins GROUP BY topic
), counter_row AS (
    INSERT INTO counter_deltas (received, accepted, duplicates, invalid, at)
    SELECT %(received)s, accepted, %(rows)s - accepted, %(invalid)s, %(now)s
    FROM (SELECT count(*) AS accepted FROM ins) AS s
), dups AS (
    SELECT f.* FROM firsts AS f WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.seq = f.seq)
), later AS (
    SELECT n.* FROM numbered AS n WHERE NOT EXISTS (SELECT 1 FROM firsts AS f WHERE f.seq = n.seq)
), suspects AS (
    SELECT d.topic, d.event_id, false AS ours
    FROM dups AS d LEFT JOIN events AS e ON e.topic = d.topic AND e.event_id = d.event_id
    WHERE e.seq IS NULL OR e.payload IS NULL
       OR (e."timestamp", e.source, e.payload::text, e.extra::text)
          IS DISTINCT FROM (d.ts, d.source, d.payload, d.extra)
    UNION
    SELECT f.topic, f.event_id, EXISTS (SELECT 1 FROM ins WHERE ins.seq = f.seq)
    FROM later AS l JOIN firsts AS f ON f.topic = l.topic AND f.event_id = l.event_id
    WHERE (l.ts, l.source, l.payload, l.extra) IS DISTINCT FROM (f.ts, f.source, f.payload, f.extra)
)
"""
_WRITE = (
    _WRITE_HEAD.replace("{returning}", 'seq, topic, "timestamp"')
    + "SELECT 0, numbered.bn, count(*), NULL::text, NULL::text"
    " FROM ins JOIN numbered USING (seq) GROUP BY numbered.bn"
    " UNION ALL SELECT 1, NULL, ours::int, topic, event_id FROM suspects"
)
_WRITE_NEW = (
    _WRITE_HEAD.replace("{returning}", 'seq, topic, event_id, "timestamp", source, payload, extra')
    + 'SELECT 0, numbered.bn, ins.seq, ins.topic, ins.event_id, ins."timestamp", ins.source,'
    " ins.payload::text, ins.extra::text FROM ins JOIN numbered USING (seq)"
    " UNION ALL SELECT 1, NULL, ours::int, topic, event_id, NULL, NULL, NULL, NULL"
    " FROM suspects ORDER BY 1, 3"
)
# Before its first position, a writer shows where the sequence stands (see the module).
_LOCK_WRITING = (
    "SELECT pg_advisory_xact_lock_shared(%s + (SELECT CASE WHEN is_called THEN last_value"
    " ELSE 0 END FROM events_seq_seq))"
)
_SEQUENCE_AT = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM events_seq_seq"
_LOWEST_WRITING = """
SELECT min(((classid::bigint & 65535) << 32) | objid::bigint) FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 1 AND (classid::bigint >> 16) = %s
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
_SUSPECT_ROWS = """
SELECT e.topic, e.event_id, e."timestamp", e.source, e.payload::text, e.extra::text, e.hash
FROM events AS e JOIN unnest(%s::text[], %s::text[]) AS k(topic, event_id)
    ON e.topic = k.topic COLLATE "C" AND e.event_id = k.event_id COLLATE "C"
ORDER BY e.topic, e.event_id
FOR UPDATE OF e
"""
_REPLACE = """
UPDATE events SET "timestamp" = %s, source = %s, payload = %s::json, extra = %s::json,
    ingested_at = %s, seq = nextval('events_seq_seq')
WHERE topic = %s AND event_id = %s
"""
_RECORD_CONFLICT = """
INSERT INTO conflicts (topic, event_id, first_hash, last_hash, first_seen, last_seen, copies)
VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (topic, event_id) DO UPDATE SET
    last_hash = excluded.last_hash, last_seen = excluded.last_seen,
    copies = conflicts.copies + excluded.copies
"""
_CONTENT_HASH = (  # models.content_hash, in SQL
    "('x' || left(md5(e.\"timestamp\" || chr(31) || e.source || chr(31) || e.payload::text"
    " || chr(31) || coalesce(e.extra::text, '')), 16))::bit(64)::bigint"
)
_TOMBSTONE = f"""
WITH victims AS (
    SELECT seq FROM events WHERE topic = %s AND payload IS NOT NULL AND "timestamp" < %s
    ORDER BY "timestamp" LIMIT %s FOR UPDATE SKIP LOCKED
)
UPDATE events AS e SET hash = {_CONTENT_HASH}, source = NULL, payload = NULL, extra = NULL,
    ingested_at = NULL
FROM victims AS v WHERE e.seq = v.seq
"""
_FORGET = """
WITH victims AS (
    SELECT seq FROM events WHERE topic = %s AND payload IS NULL AND "timestamp" < %s
    ORDER BY "timestamp" LIMIT %s FOR UPDATE SKIP LOCKED
)
DELETE FROM events AS e USING victims AS v WHERE e.seq = v.seq
"""
_AFTER_PRUNE = """
UPDATE topics SET events = events - %(n)s, pruned = pruned + %(n)s,
    first_timestamp = (SELECT min("timestamp") FROM events
                       WHERE topic = %(topic)s AND payload IS NOT NULL),
    last_timestamp = CASE WHEN events = %(n)s THEN NULL ELSE last_timestamp END
WHERE topic = %(topic)s
"""
_SAVE_CHECKPOINT = (
    'INSERT INTO checkpoints (path, device, inode, "offset", line, head, updated_at)'
    " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (path) DO UPDATE SET"
    ' device = excluded.device, inode = excluded.inode, "offset" = excluded."offset",'
    " line = excluded.line, head = excluded.head, updated_at = excluded.updated_at"
)
_SUMS = (
    "coalesce(sum(received), 0) AS received, coalesce(sum(accepted), 0) AS accepted,"
    " coalesce(sum(duplicates), 0) AS duplicates, coalesce(sum(invalid), 0) AS invalid,"
    " coalesce(sum(conflicts), 0) AS conflicts, coalesce(sum(pruned), 0) AS pruned,"
    " coalesce(sum(forgotten), 0) AS forgotten, max(at) AS at"
)
_FOLD_COUNTERS = f"""
WITH d AS (DELETE FROM counter_deltas RETURNING *)
UPDATE counters SET received = counters.received + s.received,
    accepted = counters.accepted + s.accepted, duplicates = counters.duplicates + s.duplicates,
    invalid = counters.invalid + s.invalid, conflicts = counters.conflicts + s.conflicts,
    pruned = counters.pruned + s.pruned, forgotten = counters.forgotten + s.forgotten,
    last_ingest_at = greatest(counters.last_ingest_at, s.at)
FROM (SELECT {_SUMS} FROM d) AS s
WHERE counters.id = 1
"""
_FOLD_TOPICS = """
WITH d AS (DELETE FROM topic_deltas RETURNING *)
INSERT INTO topics (topic, events, first_timestamp, last_timestamp, conflicts, pruned)
SELECT topic, sum(events), min(first_timestamp), max(last_timestamp), sum(conflicts),
       sum(pruned)
FROM d GROUP BY topic ORDER BY topic
ON CONFLICT (topic) DO UPDATE SET events = topics.events + excluded.events,
    first_timestamp = least(topics.first_timestamp, excluded.first_timestamp),
    last_timestamp = greatest(topics.last_timestamp, excluded.last_timestamp),
    conflicts = topics.conflicts + excluded.conflicts, pruned = topics.pruned + excluded.pruned
"""
_COUNTERS = f"""
SELECT c.received + d.received, c.accepted + d.accepted, c.duplicates + d.duplicates,
       c.invalid + d.invalid, c.conflicts + d.conflicts, c.pruned + d.pruned,
       c.forgotten + d.forgotten, greatest(c.last_ingest_at, d.at)
FROM counters AS c, (SELECT {_SUMS} FROM counter_deltas) AS d
WHERE c.id = 1
"""
_TOPICS = """
SELECT topic, sum(events)::bigint, min(first_timestamp), max(last_timestamp),
       sum(conflicts)::bigint, sum(pruned)::bigint
FROM (SELECT topic, events, first_timestamp, last_timestamp, conflicts, pruned FROM topics
      UNION ALL SELECT topic, events, first_timestamp, last_timestamp, conflicts, pruned
      FROM topic_deltas) AS t
GROUP BY topic ORDER BY 2 DESC, topic
"""
_SELECT_EVENTS = (
    'SELECT topic, event_id, "timestamp", source, payload::text, extra::text, ingested_at, seq'
    " FROM events"
)
_SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"


@dataclass(slots=True)
class _Settled:
    """What settling a transaction's suspect keys found: conflicts, and the copies that
    replaced stored rows (keep-last), by key."""

    count: int = 0
    replaced: dict[tuple[str, str], tuple[Any, ...]] = field(default_factory=dict)


_PASSWORD_PARAM = re.compile(r"(?i)(\bpassword=)[^&#\s]*")
_STARS = r"\1***"
_cursors = itertools.count(1)


def redact(url: str) -> str:
    """The URL with any password (in the user part or a `password=` parameter) as `***`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _PASSWORD_PARAM.sub(_STARS, url)
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    head, tail = rest[:cut], rest[cut:]
    userinfo, at, hosts = head.rpartition("@")
    if at and ":" in userinfo:
        head = f"{userinfo.partition(':')[0]}:***@{hosts}"
    return f"{scheme}://{head}{_PASSWORD_PARAM.sub(_STARS, tail)}"


def _secrets(url: str) -> list[str]:
    """The password(s) a URL holds, as written and decoded, to scrub from messages."""
    found: list[str] = []
    _, sep, rest = url.partition("://")
    if sep:
        cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
        userinfo, at, _ = rest[:cut].rpartition("@")
        if at and ":" in userinfo:
            found.append(userinfo.partition(":")[2])
    found += [m.group(0).partition("=")[2] for m in _PASSWORD_PARAM.finditer(url)]
    found += [unquote(s) for s in found]
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)


def _one_line(text: str) -> str:
    return " ".join(text.split())


_UNREACHABLE = (
    "connection refused",
    "could not translate host name",
    "timeout expired",
    "no such file or directory",
    "could not connect",
    "network is unreachable",
    "no route to host",
)
_LOST = (
    "terminating connection",
    "server closed the connection",
    "connection is closed",
    "connection is lost",
    "consuming input failed",
    "sending query failed",
    "the database system is shutting down",
    "the database system is starting up",
)


def describe(exc: BaseException, url: str, *, connecting: bool = False) -> str:
    """One line for the user naming the store (redacted) and what went wrong; the
    password never appears, even where the driver's message quotes the URL."""
    text = _one_line(str(exc)) or type(exc).__name__
    text = text.replace(url, redact(url)).removeprefix("connection failed: ")
    lower = text.lower()
    operational = isinstance(exc, psycopg.OperationalError)
    if "authentication failed" in lower or "no password supplied" in lower:
        text = f"authentication refused: {text}"
    elif 'database "' in lower and "does not exist" in lower:
        text = f"{text} (create it first, e.g. with createdb)"
    elif operational and connecting:
        text = f"cannot connect to PostgreSQL: {text}"
    elif operational and any(sign in lower for sign in _LOST):
        text = (
            f"lost the connection to PostgreSQL ({text}); committed batches are kept:"
            " run the same input again to complete the store"
        )
    elif operational and any(sign in lower for sign in _UNREACHABLE):
        text = f"cannot connect to PostgreSQL: {text}"
    message = f"{redact(url)}: {text}"
    for secret in _secrets(url):
        message = message.replace(secret, "***")
    return message


class PostgresStore(Store):
    """One logagg store in a PostgreSQL database. Use `PostgresStore.open()`; close with
    `close()` or a `with` block."""

    schema_version = SCHEMA_VERSION
    _MARK = "%s"
    _GREATEST = "greatest"
    _SPAN = 20_000
    _SELECT = _SELECT_EVENTS

    def __init__(self, conn: psycopg.Connection[Any], url: str) -> None:
        self._conn = conn
        self._url = url
        self.path = redact(url)
        self._commits_since_fold = 0
        self._writing_tag = LOCK_WRITING_TAG  # once the schema is known, its own (_schema_tag)

    # --- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, *, create: bool = True) -> PostgresStore:
        """Connect to the database named by `url` and (with `create`) create the schema.

        Raises StoreError when it cannot connect or has no store (without `create`),
        SchemaVersionError when the store is newer than this logagg or tables of another
        application are in the way.
        """
        try:
            params = conninfo.conninfo_to_dict(url)
            extra: dict[str, Any] = {"client_encoding": "UTF8"}
            if "connect_timeout" not in params:
                extra["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
            if "application_name" not in params:
                extra["application_name"] = "logagg"
            conn = psycopg.connect(url, autocommit=True, **extra)
        except psycopg.Error as exc:
            raise StoreError(describe(exc, url, connecting=True)) from None
        store = cls(conn, url)
        try:
            with store._guard():
                store._setup(create)
                store._writing_tag = store._schema_tag()
        except BaseException:
            conn.close()
            raise
        return store

    def _setup(self, create: bool) -> None:
        conn = self._conn
        encoding = conn.info.parameter_status("server_encoding")
        if encoding is not None and encoding != "UTF8":
            raise StoreError(
                f"{self.path}: the database encoding is {encoding}; logagg needs UTF8"
                " (CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0)"
            )
        conn.execute(f"SET work_mem = '{WORK_MEM}'")
        version = self._version()
        if version == SCHEMA_VERSION:
            return
        self._check_version(version)
        if version is None and not create:
            raise StoreError(
                f"{self.path}: no logagg store in this database (ingest or publish something first)"
            )
        self._migrate()

    def _schema_tag(self) -> int:
        """The tag of this store's commit-order locks: 14 bits of a hash of its schema's oid,
        so that a follower waits only for writers of its own store (two schemas that share a
        tag, one pair in 16 384, only wait for each other's writers too)."""
        row = self._conn.execute(
            "SELECT relnamespace::bigint FROM pg_class WHERE oid = to_regclass('events_seq_seq')"
        ).fetchone()
        schema = int(row[0]) if row else 0
        return LOCK_WRITING_TAG | zlib.crc32(schema.to_bytes(8, "big")) & LOCK_WRITING_TAG_BITS

    def _version(self) -> int | None:
        """The schema version, or None when this database has no logagg store."""
        row = self._conn.execute("SELECT to_regclass('logagg_meta') IS NOT NULL").fetchone()
        if not row or not row[0]:
            return None
        row = self._conn.execute(
            "SELECT value FROM logagg_meta WHERE key = 'schema_version'"
        ).fetchone()
        if row is None:
            raise SchemaVersionError(f"{self.path}: logagg_meta has no schema_version")
        try:
            return int(row[0])
        except ValueError:
            raise SchemaVersionError(
                f"{self.path}: unreadable schema version {row[0]!r} in logagg_meta"
            ) from None

    def _check_version(self, version: int | None) -> None:
        if version is not None and version > SCHEMA_VERSION:
            raise newer_schema(self.path, version, SCHEMA_VERSION)

    def _migrate(self) -> None:
        """Create or upgrade the schema; concurrent openers wait for one another.

        The lock is taken before the transaction begins, so that the transaction sees
        the tables another opener committed meanwhile.
        """
        conn = self._conn
        conn.execute("SELECT pg_advisory_lock(%s)", [LOCK_SCHEMA])
        try:
            with conn.transaction():
                self._create_or_upgrade()
        finally:
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", [LOCK_SCHEMA])

    def _create_or_upgrade(self) -> None:
        conn = self._conn
        version = self._version()
        self._check_version(version)
        if version is None:
            for table in TABLES:
                row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone()
                if row and row[0]:
                    raise SchemaVersionError(
                        f"{self.path}: the database already has a table '{table}' that is"
                        " not part of a logagg store; use another database, or a schema"
                        " of its own (?options=-csearch_path%3Dlogagg)"
                    )
            version = 0
        for step in range(version, SCHEMA_VERSION):
            conn.execute(MIGRATIONS[step])
        conn.execute(
            "INSERT INTO logagg_meta (key, value) VALUES ('schema_version', %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [str(SCHEMA_VERSION)],
        )
        conn.execute(
            "INSERT INTO logagg_meta (key, value) VALUES ('created_at', %s)"
            " ON CONFLICT (key) DO NOTHING",
            [utc_now()],
        )

    def close(self) -> None:
        """Fold this store's pending deltas (best effort) and disconnect."""
        if self._conn.closed:
            return
        try:
            if self._commits_since_fold:
                self._fold()
        except psycopg.Error:
            pass
        finally:
            self._conn.close()

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
        docs = [batch.data for batch in batches]
        rows = received
        params = {
            "docs": docs,
            "now": now,
            "received": received + invalid,
            "rows": rows,
            "invalid": invalid,
        }
        conn = self._conn
        with self._guard():
            if self._commits_since_fold >= FOLD_EVERY:
                self._fold()
            with conn.transaction():
                conn.execute(_LOCK_WRITING, [self._writing_tag << 48])
                result = conn.execute(_WRITE_NEW if new_events else _WRITE, params).fetchall()
                suspects = [(r[3], r[4], bool(r[2])) for r in result if r[0] == 1]
                settled = _Settled()
                if suspects:
                    settled = self._settle(suspects, batches, now)
                if checkpoints:
                    with conn.cursor() as cur:
                        cur.executemany(
                            _SAVE_CHECKPOINT,
                            [
                                (c.path, c.device, c.inode, c.offset, c.line, c.head, now)
                                for c in sorted(checkpoints, key=lambda c: c.path)
                            ],
                        )
        self._commits_since_fold += 1
        result = [r for r in result if r[0] == 0]
        new: tuple[StoredEvent, ...] = ()
        if new_events:
            counts = Counter(row[1] for row in result)
            events = []
            for r in result:
                t, e, ts, source, payload, extra = settled.replaced.get((r[3], r[4]), r[3:9])
                events.append(StoredEvent(t, e, ts, source, payload, extra, now, r[2]))
            new = tuple(events)
        else:
            counts = Counter({r[1]: r[2] for r in result})
        per_batch = tuple(counts.get(bn, 0) for bn in range(1, len(batches) + 1))
        accepted = sum(per_batch)
        return BatchResult(accepted, rows - accepted, invalid, per_batch, new, (), settled.count)

    def _settle(
        self, suspects: list[tuple[str, str, bool]], batches: Sequence[RowBatch], now: str
    ) -> _Settled:
        """Settle the keys that may hold a conflict, in input order: lock their rows (key
        order, the writers' one lock order), compare every copy with the stored content,
        record the conflicts and, keeping the last copy, replace the stored row (it takes
        a new position)."""
        conn = self._conn
        ours = {(t, e): mine for t, e, mine in suspects}
        copies: dict[tuple[str, str], list[list[Any]]] = {key: [] for key in ours}
        for batch in batches:
            for item in orjson.loads(batch.data):
                listed = copies.get((item[0], item[1]))
                if listed is not None:
                    listed.append(item)
        keys = sorted(ours)
        stored = conn.execute(
            _SUSPECT_ROWS, [[k[0] for k in keys], [k[1] for k in keys]]
        ).fetchall()
        settled = _Settled()
        records = []
        replace_rows = []
        per_topic: dict[str, list[Any]] = {}
        for topic, event_id, ts, source, payload, extra, tomb_hash in stored:
            key = (topic, event_id)
            tombstone = payload is None
            current = tomb_hash if tombstone else content_hash(ts, source, payload, extra)
            items = copies[key][1:] if ours[key] else copies[key]
            found = 0
            first = last = current
            winner = None
            for item in items:
                h = content_hash(item[2], item[3], item[4], item[5])
                if h == current:
                    continue
                if not found:
                    first = current
                found += 1
                last = h
                if self.keep_last and not tombstone:
                    current, winner = h, item
            if not found:
                continue
            settled.count += found
            records.append((topic, event_id, first, last, now, now, found))
            topic_row = per_topic.setdefault(topic, [0, None, None])
            topic_row[0] += found
            if winner is not None:
                replace_rows.append((*winner[2:6], now, topic, event_id))
                settled.replaced[key] = tuple(winner[:6])
                low, high = topic_row[1], topic_row[2]
                topic_row[1] = winner[2] if low is None else min(low, winner[2])
                topic_row[2] = winner[2] if high is None else max(high, winner[2])
        if not records:
            return settled
        with conn.cursor() as cur:
            if replace_rows:
                cur.executemany(_REPLACE, replace_rows)
            cur.executemany(_RECORD_CONFLICT, records)
            cur.executemany(
                "INSERT INTO topic_deltas (topic, events, first_timestamp, last_timestamp,"
                " conflicts) VALUES (%s, 0, %s, %s, %s)",
                [(t, low, high, n) for t, (n, low, high) in sorted(per_topic.items())],
            )
            cur.execute(
                "INSERT INTO counter_deltas (received, accepted, duplicates, invalid, conflicts)"
                " VALUES (0, 0, 0, 0, %s)",
                [settled.count],
            )
        return settled

    def _fold(self) -> None:
        """Move the committed delta rows into the base rows, unless another writer is."""
        conn = self._conn
        with conn.transaction():
            row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", [LOCK_FOLD]).fetchone()
            if row and row[0]:
                conn.execute(_FOLD_COUNTERS)
                conn.execute(_FOLD_TOPICS)
        self._commits_since_fold = 0

    # --- reading -------------------------------------------------------------------------

    def checkpoints(self) -> dict[str, Checkpoint]:
        with self._guard():
            rows = self._conn.execute(
                'SELECT path, device, inode, "offset", line, head FROM checkpoints'
            ).fetchall()
        return {row[0]: Checkpoint(*row) for row in rows}

    # --- primitives ----------------------------------------------------------------------

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            raise StoreError(describe(exc, self._url)) from None

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        with self._conn.transaction():
            self._conn.execute(_SNAPSHOT)
            yield

    def _query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        """Rows of a query through a server-side cursor: memory stays bounded."""
        with self._conn.cursor(name=f"logagg_events_{next(_cursors)}") as cur:
            cur.itersize = FETCH_ROWS
            cur.execute(sql, params)
            yield from cur

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._conn.transaction():
            yield

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    def _counters(self) -> tuple[Counters, str | None]:
        row = self._conn.execute(_COUNTERS).fetchone()
        assert row is not None
        return Counters(*(int(v) for v in row[:7])), row[7]

    def _topic_rows(self) -> list[tuple[str, int, str | None, str | None, int, int]]:
        return [
            (t, int(n), first, last, int(conflicts), int(pruned))
            for t, n, first, last, conflicts, pruned in self._conn.execute(_TOPICS)
        ]

    def _topic_names(self, limit: int) -> list[str]:
        return [row[0] for row in self._conn.execute(_TOPICS) if row[1] > 0][:limit]

    def _size(self) -> tuple[int, int | None]:
        row = self._conn.execute(
            "SELECT sum(pg_total_relation_size(to_regclass(t)))::bigint"
            " FROM unnest(%s::text[]) AS t",
            [["logagg_meta", *TABLES]],
        ).fetchone()
        return (int(row[0] or 0) if row else 0), None

    def _horizon(self) -> int:
        """See the module: the sequence first, then the writers in flight, each its own
        statement (and snapshot), both before the snapshot that reads the events."""
        conn = self._conn
        row = conn.execute(_SEQUENCE_AT).fetchone()
        last = int(row[0]) if row else 0
        row = conn.execute(_LOWEST_WRITING, [self._writing_tag]).fetchone()
        if row is None or row[0] is None:
            return last
        return min(last, int(row[0]))

    def _prune_step(self, topic: str, before: str, forget: bool, limit: int) -> tuple[int, int]:
        """Fold the deltas first (waiting for a fold in progress), so that the topic's
        base row holds its first time, which the prune then moves on."""
        conn = self._conn
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_FOLD])
            conn.execute(_FOLD_COUNTERS)
            conn.execute(_FOLD_TOPICS)
            pruned = conn.execute(_TOMBSTONE, [topic, before, limit]).rowcount
            forgotten = conn.execute(_FORGET, [topic, before, limit]).rowcount if forget else 0
            if pruned:
                conn.execute(_AFTER_PRUNE, {"n": pruned, "topic": topic})
            if pruned or forgotten:
                conn.execute(
                    "INSERT INTO counter_deltas (received, accepted, duplicates, invalid, pruned,"
                    " forgotten) VALUES (0, 0, 0, 0, %s, %s)",
                    [pruned, forgotten],
                )
        return pruned, forgotten

    def vacuum(self) -> str:
        """VACUUM logagg's tables: the space of pruned rows becomes reusable."""
        with self._guard():
            for table in ("events", "topics", "topic_deltas", "counter_deltas", "conflicts"):
                self._conn.execute(f"VACUUM (ANALYZE) {table}")
            size, _ = self._size()
        return (
            f"{self.path}: VACUUM made the space of pruned events reusable for new ones"
            " (autovacuum does the same on its own schedule); the server returns it to the"
            " file system only from the end of a table, or with VACUUM FULL, which locks the"
            f" table while it rewrites it. logagg's tables now take {human_bytes(size)}"
        )

    def _stored_version(self) -> int | None:
        return self._version()

    def _integrity(self, problems: list[str]) -> str:
        """Verify the B-tree indexes with amcheck when the extension is there."""
        conn = self._conn
        if not conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'amcheck'").fetchone():
            return "not verified (the amcheck extension is not installed)"
        failures = []
        for (index,) in conn.execute(
            "SELECT i.indexrelid::regclass::text FROM pg_index AS i"
            " JOIN pg_class AS c ON c.oid = i.indexrelid JOIN pg_am AS a ON a.oid = c.relam"
            " WHERE a.amname = 'btree' AND i.indrelid = ANY"
            " (SELECT to_regclass(t) FROM unnest(%s::text[]) AS t)",
            [list(TABLES)],
        ).fetchall():
            try:
                with conn.transaction():
                    conn.execute("SELECT bt_index_check(%s::regclass)", [index])
            except psycopg.errors.IndexCorrupted as exc:
                failures.append(f"{index}: {_one_line(str(exc))}")
        if failures:
            problems.append(f"integrity check failed: {'; '.join(failures[:5])}")
            return "; ".join(failures[:5])
        return "ok"
