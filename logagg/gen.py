"""Deterministic synthetic events for benchmarks, demos and at-least-once simulation."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

ACTIONS = ("login", "logout", "view", "click", "purchase", "refund", "search", "share")
REGIONS = ("eu-west-1", "eu-central-1", "us-east-1", "us-west-2", "ap-south-1")
START = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class GenStats:
    """Filled in while generating: lines written and how many were unique."""

    lines: int = 0
    unique: int = 0


def generate(
    count: int,
    *,
    dup_rate: float = 0.2,
    topics: int = 10,
    seed: int = 42,
    stats: GenStats | None = None,
) -> Iterator[str]:
    """`count` JSON lines (with newline); a `dup_rate` share re-sends an earlier event.

    The same arguments always give the same lines. Event ids are random UUIDs, timestamps
    rise by about a millisecond a line, and a re-send repeats the earlier line exactly.
    """
    rng = random.Random(seed)
    names = [f"topic.{i:02d}" for i in range(topics)]
    sent: list[str] = []
    stats = stats if stats is not None else GenStats()
    base = START.replace(tzinfo=None)
    for n in range(count):
        stats.lines += 1
        if sent and rng.random() < dup_rate:
            yield sent[rng.randrange(len(sent))]
            continue
        event_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        when = (base + timedelta(microseconds=n * 1000 + rng.randrange(1000))).isoformat(
            timespec="microseconds"
        )
        line = (
            f'{{"topic":"{names[rng.randrange(topics)]}","event_id":"{event_id}",'
            f'"timestamp":"{when}Z","source":"gen-{rng.randrange(16):02d}",'
            f'"payload":{{"user":"user-{rng.randrange(100000):05d}",'
            f'"action":"{ACTIONS[rng.randrange(len(ACTIONS))]}",'
            f'"region":"{REGIONS[rng.randrange(len(REGIONS))]}",'
            f'"value":{rng.randrange(1000000)},"seq":{n}}}}}\n'
        )
        sent.append(line)
        stats.unique += 1
        yield line
