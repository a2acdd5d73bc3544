"""The logagg benchmark (`make bench`): logagg against a tuned floor, the sqlite3 shell
and sqlite-utils, at each size of BENCH_SIZES.

Every step runs whole child processes and measures wall time around each and its peak RSS
(from `os.wait4`). Sizes and repeats come from environment variables whose defaults are
the sizes of the benchmark (see bench/README.md), so a small run is, for example:

    BENCH_SIZES="20000 50000" BENCH_REPEAT=1 BENCH_TRICKLE_SECONDS=3 make bench

The results go to bench/RESULTS.md (its "What was tried" section is kept) and stdout.
Exit status 1 when a tool stored a different number of rows than the input holds.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent

# Targets of the benchmark issue ("Fast at scale").
MIN_VS_SQLITE_UTILS = 4.5  # logagg events/s over sqlite-utils events/s
MAX_VS_FLOOR = 1.25  # logagg wall time over the floor's wall time
MIN_BIG_RATE = 0.75  # events/s at the second size over events/s at the first
MAX_RSS_MB = 160.0  # peak RSS of `logagg ingest`, in MB (10^6 bytes), at every size
# The floor's settings at each size (page size, events a commit, cache MiB): the best an
# interleaved sweep found for its own loop (bench/RESULTS.md, "What was tried"); the
# sqlite3 shell gets the same page size and cache.
FLOOR_SETTINGS = ((1_000_000, (65536, 200_000, 64)), (0, (4096, 200_000, 64)))
SQLITE_UTILS_MAX = 5_000_000  # larger sizes skip sqlite-utils (about an hour at 20M)
MAX_QUERY_RATIO = 1.3  # stats / events on the big store over the same on an empty store
MAX_TRICKLE_P99 = 0.5  # seconds from a line written to it being visible
MAX_STARTUP_RATIO = 1.5  # `logagg --help` over `python -c "import typer"`

WHAT_WAS_TRIED = "## What was tried"
PLACEHOLDER = (
    "_To be filled in by the maintainers: each change tried, what it did to the numbers"
    " above, and whether it was kept._"
)
EVENTS_TOPIC = "topic.00"


class BenchError(Exception):
    """A step could not run (a child failed, a tool is missing)."""


# --- configuration ----------------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    try:
        return int(value.replace("_", "")) if value else default
    except ValueError:
        raise BenchError(f"{name}={value!r}: expected an integer") from None


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    try:
        return float(value) if value else default
    except ValueError:
        raise BenchError(f"{name}={value!r}: expected a number") from None


def _env_sizes(name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    value = os.environ.get(name, "").replace(",", " ").split()
    try:
        sizes = tuple(int(v.replace("_", "")) for v in value) if value else default
    except ValueError:
        raise BenchError(f"{name}={' '.join(value)!r}: expected event counts") from None
    if not sizes or min(sizes) <= 0:
        raise BenchError(f"{name}: expected at least one positive event count")
    return sizes


@dataclass(frozen=True, slots=True)
class Config:
    """What to run; every field has an environment variable (see `from_env`)."""

    sizes: tuple[int, ...] = (1_000_000, 5_000_000)
    repeat: int = 3
    big_repeat: int = 1
    query_repeat: int = 7
    startup_repeat: int = 10
    trickle_seconds: float = 10.0
    trickle_rate: float = 200.0
    poll_seconds: float = 0.020
    seed: int = 42
    data: Path = HERE / "data"
    results: Path = HERE / "RESULTS.md"

    @classmethod
    def from_env(cls) -> Config:
        """Read BENCH_* variables; unset ones keep the benchmark's sizes."""
        d = cls()
        return cls(
            sizes=_env_sizes("BENCH_SIZES", d.sizes),
            repeat=max(1, _env_int("BENCH_REPEAT", d.repeat)),
            big_repeat=max(1, _env_int("BENCH_BIG_REPEAT", d.big_repeat)),
            query_repeat=max(1, _env_int("BENCH_QUERY_REPEAT", d.query_repeat)),
            startup_repeat=max(1, _env_int("BENCH_STARTUP_REPEAT", d.startup_repeat)),
            trickle_seconds=_env_float("BENCH_TRICKLE_SECONDS", d.trickle_seconds),
            trickle_rate=_env_float("BENCH_TRICKLE_RATE", d.trickle_rate),
            poll_seconds=_env_float("BENCH_POLL_MS", d.poll_seconds * 1000) / 1000,
            seed=_env_int("BENCH_SEED", d.seed),
            data=Path(os.environ.get("BENCH_DATA") or d.data),
            results=Path(os.environ.get("BENCH_RESULTS") or d.results),
        )

    def overrides(self) -> str:
        """The BENCH_* settings that differ from the defaults, as shell assignments."""
        d = Config()
        names = {
            "repeat": "BENCH_REPEAT",
            "big_repeat": "BENCH_BIG_REPEAT",
            "query_repeat": "BENCH_QUERY_REPEAT",
            "startup_repeat": "BENCH_STARTUP_REPEAT",
            "trickle_seconds": "BENCH_TRICKLE_SECONDS",
            "trickle_rate": "BENCH_TRICKLE_RATE",
            "seed": "BENCH_SEED",
        }
        parts = [
            f"{env}={_plain(getattr(self, attr))}"
            for attr, env in names.items()
            if getattr(self, attr) != getattr(d, attr)
        ]
        if self.sizes != d.sizes:
            parts.insert(0, f'BENCH_SIZES="{" ".join(map(str, self.sizes))}"')
        if self.poll_seconds != d.poll_seconds:
            parts.append(f"BENCH_POLL_MS={_plain(self.poll_seconds * 1000)}")
        return " ".join(parts)


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# --- child processes --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """One finished child: wall seconds, peak RSS in KiB, what it printed."""

    wall: float
    rss_kib: int
    stdout: str
    stderr: str


