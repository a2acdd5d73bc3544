"""Reading other formats through the CLI: presets, mappings, gzip on stdin, --emit."""

from __future__ import annotations

import gzip
import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import IO

import pytest
import zstandard
from conftest import SAMPLES, check_store, event, invoke, logagg_cmd, run_logagg, write_jsonl
from helpers import listed_events, one_line_error

FORMATS = SAMPLES / "formats"
PRESETS = ["cloudevents", "docker", "pino", "bunyan", "structlog", "journald", "gelf"]


def report(result: object) -> dict[str, int]:
    return json.loads(result.stdout)  # type: ignore[attr-defined]


def stored(db: Path) -> list[dict[str, object]]:
    """Every stored event, oldest first, as `logagg events` in another process lists it."""
    return listed_events(db)


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_ingests_its_sample_and_a_second_read_adds_nothing(
    runner: object, db: Path, preset: str
) -> None:
    sample = FORMATS / f"{preset}.jsonl"
    lines = [line for line in sample.read_text().splitlines() if line.strip()]
    first = report(invoke(runner, "ingest", "--db", db, "--preset", preset, "--json", sample))
    if preset in ("cloudevents", "journald"):  # ids of their own: a re-sent one is a duplicate
        assert first["duplicates"] >= 1
    else:  # content ids: a line that repeats in one input is another event
        assert len(set(lines)) < len(lines), "each sample repeats a line"
        assert (first["accepted"], first["duplicates"], first["invalid"]) == (len(lines), 0, 0)
    again = report(invoke(runner, "ingest", "--db", db, "--preset", preset, "--json", sample))
    assert again["accepted"] == 0
    assert again["duplicates"] == first["accepted"] + first["duplicates"]
    check_store(db)


def test_docker_lines_take_the_file_name_as_source(runner: object, db: Path) -> None:
    invoke(runner, "ingest", "--db", db, "--preset", "docker", FORMATS / "docker.jsonl")
    assert {e["source"] for e in stored(db)} == {"docker.jsonl"}


def test_cloudevents_are_recognised_without_a_preset(runner: object, db: Path) -> None:
    sample = FORMATS / "cloudevents.jsonl"
    result = invoke(runner, "ingest", "--db", db, "--json", sample)
    counts = report(result)
    # 8 lines, one a batch of two: 9 events; two re-sends of (type, id); one without an id
    assert (counts["received"], counts["accepted"], counts["duplicates"], counts["invalid"]) == (
        9,
        6,
        2,
        1,
    )
    assert f"{sample}:8: missing CloudEvents attribute 'id'" in result.stderr
    events = stored(db)
    assert len(events) == 6
    assert all("cloudevents" in e for e in events)
    assert all(e["cloudevents"]["specversion"].startswith("1.") for e in events)


def test_map_dotted_paths_and_constant_topic(runner: object, tmp_path: Path, db: Path) -> None:
    lines = [
        {
            "id": f"gh-{n}",
            "created_at": f"2025-01-01T00:00:0{n}Z",
            "repo": {"name": "x/y"},
            "action": "push",
            "n": n,
        }
        for n in range(3)
    ]
    path = write_jsonl(tmp_path / "gh.jsonl", [*lines, lines[0]])
    args = ["--map", "event_id=id", "--map", "timestamp=created_at", "--map", "source=repo.name"]
    counts = report(
        invoke(runner, "ingest", "--db", db, "--topic", "github", *args, "--json", path)
    )
    assert (counts["accepted"], counts["duplicates"]) == (3, 1)
    first = stored(db)[0]
    assert (first["topic"], first["event_id"], first["source"]) == ("github", "gh-0", "x/y")
    assert first["payload"] == {"action": "push", "n": 0}


def test_content_ids_ignore_key_order_and_spacing(runner: object, tmp_path: Path, db: Path) -> None:
    first = write_jsonl(
        tmp_path / "app.log",
        [
            '{"msg": "started", "time": 1715678467, "level": 30}',
            '{"msg": "stopped", "time": 1715678470, "level": 30}',
        ],
    )
    resent = write_jsonl(
        tmp_path / "app.log.1",
        [
            '{"level":30,"time":1715678467,"msg":"started"}',
            '{ "time" : 1715678470 , "level" : 30 , "msg" : "stopped" }',
        ],
    )
    args = ["--topic", "app", "--id-from-content", "--map", "timestamp=time", "--json"]
    counts = report(invoke(runner, "ingest", "--db", db, *args, first))
    assert (counts["accepted"], counts["duplicates"]) == (2, 0)
    counts = report(invoke(runner, "ingest", "--db", db, *args, resent))
    assert (counts["accepted"], counts["duplicates"]) == (0, 2)
    assert stored(db)[0]["timestamp"] == "2024-05-14T09:21:07.000000Z"
    assert {e["source"] for e in stored(db)} == {"app.log"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "nope"], "unknown preset 'nope' (choose from bunyan, cloudevents, "),
        (["--map", "colour=x"], "unknown --map target 'colour' (targets: "),
        (["--time-unit", "h"], "invalid time unit 'h' (use s, ms, us or ns)"),
        (["--key", "a,b"], "invalid --key 'a,b' (use topic,event_id or source,id)"),
    ],
    ids=["preset", "map", "time-unit", "key"],
)
def test_bad_mapping_options_are_usage_errors(
    tmp_path: Path, args: list[str], message: str
) -> None:
    proc = run_logagg("ingest", "--db", tmp_path / "x.db", *args, SAMPLES / "events.jsonl")
    assert proc.returncode == 2
    assert one_line_error(proc.stderr).startswith(f"logagg: error: {message}")
    assert not (tmp_path / "x.db").exists()


