"""Output and signals at the edges: closed pipes, full disks, Ctrl-C in a pipeline, terminals.

Real processes, real pipes (`head -1`, a reader that has closed its end), `/dev/full`,
signals to a whole process group (`tail -F | logagg ingest - --emit new | jq`), and a
pseudo-terminal with a fixed width for the tables. Every wait has a deadline and waits
for something observable.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import check_store, event, logagg_cmd, run_logagg, write_jsonl

ESC = "\x1b"
OSC_TITLE = f"{ESC}]0;pwned\x07"  # sets the terminal's title
CLEAR = f"{ESC}[2J"  # clears the screen
C1_CSI = "\u009b"  # the one-character CSI some terminals obey
LINK = "[link=https://evil.example]click[/link]"
TERMINAL_ENV = {"COLUMNS": "400", "LINES": "50", "TERM": "xterm-256color"}


# --- helpers -------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {limit} s waiting for {what}")


def closed_pipe() -> int:
    """The write end of a pipe whose reader has already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


def run_with_stdout(
    fd_or_file: int | object, *args: str | Path, stdin: int | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        logagg_cmd(*args),
        stdout=fd_or_file,  # type: ignore[arg-type]
        stderr=subprocess.PIPE,
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        timeout=120,
    )


def run_on_terminal(*args: str | Path, limit: float = 60.0) -> tuple[int, bytes]:
    """Run logagg with stdin, stdout and stderr on a new pseudo-terminal; return its exit
    status and everything it wrote there."""
    env = {**os.environ, **TERMINAL_ENV}
    env.pop("NO_COLOR", None)
    pid, fd = pty.fork()
    if pid == 0:  # the child
        try:
            os.execve(sys.executable, logagg_cmd(*args), env)
        finally:
            os._exit(127)
    chunks: list[bytes] = []
    deadline = time.monotonic() + limit
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"logagg {args} did not finish on the terminal within {limit} s")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks)


def one_error_line(stderr: bytes) -> str:
    """stderr holds exactly one `logagg: error:` line and no traceback; return it."""
    text = stderr.decode()
    assert "Traceback" not in text and "Exception ignored" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("logagg: error: ")]
    assert len(errors) == 1, text
    return errors[0]


