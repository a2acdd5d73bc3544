"""Several real `logagg` processes on one store: writers, readers, and publish racing ingest."""

from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import check_store, event, logagg_cmd, run_logagg, write_jsonl
from helpers import SEED, stored_keys, wait_until

pytestmark = pytest.mark.slow


def _key(raw: bytes) -> tuple[str, str]:
    doc = json.loads(raw)
    return (doc["topic"], doc["event_id"])


def _read_during_writes(db: Path, seed: int) -> dict[str, Any]:
    """One `events` and one `stats` from other processes; both must succeed."""
    listing = run_logagg("events", "--db", db, "--limit", "5", "--format", "jsonl", timeout=60)
    assert listing.returncode == 0, f"seed {seed}: events failed: {listing.stderr.decode()}"
    for raw in listing.stdout.splitlines():
        json.loads(raw)
    proc = run_logagg("stats", "--db", db, "--json", timeout=60)
    assert proc.returncode == 0, f"seed {seed}: stats failed: {proc.stderr.decode()}"
    stats = json.loads(proc.stdout)
    total = stats["unique_processed"] + stats["duplicate_dropped"] + stats["invalid"]
    assert stats["received"] == total, f"seed {seed}: inconsistent snapshot {stats}"
    return stats


def test_four_writers_with_overlapping_inputs(tmp_path: Path) -> None:
    """Four ingests at once on a new store: no lock errors, each unique event stored once.

    `events` and `stats` run from other processes while they write.
    """
    rng = random.Random(SEED)
    pool_file = tmp_path / "pool.jsonl"
    with open(pool_file, "wb") as out:
        subprocess.run(logagg_cmd("gen", 40_000, "--seed", SEED), stdout=out, check=True)
    pool = pool_file.read_bytes().splitlines(keepends=True)
    inputs = []
    for i in range(4):
        lines = rng.sample(pool, 25_000)
        lines.append(b"not an event\n")
        path = tmp_path / f"in{i}.jsonl"
        path.write_bytes(b"".join(lines))
        inputs.append((path, lines))
    union = {_key(raw) for _, lines in inputs for raw in lines[:-1]}
    total = sum(len(lines) for _, lines in inputs)
    db = tmp_path / "store.db"

    writers = [
        subprocess.Popen(
            logagg_cmd("ingest", "--db", db, "--batch-size", "500", "--json", "--quiet", path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for path, _ in inputs
    ]
    reads = 0
    try:
        wait_until(db.exists, 60, f"a writer to create the store (seed {SEED})")
        deadline = time.monotonic() + 60
        while any(w.poll() is None for w in writers) and time.monotonic() < deadline:
            _read_during_writes(db, SEED)
            reads += 1
        outputs = [w.communicate(timeout=60) for w in writers]
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait()

    reports = []
    for w, (out, err) in zip(writers, outputs, strict=True):
        assert w.returncode == 0, f"seed {SEED}: {err.decode()}"
        assert b"locked" not in err, err.decode()
        reports.append(json.loads(out))
    assert reads >= 1, "the writers finished before any reader ran"
    assert sum(r["accepted"] for r in reports) == len(union), reports
    assert sum(r["received"] for r in reports) == total, reports
    assert sum(r["invalid"] for r in reports) == 4, reports
    keys = stored_keys(db)
    assert len(keys) == len(set(keys))
    assert set(keys) == union
    facts = check_store(db)
    assert facts["received"] == total
    assert facts["unique_processed"] == len(union)
    assert facts["duplicate_dropped"] == total - len(union) - 4


def test_publish_racing_ingest_for_the_same_key_stores_one_copy(tmp_path: Path) -> None:
    """Each round an ingest and two publishes race for one key: exactly one of them wins."""
    rng = random.Random(SEED)
    db = tmp_path / "store.db"
    assert run_logagg("publish", "--db", db, "--topic", "warmup").returncode == 0
    for round_no in range(6):
        key_id = f"race-{round_no}"
        docs = [event(n, topic="race", event_id=f"r{round_no}-{n}") for n in range(300)]
        racer = event(0, topic="race", event_id=key_id, payload={"by": "ingest"})
        docs.insert(rng.randrange(301), racer)
        data = write_jsonl(tmp_path / f"round{round_no}.jsonl", docs)
        commands = [["ingest", "--db", db, "--batch-size", "50", "--json", "--quiet", data]]
        for who in ("publish-a", "publish-b"):
            payload = json.dumps({"by": who})
            commands.append(
                ["publish", "--db", db, "--topic", "race", "--event-id", key_id, "--json"]
                + ["--payload", payload]
            )
        procs = [
            subprocess.Popen(logagg_cmd(*c), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for c in commands
        ]
        results = [p.communicate(timeout=60) for p in procs]
        for p, (_, err) in zip(procs, results, strict=True):
            assert p.returncode == 0, f"seed {SEED}, round {round_no}: {err.decode()}"
        ingest_report = json.loads(results[0][0])
        claims = {"ingest": ingest_report["accepted"] - 300}
        for who, (out, _) in zip(("publish-a", "publish-b"), results[1:], strict=True):
            claims[who] = int(json.loads(out)["accepted"])
        assert sum(claims.values()) == 1, f"seed {SEED}, round {round_no}: {claims}"
        listing = run_logagg("events", "--db", db, "--topic", "race", "--all", "--format", "jsonl")
        copies = [json.loads(x) for x in listing.stdout.splitlines()]
        copies = [d for d in copies if d["event_id"] == key_id]
        assert len(copies) == 1, f"seed {SEED}, round {round_no}: {copies}"
        [winner] = [who for who, won in claims.items() if won]
        assert copies[0]["payload"] == {"by": winner}, f"seed {SEED}, round {round_no}"
    facts = check_store(db)
    assert facts["rows"] == 1 + 6 * 301