def test_gzip_on_stdin_is_detected(db: Path) -> None:
    data = gzip.compress((SAMPLES / "events.jsonl").read_bytes())
    proc = run_logagg("ingest", "--db", db, "--json", "-", input=data)
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["accepted"] == 32


def test_truncated_gzip_on_stdin_is_an_error_naming_stdin(db: Path) -> None:
    data = gzip.compress((SAMPLES / "events.jsonl").read_bytes())
    proc = run_logagg("ingest", "--db", db, "-", input=data[: len(data) // 2])
    assert proc.returncode == 1
    assert "<stdin>: corrupt or truncated gzip data" in proc.stderr.decode()
    check_store(db)


def test_emit_new_writes_each_stored_event_once_in_input_order(tmp_path: Path, db: Path) -> None:
    docs = [event(n) for n in range(5)]
    data = "".join(json.dumps(d) + "\n" for d in [*docs[:3], docs[1], *docs[3:], docs[0]])
    proc = run_logagg("ingest", "--db", db, "--emit", "new", "-q", "-", input=data.encode())
    assert proc.returncode == 0, proc.stderr.decode()
    emitted = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [e["event_id"] for e in emitted] == [f"e{n}" for n in range(5)]
    assert emitted == stored(db)
    again = run_logagg("ingest", "--db", db, "--emit", "new", "-q", "-", input=data.encode())
    assert again.stdout == b""


def test_emit_duplicates_writes_the_dropped_copies(db: Path) -> None:
    docs = [event(n) for n in range(3)]
    resent = dict(docs[1], payload={"retry": 1})
    data = "".join(json.dumps(d) + "\n" for d in [*docs, resent, docs[0]])
    proc = run_logagg("ingest", "--db", db, "--emit", "duplicates", "-q", "-", input=data.encode())
    emitted = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(e["event_id"], e["payload"]) for e in emitted] == [
        ("e1", {"retry": 1}),
        ("e0", {"n": 0}),
    ]


def test_emit_with_json_report_is_a_usage_error(db: Path) -> None:
    proc = run_logagg("ingest", "--db", db, "--emit", "new", "--json", "-", input=b"")
    assert proc.returncode == 2
    assert proc.stderr == b"logagg: error: --emit writes events to stdout: use it without --json\n"
    assert proc.stdout == b""
    assert not db.exists()


def read_lines(stream: IO[bytes], count: int, within: float) -> list[bytes]:
    """`count` lines from a pipe, failing (never hanging) if they do not come in time."""
    fd, buffer, deadline = stream.fileno(), b"", time.monotonic() + within
    while buffer.count(b"\n") < count:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"only {buffer!r} after {within} s"
        chunk = os.read(fd, 65536)
        assert chunk, f"output ended after {buffer!r}"
        buffer += chunk
    return buffer.splitlines()[:count]


def test_emit_passes_events_on_while_the_pipe_stays_open(db: Path) -> None:
    """A durable uniq: a new event comes out before the writer closes its end."""
    proc = subprocess.Popen(
        logagg_cmd("ingest", "--db", db, "--emit", "new", "-q", "-"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        for n in (1, 1, 2):
            proc.stdin.write(json.dumps(event(n)).encode() + b"\n")
            proc.stdin.flush()
        out = read_lines(proc.stdout, 2, within=30)
        assert [json.loads(line)["event_id"] for line in out] == ["e1", "e2"]
        assert proc.poll() is None, "the events came out before the input ended"
        assert len(stored(db)) == 2, "emitted only once committed"
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_zstd_files_and_stdin_are_detected(tmp_path: Path, db: Path) -> None:

    data = (SAMPLES / "events.jsonl").read_bytes()
    packed = zstandard.ZstdCompressor().compress(data[: len(data) // 2]) + (
        zstandard.ZstdCompressor().compress(data[len(data) // 2 :])  # two frames in a row
    )
    path = tmp_path / "events.jsonl.zst"
    path.write_bytes(packed)
    proc = run_logagg("ingest", "--db", db, "--json", path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["accepted"] == 32
    again = run_logagg("ingest", "--db", db, "--json", "-", input=packed)
    assert json.loads(again.stdout)["duplicates"] == 33


def test_truncated_zstd_names_the_file(tmp_path: Path, db: Path) -> None:

    packed = zstandard.ZstdCompressor().compress((SAMPLES / "events.jsonl").read_bytes())
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(packed[: len(packed) - 10])
    proc = run_logagg("ingest", "--db", db, path)
    assert proc.returncode == 1
    assert f"{path}: corrupt or truncated zstd data" in proc.stderr.decode()
    check_store(db)