def report_counts(stderr: bytes) -> dict[str, int]:
    """The counts of the report line `received N  accepted N  duplicates N  invalid N`."""
    for line in stderr.decode().replace(",", "").splitlines():
        if line.startswith("received "):
            words = line.split()
            return {words[i]: int(words[i + 1]) for i in range(0, 8, 2)}
    pytest.fail(f"no report on stderr: {stderr.decode()!r}")


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with 3000 events in three topics: more output than a pipe buffer holds."""
    root = tmp_path_factory.mktemp("filled")
    db = root / "store.db"
    data = write_jsonl(root / "in.jsonl", (event(n, topic=f"t{n % 3}") for n in range(3000)))
    proc = run_logagg("ingest", "--db", db, data)
    assert proc.returncode == 0, proc.stderr.decode()
    return db


# --- a closed stdout ends every command quietly --------------------------------------------

READ_COMMANDS = [
    ["events", "--all", "--format", "jsonl"],
    ["events", "--all", "--format", "json"],
    ["events", "--all", "--format", "csv"],
    ["events", "--all", "--format", "table"],
    ["stats", "--json"],
    ["stats", "--format", "table"],
    ["check", "--json"],  # (plain `check` writes its verdict to stderr: nothing on stdout)
]


@pytest.mark.parametrize("args", READ_COMMANDS, ids=" ".join)
def test_read_commands_with_a_closed_stdout_exit_0_quietly(filled: Path, args: list[str]) -> None:
    out = closed_pipe()
    try:
        proc = run_with_stdout(out, *args, "--db", filled)
    finally:
        os.close(out)
    assert (proc.returncode, proc.stderr.decode()) == (0, "")


@pytest.mark.parametrize(
    "args", [["gen", "100000"], ["--version"], ["events", "--help"]], ids=" ".join
)
def test_gen_version_and_help_with_a_closed_stdout_exit_0_quietly(args: list[str]) -> None:
    out = closed_pipe()
    try:
        proc = run_with_stdout(out, *args)
    finally:
        os.close(out)
    assert (proc.returncode, proc.stderr.decode()) == (0, "")


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_publish_with_a_closed_stdout_stores_the_event_and_exits_0(
    tmp_path: Path, as_json: bool
) -> None:
    db = tmp_path / "store.db"
    out = closed_pipe()
    try:
        args = ["publish", "--db", db, "--topic", "deploy", "--event-id", "b1"]
        proc = run_with_stdout(out, *args, *(["--json"] if as_json else []))
    finally:
        os.close(out)
    said = "" if as_json else "accepted: deploy b1\n"  # the verdict is for people: stderr
    assert (proc.returncode, proc.stderr.decode()) == (0, said)
    assert check_store(db)["rows"] == 1


def test_ingest_json_with_a_closed_stdout_commits_everything_and_exits_0(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    data = write_jsonl(tmp_path / "in.jsonl", [event(n) for n in range(50)])
    out = closed_pipe()
    try:
        proc = run_with_stdout(out, "ingest", "--json", "--db", db, data)
    finally:
        os.close(out)
    assert (proc.returncode, proc.stderr.decode()) == (0, "")
    assert check_store(db)["rows"] == 50


@pytest.mark.parametrize(
    "args",
    [
        ["events", "--all"],
        ["events", "--all", "--format", "json"],
        ["events", "--all", "--format", "csv"],
    ],
    ids=" ".join,
)
def test_events_into_head_exits_0_under_pipefail(filled: Path, args: list[str]) -> None:
    cmd = " ".join(f"'{a}'" for a in logagg_cmd(*args, "--db", filled))
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {cmd} | head -1"], capture_output=True, timeout=120
    )
    assert (proc.returncode, proc.stderr.decode()) == (0, "")
    assert proc.stdout.count(b"\n") == 1


def test_gen_into_head_exits_0_under_pipefail() -> None:
    cmd = " ".join(f"'{a}'" for a in logagg_cmd("gen", "200000"))
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {cmd} | head -1"], capture_output=True, timeout=120
    )
    assert (proc.returncode, proc.stderr.decode()) == (0, "")


# --- ingest --emit whose reader has gone: stop, commit, report, exit 141 --------------------


def test_emit_to_a_closed_stdout_stops_a_live_stream_reports_and_exits_141(
    tmp_path: Path,
) -> None:
    """stdin stays open: only the closed stdout can end the run."""
    db = tmp_path / "store.db"
    out = closed_pipe()
    proc = subprocess.Popen(
        logagg_cmd("ingest", "-", "--emit", "new", "--db", db),
        stdin=subprocess.PIPE,
        stdout=out,
        stderr=subprocess.PIPE,
    )
    os.close(out)
    assert proc.stdin is not None
    try:
        proc.stdin.write(b"".join(json.dumps(event(n)).encode() + b"\n" for n in range(10)))
        proc.stdin.flush()
        proc.wait(timeout=30)
        assert proc.stderr is not None
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
    assert proc.returncode == 141, err.decode()
    assert "Traceback" not in err.decode() and "error" not in err.decode(), err.decode()
    assert report_counts(err)["accepted"] == 10
    facts = check_store(db)
    assert (facts["rows"], facts["received"]) == (10, 10)


def test_emit_to_a_closed_stdout_stops_reading_a_big_file(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    data = tmp_path / "big.jsonl"
    with open(data, "wb") as f:
        assert subprocess.run(logagg_cmd("gen", "100000"), stdout=f, timeout=120).returncode == 0
    out = closed_pipe()
    try:
        args = ["ingest", "--emit", "new", "--batch-size", "1000", "--queue-size", "1"]
        proc = run_with_stdout(out, *args, "--db", db, data)
    finally:
        os.close(out)
    assert proc.returncode == 141, proc.stderr.decode()
    counts = report_counts(proc.stderr)
    assert 0 < counts["received"] < 100000, counts
    facts = check_store(db)
    assert (facts["received"], facts["rows"]) == (counts["received"], counts["accepted"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_signal_to_the_whole_pipeline_reports_and_exits_130(
    tmp_path: Path, signum: int, code: int
) -> None:
    """`tail -F app.log | logagg ingest - --emit new | jq`, then Ctrl-C: jq dies and closes
    logagg's stdout while logagg commits the events it still holds. The report is printed
    and the exit status is the signal's, as for every other Ctrl-C."""
    db = tmp_path / "store.db"
    log = write_jsonl(tmp_path / "app.log", [event(n) for n in range(12)])
    jq_out = tmp_path / "jq.out"
    err_path = tmp_path / "logagg.err"
    read_end, write_end = os.pipe()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        tail = subprocess.Popen(
            ["tail", "-n", "+1", "-F", str(log)], stdout=write_end, process_group=0
        )
        procs.append(tail)
        with open(err_path, "wb") as err:
            # Five events per commit, and the rest only at shutdown: the last two wait.
            args = ["ingest", "-", "--emit", "new", "--batch-size", "5", "--flush-interval", "600"]
            logagg = subprocess.Popen(
                logagg_cmd(*args, "--db", db),
                stdin=read_end,
                stdout=subprocess.PIPE,
                stderr=err,
                process_group=tail.pid,
            )
        procs.append(logagg)
        os.close(read_end)
        with open(jq_out, "wb") as out:
            jq = subprocess.Popen(
                ["jq", "--unbuffered", "-c", ".payload"],
                stdin=logagg.stdout,
                stdout=out,
                process_group=tail.pid,
            )
        procs.append(jq)
        assert logagg.stdout is not None
        logagg.stdout.close()  # jq holds the only reading end

        unread = array.array("i", [0])

        def all_read_and_ten_emitted() -> bool:
            fcntl.ioctl(write_end, termios.FIONREAD, unread)
            return jq_out.read_bytes().count(b"\n") >= 10 and unread[0] == 0

        wait_until(all_read_and_ten_emitted, "ten events through jq")
        assert logagg.poll() is None
        os.killpg(tail.pid, signum)
        logagg.wait(timeout=30)
    finally:
        os.close(write_end)
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
    err_text = err_path.read_bytes()
    assert logagg.returncode == code, err_text.decode()
    assert "Traceback" not in err_text.decode() and "error" not in err_text.decode()
    counts = report_counts(err_text)
    facts = check_store(db)
    assert counts["received"] >= 10
    assert (facts["received"], facts["rows"]) == (counts["received"], counts["accepted"])


