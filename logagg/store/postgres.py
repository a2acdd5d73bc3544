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

PostgreSQL text cannot hold U+0000: events with one in a name or the time are refused when
they are validated, on both backends, so no row here has one.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote

import psycopg
from psycopg import conninfo

from logagg.errors import SchemaVersionError, StoreError
from logagg.models import Checkpoint, RowBatch, StoredEvent
from logagg.store.base import BatchResult, Counters, Store, newer_schema
from logagg.timestamps import utc_now

SCHEMA_VERSION = 2
CONNECT_TIMEOUT_SECONDS = 10
FOLD_EVERY = 16  # commits of one store between folds of the delta rows
FETCH_ROWS = 2000  # rows a listing fetches from the server at a time
WORK_MEM = "64MB"  # a transaction's sorts stay in memory
# Advisory lock keys ("logagg" in ASCII, then 1 and 2): creating the schema, folding deltas.
LOCK_SCHEMA = 0x6C6F67616767_01
LOCK_FOLD = 0x6C6F67616767_02
TABLES = ("events", "topics", "topic_deltas", "counters", "counter_deltas", "checkpoints")

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

# MIGRATIONS[v] takes a store from version v to v + 1.
MIGRATIONS: list[str] = [_V1, _V2]
assert len(MIGRATIONS) == SCHEMA_VERSION

