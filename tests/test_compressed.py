"""Compressed input with real `logagg` processes: memory stays bounded on decompression
bombs (files and stdin, gzip and zstd), and followed compressed files are read decompressed
and resume from their checkpoint."""

from __future__ import annotations

import gzip
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard
from conftest import check_store, event, logagg_cmd

MIB = 1 << 20
LONG_LINE = b"\0" * (4 * MIB) + b"\n"  # over the default --max-line-bytes (1 MiB)
BOMB_PART = LONG_LINE * 16  # 64 MiB that compress to a few KiB
MARGIN = 64 * MIB  # what a bomb may add to the peak RSS of a tiny plain input
WAIT = 20.0


def line(n: int, topic: str = "z") -> bytes:
    return json.dumps(event(n, topic=topic)).encode() + b"\n"


def gzip_member(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    return packer.compress(data) + packer.flush()


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """An event, 256 MiB (gzip) or 512 MiB (zstd) of zeros in 4 MiB lines, an event; each a
    few hundred KiB at most. The part is compressed once and repeated as members/frames."""
    gz_part = gzip_member(BOMB_PART)
    zst_part = zstandard.ZstdCompressor(level=3).compress(BOMB_PART)
    return {
        "gzip": gzip_member(line(1)) + gz_part * 4 + gzip_member(line(2)),
        "zstd": zstandard.ZstdCompressor().compress(line(1))
        + zst_part * 8
        + zstandard.ZstdCompressor().compress(line(2)),
    }


LONG_LINES = {"gzip": 4 * 16, "zstd": 8 * 16}


# Runs the command in its argv in a grandchild forked from this small process, and writes
# the grandchild's peak RSS (KiB) to a file: forked from pytest itself, the child's peak
# would count the pages it shared with pytest before exec.
_MEASURE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(args: list[str | Path], stdin: int | None, rss: Path) -> tuple[bytes, int]:
    """Run `logagg` to its end (it must succeed); its stdout and peak RSS in bytes."""
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(rss), *logagg_cmd(*args)],
        stdin=stdin,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout, int(rss.read_text()) * 1024


def feed_pipe(data: bytes) -> tuple[int, threading.Thread]:
    """A real pipe whose write end a thread fills with `data`; returns the read end."""
    r, w = os.pipe()

    def write() -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(w, view[: 1 << 16]) :]
        except BrokenPipeError:
            pass
        finally:
            os.close(w)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return r, thread


@pytest.fixture(scope="module")
def plain_peak(tmp_path_factory: pytest.TempPathFactory) -> int:
    """Peak RSS of ingesting a tiny plain file: the bound a bomb must stay near."""
    root = tmp_path_factory.mktemp("plain")
    small = root / "small.jsonl"
    small.write_bytes(line(1) + line(2))
    _, peak = run_measured(["ingest", "--db", root / "s.db", "--json", small], None, root / "rss")
    return peak


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
@pytest.mark.parametrize("via", ["file", "stdin-pipe"])
def test_a_decompression_bomb_keeps_memory_bounded(
    tmp_path: Path, db: Path, bombs: dict[str, bytes], plain_peak: int, codec: str, via: str
) -> None:
    """Hundreds of MiB of zeros from a file of a few hundred KiB: decompressed in bounded
    pieces, the over-long lines refused by their decompressed size, the events around
    them stored; the process's peak RSS stays near that of a tiny plain input."""
    data = bombs[codec]
    assert len(data) < 600 * 1024
    if via == "file":
        path = tmp_path / f"bomb.{codec}"
        path.write_bytes(data)
        out, peak = run_measured(["ingest", "--db", db, "--json", path], None, tmp_path / "rss")
    else:
        r, writer = feed_pipe(data)
        try:
            out, peak = run_measured(["ingest", "--db", db, "--json", "-"], r, tmp_path / "rss")
        finally:
            os.close(r)
            writer.join(10)
    report = json.loads(out)
    assert (report["accepted"], report["invalid"]) == (2, LONG_LINES[codec]), report
    assert peak < plain_peak + MARGIN, (
        f"peak RSS {peak / MIB:.0f} MiB on a {codec} bomb ({via}), "
        f"{plain_peak / MIB:.0f} MiB on a tiny plain file"
    )
    check_store(db)


