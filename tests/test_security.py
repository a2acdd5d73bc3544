"""Names are data, never SQL or patterns; the store file is never world-writable."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import check_store, event, invoke, logagg_cmd, run_logagg, write_jsonl
from helpers import wait_for_events
from typer.testing import CliRunner

TRICKY = [
    "x'; DROP TABLE events; --",
    "' OR '1'='1",
    '"; DELETE FROM counters; --',
    "it's",
    'say "hi"',
    "100%",
    "%",
    "_",
    "a_c",
    "abc",
    "a%",
    "a%c",
    "semi;colon",
    "new\nline",
    "cr\rlf",
    "tab\there",
    "back\\slash",
    "[ab]*",
    "NULL",
    "ünïcødé 😀",
]


def _listing(runner: CliRunner, db: Path, *args: str) -> list[dict[str, Any]]:
    result = invoke(runner, "events", "--db", db, "--all", "--format", "jsonl", *args)
    assert result.exit_code == 0, result.stderr
    return [json.loads(x) for x in result.stdout.splitlines() if x]


@pytest.fixture
def tricky_db(tmp_path: Path, runner: CliRunner) -> Path:
    """A store where every tricky string is a topic, a source and an event id (of others)."""
    docs = []
    for i, value in enumerate(TRICKY):
        docs.append(event(i, topic=value, source="plain", event_id=f"t{i}"))
        docs.append(event(i, topic="plain", source=value, event_id=f"s{i}"))
        docs.append(event(i, topic="ids", source="plain", event_id=value))
    db = tmp_path / "store.db"
    result = invoke(runner, "ingest", "--db", db, write_jsonl(tmp_path / "in.jsonl", docs))
    assert result.exit_code == 0, result.stderr
    return db


@pytest.mark.parametrize("value", TRICKY, ids=repr)
def test_topic_filter_matches_exactly(runner: CliRunner, tricky_db: Path, value: str) -> None:
    """`--topic` is compared literally: quotes, SQL, `%` and `_` match only themselves."""
    docs = _listing(runner, tricky_db, "--topic", value)
    assert [d["topic"] for d in docs] == [value]
    assert docs[0]["event_id"] == f"t{TRICKY.index(value)}"


@pytest.mark.parametrize("value", TRICKY, ids=repr)
def test_source_filter_matches_exactly(runner: CliRunner, tricky_db: Path, value: str) -> None:
    docs = _listing(runner, tricky_db, "--source", value)
    assert [(d["topic"], d["source"]) for d in docs] == [("plain", value)]


def test_names_are_stored_and_returned_literally(runner: CliRunner, tricky_db: Path) -> None:
    """Every tricky id comes back unchanged, the tables are intact and the counters agree."""
    ids = {d["event_id"] for d in _listing(runner, tricky_db, "--topic", "ids")}
    assert ids == set(TRICKY)
    stats = json.loads(invoke(runner, "stats", "--db", tricky_db, "--json").stdout)
    assert {t for t in stats["topics"] if t not in ("plain", "ids")} == set(TRICKY)
    assert all(stats["topics"][t] == 1 for t in TRICKY)
    with sqlite3.connect(tricky_db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
        rows = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert {"events", "topics", "counters"} <= tables
    assert rows == 3 * len(TRICKY)
    check_store(tricky_db)


@pytest.mark.parametrize(("pattern", "literal"), [("%", "100%"), ("_", "a_c"), ("a%", "a%c")])
def test_wildcards_never_act_as_patterns(
    runner: CliRunner, tricky_db: Path, pattern: str, literal: str
) -> None:
    """A filter of `%` or `_` finds the topic of that name only, never the ones a LIKE would."""
    topics = {d["topic"] for d in _listing(runner, tricky_db, "--topic", pattern)}
    assert topics == {pattern}
    assert literal not in topics


def test_ids_with_wildcards_are_distinct_keys(tmp_path: Path, runner: CliRunner) -> None:
    """`e%`, `e_` and `eX` are three events: identity compares ids literally."""
    db = tmp_path / "store.db"
    verdicts = []
    for event_id in ("e%", "e_", "eX", "e_", "e%"):
        result = invoke(
            runner, "publish", "--db", db, "--topic", "t'; --", "--event-id", event_id, "--json"
        )
        assert result.exit_code == 0, result.stderr
        verdicts.append(json.loads(result.stdout)["accepted"])
    assert verdicts == [True, True, True, False, False]
    assert check_store(db)["rows"] == 3


def test_sql_in_time_filters_is_a_usage_error(runner: CliRunner, tricky_db: Path) -> None:
    for option in ("--since", "--until"):
        result = invoke(runner, "events", "--db", tricky_db, option, "2025' OR '1'='1")
        assert result.exit_code == 2, result.stdout
        assert result.stdout == ""


def test_sql_fragments_through_a_real_process(tmp_path: Path) -> None:
    """The same through argv of a real process: publish, then find it by its topic."""
    db = tmp_path / "store.db"
    topic = "x'; DROP TABLE events; --"
    proc = run_logagg(
        "publish", "--db", db, "--topic", topic, "--event-id", "1; --", "--source", "%", "-p", "q='"
    )
    assert proc.returncode == 0, proc.stderr.decode()
    listing = run_logagg("events", "--db", db, "--topic", topic, "--format", "jsonl")
    [doc] = [json.loads(x) for x in listing.stdout.splitlines()]
    assert (doc["topic"], doc["event_id"], doc["source"]) == (topic, "1; --", "%")
    assert doc["payload"] == {"q": "'"}
    assert run_logagg("events", "--db", db, "--source", "_").stdout.strip() == b""
    check_store(db)


# --- file permissions --------------------------------------------------------------------


def _with_umask(mask: int) -> Callable[[], None]:
    def apply() -> None:
        os.umask(mask)

    return apply


def _store_files(db: Path) -> dict[str, int]:
    """Permission bits of the store and its -wal / -shm companions that exist."""
    return {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in db.parent.iterdir()
        if p.name.startswith(db.name)
    }


def test_store_is_never_world_writable_even_with_umask_0(tmp_path: Path) -> None:
    """With umask 000 the store, its WAL and its shared-memory file are not world-writable."""
    db = tmp_path / "store.db"
    proc = subprocess.Popen(
        logagg_cmd("ingest", "--db", db, "--flush-interval", "0.01", "-"),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_with_umask(0o000),
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(json.dumps(event(1)).encode() + b"\n")
        proc.stdin.flush()
        wait_for_events(db, 1)
        live = _store_files(db)
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert "store.db" in live and "store.db-wal" in live, live
    for files in (live, _store_files(db)):
        for name, mode in files.items():
            assert not mode & stat.S_IWOTH, f"{name} is world-writable: {oct(mode)}"


@pytest.mark.parametrize("command", ["ingest", "publish"])
def test_store_is_created_with_the_users_umask(tmp_path: Path, command: str) -> None:
    """Under umask 077 only the owner may read or write the store and its companions."""
    db = tmp_path / "store.db"
    if command == "ingest":
        args = ["ingest", "--db", db, write_jsonl(tmp_path / "in.jsonl", [event(1)])]
    else:
        args = ["publish", "--db", db, "--topic", "t"]
    proc = subprocess.run(
        logagg_cmd(*args), capture_output=True, timeout=60, preexec_fn=_with_umask(0o077)
    )
    assert proc.returncode == 0, proc.stderr.decode()
    files = _store_files(db)
    assert "store.db" in files
    for name, mode in files.items():
        assert mode & 0o077 == 0, f"{name} is open to others despite umask 077: {oct(mode)}"
