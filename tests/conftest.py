"""Shared fixtures: a store path per test, a CLI runner, and real `logagg` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from typer.testing import CliRunner

from logagg.cli import app

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
def runner() -> CliRunner:
    return CliRunner()


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


def check_store(db: Path) -> dict[str, Any]:
    """Run `logagg check --json` in a real process; fail the test unless healthy."""
    proc = run_logagg("check", "--db", db, "--json")
    assert proc.returncode == 0, proc.stderr.decode() + proc.stdout.decode()
    return json.loads(proc.stdout)


def stats(db: Path) -> dict[str, Any]:
    proc = run_logagg("stats", "--db", db, "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)
