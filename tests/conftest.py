"""Shared fixtures: a store path per test, a store, a CLI runner, a pipe, real `logagg`
processes, and (from tests/pg.py) the session's PostgreSQL server with a schema per test.

Plain helpers are in tests/helpers.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, cast

import pytest
from helpers import Backend
from pg import pg_database_url, pg_server, pg_shared_database, pg_url  # noqa: F401
from typer.testing import CliRunner

from logagg.cli import app
from logagg.store import Store

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


class RowView(NamedTuple):
    """A row (logagg.models.Row) with names, for readable assertions."""

    topic: str
    event_id: str
    timestamp: str
    source: str
    payload: str
    extra: str | None


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A store path in a fresh directory (the file does not exist yet)."""
    return tmp_path / "store.db"


@pytest.fixture
def backend(db: Path) -> Backend:
    """Where `store` lives: SQLite at `db`. The contract suite overrides this fixture with
    one parametrised over both backends."""
    return Backend("sqlite", str(db))


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    """An open store at `backend` (a new, empty one), closed after the test."""
    with backend.open() as opened:
        yield opened


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def pipe() -> Iterator[tuple[int, BinaryIO]]:
    """A real pipe: the write end as an fd, the read end as an unbuffered binary file."""
    r, w = os.pipe()
    reader = cast(BinaryIO, os.fdopen(r, "rb", buffering=0))
    try:
        yield w, reader
    finally:
        reader.close()
        with contextlib.suppress(OSError):
            os.close(w)


def invoke(runner: CliRunner, *args: str, input: str | bytes | None = None) -> Any:
    """Run the CLI in-process; `result.stdout` and `result.stderr` are separate."""
    return runner.invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)


def event(n: int, topic: str = "t", **extra: Any) -> dict[str, Any]:
    """A valid event numbered `n`."""
    doc = {
        "topic": topic,
        "event_id": f"e{n}",
        "timestamp": f"2025-01-01T00:{n // 60 % 60:02d}:{n % 60:02d}Z",
        "source": "test",
        "payload": {"n": n},
    }
    doc.update(extra)
    return doc


def write_jsonl(path: Path, docs: Iterable[dict[str, Any] | str]) -> Path:
    """Write events (dicts) or raw lines (str) as JSON lines."""
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write((doc if isinstance(doc, str) else json.dumps(doc)) + "\n")
    return path


def logagg_cmd(*args: str | Path) -> list[str]:
    """The command line of a real `logagg` process."""
    return [sys.executable, "-m", "logagg", *(str(a) for a in args)]


def run_logagg(
    *args: str | Path,
    input: bytes | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run `logagg` as a real process and wait for it."""
    return subprocess.run(
        logagg_cmd(*args),
        input=input,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def check_store(db: Path | str) -> dict[str, Any]:
    """Run `logagg check --json` in a real process; fail the test unless healthy."""
    proc = run_logagg("check", "--db", db, "--json")
    assert proc.returncode == 0, proc.stderr.decode() + proc.stdout.decode()
    return json.loads(proc.stdout)


def stats(db: Path | str) -> dict[str, Any]:
    proc = run_logagg("stats", "--db", db, "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)