# --- stdout on a full disk: one line, exit 1 ------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        *READ_COMMANDS,
        ["events", "--all"],
        ["stats"],
        ["publish", "--topic", "deploy", "--event-id", "full-2", "--json"],
    ],
    ids=" ".join,
)
def test_commands_writing_to_a_full_disk_say_so_in_one_line(
    filled: Path, tmp_path: Path, args: list[str]
) -> None:
    db = filled
    if args[0] == "publish":
        db = tmp_path / "store.db"
    with open("/dev/full", "wb") as full:
        proc = run_with_stdout(full, *args, "--db", db)
    assert proc.returncode == 1, proc.stderr.decode()
    assert proc.stderr.decode().count("\n") == 1, proc.stderr.decode()
    assert one_error_line(proc.stderr) == "logagg: error: stdout: No space left on device"


def test_gen_to_a_full_disk_says_so_in_one_line() -> None:
    with open("/dev/full", "wb") as full:
        proc = run_with_stdout(full, "gen", "1000")
    assert proc.returncode == 1, proc.stderr.decode()
    assert proc.stderr.decode() == "logagg: error: stdout: No space left on device\n"


@pytest.mark.parametrize("mode", ["json", "emit"])
def test_ingest_to_a_full_disk_says_so_in_one_line_and_keeps_the_store(
    tmp_path: Path, mode: str
) -> None:
    db = tmp_path / "store.db"
    data = write_jsonl(tmp_path / "in.jsonl", [event(n) for n in range(50)])
    args = ["--json"] if mode == "json" else ["--emit", "new"]
    with open("/dev/full", "wb") as full:
        proc = run_with_stdout(full, "ingest", *args, "--db", db, data)
    assert proc.returncode == 1, proc.stderr.decode()
    assert one_error_line(proc.stderr) == "logagg: error: stdout: No space left on device"
    facts = check_store(db)
    assert (facts["rows"], facts["received"]) == (50, 50)
    if mode == "emit":
        assert report_counts(proc.stderr)["accepted"] == 50


# --- data is printed as text: markup never interpreted, control characters escaped ----------


HOSTILE = [
    {
        "topic": "[/bold]",
        "event_id": f"id{OSC_TITLE}{CLEAR}",
        "timestamp": "2025-01-01T00:00:00Z",
        "source": LINK,
        "payload": {"note": f"[red]hi[/red] {C1_CSI}31m"},
    },
    {
        "topic": f"[bold]{C1_CSI}2J",
        "event_id": "plain",
        "timestamp": "2025-01-01T00:00:01Z",
        "source": "s",
    },
]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("hostile")
    db = root / "store.db"
    data = write_jsonl(root / "in.jsonl", HOSTILE)
    proc = run_logagg("ingest", "--db", db, data)
    assert proc.returncode == 0, proc.stderr.decode()
    assert check_store(db)["rows"] == 2
    yield db


