"""Operator slips never destroy data: an output path that names the store or an input.

Real processes, real files, hard links and symlinks. `--rejects` or `--db` naming the
store (or its -wal/-shm), an input, or the same file by another path is a usage error
(one line, exit 2) before anything is opened for writing; the rejects file is never
created through a symlink to a regular file; write errors on it are one line, exit 1.
After every scenario the store passes `check` and the inputs hold the same bytes.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import check_store, event, logagg_cmd, run_logagg, write_jsonl

BAD = "this line is not JSON"


def error_lines(stderr: bytes) -> list[str]:
    """The `logagg: error:` lines of stderr; fail on a traceback."""
    text = stderr.decode()
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if line.startswith("logagg: error: ")]


def assert_usage_error(proc: subprocess.CompletedProcess[bytes], *words: str) -> str:
    """Exit 2 and exactly one line on stderr, which names `words`; return the line."""
    text = proc.stderr.decode()
    assert proc.returncode == 2, (proc.returncode, text)
    assert "Traceback" not in text, text
    assert text.count("\n") == 1 and text.startswith("logagg: error: "), repr(text)
    for word in words:
        assert word in text, (word, text)
    return text


class Scene:
    """A store holding three events and an input file with two events and a bad line."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.db = root / "store.db"
        self.input = write_jsonl(root / "in.jsonl", [event(10), BAD, event(11)])
        seed = write_jsonl(root / "seed.jsonl", [event(1), event(2), event(3)])
        proc = run_logagg("ingest", "--db", self.db, seed)
        assert proc.returncode == 0, proc.stderr.decode()
        self.facts = check_store(self.db)
        self.before = {p: p.read_bytes() for p in (self.input, seed)}

    def assert_intact(self) -> None:
        """The store is healthy and unchanged, and every input holds the same bytes."""
        assert check_store(self.db) == self.facts
        for path, data in self.before.items():
            assert path.read_bytes() == data, f"{path} was changed"
        assert not list(self.root.glob("*.db-journal"))


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    s = Scene(tmp_path)
    yield s
    s.assert_intact()


# --- --rejects naming the store ------------------------------------------------------------


@pytest.mark.parametrize("form", ["same", "relative", "dotdot", "hardlink", "symlink"])
def test_rejects_naming_the_store_is_refused_before_anything_is_written(
    scene: Scene, form: str
) -> None:
    name = {
        "same": str(scene.db),
        "relative": "store.db",
        "dotdot": str(scene.root / "sub" / ".." / "store.db"),
        "hardlink": str(scene.root / "alias.db"),
        "symlink": str(scene.root / "link.db"),
    }[form]
    (scene.root / "sub").mkdir()
    if form == "hardlink":
        os.link(scene.db, name)
    if form == "symlink":
        os.symlink(scene.db, name)
    proc = subprocess.run(
        logagg_cmd("ingest", "--rejects", name, "--db", scene.db, scene.input),
        capture_output=True,
        cwd=scene.root,
        timeout=60,
    )
    assert_usage_error(proc, "--rejects")


@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
def test_rejects_naming_the_stores_side_files_is_refused(scene: Scene, suffix: str) -> None:
    side = Path(f"{scene.db}{suffix}")
    proc = run_logagg("ingest", "--rejects", side, "--db", scene.db, scene.input)
    assert_usage_error(proc, "--rejects")
    assert not side.exists()


# --- --rejects naming an input -------------------------------------------------------------


@pytest.mark.parametrize("form", ["same", "relative", "hardlink", "symlink"])
def test_rejects_naming_an_input_is_refused(scene: Scene, form: str) -> None:
    name = {
        "same": str(scene.input),
        "relative": "./in.jsonl",
        "hardlink": str(scene.root / "alias.jsonl"),
        "symlink": str(scene.root / "link.jsonl"),
    }[form]
    if form == "hardlink":
        os.link(scene.input, name)
    if form == "symlink":
        os.symlink(scene.input, name)
    proc = subprocess.run(
        logagg_cmd("ingest", "--db", scene.db, "--rejects", name, scene.input),
        capture_output=True,
        cwd=scene.root,
        timeout=60,
    )
    assert_usage_error(proc, "--rejects")


def test_rejects_naming_the_file_on_stdin_is_refused(scene: Scene) -> None:
    with open(scene.input, "rb") as stdin:
        proc = subprocess.run(
            logagg_cmd("ingest", "--db", scene.db, "--rejects", scene.input, "-"),
            stdin=stdin,
            capture_output=True,
            timeout=60,
        )
    assert_usage_error(proc, "--rejects")


