"""`logagg events` for people: a table that fits the terminal, rows written as they are
read (memory does not grow with the listing), paged like git, `-n`, and a word on stderr
when the default limit left events out."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import run_logagg, write_jsonl
from rich.cells import cell_len
from terminal import on_terminal, peak_rss_kib

TOPICS = ("payment.captured.eu-west-1", "user.login", "deploy")
SOURCES = ("billing-service-worker-07", "auth", "ci")


def uuid_event(n: int, payload_size: int = 0) -> dict[str, object]:
    return {
        "topic": TOPICS[n % 3],
        "event_id": str(uuid.UUID(int=n * 7919 + 12345)),
        "timestamp": f"2025-01-01T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}.123456Z",
        "source": SOURCES[n % 3],
        "payload": {"n": n, "tags": ["a", "b"], "text": "x" * payload_size},
    }


def build(path: Path, count: int, payload_size: int = 0) -> Path:
    data = write_jsonl(
        path.with_suffix(".jsonl"), (uuid_event(n, payload_size) for n in range(count))
    )
    proc = run_logagg("ingest", "--db", path, "--quiet", data)
    assert proc.returncode == 0, proc.stderr.decode()
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("table") / "s.db", 150)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same kind of store with 1 000 and with 12 000 events of about 1 KiB each."""
    where = tmp_path_factory.mktemp("big")
    return build(where / "small.db", 1_000, 1000), build(where / "large.db", 12_000, 1000)


def table_rows(screen: str) -> list[str]:
    lines = [line for line in screen.splitlines() if line.strip()]
    assert lines[0].split() == ["timestamp", "topic", "event_id", "source", "payload"], lines[0]
    assert set(lines[1].replace(" ", "")) == {"─"}
    return lines[2:]


# --- a table that fits -------------------------------------------------------------------------


@pytest.mark.parametrize("columns", [80, 100, 160])
def test_the_table_fits_the_terminal_and_shows_every_column(store: Path, columns: int) -> None:
    run = on_terminal("events", "--db", store, "--limit", "30", "--no-pager", columns=columns)
    assert run.code == 0, run.stderr
    rows = table_rows(run.plain)
    assert len(rows) == 30
    assert max(cell_len(line) for line in run.plain.splitlines()) <= columns
    listed = [
        json.loads(line)
        for line in run_logagg("events", "--db", store, "-n", "30").stdout.splitlines()
    ]
    shown_ids = set()
    for line, event in zip(rows, listed, strict=True):
        time, topic, event_id, source, payload = re.split(r"\s{2,}", line, maxsplit=4)
        assert time == event["timestamp"][:19] + "Z"
        assert event["topic"].startswith(topic.rstrip("…")) and len(topic) >= 4
        assert event["event_id"].endswith(event_id.lstrip("…")) and len(event_id) >= 8
        assert event["source"].startswith(source.rstrip("…")) and len(source) >= 2
        assert payload.startswith('{"n":') and ", " not in payload  # compact JSON
        shown_ids.add(event_id)
    assert len(shown_ids) == 30  # the ids' distinct ends are kept


def test_wide_shows_every_value_whole(store: Path) -> None:
    run = on_terminal("events", "--db", store, "--limit", "5", "--no-pager", "--wide", columns=80)
    assert run.code == 0, run.stderr
    rows = table_rows(run.plain)
    listed = [
        json.loads(line)
        for line in run_logagg("events", "--db", store, "-n", "5").stdout.splitlines()
    ]
    for line, event in zip(rows, listed, strict=True):
        for value in (event["timestamp"], event["topic"], event["event_id"], event["source"]):
            assert value in line
        assert json.dumps(event["payload"], separators=(",", ":")) in line
    assert "…" not in run.screen


def test_a_table_on_a_pipe_takes_its_width_from_columns(store: Path) -> None:
    proc = run_logagg("events", "--db", store, "--format", "table", env={"COLUMNS": "90"})
    assert proc.returncode == 0
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 102 and max(map(cell_len, lines)) <= 90
    assert "\x1b[" not in proc.stdout.decode()  # no colour when piped


# --- streaming ---------------------------------------------------------------------------------


