"""PostgreSQL benchmark: 1M events with 1, 2 and 4 concurrent `logagg ingest` processes.

Standalone: starts its own throwaway PostgreSQL server (tests/pg.py, default durability
settings: fsync and synchronous_commit on) and deletes it at the end. The input is
`logagg gen N --seed 42` (20 % re-sends), split four ways with overlaps (each quarter also
holds the first `--overlap` share of the next one), so every configuration reads the same
lines: one writer reads the four parts in turn, two writers two parts each, four writers
one each. Each configuration writes a fresh database; the rows stored must equal the
unique count (else MISMATCH and exit 1) and `logagg check` must pass. SQLite with one and
four writers is measured beside it on the same parts.

Prints a markdown table: events/s over the wall time of the whole configuration, rows
stored, and the CPU seconds of the logagg processes and of the PostgreSQL server, which
show where the time goes. Every run is bounded by `--timeout` seconds.

    python bench/pg_bench.py                     # 1 000 000 events
    python bench/pg_bench.py --events 20000      # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from pg import PgServer, fresh_database, start_server  # noqa: E402

BENCH_SETTINGS = {  # a server as shipped, with room for a bulk load between checkpoints
    "fsync": "on",
    "full_page_writes": "on",
    "max_wal_size": "4GB",
    "shared_buffers": "256MB",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    store: str
    writers: int
    received: int
    rows: int
    expected: int
    seconds: float
    client_cpu: float
    server_cpu: float | None
    ok: bool
    note: str = ""

    def line(self) -> str:
        server = f"{self.server_cpu:.1f}" if self.server_cpu is not None else "-"
        verdict = "ok" if self.ok else f"MISMATCH {self.note}".strip()
        rate = self.received / self.seconds if self.seconds else 0.0
        return (
            f"| {self.store} | {self.writers} | {self.received:,} | {self.rows:,} |"
            f" {self.seconds:.2f} | {rate:,.0f} | {self.client_cpu:.1f} | {server} | {verdict} |"
        )


def logagg(*args: object) -> list[str]:
    return [sys.executable, "-m", "logagg", *(str(a) for a in args)]


def generate(path: Path, count: int) -> int:
    """Write the input; return its number of unique events."""
    with open(path, "wb") as out:
        proc = subprocess.run(
            logagg("gen", count, "--seed", 42), stdout=out, stderr=subprocess.PIPE, cwd=ROOT
        )
    if proc.returncode != 0:
        raise SystemExit(f"gen failed: {proc.stderr.decode()}")
    return int(proc.stderr.split()[0])


def split(path: Path, count: int, overlap: float, directory: Path) -> list[Path]:
    """Four parts: quarter q, plus the first `overlap` share of quarter q + 1 (wrapping)."""
    bounds = [count * q // 4 for q in range(5)]
    extra = int((count // 4) * overlap)
    parts = [directory / f"part{q}.jsonl" for q in range(4)]
    outs = [open(p, "wb") for p in parts]  # noqa: SIM115
    try:
        with open(path, "rb") as f:
            for n, line in enumerate(f):
                q = next(i for i in range(4) if n < bounds[i + 1])
                outs[q].write(line)
                if n - bounds[q] < extra:
                    outs[(q - 1) % 4].write(line)
    finally:
        for out in outs:
            out.close()
    return parts


def server_cpu(server: PgServer) -> float:
    """CPU seconds of the postmaster and all its processes, live and ended."""
    pid = int((server.datadir / "postmaster.pid").read_text().split()[0])
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        ppid, utime, stime, cutime, cstime = (int(fields[i]) for i in (1, 11, 12, 13, 14))
        if int(entry) == pid:
            total += utime + stime + cutime + cstime
        elif ppid == pid:
            total += utime + stime
    return total / CLK_TCK


def run_writers(db: str, groups: list[list[Path]], timeout: float) -> tuple[float, float, list]:
    """Start one `logagg ingest` per group at once; return wall seconds, their CPU seconds
    and their JSON reports (None for a failed process)."""
    procs = [
        subprocess.Popen(
            logagg("ingest", "--db", db, "--quiet", "--json", *group),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        for group in groups
    ]
    timer = threading.Timer(timeout, lambda: [p.kill() for p in procs if p.poll() is None])
    timer.start()
    started = time.monotonic()
    outputs = [p.communicate() for p in procs]
    seconds = time.monotonic() - started
    timer.cancel()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    reports = []
    for p, (out, err) in zip(procs, outputs, strict=True):
        if p.returncode != 0:
            sys.stderr.write(f"ingest failed ({p.returncode}): {err.decode().strip()}\n")
            reports.append(None)
        else:
            reports.append(json.loads(out))
    return seconds, cpu, reports


def groups_for(parts: list[Path], writers: int) -> list[list[Path]]:
    return [parts[i::writers] for i in range(writers)]


def check(db: str) -> bool:
    proc = subprocess.run(logagg("check", "--db", db), capture_output=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.stderr.write(f"check failed: {proc.stdout.decode()}{proc.stderr.decode()}\n")
    return proc.returncode == 0


def pg_rows(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM events").fetchone()
        return int(row[0]) if row else 0


def measure(
    store: str, db: str, parts: list[Path], writers: int, unique: int, timeout: float, **kw: object
) -> Run:
    server = kw.get("server")
    before_client = resource.getrusage(resource.RUSAGE_CHILDREN)
    before_server = server_cpu(server) if isinstance(server, PgServer) else None
    seconds, cpu_after, reports = run_writers(db, groups_for(parts, writers), timeout)
    client = cpu_after - (before_client.ru_utime + before_client.ru_stime)
    used = server_cpu(server) - before_server if isinstance(server, PgServer) else None
    if store == "postgresql":
        rows = pg_rows(db)
    else:
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    received = sum(r["received"] for r in reports if r)
    ok = None not in reports and rows == unique and check(db)
    note = "" if ok else f"(expected {unique:,} rows)"
    return Run(store, writers, received, rows, unique, seconds, client, used, ok, note)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=int(os.environ.get("BENCH_EVENTS", 10**6)))
    parser.add_argument("--writers", default="1,2,4", help="comma-separated writer counts")
    parser.add_argument("--overlap", type=float, default=0.25, help="share of a quarter re-read")
    parser.add_argument("--timeout", type=float, default=900.0, help="most seconds per run")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite rows")
    args = parser.parse_args()
    writer_counts = [int(w) for w in args.writers.split(",")]

    work = Path(tempfile.mkdtemp(prefix="logagg-pgbench-"))
    server = None
    runs: list[Run] = []
    try:
        sys.stderr.write(f"generating {args.events:,} events...\n")
        data = work / "all.jsonl"
        unique = generate(data, args.events)
        parts = split(data, args.events, args.overlap, work)
        data.unlink()
        lines = sum(1 for p in parts for _ in open(p, "rb"))  # noqa: SIM115
        sys.stderr.write("starting PostgreSQL...\n")
        server = start_server(BENCH_SETTINGS)
        for writers in writer_counts:
            url = fresh_database(server, prefix="bench")
            sys.stderr.write(f"postgresql, {writers} writer(s)...\n")
            runs.append(
                measure("postgresql", url, parts, writers, unique, args.timeout, server=server)
            )
        if not args.no_sqlite:
            for writers in sorted({1, max(writer_counts)}):
                db = work / f"sqlite-{writers}.db"
                sys.stderr.write(f"sqlite, {writers} writer(s)...\n")
                runs.append(measure("sqlite", str(db), parts, writers, unique, args.timeout))
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
        version = subprocess.run(
            [str(server.bindir / "postgres"), "--version"], capture_output=True, text=True
        ).stdout.strip()
    finally:
        if server is not None:
            server.destroy()
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"{args.events:,} generated events ({unique:,} unique), split four ways with"
        f" {args.overlap:.0%} overlap: {lines:,} lines per configuration.\n"
    )
    print(
        "| store | writers | events in | rows stored | seconds | events/s"
        " | logagg CPU s | server CPU s | result |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        print(run.line())
    print(
        f"\n{os.cpu_count()} CPUs; {version}, "
        + ", ".join(f"{k}={v}" for k, v in BENCH_SETTINGS.items())
        + "; logagg defaults (--batch-size 50000)."
    )
    return 0 if all(run.ok for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
