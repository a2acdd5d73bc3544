"""stdout is data, stderr is for people, in every command; `stats` in each of its formats,
and for people a compact layout in one unit system."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from conftest import SAMPLES, run_logagg
from terminal import on_terminal

TOPIC_FIELDS = ["topic", "events", "first_timestamp", "last_timestamp", "conflicts", "pruned"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A long path: the layout of stats must not depend on it.
    where = tmp_path_factory.mktemp("streams") / ("a-rather-long-directory-name-" * 3)
    where.mkdir()
    db = where / "store.db"
    proc = run_logagg("ingest", "--db", db, "--quiet", SAMPLES / "events.jsonl")
    assert proc.returncode == 0, proc.stderr.decode()
    return db


def json_doc(out: str) -> None:
    json.loads(out)


def json_lines(out: str) -> None:
    assert out.endswith("\n")
    for line in out.splitlines():
        assert isinstance(json.loads(line), dict)


def nothing(out: str) -> None:
    assert out == ""


EVENT = ["--topic", "deploy", "--event-id", "streams-1"]
CASES = [
    (["check"], nothing, "ok: "),
    (["check", "--json"], json_doc, ""),
    (["stats"], json_doc, ""),
    (["stats", "--format", "jsonl"], json_lines, ""),
    (["events", "-n", "3"], json_lines, ""),
    (["events", "-n", "3", "--format", "json"], json_doc, ""),
    (["cursors"], json_doc, ""),
    (["conflicts"], json_lines, ""),
    (["prune", "--older-than", "99999d", "--dry-run"], nothing, "would prune 0 events"),
    (["prune", "--older-than", "99999d", "--dry-run", "--json"], json_doc, ""),
    (["vacuum"], nothing, "rewritten with VACUUM"),
    (["publish", *EVENT], nothing, "accepted: deploy streams-1"),
    (["publish", *EVENT, "--json"], json_doc, ""),
    (["ingest", SAMPLES / "resend.jsonl"], nothing, "received "),
    (["ingest", "--json", SAMPLES / "resend.jsonl"], json_doc, ""),
]


@pytest.mark.parametrize(("args", "data", "said"), CASES)
def test_stdout_carries_data_and_stderr_messages(
    store: Path, args: list[str | Path], data: object, said: str
) -> None:
    proc = run_logagg(*args, "--db", store)
    assert proc.returncode == 0, proc.stderr.decode()
    data(proc.stdout.decode())  # type: ignore[operator]
    if said:
        assert said in proc.stderr.decode(), proc.stderr.decode()
    else:
        assert proc.stderr == b"", proc.stderr.decode()


def test_gen_backup_and_version(store: Path, tmp_path: Path) -> None:
    gen = run_logagg("gen", "3")
    json_lines(gen.stdout.decode())
    assert gen.stderr.decode().endswith("unique events in 3 lines\n")
    backup = run_logagg("backup", tmp_path / "copy.db", "--db", store)
    assert (backup.returncode, backup.stdout) == (0, b"")
    assert "a copy of" in backup.stderr.decode()
    version = run_logagg("--version")
    assert version.stdout.decode().startswith("logagg ") and version.stderr == b""


def test_an_unhealthy_check_says_so_on_stderr(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    run_logagg("publish", "--db", db, "--topic", "t")
    import sqlite3

    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE counters SET received = received + 5")
    proc = run_logagg("check", "--db", db)
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert "problem: " in proc.stderr.decode()


# --- stats ------------------------------------------------------------------------------------


def test_stats_csv_is_a_row_per_topic(store: Path) -> None:
    proc = run_logagg("stats", "--db", store, "--format", "csv")
    assert proc.returncode == 0
    rows = list(csv.reader(io.StringIO(proc.stdout.decode())))
    doc = json.loads(run_logagg("stats", "--db", store).stdout)
    assert rows[0] == TOPIC_FIELDS
    assert {row[0]: int(row[1]) for row in rows[1:]} == doc["topics"]
    for row in rows[1:]:
        details = doc["topic_details"][row[0]]
        assert row[2:] == [str(details[name]) for name in TOPIC_FIELDS[2:]]


def test_stats_jsonl_is_an_object_per_topic(store: Path) -> None:
    proc = run_logagg("stats", "--db", store, "--format", "jsonl")
    docs = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert all(list(doc) == TOPIC_FIELDS for doc in docs)
    assert {d["topic"]: d["events"] for d in docs} == json.loads(
        run_logagg("stats", "--db", store).stdout
    )["topics"]


def test_stats_on_a_terminal_is_compact_and_aligned(store: Path) -> None:
    run = on_terminal("stats", "--db", store, columns=80)
    assert run.code == 0, run.stderr
    lines = run.plain.splitlines()
    counters = [line for line in lines if re.fullmatch(r"[a-z_]+ +[\d,]+", line)]
    assert len(counters) == 8
    ends = {len(line) for line in counters}
    assert len(ends) == 1 and ends.pop() <= 24  # numbers aligned, near their labels
    assert str(store) in run.plain
    sizes = re.findall(r"\d[\d.]* ?([KMGT]?i?B)\b", run.plain)
    assert sizes and set(sizes) <= {"B", "KiB", "MiB", "GiB"}
    (size,) = [line for line in lines if line.startswith("size")]
    assert "KiB" in size or "MiB" in size
    topics = lines[lines.index("") + 1 :]
    assert topics[0].split() == ["topic", "events", "first", "last"]
    assert all(len(line) <= 80 for line in lines if str(store) not in line)