def assert_shown_as_text(screen: bytes) -> str:
    """No control sequence from the data reached the terminal; return the text shown."""
    assert b"Traceback" not in screen, screen.decode(errors="replace")
    assert b"\x1b]" not in screen  # no OSC: neither a title nor a hyperlink
    assert b"\x1b[2J" not in screen
    assert C1_CSI.encode() not in screen
    return screen.decode()


def test_events_table_on_a_terminal_shows_data_as_text(hostile: Path) -> None:
    code, screen = run_on_terminal("events", "--db", hostile)
    text = assert_shown_as_text(screen)
    assert code == 0, text
    for shown in ("[/bold]", LINK, "[red]hi[/red]", "[bold]", r"\x1b]0;pwned\x07", r"\x1b[2J"):
        assert shown in text, (shown, text)
    assert r"\x9b2J" in text and r"\x9b31m" in text, text


def test_stats_table_on_a_terminal_shows_topic_names_as_text(hostile: Path) -> None:
    code, screen = run_on_terminal("stats", "--db", hostile)
    text = assert_shown_as_text(screen)
    assert code == 0, text
    assert "[/bold]" in text and r"[bold]\x9b2J" in text, text


def test_publish_confirmation_on_a_terminal_shows_data_as_text(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    args = ["publish", "--db", db, "--topic", f"[bold]t{OSC_TITLE}", "--event-id", f"e{CLEAR}"]
    code, screen = run_on_terminal(*args)
    text = assert_shown_as_text(screen)
    assert code == 0, text
    assert r"accepted: [bold]t\x1b]0;pwned\x07 e\x1b[2J" in text, text


def test_machine_formats_stay_exact(hostile: Path) -> None:
    """JSON lines and CSV carry the data byte for byte (JSON escapes controls itself)."""
    jsonl = run_logagg("events", "--db", hostile, "--format", "jsonl", "--order", "asc")
    assert jsonl.returncode == 0, jsonl.stderr.decode()
    docs = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [(d["topic"], d["event_id"], d["source"]) for d in docs] == [
        (e["topic"], e["event_id"], e["source"]) for e in HOSTILE
    ]
    csv_out = run_logagg("events", "--db", hostile, "--format", "csv", "--order", "asc")
    assert csv_out.returncode == 0, csv_out.stderr.decode()
    assert f"id{OSC_TITLE}{CLEAR}".encode() in csv_out.stdout
    assert LINK.encode() in csv_out.stdout and b"[/bold]" in csv_out.stdout


def test_reject_messages_and_file_errors_show_names_as_text(tmp_path: Path) -> None:
    """File names reach stderr in `FILE:LINE: reason` and error lines: escaped, one line."""
    name = tmp_path / f"in{OSC_TITLE}\nx[bold].jsonl"
    write_jsonl(name, [event(1), "not json"])
    missing = tmp_path / f"gone{CLEAR}.jsonl"
    rejects = tmp_path / "rejects.jsonl"
    db = tmp_path / "store.db"
    proc = run_logagg("ingest", "--db", db, "--rejects", rejects, name, missing)
    assert proc.returncode == 1, proc.stderr.decode()
    assert b"\x1b" not in proc.stderr
    lines = proc.stderr.decode().splitlines()
    shown = str(name).replace(OSC_TITLE, r"\x1b]0;pwned\x07").replace("\n", r"\n")
    assert [line for line in lines if line.startswith(f"{shown}:2: invalid JSON")], lines
    gone = str(missing).replace(CLEAR, r"\x1b[2J")
    errors = [line for line in lines if line.startswith("logagg: error: ")]
    assert errors == [f"logagg: error: {gone}: no such file"], lines
    [doc] = [json.loads(line) for line in rejects.read_bytes().splitlines()]
    assert doc["file"] == str(name)  # the rejects file keeps the exact name


def test_usage_errors_show_values_as_text() -> None:
    proc = run_logagg("events", "--limit", f"1{OSC_TITLE}")
    assert proc.returncode == 2, proc.stderr.decode()
    assert b"\x1b" not in proc.stderr and b"\x07" not in proc.stderr
    assert proc.stderr.decode().count("\n") == 1, proc.stderr.decode()


def test_ingest_progress_on_a_terminal_shows_file_names_as_text(tmp_path: Path) -> None:
    """The progress bar names the file: markup in the name is not read, controls are escaped."""
    db = tmp_path / "store.db"
    name = tmp_path / f"[bold][nosuchstyle]in{OSC_TITLE}.jsonl"
    data = write_jsonl(name, (event(n) for n in range(20000)))
    code, screen = run_on_terminal("ingest", "--db", db, data)
    text = assert_shown_as_text(screen)
    assert code == 0, text
    assert check_store(db)["rows"] == 20000