def test_rejects_naming_an_input_that_does_not_exist_yet_is_refused(scene: Scene) -> None:
    later = scene.root / "later.jsonl"
    proc = run_logagg("ingest", "--db", scene.db, "--rejects", later, scene.input, later)
    assert_usage_error(proc, "--rejects")
    assert not later.exists()


# --- --rejects through a symlink -----------------------------------------------------------


def test_rejects_symlink_to_a_regular_file_is_refused_and_its_target_kept(scene: Scene) -> None:
    victim = scene.root / "precious.txt"
    victim.write_bytes(b"keep me\n")
    link = scene.root / "rejects.jsonl"
    link.symlink_to(victim)
    proc = run_logagg("ingest", "--db", scene.db, "--rejects", link, scene.input)
    assert_usage_error(proc, "--rejects", "symbolic link")
    assert victim.read_bytes() == b"keep me\n"
    assert link.is_symlink()


def test_rejects_dangling_symlink_is_refused_and_nothing_created(scene: Scene) -> None:
    target = scene.root / "nowhere.jsonl"
    link = scene.root / "rejects.jsonl"
    link.symlink_to(target)
    proc = run_logagg("ingest", "--db", scene.db, "--rejects", link, scene.input)
    assert_usage_error(proc, "--rejects")
    assert not target.exists()