def growth_kib(stores: tuple[Path, Path], fmt: str, *args: str) -> int:
    """How much more memory listing the large store takes than listing the small one."""
    peaks = []
    for db in stores:
        code, peak = peak_rss_kib("events", "--db", db, "--all", "--format", fmt, *args)
        assert code == 0
        peaks.append(peak)
    return peaks[1] - peaks[0]


def test_memory_does_not_grow_with_the_listing(stores: tuple[Path, Path]) -> None:
    # Reading 11 000 more events fills SQLite's page cache (bounded, at most the file);
    # holding the events as well would add about as much again.
    cache = stores[1].stat().st_size // 1024
    streamed = growth_kib(stores, "jsonl")
    assert streamed < cache + 8 * 1024, (streamed, cache)
    for fmt in ("table", "json", "csv"):
        grown = growth_kib(stores, fmt)
        assert grown < streamed + 6 * 1024, (fmt, grown, streamed)
    in_commit_order = growth_kib(stores, "table", "--after", "0")
    assert in_commit_order < streamed + 6 * 1024, in_commit_order


# --- paging ------------------------------------------------------------------------------------

PAGER = """
import os, sys
with open(sys.argv[1], "w") as log:
    log.write(repr(os.environ.get("LESS")) + "\\n")
    for n, line in enumerate(sys.stdin):
        if n == 4:
            break  # quits early, as a user pressing q does
        log.write(line)
"""


def pager(tmp_path: Path, script: str = PAGER) -> tuple[str, Path]:
    program = tmp_path / "pager.py"
    program.write_text(script)
    log = tmp_path / "paged.txt"
    return f"{sys.executable} {program} {log}", log


def test_a_listing_on_a_terminal_goes_through_the_pager(
    stores: tuple[Path, Path], tmp_path: Path
) -> None:
    command, log = pager(tmp_path)
    run = on_terminal("events", "--db", stores[0], "--all", env={"PAGER": command})
    assert run.code == 0, run.screen + run.stderr  # a pager quit early is a normal end
    assert "Traceback" not in run.screen + run.stderr
    assert run.stderr == ""
    paged = log.read_text().splitlines()
    assert paged[0] == "'FRX'"  # as git does, when LESS is not set
    assert paged[1] == "\x1b[1m" + paged[1][4:-4] + "\x1b[0m"  # bold: less -R shows it
    assert paged[1][4:-4].split() == ["timestamp", "topic", "event_id", "source", "payload"]
    assert len(paged) == 5


COPYING_PAGER = "import shutil, sys; shutil.copyfileobj(sys.stdin, sys.stdout)"


def test_a_paged_table_is_as_wide_as_the_terminal(store: Path, tmp_path: Path) -> None:
    (tmp_path / "pager.py").write_text(COPYING_PAGER)
    env = {"PAGER": f"{sys.executable} {tmp_path / 'pager.py'}", "COLUMNS": "", "LINES": ""}
    run = on_terminal("events", "--db", store, "-n", "20", columns=120, env=env)
    assert run.code == 0, run.stderr
    widths = [cell_len(line) for line in table_rows(run.plain)]
    assert 100 < max(widths) <= 120  # the terminal's width, not a fallback of 80


def test_less_settings_of_the_user_are_kept(store: Path, tmp_path: Path) -> None:
    command, log = pager(tmp_path)
    run = on_terminal("events", "--db", store, env={"PAGER": command, "LESS": "S"})
    assert run.code == 0
    assert log.read_text().splitlines()[0] == "'S'"


def test_no_pager_when_piped_or_asked(store: Path, tmp_path: Path) -> None:
    command, log = pager(tmp_path)
    piped = run_logagg("events", "--db", store, "--format", "table", env={"PAGER": command})
    assert piped.returncode == 0 and len(piped.stdout.splitlines()) == 102
    run = on_terminal("events", "--db", store, "--no-pager", env={"PAGER": command})
    assert run.code == 0 and len(table_rows(run.plain)) == 100
    assert not log.exists()


def test_a_pager_that_cannot_be_run_is_an_error(store: Path) -> None:
    run = on_terminal("events", "--db", store, env={"PAGER": "no-such-pager-here"})
    assert run.code == 1
    assert run.stderr.endswith(
        "logagg: error: the pager 'no-such-pager-here' could not be run: set PAGER, or --no-pager\n"
    )
    assert len(run.stderr.splitlines()) <= 2  # the shell's own word, then logagg's


