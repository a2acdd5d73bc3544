"""HTTP load: one client posting one event at a time, then N client threads posting batches.

Generates events with `logagg gen` (re-sends included), starts `python -m logagg serve` on
a fresh store and a free port on 127.0.0.1, and has the client threads post the events as
JSON arrays of `--batch` events (each request answered once committed) until every batch
is sent or `--seconds` have passed. Before that, on the same server, one client sends
`--single` requests of one event each, one after the other (a one-at-a-time producer), and
their latency is measured. Prints events/s and request latency, then checks the
totals: the sums of the answers must equal `/stats`, every batch must be answered 200,
`logagg check` must pass, and when every batch was sent, `accepted` must equal the unique
count of `gen`. Exit status 1 on a mismatch.

    python bench/serve_load.py --events 200000 --clients 8 --seconds 60
    python bench/serve_load.py --json          # one JSON object on stdout

`measure()` returns the same numbers as a dict, for `bench/run.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
STARTUP_SECONDS = 15.0
STOP_SECONDS = 30.0


class LoadError(Exception):
    """The server did not start, or a step of the measurement failed."""


@dataclass(slots=True)
class Tally:
    """What the clients saw; appended to under `lock`."""

    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    invalid: int = 0
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def logagg(*args: str) -> list[str]:
    return [sys.executable, "-m", "logagg", *args]


def generate(count: int, seed: int, dup_rate: float) -> tuple[list[bytes], int]:
    """`count` lines of `logagg gen` (without newlines) and their number of unique events."""
    proc = subprocess.run(
        logagg("gen", str(count), "--seed", str(seed), "--dup-rate", str(dup_rate)),
        capture_output=True,
        check=True,
    )
    match = re.match(rb"(\d+) unique events", proc.stderr)
    if match is None:
        raise LoadError(f"unexpected output of logagg gen: {proc.stderr[:200]!r}")
    return proc.stdout.splitlines(), int(match.group(1))


def start_server(db: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A `logagg serve` process answering /health, and its URL."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            logagg("serve", "--db", str(db), "--port", str(port), "--log-level", "warning"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise LoadError(f"logagg serve did not start:\n{log.read_text()}")


def post_all(url: str, bodies: list[bytes], clients: int, seconds: float, tally: Tally) -> float:
    """Post `bodies` from `clients` threads until all are sent or `seconds` passed; wall time."""
    lock = threading.Lock()
    pending = iter(range(len(bodies)))
    deadline = time.monotonic() + seconds
    headers = {"content-type": "application/json"}

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120.0) as http:
            while time.monotonic() < deadline:
                with lock:
                    index = next(pending, None)
                if index is None:
                    return
                began = time.perf_counter()
                try:
                    response = http.post("/publish", content=bodies[index], headers=headers)
                except httpx.HTTPError as exc:
                    with tally.lock:
                        tally.failures.append(f"batch {index}: {exc!r}")
                    continue
                took = time.perf_counter() - began
                with tally.lock:
                    tally.requests += 1
                    tally.latencies.append(took)
                    if response.status_code != 200:
                        tally.failures.append(f"batch {index}: HTTP {response.status_code}")
                        continue
                    doc = response.json()
                    tally.received += doc["received"]
                    tally.accepted += doc["accepted"]
                    tally.duplicates += doc["duplicates"]
                    tally.invalid += doc["invalid"]

    threads = [threading.Thread(target=client, name=f"client-{n}") for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def post_single(url: str, count: int, tally: Tally) -> list[float]:
    """One client posting `count` events, one per request, each after the last answer;
    the latency of each request."""
    latencies: list[float] = []
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=url, timeout=30.0) as http:
        for n in range(count):
            body = json.dumps(
                {
                    "topic": "bench.single",
                    "event_id": f"single-{n}",
                    "timestamp": "2025-01-01T00:00:00Z",
                    "source": "serve_load",
                    "payload": {"n": n},
                }
            ).encode()
            began = time.perf_counter()
            response = http.post("/publish", content=body, headers=headers)
            latencies.append(time.perf_counter() - began)
            tally.requests += 1
            if response.status_code != 200:
                tally.failures.append(f"single {n}: HTTP {response.status_code}")
                continue
            doc = response.json()
            tally.received += doc["received"]
            tally.accepted += doc["accepted"]
            tally.duplicates += doc["duplicates"]
            tally.invalid += doc["invalid"]
    return latencies


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


def measure(
    events: int = 200_000,
    clients: int = 8,
    batch: int = 100,
    seconds: float = 60.0,
    seed: int = 42,
    dup_rate: float = 0.2,
    data: Path = HERE / "data",
    single: int = 1000,
) -> dict[str, Any]:
    """Run one load measurement; the result holds the numbers and a list of `problems`."""
    lines, unique = generate(events, seed, dup_rate)
    bodies = [b"[" + b",".join(lines[i : i + batch]) + b"]" for i in range(0, len(lines), batch)]
    data.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data, prefix="serve-load-") as tmp:
        db, log = Path(tmp) / "serve.db", Path(tmp) / "serve.log"
        proc, url = start_server(db, log)
        tally = Tally()
        try:
            lone = post_single(url, single, tally)
            singles = (tally.received, tally.accepted, tally.requests)
            wall = post_all(url, bodies, clients, seconds, tally)
            stats = httpx.get(url + "/stats", timeout=30.0).json()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        check = subprocess.run(logagg("check", "--db", str(db), "--json"), capture_output=True)

    problems = list(tally.failures[:10])
    if len(tally.failures) > 10:
        problems.append(f"and {len(tally.failures) - 10} more failed requests")
    answered = (tally.received, tally.accepted, tally.duplicates, tally.invalid)
    stored = (
        stats["received"],
        stats["unique_processed"],
        stats["duplicate_dropped"],
        stats["invalid"],
    )
    if answered != stored:
        problems.append(f"answers {answered} != /stats {stored} (received, accepted, dup, inv)")
    sent, stored, lone_requests = singles
    complete = tally.requests - lone_requests == len(bodies) and not tally.failures
    if complete and tally.accepted - stored != unique:
        problems.append(f"accepted {tally.accepted - stored} != {unique} unique events generated")
    if check.returncode != 0:
        problems.append(f"logagg check failed: {check.stdout.decode()}{check.stderr.decode()}")
    loaded = tally.received - sent
    return {
        "single_requests": len(lone),
        "single_p50_ms": round(percentile(lone, 50) * 1000, 2),
        "single_p99_ms": round(percentile(lone, 99) * 1000, 2),
        "events_sent": loaded,
        "events_generated": len(lines),
        "unique": unique,
        "clients": clients,
        "batch": batch,
        "requests": tally.requests - lone_requests,
        "complete": complete,
        "wall_seconds": round(wall, 3),
        "events_per_second": round(loaded / wall, 1) if wall > 0 else 0.0,
        "requests_per_second": round((tally.requests - lone_requests) / wall, 1)
        if wall > 0
        else 0.0,
        "latency_p50_ms": round(percentile(tally.latencies, 50) * 1000, 2),
        "latency_p99_ms": round(percentile(tally.latencies, 99) * 1000, 2),
        "latency_mean_ms": round(statistics.fmean(tally.latencies) * 1000, 2)
        if tally.latencies
        else 0.0,
        "accepted": tally.accepted - stored,
        "duplicates": tally.duplicates,
        "invalid": tally.invalid,
        "problems": problems,
    }


def _env(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=int(_env("SERVE_EVENTS", 200_000)))
    parser.add_argument("--clients", type=int, default=int(_env("SERVE_CLIENTS", 8)))
    parser.add_argument("--batch", type=int, default=int(_env("SERVE_BATCH", 100)))
    parser.add_argument("--seconds", type=float, default=_env("SERVE_SECONDS", 60.0))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--dup-rate", type=float, default=0.2)
    parser.add_argument("--data", type=Path, default=HERE / "data")
    parser.add_argument("--single", type=int, default=int(_env("SERVE_SINGLE", 1000)))
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(argv)
    try:
        result = measure(
            args.events,
            args.clients,
            args.batch,
            args.seconds,
            args.seed,
            args.dup_rate,
            args.data,
            args.single,
        )
    except (LoadError, subprocess.CalledProcessError) as exc:
        sys.stderr.write(f"serve_load: {exc}\n")
        return 1
    if args.json:
        sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    else:
        sys.stdout.write(
            f"one client, one event a request: {result['single_requests']:,} requests,"
            f" latency p50 {result['single_p50_ms']:.2f} ms, p99 {result['single_p99_ms']:.2f} ms\n"
            f"{result['events_sent']:,} events in {result['requests']:,} requests of"
            f" {result['batch']} from {result['clients']} clients:"
            f" {result['wall_seconds']:.2f} s, {result['events_per_second']:,.0f} events/s,"
            f" {result['requests_per_second']:,.0f} requests/s\n"
            f"latency p50 {result['latency_p50_ms']:.1f} ms, p99 {result['latency_p99_ms']:.1f} ms;"
            f" accepted {result['accepted']:,}, duplicates {result['duplicates']:,}"
            f" ({result['unique']:,} unique generated"
            f"{'' if result['complete'] else ', not all sent'})\n"
        )
    for problem in result["problems"]:
        sys.stderr.write(f"MISMATCH: {problem}\n")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