def _tool(name: str) -> str:
    """The executable `name` of this virtualenv, else the one on PATH."""
    local = BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise BenchError(f"{name}: not installed (make bench installs '.[dev,bench]')")
    return found


def log(message: str) -> None:
    """Progress on stderr."""
    sys.stderr.write(f"[bench] {message}\n")
    sys.stderr.flush()


def _reap(proc: subprocess.Popen[bytes], started: float) -> tuple[float, int]:
    """Wait for `proc` with `wait4`: its wall time since `started` and peak RSS in KiB."""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss


def _read(stream: IO[bytes]) -> str:
    stream.seek(0)
    return stream.read().decode("utf-8", "replace")


def run_child(argv: Sequence[str], *, stdout: Path | None = None) -> Run:
    """Run `argv` to completion as a child process; raise BenchError if it fails."""
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
        sink = open(stdout, "wb") if stdout else out  # noqa: SIM115 - closed below
        try:
            started = time.perf_counter()
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=sink, stderr=err, cwd=ROOT
            )
            wall, rss = _reap(proc, started)
        finally:
            if stdout:
                sink.close()
        text, errors = _read(out), _read(err)
    if proc.returncode != 0:
        tail = "\n".join(errors.strip().splitlines()[-15:])
        raise BenchError(f"{' '.join(map(str, argv))}: exit {proc.returncode}\n{tail}")
    return Run(wall, rss, text, errors)


def fresh(db: Path) -> Path:
    """`db` with no database file (nor its -wal and -shm) left from before."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return db


def count_rows(db: Path) -> int:
    """Rows in the `events` table of `db`, read with a read-only connection."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        conn.close()


# --- statistics -------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank `p`-th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# --- steps ------------------------------------------------------------------------------


@dataclass(slots=True)
class Size:
    """One input size: its lines, unique events and every tool's runs on it."""

    lines: int
    unique: int = 0
    runs: dict[str, list[Run]] = field(default_factory=dict)
    rows: dict[str, list[int]] = field(default_factory=dict)
    store_bytes: dict[str, list[int]] = field(default_factory=dict)

    def wall(self, tool: str) -> float:
        return median([r.wall for r in self.runs[tool]])

    def rate(self, tool: str) -> float:
        return self.lines / self.wall(tool)

    def rss_kib(self, tool: str) -> float:
        return median([r.rss_kib for r in self.runs[tool]])


