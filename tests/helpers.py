"""Plain helpers shared by the test modules (fixtures live in conftest.py).

Waiting: `wait_until` polls a condition with a deadline and fails naming what it waited
for; tests wait for an observable state (rows in the store, bytes read from a pipe),
never for a fixed time. Stores: `contents`, `event_count`, `stored_ids` read a SQLite
file directly; `listed_events` / `listed_keys` / `listed_ids` ask `logagg events` in
another process. `Backend` reaches the tables of either backend without logagg.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import sqlite3
import struct
import subprocess
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from logagg.gen import GenStats, generate
from logagg.models import Row, event_from_fields
from logagg.store import Store

T = TypeVar("T")

DEFAULT_SEED = 20250101
WAIT = 20.0  # the longest any awaited state may take before the test fails


def seed_from_env(default: int = DEFAULT_SEED) -> int:
    """The seed of randomised tests: `LOGAGG_TEST_SEED=N` replays a failure."""
    return int(os.environ.get("LOGAGG_TEST_SEED", str(default)))


SEED = seed_from_env()


# --- waiting --------------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], T], timeout: float, what: str, *, interval: float = 0.02
) -> T:
    """Poll `predicate` until it returns a true value, and return that value; fail the test
    naming `what` if `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}", pytrace=False)
        time.sleep(interval)


def unread(fd: int) -> int:
    """Bytes written to a pipe (either end's fd) and not yet read by the other side."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


def wait_until_read(proc: subprocess.Popen[bytes], timeout: float = WAIT) -> None:
    """Wait until a running process has read everything written to its stdin pipe."""
    assert proc.stdin is not None
    fd = proc.stdin.fileno()

    def drained() -> bool:
        assert proc.poll() is None, f"the process ended early with {proc.returncode}"
        return unread(fd) == 0

    wait_until(drained, timeout, f"the process to read its stdin ({unread(fd)} bytes unread)")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- input ----------------------------------------------------------------------------------


def jsonl(*docs: dict[str, Any] | str) -> str:
    """Events (dicts) or raw lines (str) as JSON-lines text."""
    return "".join((d if isinstance(d, str) else json.dumps(d)) + "\n" for d in docs)


def jsonl_bytes(*docs: dict[str, Any] | str) -> bytes:
    return jsonl(*docs).encode()


def row(n: int, topic: str = "t", **fields: Any) -> Row:
    """A validated event row numbered `n` (see conftest.event)."""
    from conftest import event

    return event_from_fields(**event(n, topic, **fields))


def stage_every_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make SQLite stores encode every batch as a database image, the form the reader
    chooses while the writer is behind (small batches included)."""
    from logagg.store import sqlite

    encode = sqlite.SQLiteStore.encode_rows

    def staged(self: sqlite.SQLiteStore, rows: Any, *, writer_behind: bool = False) -> Any:
        return encode(self, rows, writer_behind=True)

    monkeypatch.setattr(sqlite, "STAGE_AT_LEAST", 1)
    monkeypatch.setattr(sqlite.SQLiteStore, "encode_rows", staged)


def generated(path: Path, count: int, seed: int, **options: Any) -> set[tuple[str, str]]:
    """Write `count` lines of `logagg gen` (with re-sends) to `path`; return their keys."""
    stats = GenStats()
    with open(path, "w", encoding="utf-8") as out:
        out.writelines(generate(count, seed=seed, stats=stats, **options))
    keys = keys_of_file(path)
    assert len(keys) == stats.unique
    return keys


def keys_of_file(path: Path) -> set[tuple[str, str]]:
    """The (topic, event_id) of every line of a JSON-lines file of valid events."""
    with open(path, "rb") as f:
        return {(d["topic"], d["event_id"]) for d in map(json.loads, f)}


# --- reading a SQLite store directly ------------------------------------------------------


def contents(db: Path) -> list[tuple[Any, ...]]:
    """The stored events without ingest times, in key order."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT topic, event_id, timestamp, source, payload, extra FROM events"
            " ORDER BY topic, event_id"
        ).fetchall()
    conn.close()
    return rows


def _read(db: Path, statement: str) -> list[tuple[Any, ...]]:
    """Rows of one statement; none while the store or its tables do not exist yet."""
    if not os.path.exists(db):
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(statement).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # the schema is being created
            return []
        raise
    finally:
        conn.close()


def event_count(db: Path) -> int:
    """Rows in the events table of a SQLite store (0 before it exists)."""
    rows = _read(db, "SELECT count(*) FROM events")
    return int(rows[0][0]) if rows else 0


def accepted_count(db: Path) -> int:
    """The store's accepted counter, which changes in the same transaction as its rows:
    cheap to poll while a writer is busy (0 before the store exists)."""
    rows = _read(db, "SELECT accepted FROM counters")
    return int(rows[0][0]) if rows else 0


def stored_ids(db: Path) -> list[str]:
    """Event ids of a SQLite store in insertion order (none before it exists)."""
    return [r[0] for r in _read(db, "SELECT event_id FROM events ORDER BY rowid")]


def stored_keys(db: Path) -> list[tuple[str, str]]:
    """Every (topic, event_id) of a SQLite store, in insertion order."""
    return [(r[0], r[1]) for r in _read(db, "SELECT topic, event_id FROM events ORDER BY rowid")]


def wait_for_events(db: Path, count: int, timeout: float = WAIT) -> int:
    """Wait until a SQLite store holds at least `count` events; return how many it holds."""
    return wait_until(
        lambda: (found := event_count(db)) >= count and found,
        timeout,
        f"{count} events in {db} (found {event_count(db)})",
    )


# --- reading any store through `logagg events` in another process --------------------------


def listed_events(db: Path | str, *args: str) -> list[dict[str, Any]]:
    """Every stored event, oldest first, as a separate `logagg events` process lists it."""
    from conftest import run_logagg

    proc = run_logagg("events", "--db", db, "--all", "--order", "asc", "--format", "jsonl", *args)
    assert proc.returncode == 0, proc.stderr.decode()
    return [json.loads(line) for line in proc.stdout.splitlines()]


def listed_keys(db: Path | str) -> list[tuple[str, str]]:
    """Every stored (topic, event_id), oldest first, as `logagg events` lists them."""
    return [(d["topic"], d["event_id"]) for d in listed_events(db)]


def listed_ids(db: Path | str) -> list[str]:
    return [d["event_id"] for d in listed_events(db)]


# --- reports and errors -----------------------------------------------------------------------

_REPORT = re.compile(
    r"^received ([\d,]+)  accepted ([\d,]+)  duplicates ([\d,]+)  invalid ([\d,]+)  in ",
    re.MULTILINE,
)


def report_counts(stderr: str | bytes) -> tuple[int, int, int, int]:
    """(received, accepted, duplicates, invalid) of the one ingest report line on stderr."""
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    found = _REPORT.findall(text)
    assert len(found) == 1, f"expected one report line, got:\n{text}"
    received, accepted, duplicates, invalid = (int(n.replace(",", "")) for n in found[0])
    return received, accepted, duplicates, invalid


def one_line_error(stderr: str | bytes) -> str:
    """Assert stderr is one `logagg: error: ...` line without a traceback; return it."""
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    assert "Traceback" not in text, text
    assert text.count("\n") == 1 and text.endswith("\n"), repr(text)
    assert text.startswith("logagg: error: "), repr(text)
    assert len(text.strip()) > len("logagg: error:")
    return text


def assert_one_line_error(
    proc: subprocess.CompletedProcess[bytes], *words: str, code: int = 1
) -> str:
    """Exit `code` and one `logagg: error:` line on stderr naming one of `words` (in any
    case); return the line."""
    text = proc.stderr.decode()
    assert proc.returncode == code, (proc.returncode, text)
    line = one_line_error(text)
    assert any(w.lower() in line.lower() for w in words), f"{line!r} names none of {words}"
    return line


# --- a store of either backend, reached without logagg -------------------------------------


def pg_sql(url: str, statement: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the database at `url` in its own connection (autocommit)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


@dataclass
class Backend:
    """One store location (a SQLite path or a PostgreSQL URL) and its tables."""

    name: str  # "sqlite" or "postgres"
    location: str

    def open(self, create: bool = True) -> Store:
        if self.name == "postgres":
            from logagg.store.postgres import PostgresStore

            return PostgresStore.open(self.location, create=create)
        from logagg.store.sqlite import SQLiteStore

        return SQLiteStore.open(self.location, create=create)

    @property
    def schema_version(self) -> int:
        if self.name == "postgres":
            from logagg.store import postgres

            return postgres.SCHEMA_VERSION
        from logagg.store import sqlite

        return sqlite.SCHEMA_VERSION

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        """Run statements (`;`-separated) in a separate connection and commit."""
        if self.name == "postgres":
            return pg_sql(self.location, statement)
        conn = sqlite3.connect(self.location)
        try:
            rows = conn.executescript(statement).fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()

    def stored_version(self) -> int:
        """The schema version the store's own marker holds."""
        if self.name == "postgres":
            statement = "SELECT value FROM logagg_meta WHERE key = 'schema_version'"
            return int(pg_sql(self.location, statement)[0][0])
        return int(_read(Path(self.location), "PRAGMA user_version")[0][0])

    def set_version(self, version: int) -> None:
        """Write another schema version into the store's marker, as another logagg would."""
        if self.name == "postgres":
            self.sql(f"UPDATE logagg_meta SET value = '{version}' WHERE key = 'schema_version'")
        else:
            self.sql(f"PRAGMA user_version = {version}")

    def raw_rows(self) -> list[tuple[Any, ...]]:
        """Every stored event (topic, event_id, timestamp, source, payload, extra, order)."""
        if self.name == "postgres":
            statement = (
                'SELECT topic, event_id, "timestamp", source, payload::text, extra::text, seq'
                " FROM events"
            )
            return pg_sql(self.location, statement)
        return _read(
            Path(self.location),
            "SELECT topic, event_id, timestamp, source, payload, extra, rowid FROM events",
        )


def counters(store: Store) -> tuple[int, int, int, int]:
    """(received, accepted, duplicates, invalid) as the store's stats give them."""
    c = store.stats().counters
    return (c.received, c.accepted, c.duplicates, c.invalid)