# The whole transaction in one statement. `numbered` gives every input row an id in input
# order; `firsts` keeps the first copy of each key and yields them in key order, the order
# in which the insert takes its locks; the deltas are appended from what was inserted.
_WRITE_HEAD = """
WITH input AS (
    SELECT b.bn, r.n, r.e
    FROM unnest(%(docs)b::text[]) WITH ORDINALITY AS b(doc, bn),
         jsonb_array_elements(b.doc::jsonb) WITH ORDINALITY AS r(e, n)
    ORDER BY b.bn, r.n
), numbered AS MATERIALIZED (
    SELECT nextval('events_id_seq') AS id, bn,
           (e ->> 0) COLLATE "C" AS topic, (e ->> 1) COLLATE "C" AS event_id,
           (e ->> 2) AS ts, (e ->> 3) AS source, (e ->> 4) AS payload, (e ->> 5) AS extra
    FROM input
), firsts AS (
    SELECT DISTINCT ON (topic, event_id) * FROM numbered ORDER BY topic, event_id, id
), ins AS (
    INSERT INTO events (id, topic, event_id, "timestamp", source, payload, extra, ingested_at)
    SELECT id, topic, event_id, ts, source, payload::json, extra::json, %(now)s
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
)
"""
_WRITE = (
    _WRITE_HEAD.replace("{returning}", 'id, topic, "timestamp"')
    + "SELECT numbered.bn, count(*) FROM ins JOIN numbered USING (id) GROUP BY 1"
)
_WRITE_NEW = (
    _WRITE_HEAD.replace("{returning}", 'id, topic, event_id, "timestamp", source, payload, extra')
    + 'SELECT numbered.bn, ins.topic, ins.event_id, ins."timestamp", ins.source,'
    " ins.payload::text, ins.extra::text FROM ins JOIN numbered USING (id) ORDER BY ins.id"
)
_SAVE_CHECKPOINT = (
    'INSERT INTO checkpoints (path, device, inode, "offset", line, head, updated_at)'
    " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (path) DO UPDATE SET"
    ' device = excluded.device, inode = excluded.inode, "offset" = excluded."offset",'
    " line = excluded.line, head = excluded.head, updated_at = excluded.updated_at"
)
_FOLD_COUNTERS = """
WITH d AS (DELETE FROM counter_deltas RETURNING received, accepted, duplicates, invalid, at)
UPDATE counters SET received = counters.received + s.received,
    accepted = counters.accepted + s.accepted, duplicates = counters.duplicates + s.duplicates,
    invalid = counters.invalid + s.invalid,
    last_ingest_at = greatest(counters.last_ingest_at, s.at)
FROM (SELECT coalesce(sum(received), 0) AS received, coalesce(sum(accepted), 0) AS accepted,
             coalesce(sum(duplicates), 0) AS duplicates, coalesce(sum(invalid), 0) AS invalid,
             max(at) AS at FROM d) AS s
WHERE counters.id = 1
"""
_FOLD_TOPICS = """
WITH d AS (DELETE FROM topic_deltas RETURNING topic, events, first_timestamp, last_timestamp)
INSERT INTO topics (topic, events, first_timestamp, last_timestamp)
SELECT topic, sum(events), min(first_timestamp), max(last_timestamp) FROM d
GROUP BY topic ORDER BY topic
ON CONFLICT (topic) DO UPDATE SET events = topics.events + excluded.events,
    first_timestamp = least(topics.first_timestamp, excluded.first_timestamp),
    last_timestamp = greatest(topics.last_timestamp, excluded.last_timestamp)
"""
_COUNTERS = """
SELECT c.received + d.received, c.accepted + d.accepted, c.duplicates + d.duplicates,
       c.invalid + d.invalid, greatest(c.last_ingest_at, d.at)
FROM counters AS c,
     (SELECT coalesce(sum(received), 0) AS received, coalesce(sum(accepted), 0) AS accepted,
             coalesce(sum(duplicates), 0) AS duplicates, coalesce(sum(invalid), 0) AS invalid,
             max(at) AS at FROM counter_deltas) AS d
WHERE c.id = 1
"""
_TOPICS = """
SELECT topic, sum(events)::bigint, min(first_timestamp), max(last_timestamp)
FROM (SELECT topic, events, first_timestamp, last_timestamp FROM topics
      UNION ALL SELECT topic, events, first_timestamp, last_timestamp FROM topic_deltas) AS t
GROUP BY topic ORDER BY 2 DESC, topic
"""
_SELECT_EVENTS = (
    'SELECT topic, event_id, "timestamp", source, payload::text, extra::text, ingested_at, id'
    " FROM events"
)
_SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"

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
    _ORDER = "id"
    _SELECT = _SELECT_EVENTS

    def __init__(self, conn: psycopg.Connection[Any], url: str) -> None:
        self._conn = conn
        self._url = url
        self.path = redact(url)
        self._commits_since_fold = 0

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
        docs = [batch.json for batch in batches]
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
                result = conn.execute(_WRITE_NEW if new_events else _WRITE, params).fetchall()
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
        new: tuple[StoredEvent, ...] = ()
        if new_events:
            counts = Counter(row[0] for row in result)
            new = tuple(StoredEvent(r[1], r[2], r[3], r[4], r[5], r[6], now) for r in result)
        else:
            counts = Counter({bn: count for bn, count in result})
        per_batch = tuple(counts.get(bn, 0) for bn in range(1, len(batches) + 1))
        accepted = sum(per_batch)
        return BatchResult(accepted, rows - accepted, invalid, per_batch, new)

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

    def _counters(self) -> tuple[Counters, str | None]:
        row = self._conn.execute(_COUNTERS).fetchone()
        assert row is not None
        return Counters(*(int(v) for v in row[:4])), row[4]

    def _topic_rows(self) -> list[tuple[str, int, str, str]]:
        return [(t, int(n), first, last) for t, n, first, last in self._conn.execute(_TOPICS)]

    def _topic_names(self, limit: int) -> list[str]:
        return [
            row[0]
            for row in self._conn.execute(
                "SELECT topic FROM topics UNION SELECT topic FROM topic_deltas LIMIT %s", [limit]
            )
        ]

    def _size(self) -> int:
        row = self._conn.execute(
            "SELECT sum(pg_total_relation_size(to_regclass(t)))::bigint"
            " FROM unnest(%s::text[]) AS t",
            [["logagg_meta", *TABLES]],
        ).fetchone()
        return int(row[0] or 0) if row else 0

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