@dataclass(slots=True)
class Outcome:
    """Everything measured, and every mismatch found on the way."""

    machine: str = ""
    sizes: list[Size] = field(default_factory=list)
    serve: dict[str, Any] | None = None
    queries: dict[str, tuple[float, float]] = field(default_factory=dict)
    queried_lines: int = 0
    trickle: dict[str, float] = field(default_factory=dict)
    startup: tuple[float, float] | None = None
    mismatches: list[str] = field(default_factory=list)

    def mismatch(self, message: str) -> None:
        self.mismatches.append(message)
        bar = "!" * 78
        sys.stderr.write(f"{bar}\n[bench] MISMATCH: {message}\n{bar}\n")


def generate(cfg: Config, count: int, name: str, *extra: str) -> tuple[Path, int, float]:
    """Write `count` events with `logagg gen`; return the file, unique count and seconds."""
    cfg.data.mkdir(parents=True, exist_ok=True)
    path = cfg.data / f"{name}-{count}.jsonl"
    argv = [sys.executable, "-m", "logagg", "gen", str(count), "--seed", str(cfg.seed), *extra]
    run = run_child(argv, stdout=path)
    found = re.search(r"(\d+) unique", run.stderr)
    if not found:
        raise BenchError(f"logagg gen: no unique count on stderr: {run.stderr.strip()!r}")
    return path, int(found.group(1)), run.wall


def machine_line() -> str:
    """CPU model, cores, memory, Python, SQLite, logagg version and commit, date."""
    cpu = platform.processor() or platform.machine()
    memory = ""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    memory = f"{int(line.split()[1]) / 1024**2:.1f} GiB RAM"
                    break
    except OSError:
        pass
    try:
        version = metadata.version("logagg")
    except metadata.PackageNotFoundError:
        version = "?"
    commit = _git("rev-parse", "--short", "HEAD")
    if commit and _git("status", "--porcelain", "--untracked-files=no"):
        commit += " + uncommitted changes"
    parts = [
        cpu,
        f"{os.cpu_count()} cores",
        memory,
        f"Python {platform.python_version()}",
        f"SQLite {sqlite3.sqlite_version}",
        f"logagg {version}" + (f" ({commit})" if commit else ""),
        datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    ]
    return " · ".join(p for p in parts if p)


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return ""
    return done.stdout.strip()


TOOLS = ("logagg", "floor", "sqlite3 shell", "sqlite-utils")

# The sqlite3 shell: the same table as the floor's, every line imported as one text column
# into a TEMP table, then one INSERT OR IGNORE in input order that unpacks it with ->>.
SHELL_SCRIPT = """\
PRAGMA page_size = {page};
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA cache_size = -{cache_kib};
{schema}
CREATE TEMP TABLE raw (line TEXT);
.mode ascii
.separator "\\037" "\\n"
.import --schema temp '{source}' raw
INSERT OR IGNORE INTO events
SELECT line ->> 'topic', line ->> 'event_id', line ->> 'timestamp', line ->> 'source',
       coalesce(line -> 'payload', '{{}}'), NULL, strftime('%Y-%m-%dT%H:%M:%fZ')
FROM temp.raw ORDER BY rowid;
"""


def floor_settings(lines: int) -> tuple[int, int, int]:
    """(page size, events a commit, cache MiB) of the floor at `lines` events."""
    for at_most, settings in FLOOR_SETTINGS:
        if lines <= at_most or at_most == 0:
            return settings
    return FLOOR_SETTINGS[-1][1]


def shell_script(source: Path, lines: int) -> str:
    """The sqlite3 shell's script that loads `source`."""
    sys.path.insert(0, str(HERE))
    import floor  # bench/floor.py: the same schema

    page, _, cache = floor_settings(lines)
    return SHELL_SCRIPT.format(
        page=page, cache_kib=cache * 1024, schema=floor.SCHEMA.strip(), source=source
    )


