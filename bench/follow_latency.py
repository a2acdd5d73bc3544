"""Latency of `logagg events --follow`: a line written into `logagg ingest -` -> the same
event printed by a follower in another process, through the store.

    python bench/follow_latency.py [--db postgresql://...] [--rate 200] [--seconds 10]

Each event carries its send time in the payload; the follower's lines are read as they
come. Prints p50, p99 and the maximum (target: p99 < 0.5 s). The store is a new SQLite
file in a temporary directory unless --db names one (a PostgreSQL URL: use an empty
database or schema).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def logagg(*args: str) -> list[str]:
    return [sys.executable, "-m", "logagg", *args]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or str(Path(tmp) / "latency.db")
        subprocess.run(logagg("ingest", "--db", db, os.devnull), check=True, capture_output=True)
        follower = subprocess.Popen(
            logagg("events", "--db", db, "--follow", "--limit", "1"), stdout=subprocess.PIPE
        )
        writer = subprocess.Popen(
            logagg("ingest", "--db", db, "--quiet", "-"), stdin=subprocess.PIPE
        )
        latencies: list[float] = []
        total = int(args.rate * args.seconds)

        def read() -> None:
            assert follower.stdout is not None
            for line in follower.stdout:
                sent = json.loads(line)["payload"].get("sent")
                if sent is not None:
                    latencies.append(time.time() - sent)
                if len(latencies) >= total:
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        time.sleep(1.0)  # the follower is up and polling
        assert writer.stdin is not None
        started = time.monotonic()
        for n in range(total):
            due = started + n / args.rate
            time.sleep(max(0.0, due - time.monotonic()))
            doc = {
                "topic": "latency",
                "event_id": f"e{n}",
                "timestamp": "2025-01-01T00:00:00Z",
                "source": "bench",
                "payload": {"sent": time.time()},
            }
            writer.stdin.write((json.dumps(doc) + "\n").encode())
            writer.stdin.flush()
        writer.stdin.close()
        writer.wait(60)
        reader.join(30)
        follower.terminate()
        follower.wait(30)
    if len(latencies) < total:
        print(f"only {len(latencies)} of {total} events came out", file=sys.stderr)
        return 1
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    verdict = "met" if p99 < 0.5 else "missed"
    print(
        f"follow latency, {total} events at {args.rate:g}/s: p50 {p50 * 1000:.0f} ms,"
        f" p99 {p99 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms (p99 < 500 ms: {verdict})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
