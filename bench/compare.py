"""Ingest rate of this checkout against another revision: the same input, a fresh store
per run, runs of the two alternated, medians compared.

    python bench/compare.py --against HEAD~3                      # 1M events, SQLite
    python bench/compare.py --against 0906578^ --rounds 7
    python bench/compare.py --against 0906578^ --store postgres --rounds 3
    python bench/compare.py --against 0906578^ --conflicts 0.2   # re-sends with other content

The other revision's `logagg` package is taken with `git archive` into a temporary
directory; each run is `python -m logagg ingest --quiet --json FILE` in a directory of its
own with PYTHONPATH naming one copy (`python -m logagg` would take the package in the
current directory first). The input is `logagg gen N --seed 42` (20 % re-sends);
`--conflicts SHARE` changes the payload of that share of the re-sent lines, so that they
are conflicts for the new code (and plain duplicates for code without conflicts).
PostgreSQL: a throwaway server of tests/pg.py, a new database per run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def checkout(revision: str, into: Path) -> Path:
    """The `logagg` package of `revision`, extracted under `into`."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "logagg"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def make_input(path: Path, events: int, conflicts: float) -> int:
    """Write the input; return how many of its lines change a re-sent event's payload."""
    with open(path, "wb") as out:
        subprocess.run(
            [sys.executable, "-m", "logagg", "gen", str(events), "--seed", "42"],
            stdout=out,
            stderr=subprocess.DEVNULL,
            check=True,
            cwd=ROOT,
        )
    if not conflicts:
        return 0
    rng = random.Random(42)
    seen: set[tuple[str, str]] = set()
    changed = 0
    lines = path.read_bytes().splitlines()
    with open(path, "wb") as out:
        for line in lines:
            doc = json.loads(line)
            key = (doc["topic"], doc["event_id"])
            if key in seen and rng.random() < conflicts:
                doc["payload"]["changed"] = True
                line = json.dumps(doc, separators=(",", ":")).encode()
                changed += 1
            seen.add(key)
            out.write(line + b"\n")
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="the git revision to compare with")
    parser.add_argument(
        "--before-dir",
        type=Path,
        help="instead: a directory holding the `logagg` package to compare with",
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--conflicts", type=float, default=0.0)
    args = parser.parse_args()
    if (args.against is None) == (args.before_dir is None):
        parser.error("give --against REVISION or --before-dir DIR")
    with tempfile.TemporaryDirectory(prefix="logagg-compare-") as tmp:
        work = Path(tmp)
        (work / "before").mkdir()
        before = args.before_dir or checkout(args.against, work / "before")
        copies = {"before": before, "now": ROOT}
        data = work / "input.jsonl"
        changed = make_input(data, args.events, args.conflicts)
        server = None
        if args.store == "postgres":
            sys.path.insert(0, str(ROOT / "tests"))
            from pg import fresh_database, start_server

            server = start_server({"fsync": "on", "max_wal_size": "4GB"})
        times: dict[str, list[float]] = {name: [] for name in copies}
        try:
            for round_no in range(args.rounds):
                for name, code in copies.items():
                    run_dir = work / f"run-{name}-{round_no}"
                    run_dir.mkdir()
                    if server is not None:
                        db = fresh_database(server, prefix="compare")
                    else:
                        db = str(run_dir / "store.db")
                    began = time.perf_counter()
                    proc = subprocess.run(
                        [
                            sys.executable,
                            "-m",
                            "logagg",
                            "ingest",
                            "--quiet",
                            "--json",
                            str(data),
                            "--db",
                            db,
                        ],
                        cwd=run_dir,
                        env={**os.environ, "PYTHONPATH": str(code)},
                        capture_output=True,
                    )
                    wall = time.perf_counter() - began
                    if proc.returncode != 0:
                        print(proc.stderr.decode(), file=sys.stderr)
                        return 1
                    report = json.loads(proc.stdout)
                    times[name].append(wall)
                    print(
                        f"round {round_no + 1} {name}: {wall:.2f} s, accepted"
                        f" {report['accepted']:,}, conflicts {report.get('conflicts', '-')}",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            if server is not None:
                server.destroy()
    base = statistics.median(times["before"])
    names = {"before": str(args.against or args.before_dir), "now": "this checkout"}
    print(
        f"{args.events:,} events ({changed:,} re-sends with other content), {args.store},"
        f" {args.rounds} rounds, medians:"
    )
    for name, walls in times.items():
        median = statistics.median(walls)
        print(
            f"  {name:>6} ({names[name]}):"
            f" {median:.2f} s, {args.events / median:,.0f} events/s, {median / base:.3f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
