"""The reference floor: the least Python + SQLite can do to store a JSON-lines file deduplicated.

Reads the file, `orjson.loads` each line, and `executemany`s `INSERT OR IGNORE` into the
events table with logagg's columns, keyed by `(topic, event_id)` (the exact text key,
as logagg's store before schema 5) with logagg's index for a topic's newest events, the
payload re-serialised by `orjson.dumps`. No validation. Tuned: one commit per
`--batch-size` events, `cache_size` of `--cache-mib`, `page_size` of `--page-size`, WAL,
`synchronous=NORMAL`; `make bench` gives it the best settings a sweep found for each size.

    python bench/floor.py events.jsonl floor.db --page-size 65536

Prints the number of rows stored.
"""

from __future__ import annotations

import argparse
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    topic       TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    timestamp   TEXT NOT NULL,
    source      TEXT NOT NULL,
    payload     TEXT NOT NULL,
    extra       TEXT,
    ingested_at TEXT NOT NULL,
    PRIMARY KEY (topic, event_id)
);
CREATE INDEX IF NOT EXISTS events_topic_time ON events (topic, timestamp);
"""
INSERT = (
    "INSERT OR IGNORE INTO events"
    " (topic, event_id, timestamp, source, payload, extra, ingested_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)

Row = tuple[str, str, str, str, str, None, str]


def _now() -> str:
    return datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def batches(path: str, size: int) -> Iterator[list[Row]]:
    """Rows of `path`, `size` at a time; blank lines are skipped."""
    loads, dumps = orjson.loads, orjson.dumps
    rows: list[Row] = []
    now = _now()
    with open(path, "rb") as lines:
        for line in lines:
            if not line.strip():
                continue
            doc = loads(line)
            rows.append(
                (
                    doc["topic"],
                    doc["event_id"],
                    doc["timestamp"],
                    doc["source"],
                    dumps(doc.get("payload", {})).decode(),
                    None,
                    now,
                )
            )
            if len(rows) >= size:
                yield rows
                rows = []
                now = _now()
    if rows:
        yield rows


def load(
    path: str, db: str, batch_size: int = 50_000, cache_mib: int = 64, page_size: int = 4096
) -> int:
    """Insert the events of `path` into `db`; return how many rows were added."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute(f"PRAGMA page_size = {page_size}")  # before the file is created
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA cache_size = -{cache_mib * 1024}")
        conn.executescript(SCHEMA)
        before = conn.total_changes
        for rows in batches(path, batch_size):
            conn.execute("BEGIN")
            conn.executemany(INSERT, rows)
            conn.execute("COMMIT")
        return conn.total_changes - before
    finally:
        conn.close()


def main() -> None:
    """Command line: FILE DB [--batch-size N] [--cache-mib N] [--page-size N]."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="JSON-lines input")
    parser.add_argument("db", help="SQLite file (created if missing)")
    parser.add_argument("--batch-size", type=int, default=50_000, help="events per commit")
    parser.add_argument("--cache-mib", type=int, default=64, help="SQLite page cache in MiB")
    parser.add_argument("--page-size", type=int, default=4096, help="SQLite page size, bytes")
    args = parser.parse_args()
    print(load(args.file, args.db, args.batch_size, args.cache_mib, args.page_size))


if __name__ == "__main__":
    main()