def tool_argv(tool: str, source: Path, db: Path, lines: int) -> list[str]:
    """The command that stores `source` (of `lines` events) into `db` with `tool`."""
    if tool == "logagg":
        return [_tool("logagg"), "ingest", "--quiet", "--json", "--db", str(db), str(source)]
    if tool == "sqlite-utils":
        return [
            _tool("sqlite-utils"),
            "insert",
            str(db),
            "events",
            str(source),
            "--nl",
            "--pk",
            "topic",
            "--pk",
            "event_id",
            "--ignore",
        ]
    if tool == "sqlite3 shell":
        script = db.with_suffix(".sql")
        script.write_text(shell_script(source, lines))
        return [_tool("sqlite3"), "-bail", str(db), f".read '{script}'"]
    page, commit, cache = floor_settings(lines)
    return [
        sys.executable,
        str(HERE / "floor.py"),
        str(source),
        str(db),
        "--page-size",
        str(page),
        "--batch-size",
        str(commit),
        "--cache-mib",
        str(cache),
    ]


def store_size(db: Path) -> int:
    """Bytes of `db` and its WAL."""
    return sum(os.path.getsize(f"{db}{x}") for x in ("", "-wal") if os.path.exists(f"{db}{x}"))


def check_report(out: Outcome, run: Run, lines: int, unique: int) -> None:
    """`logagg ingest --json` must report every line received and the unique count kept."""
    try:
        report = json.loads(run.stdout)
    except ValueError:
        out.mismatch(f"logagg ingest --json printed no JSON report: {run.stdout[:200]!r}")
        return
    if report.get("received") != lines or report.get("accepted") != unique:
        out.mismatch(
            f"logagg ingest reported received={report.get('received')}"
            f" accepted={report.get('accepted')}, input has {lines} lines, {unique} unique"
        )


def compare(cfg: Config, out: Outcome, size: Size, source: Path, rounds: int) -> Path:
    """Alternate the tools `rounds` times on `source`; returns logagg's last store (kept)."""
    stores = cfg.data / "stores"
    stores.mkdir(parents=True, exist_ok=True)
    tools = [t for t in TOOLS if t != "sqlite-utils" or size.lines <= SQLITE_UTILS_MAX]
    for tool in tools:
        size.runs[tool], size.rows[tool], size.store_bytes[tool] = [], [], []
    for round_no in range(1, rounds + 1):
        for tool in tools:
            db = fresh(stores / f"{tool.replace(' ', '-')}.db")
            run = run_child(tool_argv(tool, source, db, size.lines))
            rows = count_rows(db)
            size.runs[tool].append(run)
            size.rows[tool].append(rows)
            size.store_bytes[tool].append(store_size(db))
            log(
                f"{_n(size.lines)} round {round_no}/{rounds} {tool}: {run.wall:.2f} s,"
                f" {run.rss_kib / 1024:.0f} MiB, {rows} rows"
            )
            if rows != size.unique:
                out.mismatch(
                    f"{tool} stored {rows} rows of {size.lines} events,"
                    f" the input has {size.unique} unique"
                )
            if tool == "logagg":  # kept until the next round, or for the queries
                check_report(out, run, size.lines, size.unique)
            else:
                fresh(db)
                db.with_suffix(".sql").unlink(missing_ok=True)
    return stores / "logagg.db"


def queries(cfg: Config, out: Outcome, big: Path) -> None:
    """`stats` and `events --limit 100` on the big store against an empty store."""
    logagg = _tool("logagg")
    empty = fresh(cfg.data / "stores" / "empty.db")
    run_child([logagg, "ingest", "/dev/null", "--quiet", "--db", str(empty)])
    commands = {
        "stats --json": ["stats", "--json"],
        f"events --topic {EVENTS_TOPIC} --limit 100 --format jsonl": [
            "events",
            "--topic",
            EVENTS_TOPIC,
            "--limit",
            "100",
            "--format",
            "jsonl",
        ],
    }
    conn = sqlite3.connect(f"file:{big}?mode=ro", uri=True)
    try:
        in_topic = conn.execute(
            "SELECT count(*) FROM events WHERE topic = ?", (EVENTS_TOPIC,)
        ).fetchone()[0]
    finally:
        conn.close()
    expected = min(100, in_topic)
    for name, args in commands.items():
        walls: dict[Path, list[float]] = {big: [], empty: []}
        for n in range(cfg.query_repeat + 1):
            for db in (big, empty):
                run = run_child([logagg, *args, "--db", str(db)])
                if n:  # the first round warms the page cache and is not counted
                    walls[db].append(run.wall)
                if name.startswith("events") and db == big:
                    listed = len(run.stdout.splitlines())
                    if listed != expected:
                        out.mismatch(
                            f"logagg {name} listed {listed} events on the big store,"
                            f" expected {expected}"
                        )
        out.queries[name] = (median(walls[big]), median(walls[empty]))
        log(f"{name}: {_ms(out.queries[name][0])} vs {_ms(out.queries[name][1])}")
    fresh(empty)