SLOW_PAGER = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as less does
sys.stdout.write(sys.stdin.readline())
sys.stdout.flush()
time.sleep(0.5)  # the user reads, then quits
"""


def test_ctrl_c_while_paging_waits_for_the_pager_and_prints_no_traceback(
    stores: tuple[Path, Path], tmp_path: Path
) -> None:
    command, _ = pager(tmp_path, SLOW_PAGER)
    sent: list[bool] = []

    def ctrl_c(_master: int, proc: subprocess.Popen[bytes], screen: bytearray) -> None:
        if not sent and b"timestamp" in screen:
            os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C on a terminal: logagg and its pager
            sent.append(True)

    run = on_terminal("events", "--db", stores[1], "--all", env={"PAGER": command}, send=ctrl_c)
    assert sent
    assert run.code == 130, run.screen + run.stderr
    assert "Traceback" not in run.screen + run.stderr
    assert len(run.screen.splitlines()) <= 3  # nothing of the listing after the pager ended


# --- -n, and what the limit left out ---------------------------------------------------------


def test_n_is_the_short_form_of_limit(store: Path) -> None:
    proc = run_logagg("events", "--db", store, "-n", "7")
    assert proc.returncode == 0
    assert len(proc.stdout.splitlines()) == 7
    assert proc.stderr == b""  # piped: no word about the rest


@pytest.mark.parametrize(
    ("filters", "total"),
    [([], 150), (["--topic", "deploy"], 50), (["--source", "auth"], 50)],
    ids=["all", "topic", "source"],
)
def test_a_terminal_is_told_when_the_default_limit_cut_the_listing(
    store: Path, filters: list[str], total: int
) -> None:
    run = on_terminal("events", "--db", store, "--no-pager", *filters)
    assert run.code == 0
    shown = min(total, 100)
    assert len(table_rows(run.plain)) == shown
    expected = f"showing 100 of {total}; --all for every one\n" if total > 100 else ""
    assert run.stderr == expected


def test_no_word_when_the_limit_was_chosen_or_all_fit(store: Path) -> None:
    for args in (
        ["-n", "100"],
        ["--limit", "20"],
        ["--all"],
        ["--topic", "user.login", "-n", "60"],
    ):
        run = on_terminal("events", "--db", store, "--no-pager", *args)
        assert run.code == 0 and run.stderr == "", args


def test_a_listing_stopped_inside_the_store_leaves_nothing_open(tmp_path: Path) -> None:
    """Ctrl-C landing while the store reads (not while logagg writes) kept the readers of
    each topic alive past the store's close: Python then printed 'Exception ignored' and a
    traceback for each one."""
    import gc

    from logagg.store import EventQuery, open_store

    db = build(tmp_path / "s.db", 30)
    unraisable: list[object] = []
    previous = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        store = open_store(str(db), create=False)
        rows = store.events(EventQuery(limit=None))
        next(rows)
        try:
            rows.throw(KeyboardInterrupt)  # as a signal inside the reading would
        except KeyboardInterrupt as exc:
            kept = exc  # its traceback holds the frames, as while it is reported
        store.close()
        del kept, rows
        gc.collect()
    finally:
        sys.unraisablehook = previous
    assert unraisable == []


def test_the_count_of_a_wide_filter_stops_at_ten_thousand(tmp_path: Path) -> None:
    """Counting every match of a filter the topic counts cannot answer would read the
    whole of a big store after the listing: it stops past 10 000."""
    db = tmp_path / "big.db"
    events = run_logagg("gen", "10050", "--dup-rate", "0", "--seed", "3").stdout
    assert run_logagg("ingest", "--db", db, "-", input=events).returncode == 0
    run = on_terminal("events", "--db", db, "--no-pager", "--since", "2000-01-01")
    assert run.code == 0
    assert run.stderr == "showing 100 of more than 10,000; --all for every one\n"
    run = on_terminal("events", "--db", db, "--no-pager", "--until", "2025-01-01T00:00:00.5Z")
    assert run.code == 0
    matches = int(
        run_logagg("events", "--db", db, "--all", "--until", "2025-01-01T00:00:00.5Z").stdout.count(
            b"\n"
        )
    )
    assert 100 < matches <= 10_000
    assert run.stderr == f"showing 100 of {matches:,}; --all for every one\n"