def test_bounded_decompression_gives_the_same_lines_as_whole(tmp_path: Path, db: Path) -> None:
    """Many members and frames, lines across member boundaries, a long line: every
    event arrives once, in order, whatever the piece sizes."""
    lines = [line(n) for n in range(3000)]
    text = b"".join(lines)
    cuts = [0, 1, 17, 4096, 70_000, 150_000, 151_000, len(text)]
    gz = b"".join(gzip_member(text[a:b]) for a, b in zip(cuts, cuts[1:], strict=False))
    zst = b"".join(
        zstandard.ZstdCompressor(level=1).compress(text[a:b])
        for a, b in zip(cuts, cuts[1:], strict=False)
    )
    for name, data in (("a.gz", gz), ("b.zst", zst)):
        path = tmp_path / name
        path.write_bytes(data)
        proc = subprocess.run(
            logagg_cmd("ingest", "--db", db, "--json", path), capture_output=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr.decode()
    facts = check_store(db)
    assert (facts["rows"], facts["duplicate_dropped"], facts["invalid"]) == (3000, 3000, 0)


# --- following a compressed file ----------------------------------------------------------


def stored_ids(db: Path) -> list[str]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        return [row[0] for row in conn.execute("SELECT event_id FROM events ORDER BY rowid")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def counters(db: Path) -> tuple[int, int]:
    """(duplicates, invalid) as committed."""
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT duplicates, invalid FROM counters").fetchone()
        return int(row[0]), int(row[1])
    finally:
        conn.close()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    import time

    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def follower(db: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*paths: Path) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            logagg_cmd("ingest", "--db", db, "-F", "--flush-interval", "0.05", *paths),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def pack(codec: str, data: bytes) -> bytes:
    if codec == "gzip":
        return gzip.compress(data)
    return zstandard.ZstdCompressor().compress(data)


def ids(numbers: range) -> list[str]:
    return [f"e{n}" for n in numbers]


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_a_followed_compressed_file_is_read_decompressed_and_resumes(
    tmp_path: Path, db: Path, follower: Callable[..., subprocess.Popen[bytes]], codec: str
) -> None:
    """`-F app.log.gz`: its events, not its compressed bytes; a member appended later is
    read too; a restart continues after the checkpoint (an offset in the decompressed
    stream), reading nothing twice."""
    log = tmp_path / "app.log.gz"
    log.write_bytes(pack(codec, b"".join(line(n) for n in range(100))))
    first = follower(log)
    wait_for(lambda: sorted(stored_ids(db)) == sorted(ids(range(100))), "the first 100")
    with open(log, "ab") as f:
        f.write(pack(codec, b"".join(line(n) for n in range(100, 120))))
    wait_for(lambda: len(stored_ids(db)) == 120, "the appended member")
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=30) == 130
    second = follower(log)
    with open(log, "ab") as f:
        f.write(pack(codec, b"".join(line(n) for n in range(120, 130))))
    wait_for(lambda: len(stored_ids(db)) == 130, "the member appended after the restart")
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 143
    assert counters(db) == (0, 0), "read twice (duplicates) or read as text (invalid)"
    assert stored_ids(db) == ids(range(130))
    check_store(db)


def test_a_damaged_followed_file_is_reported_once_and_the_others_go_on(
    tmp_path: Path, db: Path, follower: Callable[..., subprocess.Popen[bytes]]
) -> None:
    whole = gzip.compress(b"".join(line(n) for n in range(2000)), mtime=0)
    cut = len(whole) // 2
    damaged = whole[:cut] + bytes(b ^ 0x5A for b in whole[cut : cut + 64]) + whole[cut + 64 :]
    bad = tmp_path / "bad.log.gz"
    bad.write_bytes(damaged)
    good = tmp_path / "good.log"
    good.write_bytes(line(1, topic="good"))
    proc = follower(bad, good)
    wait_for(lambda: "e1" in stored_ids(db) and len(stored_ids(db)) > 500, "lines before damage")
    with open(good, "ab") as f:
        f.write(line(2, topic="good"))
    wait_for(lambda: stored_ids(db).count("e2") == 2, "the good file's next line")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    stderr = err.decode()
    assert "Traceback" not in stderr
    complaints = [x for x in stderr.splitlines() if x.startswith(f"logagg: error: {bad}:")]
    assert len(complaints) == 1, stderr  # (lines decoded wrongly before the check: rejects)
    assert "corrupt or truncated gzip data" in complaints[0]
    check_store(db)