def trickle(cfg: Config, out: Outcome) -> None:
    """Lines written into `logagg ingest -` at a steady rate; time until each is visible."""
    count = max(1, int(cfg.trickle_seconds * cfg.trickle_rate))
    source, _, _ = generate(cfg, count + 1, "trickle", "--dup-rate", "0")
    lines = source.read_bytes().splitlines(keepends=True)
    source.unlink()
    ids = [json.loads(line)["event_id"] for line in lines]
    logagg = _tool("logagg")
    db = fresh(cfg.data / "stores" / "trickle.db")
    run_child([logagg, "ingest", "/dev/null", "--quiet", "--db", str(db)])

    seen: dict[str, float] = {}
    stop = threading.Event()

    def reader() -> None:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
        last = 0
        try:
            while True:
                final = stop.is_set()
                rows = conn.execute(
                    "SELECT rowid, event_id FROM events WHERE rowid > ? ORDER BY rowid", (last,)
                ).fetchall()
                now = time.monotonic()
                for rowid, event_id in rows:
                    seen.setdefault(event_id, now)
                    last = rowid
                if final or len(seen) >= len(ids):
                    return
                time.sleep(cfg.poll_seconds)
        finally:
            conn.close()

    watcher = threading.Thread(target=reader, name="bench-reader", daemon=True)
    watcher.start()
    written: dict[str, float] = {}
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [logagg, "ingest", "-", "--quiet", "--db", str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=err,
            bufsize=0,
            cwd=ROOT,
        )
        assert proc.stdin is not None
        pipe = proc.stdin.fileno()
        try:
            # A first event shows that logagg has started and reads the pipe.
            os.write(pipe, lines[0])
            deadline = time.monotonic() + 30
            while ids[0] not in seen and time.monotonic() < deadline and watcher.is_alive():
                time.sleep(0.005)
            if ids[0] not in seen:
                raise BenchError("trickle: logagg ingest - stored nothing within 30 s")
            interval = 1 / cfg.trickle_rate
            begin = time.monotonic()
            for n, line in enumerate(lines[1:]):
                delay = begin + n * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                os.write(pipe, line)
                written[ids[n + 1]] = time.monotonic()
        finally:
            proc.stdin.close()
            _reap(proc, started)
            watcher.join(timeout=2.0)
            stop.set()
            watcher.join()
        if proc.returncode != 0:
            raise BenchError(f"trickle: logagg ingest - exit {proc.returncode}: {_read(err)}")
    latencies = [seen[i] - t for i, t in written.items() if i in seen]
    missing = len(written) - len(latencies)
    if missing:
        out.mismatch(f"trickle: {missing} of {len(written)} events never became visible")
    if latencies:
        out.trickle = {
            "events": float(len(written)),
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "max": max(latencies),
        }
        log(f"trickle: p50 {_ms(out.trickle['p50'])}, p99 {_ms(out.trickle['p99'])}")
    fresh(db)


def startup(cfg: Config, out: Outcome) -> None:
    """`logagg --help` against `python -c "import typer"`, alternated."""
    help_argv = [_tool("logagg"), "--help"]
    typer_argv = [sys.executable, "-c", "import typer"]
    walls: tuple[list[float], list[float]] = ([], [])
    for n in range(cfg.startup_repeat + 1):
        for argv, into in ((help_argv, walls[0]), (typer_argv, walls[1])):
            run = run_child(argv)
            if n:  # the first round warms the page cache and is not counted
                into.append(run.wall)
    out.startup = (median(walls[0]), median(walls[1]))
    log(f"start-up: {_ms(out.startup[0])} vs {_ms(out.startup[1])}")


