"""Following the store with real processes: `events --follow`, durable `--cursor`s that
survive `kill -9` while several ingests write, `cursors`, and `ingest --emit` under kill."""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import check_store, event, invoke, logagg_cmd, run_logagg, write_jsonl
from helpers import (
    SEED,
    _read,
    assert_one_line_error,
    generated,
    jsonl,
    listed_events,
    one_line_error,
    pg_sql,
    wait_until,
)
from typer.testing import CliRunner

from logagg.cli.subscribe import PAGE

F_SETPIPE_SZ = 1031  # fcntl: set a pipe's capacity (Linux)
WAIT = 30.0


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; any left running at the end are killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT)


def start(procs: list[subprocess.Popen[bytes]], *args: Any, out: Any = subprocess.PIPE) -> Any:
    proc = subprocess.Popen(
        logagg_cmd(*args), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE
    )
    procs.append(proc)
    return proc


def lines_of(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a file (a process killed mid-write may leave a part)."""
    data = path.read_bytes()
    return [json.loads(line) for line in data.split(b"\n")[:-1]]


def key(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["topic"], doc["event_id"]


# --- following ------------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_follow_prints_the_last_matches_then_what_other_processes_commit(
    tmp_path: Path, db: Path, procs: list, signum: int, code: int
) -> None:
    first = [event(n, "t") for n in range(5)] + [event(9, "other")]
    assert (
        run_logagg("ingest", "--db", db, write_jsonl(tmp_path / "a.jsonl", first)).returncode == 0
    )
    out = tmp_path / "out.jsonl"
    with open(out, "wb") as sink:
        proc = start(
            procs, "events", "--db", db, "--follow", "--limit", "2", "--topic", "t", out=sink
        )
        wait_until(lambda: len(lines_of(out)) == 2, WAIT, "the last two matches")
        later = [event(n, "t") for n in (5, 6)] + [event(10, "other"), event(1, "t")]
        assert (
            run_logagg("ingest", "--db", db, write_jsonl(tmp_path / "b.jsonl", later)).returncode
            == 0
        )
        wait_until(lambda: len(lines_of(out)) == 4, WAIT, "the two new matches")
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == code, err.decode()
    assert err == b""
    docs = lines_of(out)
    assert [d["event_id"] for d in docs] == ["e3", "e4", "e5", "e6"]
    seqs = [d["seq"] for d in docs]
    assert seqs == sorted(seqs)
    assert {k: v for k, v in docs[0].items() if k != "seq"} == {
        **event(3, "t"),
        "timestamp": "2025-01-01T00:00:03.000000Z",
    }


def test_a_cursor_continues_where_the_last_run_acknowledged(tmp_path: Path, db: Path) -> None:
    data = write_jsonl(tmp_path / "a.jsonl", [event(n) for n in range(5)])
    assert run_logagg("ingest", "--db", db, data).returncode == 0
    once = run_logagg("events", "--db", db, "--cursor", "c", "--limit", "3")
    assert once.returncode == 0, once.stderr.decode()
    assert [json.loads(line)["event_id"] for line in once.stdout.splitlines()] == ["e0", "e1", "e2"]
    rest = run_logagg("events", "--db", db, "--cursor", "c", "--all", "--no-seq")
    assert [json.loads(line) for line in rest.stdout.splitlines()] == [
        {**event(n), "timestamp": f"2025-01-01T00:00:0{n}.000000Z"} for n in (3, 4)
    ]
    assert run_logagg("events", "--db", db, "--cursor", "c", "--all").stdout == b""
    more = write_jsonl(tmp_path / "b.jsonl", [event(n) for n in range(3, 8)])
    assert run_logagg("ingest", "--db", db, more).returncode == 0
    listed = run_logagg("cursors", "--db", db, "--json")
    (cursor,) = json.loads(listed.stdout)
    assert (cursor["name"], cursor["lag"]) == ("c", 3)
    last = run_logagg("events", "--db", db, "--cursor", "c", "--all", "--format", "csv")
    rows = last.stdout.decode().splitlines()
    assert rows[0] == "topic,event_id,timestamp,source,payload,extra,seq"
    assert [r.split(",")[1] for r in rows[1:]] == ["e5", "e6", "e7"]
    (cursor,) = json.loads(run_logagg("cursors", "--db", db, "--json").stdout)
    assert cursor["lag"] == 0 and cursor["position"] == int(rows[-1].rsplit(",", 1)[1])
    gone = run_logagg("cursors", "--db", db, "--delete", "c")
    assert gone.returncode == 0 and gone.stderr == b"deleted cursor c\n"
    assert_one_line_error(run_logagg("cursors", "--db", db, "--delete", "c"), "no cursor")
    again = run_logagg("events", "--db", db, "--cursor", "c", "--all")
    assert len(again.stdout.splitlines()) == 8  # a new cursor starts at the beginning


def test_a_closed_stdout_stops_the_follower_without_acknowledging(
    tmp_path: Path, db: Path, procs: list
) -> None:
    """The reader takes one line and goes: the follower's write fails, it ends quietly,
    and its cursor has not moved past what it could not write."""
    big = {"blob": "x" * 2000}
    data = write_jsonl(tmp_path / "a.jsonl", [event(n, payload=big) for n in range(300)])
    assert run_logagg("ingest", "--db", db, data).returncode == 0
    proc = start(procs, "events", "--db", db, "--follow", "--cursor", "c")
    assert proc.stdout.readline().startswith(b'{"topic"')
    proc.stdout.close()
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0 and err == b""
    listed = json.loads(run_logagg("cursors", "--db", db, "--json").stdout)
    assert listed == [] or listed[0]["position"] == 0  # its one page was not all written


def test_a_follower_with_nothing_to_write_notices_its_reader_has_gone(
    tmp_path: Path, db: Path, procs: list
) -> None:
    assert (
        run_logagg("ingest", "--db", db, write_jsonl(tmp_path / "a.jsonl", [event(1)])).returncode
        == 0
    )
    proc = start(procs, "events", "--db", db, "--follow")
    assert proc.stdout.readline().startswith(b'{"topic"')
    proc.stdout.close()
    assert proc.wait(WAIT) == 0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--cursor", "c", "--after", "3"), "without --after"),
        (("--follow", "--format", "table"), "--format jsonl or csv"),
        (("--follow", "--format", "json"), "--format jsonl or csv"),
        (("--cursor", " "), "must not be empty"),
        (("--after", "-1"), "--after"),
    ],
)
def test_usage_errors_of_commit_order_reading(
    tmp_path: Path, db: Path, runner: CliRunner, args: tuple[str, ...], words: str
) -> None:
    assert invoke(runner, "ingest", "--db", db, "-", input=jsonl(event(1))).exit_code == 0
    result = invoke(runner, "events", "--db", db, *args)
    assert result.exit_code == 2 and result.stdout == ""
    assert words in one_line_error(result.stderr)


# --- kill -9 of a follower while three ingests write --------------------------------------------


def overlapping_inputs(rng: random.Random, path: Path, count: int) -> list[list[bytes]]:
    """Three inputs, each two thirds of one generated file (re-sends included), shuffled
    differently: every key is written by at least two of them."""
    generated(path, count, seed=rng.randrange(1 << 30))
    lines = path.read_bytes().splitlines(keepends=True)
    third = len(lines) // 3
    inputs = []
    for i in range(3):
        part = (lines[i * third :] + lines[: i * third])[: 2 * third + 1]
        rng.shuffle(part)
        inputs.append(part)
    return inputs


def stored_keys(location: str) -> list[tuple[str, str]]:
    statement = "SELECT topic, event_id FROM events WHERE payload IS NOT NULL"
    if location.startswith("postgresql://"):
        return [(r[0], r[1]) for r in pg_sql(location, statement)]
    return [(r[0], r[1]) for r in _read(Path(location), statement)]


def received(location: str) -> int:
    """Lines the store has counted so far (cheap to poll while writers write)."""
    if location.startswith("postgresql://"):
        statement = (
            "SELECT c.received + (SELECT coalesce(sum(received), 0) FROM counter_deltas)"
            " FROM counters AS c"
        )
        return int(pg_sql(location, statement)[0][0])
    rows = _read(Path(location), "SELECT received FROM counters")
    return int(rows[0][0]) if rows else 0


def kill_followers_while_writing(tmp_path: Path, location: str, procs: list) -> None:
    """The scenario of both backends (see the two tests). Three ingests read pipes that a
    feeder fills in steps, each once the last is committed, while followers are started
    and killed one after the other."""
    rng = random.Random(SEED)
    inputs = overlapping_inputs(rng, tmp_path / "all.jsonl", 24_000)
    assert run_logagg("ingest", "--db", location, os.devnull).returncode == 0  # the store
    writers = []
    for _ in inputs:
        batch = rng.choice([50, 200])
        writer = subprocess.Popen(
            logagg_cmd(
                "ingest",
                "--db",
                location,
                "-q",
                "--batch-size",
                batch,
                "--flush-interval",
                "0.05",
                "-",
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        procs.append(writer)
        writers.append(writer)
    runs: list[list[dict[str, Any]]] = []
    positions: list[int] = []  # the cursor's position when each run had ended
    history: list[str] = []
    stop = threading.Event()

    def cursor_position() -> int:
        """The position saved under the cursor's name, read from its table."""
        statement = "SELECT position FROM cursors WHERE name = 'c'"
        if location.startswith("postgresql://"):
            found = pg_sql(location, statement)
        else:
            found = _read(Path(location), statement)
        return int(found[0][0]) if found else 0

    def feed(steps: int = 40) -> None:
        fed = 0
        for step in range(steps):
            for writer, lines in zip(writers, inputs, strict=True):
                size = len(lines) // steps + 1
                part = lines[step * size : (step + 1) * size]
                assert writer.stdin is not None
                writer.stdin.write(b"".join(part))
                writer.stdin.flush()
                fed += len(part)
            deadline = time.monotonic() + WAIT
            while received(location) < fed and time.monotonic() < deadline and not stop.is_set():
                time.sleep(0.01)

    feeder = threading.Thread(target=feed)
    feeder.start()
    live_runs = 0  # runs killed while the writers were still being fed
    try:
        for run_no in range(1, 6):
            # The follower writes into a pipe of a seeded size that is read only once it
            # has been killed, blocked in the middle of a page.
            read_end, write_end = os.pipe()
            size = rng.choice([65536, 262144, 1 << 20])
            capacity = fcntl.fcntl(write_end, F_SETPIPE_SZ, size)
            proc = start(procs, "events", "--db", location, "-F", "--cursor", "c", out=write_end)
            os.close(write_end)

            def blocked(pid: int = proc.pid) -> bool:
                with open(f"/proc/{pid}/wchan") as f:
                    return "pipe_write" in f.read()

            wait_until(blocked, 60, f"follower run {run_no} to block on its full pipe")
            live_runs += feeder.is_alive()
            proc.send_signal(signal.SIGKILL)
            proc.wait(WAIT)
            with os.fdopen(read_end, "rb") as pipe:
                data = pipe.read()
            assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
            runs.append([json.loads(line) for line in data.split(b"\n")[:-1]])
            positions.append(cursor_position())
            history.append(
                f"run {run_no}: pipe of {capacity} bytes, {len(runs[-1])} printed,"
                f" cursor at {positions[-1]}"
            )
    finally:
        stop.set()
        feeder.join(120)
    for writer in writers:
        assert writer.stdin is not None
        writer.stdin.close()
        assert writer.wait(120) == 0, writer.stderr.read().decode()  # type: ignore[union-attr]
    final = run_logagg("events", "--db", location, "--cursor", "c", "--all")
    assert final.returncode == 0, final.stderr.decode()
    runs.append([json.loads(line) for line in final.stdout.splitlines()])
    trail = f"seed {SEED}, {live_runs} runs killed while writing\n" + "\n".join(history)
    assert live_runs >= 2, f"the followers hardly met the writers\n{trail}"

    listed = run_logagg("events", "--db", location, "--after", "0", "--all")
    in_order = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(in_order) == len({key(d) for d in in_order}) == len(stored_keys(location))
    # Each run prints the stored events right after the position acknowledged before it,
    # in commit order, without a gap; what it prints again is what an earlier run printed
    # after that position: one page at most, written but not acknowledged.
    printed_up_to = 0
    for n, run in enumerate(runs):
        after = positions[n - 1] if n else 0
        assert after <= printed_up_to, f"run {n}'s cursor passed what it printed\n{trail}"
        expected = [d for d in in_order if d["seq"] > after][: len(run)]
        assert run == expected, f"run {n + 1} skipped or changed events\n{trail}"
        again = [d for d in run if d["seq"] <= printed_up_to]
        assert len(again) <= PAGE, f"run {n + 1} re-delivered more than a page\n{trail}"
        printed_up_to = max([printed_up_to, *(d["seq"] for d in run)])
    printed = {key(d) for run in runs for d in run}
    assert printed == {key(d) for d in in_order}, f"an event never printed\n{trail}"
    assert any(p < max(d["seq"] for d in r) for p, r in zip(positions, runs, strict=False) if r), (
        f"no run was killed with a page written but not acknowledged\n{trail}"
    )
    check_store(location)


@pytest.mark.slow
def test_kill_9_of_a_cursor_follower_while_three_ingests_write(tmp_path: Path, procs: list) -> None:
    kill_followers_while_writing(tmp_path, str(tmp_path / "store.db"), procs)


@pytest.mark.slow
def test_kill_9_of_a_cursor_follower_on_postgresql(
    tmp_path: Path, pg_url: str, procs: list
) -> None:
    kill_followers_while_writing(tmp_path, pg_url, procs)


# --- ingest --emit: at most once -------------------------------------------------------------


@pytest.mark.slow
def test_emit_new_is_at_most_once_and_a_cursor_recovers_what_a_kill_lost(
    tmp_path: Path, db: Path, procs: list
) -> None:
    """`--emit new` writes an event only once it is committed and never twice, also across
    a kill -9 and a re-run; what the kill kept from being written is not written by the
    re-run (those events are duplicates then): `events --cursor` delivers them."""
    rng = random.Random(SEED)
    data = tmp_path / "in.jsonl"
    unique = generated(data, 20_000, seed=rng.randrange(1 << 30))
    out1 = tmp_path / "emit1.jsonl"
    with open(out1, "wb") as sink:
        proc = start(
            procs,
            "ingest",
            "--db",
            db,
            "--batch-size",
            "500",
            "--quiet",
            "--emit",
            "new",
            data,
            out=sink,
        )
        target = rng.randint(1000, 10_000)
        wait_until(lambda: len(lines_of(out1)) >= target or proc.poll() is not None, 60, "output")
        proc.send_signal(signal.SIGKILL)
        proc.wait(WAIT)
    rerun = run_logagg("ingest", "--db", db, "--quiet", "--emit", "new", data)
    assert rerun.returncode == 0, rerun.stderr.decode()
    emitted = [key(d) for d in lines_of(out1)] + [
        key(json.loads(x)) for x in rerun.stdout.splitlines()
    ]
    assert len(emitted) == len(set(emitted)), "an event emitted twice"
    stored = {key(d) for d in listed_events(db)}
    assert stored == unique and set(emitted) <= stored
    recovered = run_logagg("events", "--db", db, "--cursor", "all", "--all")
    assert {key(json.loads(x)) for x in recovered.stdout.splitlines()} == unique
    check_store(db)


def test_file_output_is_flushed_per_page(tmp_path: Path, db: Path) -> None:
    """A page is on disk before its cursor moves: what `cursors` reports was written."""
    data = write_jsonl(tmp_path / "a.jsonl", [event(n) for n in range(2 * PAGE + 5)])
    assert run_logagg("ingest", "--db", db, data).returncode == 0
    out = tmp_path / "out.jsonl"
    with open(out, "wb") as sink:
        proc = subprocess.run(
            logagg_cmd("events", "--db", db, "--cursor", "c", "--all"),
            stdout=sink,
            stderr=subprocess.PIPE,
            timeout=WAIT,
            env={**os.environ},
        )
    assert proc.returncode == 0
    docs = lines_of(out)
    assert len(docs) == 2 * PAGE + 5
    (cursor,) = json.loads(run_logagg("cursors", "--db", db, "--json").stdout)
    assert cursor["position"] == docs[-1]["seq"]