def test_rejects_symlink_to_dev_null_is_allowed(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    data = write_jsonl(tmp_path / "in.jsonl", [event(1), BAD])
    link = tmp_path / "rejects.jsonl"
    link.symlink_to("/dev/null")
    proc = run_logagg("ingest", "--db", db, "--rejects", link, data)
    assert proc.returncode == 0, proc.stderr.decode()
    assert link.is_symlink() and Path(os.path.realpath(link)) == Path("/dev/null")
    assert check_store(db)["rows"] == 1


def test_rejects_symlink_to_a_fifo_is_allowed(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    data = write_jsonl(tmp_path / "in.jsonl", [event(1), BAD])
    fifo = tmp_path / "rejects.fifo"
    os.mkfifo(fifo)
    link = tmp_path / "rejects.jsonl"
    link.symlink_to(fifo)
    received: list[bytes] = []
    read_end = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader is there before logagg
    os.set_blocking(read_end, True)
    held = os.open(fifo, os.O_WRONLY)  # and a writer, so the reader sees no end before logagg's

    def drain() -> None:
        with open(read_end, "rb") as f:
            received.append(f.read())

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = run_logagg("ingest", "--db", db, "--rejects", link, data, timeout=60)
    os.close(held)
    reader.join(timeout=30)
    assert proc.returncode == 0, proc.stderr.decode()
    assert not reader.is_alive()
    [doc] = [json.loads(line) for line in received[0].splitlines()]
    assert doc["raw"] == BAD and doc["line"] == 2


def test_rejects_to_a_fifo_nothing_reads_is_a_usage_error_not_a_hang(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    data = write_jsonl(tmp_path / "in.jsonl", [event(1), BAD])
    fifo = tmp_path / "rejects.fifo"
    os.mkfifo(fifo)
    proc = run_logagg("ingest", "--db", db, "--rejects", fifo, data, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.decode() == f"logagg: error: --rejects {fifo}: a FIFO that nothing reads\n"
    assert not db.exists()


def test_rejects_to_dev_stderr_appends_to_the_file_stderr_is(tmp_path: Path) -> None:
    """/dev/stderr is logagg's own descriptor: written as it is, never truncated."""
    db = tmp_path / "store.db"
    data = write_jsonl(tmp_path / "in.jsonl", [event(1), BAD])
    log = tmp_path / "errors.log"
    log.write_bytes(b"earlier run\n")
    with open(log, "ab") as err:
        proc = subprocess.run(
            logagg_cmd("ingest", "--db", db, "--rejects", "/dev/stderr", data),
            stdout=subprocess.PIPE,
            stderr=err,
            timeout=60,
        )
    text = log.read_bytes()
    assert proc.returncode == 0, text.decode()
    assert text.startswith(b"earlier run\n"), text
    [doc] = [json.loads(line) for line in text.splitlines() if line.startswith(b"{")]
    assert doc["raw"] == BAD


def test_rejects_plain_file_is_replaced(tmp_path: Path) -> None:
    """The ordinary case still works: an existing rejects file is replaced, not appended."""
    db = tmp_path / "store.db"
    data = write_jsonl(tmp_path / "in.jsonl", [event(1), BAD])
    rejects = tmp_path / "rejects.jsonl"
    rejects.write_bytes(b"old content that is much longer than one reject line\n" * 20)
    proc = run_logagg("ingest", "--db", db, "--rejects", rejects, data)
    assert proc.returncode == 0, proc.stderr.decode()
    [doc] = [json.loads(line) for line in rejects.read_bytes().splitlines()]
    assert doc["raw"] == BAD


# --- write errors on the rejects file ------------------------------------------------------


def test_rejects_on_a_full_device_is_one_line_exit_1(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    data = write_jsonl(tmp_path / "in.jsonl", [event(1), BAD, event(2)])
    proc = run_logagg("ingest", "--db", db, "--rejects", "/dev/full", data)
    assert proc.returncode == 1, proc.stderr.decode()
    [line] = error_lines(proc.stderr)
    assert "--rejects /dev/full" in line and "No space left on device" in line, line
    facts = check_store(db)
    assert (facts["rows"], facts["invalid"]) == (2, 1)


def test_rejects_file_filling_up_mid_run_is_one_line_exit_1(tmp_path: Path) -> None:
    """A file-size limit on the child: the rejects file fills up after some megabytes,
    while the store (small) still fits. What was read is committed; one line; exit 1."""
    db = tmp_path / "store.db"
    bad = "x" * 1000
    data = write_jsonl(
        tmp_path / "in.jsonl",
        (event(n) if n % 2 else f"{bad} {n}" for n in range(8000)),
    )
    rejects = tmp_path / "rejects.jsonl"
    limit = 3 << 20

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        logagg_cmd("ingest", "--db", db, "--rejects", rejects, data),
        capture_output=True,
        preexec_fn=small_files,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr.decode()
    [line] = error_lines(proc.stderr)
    assert f"--rejects {rejects}" in line and "File too large" in line, line
    assert "received" in proc.stderr.decode()  # the report of what was committed
    assert rejects.stat().st_size <= limit
    facts = check_store(db)
    assert facts["rows"] > 0
    assert facts["received"] == facts["rows"] + facts["invalid"]


# --- --db naming an input ------------------------------------------------------------------


@pytest.mark.parametrize("form", ["same", "relative", "hardlink", "symlink"])
@pytest.mark.parametrize("content", ["events", "empty"])
def test_db_naming_an_input_is_refused_before_anything_is_written(
    tmp_path: Path, form: str, content: str
) -> None:
    data = tmp_path / "in.jsonl"
    if content == "events":
        write_jsonl(data, [event(1), BAD])
    else:
        data.write_bytes(b"")
    before = data.read_bytes()
    db = {
        "same": str(data),
        "relative": "./in.jsonl",
        "hardlink": str(tmp_path / "alias.db"),
        "symlink": str(tmp_path / "link.db"),
    }[form]
    if form == "hardlink":
        os.link(data, db)
    if form == "symlink":
        os.symlink(data, db)
    proc = subprocess.run(
        logagg_cmd("ingest", "--db", db, data),
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert_usage_error(proc, "--db")
    assert data.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("in.jsonl")) == [
        "in.jsonl"
    ]


def test_db_naming_the_empty_file_on_stdin_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    data.write_bytes(b"")
    with open(data, "rb") as stdin:
        proc = subprocess.run(
            logagg_cmd("ingest", "--db", data, "-"), stdin=stdin, capture_output=True, timeout=60
        )
    assert_usage_error(proc, "--db")
    assert data.read_bytes() == b""


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_an_input_naming_the_store_is_refused(scene: Scene, suffix: str) -> None:
    proc = run_logagg("ingest", "--db", scene.db, Path(f"{scene.db}{suffix}"))
    assert_usage_error(proc, "--db")


def test_follow_with_db_naming_an_input_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "app.log"
    proc = run_logagg("ingest", "-F", "--db", data, data, timeout=60)
    assert_usage_error(proc, "--db")
    assert not data.exists()


# --- stdout appended to the store or an input ----------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["events", "--format", "jsonl"],
        ["stats", "--json"],
        ["check", "--json"],
        ["publish", "--topic", "x", "--event-id", "y"],
    ],
    ids=lambda a: a[0],
)
def test_stdout_appended_to_the_store_is_refused(scene: Scene, args: list[str]) -> None:
    with open(scene.db, "ab") as out:
        proc = subprocess.run(
            logagg_cmd(*args, "--db", scene.db), stdout=out, stderr=subprocess.PIPE, timeout=60
        )
    assert_usage_error(proc, "stdout")


@pytest.mark.parametrize("emit", ["new", "duplicates"])
def test_emit_appended_to_an_input_is_refused(scene: Scene, emit: str) -> None:
    with open(scene.input, "ab") as out:
        proc = subprocess.run(
            logagg_cmd("ingest", "--db", scene.db, "--emit", emit, scene.input),
            stdout=out,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    assert_usage_error(proc, "stdout")
