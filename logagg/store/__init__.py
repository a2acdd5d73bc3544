"""The store: where events are kept exactly once. `open_store` picks the backend.

All SQL of the project lives in this package: `sqlite` (a file) and `postgres` (a server,
for many machines), both keeping the contract of `base.Store`.
"""

from __future__ import annotations

from importlib.util import find_spec

from logagg.errors import StoreError
from logagg.store.base import (
    BadTime,
    BatchResult,
    CheckResult,
    Conflict,
    Counters,
    CursorInfo,
    EventQuery,
    Page,
    PruneResult,
    Store,
    StoreStats,
    TopicStats,
    cutoff,
)

__all__ = [
    "BadTime",
    "BatchResult",
    "CheckResult",
    "Conflict",
    "Counters",
    "CursorInfo",
    "EventQuery",
    "Page",
    "PruneResult",
    "Store",
    "StoreStats",
    "TopicStats",
    "cutoff",
    "is_postgres",
    "open_store",
]


def is_postgres(location: str) -> bool:
    """True when `--db` names a PostgreSQL database rather than a SQLite file."""
    return location.startswith(("postgresql://", "postgres://"))


def open_store(location: str, *, create: bool = True) -> Store:
    """Open the store named by `--db`: a `postgresql://` URL, else a SQLite file path."""
    if is_postgres(location):
        if find_spec("psycopg") is None:
            raise StoreError(
                "PostgreSQL stores need the postgres extra: install logagg with it"
                " (from a checkout: pip install '.[postgres]')"
            )
        from logagg.store.postgres import PostgresStore

        return PostgresStore.open(location, create=create)
    from logagg.store.sqlite import SQLiteStore

    return SQLiteStore.open(location, create=create)