# --- report -----------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _mib(kib: float) -> str:
    return f"{kib / 1024:.0f}"


def _n(count: int) -> str:
    return f"{count:,}".replace(",", " ")


def _ratio(value: float, target: str, ok: bool) -> str:
    return f"{value:.2f} | {target} | {verdict(ok)}"


def _settings() -> str:
    return "; ".join(
        f"{'up to ' + _n(at) if at else 'above'}: {p} B pages, {_n(c)}-event commits, {m} MiB cache"
        for at, (p, c, m) in FLOOR_SETTINGS
    )


def render(cfg: Config, out: Outcome) -> str:
    """RESULTS.md without its "What was tried" section."""
    defaults = Config()
    command = f"{cfg.overrides()} make bench".strip()
    md: list[str] = ["# Benchmark results", ""]
    md += [f"Machine: {out.machine}", ""]
    md += [f"Reproduce: `{command}`", ""]
    if not set(defaults.sizes) <= set(cfg.sizes):
        md += [
            "**Small run**: the targets are stated for 1 000 000 and 5 000 000 events;"
            " at these sizes the verdicts are indicative only.",
            "",
        ]
    if out.mismatches:
        md += ["## Mismatches", ""] + [f"- **{m}**" for m in out.mismatches] + [""]
    md += [
        "## Ingest",
        "",
        f"Input: `logagg gen N --seed {cfg.seed}` (random UUID event ids, 10 topics, 20 %"
        " re-sends). Each run is a whole process into a fresh database. The runs are"
        " interleaved: the tools run in turn (logagg, floor, shell, sqlite-utils, then"
        " again), so that a slower or faster spell of the machine falls on all of them."
        f" Medians of {cfg.repeat} rounds at {_n(cfg.sizes[0])} events, {cfg.big_repeat}"
        " at larger sizes; peak RSS from `wait4`; store: the database file and its WAL"
        " after the run.",
        "",
        "| events | tool | events/s | wall s | peak RSS MiB | store MiB | rows stored"
        " | wall vs logagg |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for size in out.sizes:
        for tool in size.runs:
            rows = sorted(set(size.rows[tool]))
            stored = " / ".join(_n(r) for r in rows) + ("" if rows == [size.unique] else " ✗")
            store = median(size.store_bytes[tool]) / 2**20
            md.append(
                f"| {_n(size.lines)} | {tool} | {_n(round(size.rate(tool)))}"
                f" | {size.wall(tool):.2f} | {_mib(size.rss_kib(tool))} | {store:.0f}"
                f" | {stored} | {size.wall(tool) / size.wall('logagg'):.2f} |"
            )
        if size.lines > SQLITE_UTILS_MAX:
            md.append(
                f"| {_n(size.lines)} | sqlite-utils | | | | | skipped: over"
                f" {_n(SQLITE_UTILS_MAX)} events it takes too long | |"
            )
    md += [
        "",
        "- logagg: `logagg ingest --quiet --json FILE` (full validation, conflicts, positions).",
        "- floor: `python bench/floor.py FILE DB --page-size P --batch-size C --cache-mib M`:"
        " orjson + executemany `INSERT OR IGNORE` on the exact `(topic, event_id)` key with"
        " logagg's index for a topic's newest events, no validation, with the best settings"
        f" an interleaved sweep found for its own loop at each size ({_settings()}).",
        "- sqlite3 shell: the `sqlite3` command-line shell (C) with the floor's table, page"
        " size and cache: `.import` of every line as one text column into a TEMP table,"
        " then one `INSERT OR IGNORE ... SELECT line ->> 'topic', ...` in input order (one"
        " transaction).",
        "- sqlite-utils: `sqlite-utils insert DB events FILE --nl --pk topic --pk event_id"
        " --ignore` (its table has no secondary index).",
        "",
        "| measurement | value | target | result |",
        "|---|---:|---|---|",
    ]
    first = out.sizes[0]
    for size in out.sizes:
        n = _n(size.lines)
        vs_floor = size.wall("logagg") / size.wall("floor")
        target = f"≤ {MAX_VS_FLOOR}" if size is first else ""
        result = verdict(vs_floor <= MAX_VS_FLOOR) if size is first else ""
        md.append(f"| {n}: logagg / floor, wall time | {vs_floor:.2f} | {target} | {result} |")
        vs_shell = size.wall("logagg") / size.wall("sqlite3 shell")
        md.append(f"| {n}: logagg / sqlite3 shell, wall time | {vs_shell:.2f} | | |")
        if "sqlite-utils" in size.runs:
            vs_utils = size.rate("logagg") / size.rate("sqlite-utils")
            ok = vs_utils >= MIN_VS_SQLITE_UTILS
            md.append(
                f"| {n}: logagg / sqlite-utils, events/s | {vs_utils:.2f}"
                f" | ≥ {MIN_VS_SQLITE_UTILS} | {verdict(ok)} |"
            )
        rss = size.rss_kib("logagg")
        md.append(
            f"| {n}: peak RSS of `logagg ingest` | {_mib(rss)} MiB | < {MAX_RSS_MB:.0f} MB"
            f" | {verdict(rss * 1024 < MAX_RSS_MB * 1e6)} |"
        )
    for size in out.sizes[1:]:
        for tool in ("logagg", "floor", "sqlite3 shell"):
            ratio = size.rate(tool) / first.rate(tool)
            label = (
                f"{tool}: events/s at {_n(size.lines)} ({_n(round(size.rate(tool)))})"
                f" / at {_n(first.lines)} ({_n(round(first.rate(tool)))})"
            )
            if tool == "logagg" and size is out.sizes[1]:
                ok = ratio >= MIN_BIG_RATE
                md.append(f"| {label} | {ratio:.2f} | ≥ {MIN_BIG_RATE} | {verdict(ok)} |")
            else:
                md.append(f"| {label} | {ratio:.2f} | | |")
    md += ["", "Wall times of every run (s):", ""]
    for size in out.sizes:
        for tool, runs in size.runs.items():
            walls = ", ".join(f"{r.wall:.2f}" for r in runs)
            md.append(f"- {_n(size.lines)}, {tool}: {walls}")
    md += ["", "## Other measurements", ""]
    md += ["| measurement | value | target | result |", "|---|---:|---|---|"]
    for name, (on_big, on_empty) in out.queries.items():
        ratio = on_big / on_empty
        md.append(
            f"| `logagg {name}`: {_n(out.queried_lines)}-event store {_ms(on_big)},"
            f" empty {_ms(on_empty)} | {ratio:.2f}x | ≤ {MAX_QUERY_RATIO}x"
            f" | {verdict(ratio <= MAX_QUERY_RATIO)} |"
        )
    if out.trickle:
        t = out.trickle
        label = (
            f"trickle of {cfg.trickle_rate:g} events/s for {cfg.trickle_seconds:g} s"
            f" ({t['events']:.0f} events) into `logagg ingest -`, written → visible"
        )
        md += [
            f"| {label}: p50 | {_ms(t['p50'])} | | |",
            f"| {label}: p99 (max {_ms(t['max'])}) | {_ms(t['p99'])}"
            f" | < {MAX_TRICKLE_P99} s | {verdict(t['p99'] < MAX_TRICKLE_P99)} |",
        ]
    if out.startup:
        on_help, on_typer = out.startup
        ratio = on_help / on_typer
        md.append(
            f'| start-up: `logagg --help` {_ms(on_help)}, `python -c "import typer"`'
            f" {_ms(on_typer)} | {ratio:.2f}x | ≤ {MAX_STARTUP_RATIO}x"
            f" | {verdict(ratio <= MAX_STARTUP_RATIO)} |"
        )
    if out.serve:
        s = out.serve
        md.append(
            f"| `logagg serve`: one client, one event a request, each answered once committed"
            f" ({_n(s['single_requests'])} requests) | p50 {s['single_p50_ms']} ms,"
            f" p99 {s['single_p99_ms']} ms | | |"
        )
        md.append(
            f"| `logagg serve`: {_n(s['events_sent'])} events POSTed by {s['clients']} clients"
            f" in batches of {s['batch']}, each answered once committed"
            f" | {_n(round(s['events_per_second']))} events/s (p50 {s['latency_p50_ms']} ms,"
            f" p99 {s['latency_p99_ms']} ms) | | |"
        )
    notes = []
    if out.queries:
        notes.append(f"Queries: medians of {cfg.query_repeat} alternated runs on each store.")
    if out.startup:
        notes.append(f"Start-up: medians of {cfg.startup_repeat} alternated runs.")
    if out.queries or out.startup:
        notes.append("Both after one uncounted warm-up round.")
    if out.trickle:
        notes.append(
            f"Trickle: a reader polls the store every {_ms(cfg.poll_seconds)} through a"
            " read-only connection; visible is when a poll first returns the event."
        )
    md += ["", " ".join(notes), ""]
    return "\n".join(md)


def write_results(cfg: Config, text: str) -> None:
    """Write RESULTS.md, keeping the maintainers' "What was tried" section."""
    tried = f"{WHAT_WAS_TRIED}\n\n{PLACEHOLDER}\n"
    if cfg.results.exists():
        previous = cfg.results.read_text()
        at = previous.find(WHAT_WAS_TRIED)
        if at >= 0:
            tried = previous[at:]
    cfg.results.parent.mkdir(parents=True, exist_ok=True)
    cfg.results.write_text(text + "\n" + tried)


# --- main -------------------------------------------------------------------------------


def bench(cfg: Config) -> Outcome:
    """Run every step and return what was measured."""
    out = Outcome(machine=machine_line())
    log(out.machine)
    for n, lines in enumerate(cfg.sizes):
        source, unique, seconds = generate(cfg, lines, "events")
        log(f"generated {lines} events ({unique} unique) in {seconds:.1f} s")
        size = Size(lines, unique)
        out.sizes.append(size)
        store = compare(cfg, out, size, source, cfg.repeat if n == 0 else cfg.big_repeat)
        source.unlink()
        if n == len(cfg.sizes) - 1 and len(cfg.sizes) > 1:
            out.queried_lines = lines
            queries(cfg, out, store)
        fresh(store)
        write_results(cfg, render(cfg, out))  # so far: a long run that fails keeps these
    if cfg.trickle_seconds > 0:
        trickle(cfg, out)
    startup(cfg, out)
    serve_load(cfg, out)
    return out


def serve_load(cfg: Config, out: Outcome) -> None:
    """Through `logagg serve`, if the serve extra is there: the latency of one client sending
    one event a request, and events/s of 8 clients posting batches of 100."""
    events = _env_int("BENCH_SERVE_EVENTS", 200_000)
    if events <= 0:
        return
    try:
        sys.path.insert(0, str(HERE))
        import serve_load as load  # bench/serve_load.py
    except ImportError as exc:
        log(f"serve load skipped: {exc}")
        return
    result = load.measure(events=events, clients=8, batch=100, data=cfg.data)
    out.serve = result
    log(
        f"serve: one client p50 {result['single_p50_ms']} ms, p99 {result['single_p99_ms']} ms;"
        f" {result['clients']} clients {result['events_per_second']:.0f} events/s,"
        f" p99 {result['latency_p99_ms']} ms"
    )
    for problem in result["problems"]:
        out.mismatch(f"serve load: {problem}")


def main() -> int:
    """Run the benchmark, write RESULTS.md, print it; 1 on a mismatch or failure."""
    try:
        cfg = Config.from_env()
        out = bench(cfg)
    except BenchError as exc:
        sys.stderr.write(f"bench: error: {exc}\n")
        return 1
    text = render(cfg, out)
    write_results(cfg, text)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    log(f"wrote {cfg.results}")
    if out.mismatches:
        log(f"{len(out.mismatches)} mismatch(es): see above")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
