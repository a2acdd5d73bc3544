"""Property: whatever the interleaving and however it is cut, the store keeps the first copy.

For any mix of valid lines, duplicates (same key, possibly another payload), invalid lines
and blank lines, read as files or as a stream cut at arbitrary bytes, through any batch
size, flush interval and queue size, the store equals "the first copy of each key" and
`received = accepted + duplicates + invalid` holds.
"""

from __future__ import annotations

import json
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logagg.pipeline import IngestOptions, IngestReport, ingest
from logagg.sources import Source
from logagg.store import EventQuery, open_store

MAX_LINE = 300

TOPICS = ["a", "b", "c%", "d_"]
IDS = ["1", "2", "3", "x y"]
# (as sent, as stored)
TIMESTAMPS = [
    ("2025-01-01T00:00:00Z", "2025-01-01T00:00:00.000000Z"),
    ("2025-01-01T01:00:00+01:00", "2025-01-01T00:00:00.000000Z"),
    ("2025-01-01T00:00:01.5", "2025-01-01T00:00:01.500000Z"),
    ("2025-06-30T23:59:59.999999-02:00", "2025-07-01T01:59:59.999999Z"),
]
INVALID = [
    b"nope",
    b"{",
    b"[]",
    b"null",
    b'{"topic": "a"}',
    b'{"topic": "", "event_id": "1", "timestamp": "2025-01-01T00:00:00Z", "source": "s"}',
    b'{"topic": "a", "event_id": "1", "timestamp": "2025-02-30T00:00:00Z", "source": "s"}',
    b'{"topic": "a", "event_id": "2", "timestamp": "2025-01-01T00:00:00Z", "source": "s",'
    b' "payload": {"v": NaN}}',
    b'{"topic": "b", "event_id": "1", "timestamp": "2025-01-01T00:00:00Z", "source": "s",'
    b' "payload": [1]}',
    b'{"topic": "b", "event_id": "\xff", "timestamp": "2025-01-01T00:00:00Z", "source": "s"}',
    b"a\rb",
]
BLANK = [b"", b"   ", b"\t", b" \r"]


@dataclass
class Model:
    """What the store must hold: the first copy of each key, and the counts."""

    first: dict[tuple[str, str], tuple[Any, str, str]] = field(default_factory=dict)
    received: int = 0
    duplicates: int = 0
    invalid: int = 0

    def valid(self, key: tuple[str, str], payload: Any, timestamp: str, source: str) -> None:
        self.received += 1
        if key in self.first:
            self.duplicates += 1
        else:
            self.first[key] = (payload, timestamp, source)

    def bad(self) -> None:
        self.received += 1
        self.invalid += 1


def _valid_line(draw: st.DrawFn, model: Model) -> bytes:
    key = (draw(st.sampled_from(TOPICS)), draw(st.sampled_from(IDS)))
    sent, stored = draw(st.sampled_from(TIMESTAMPS))
    source = draw(st.sampled_from(["s", "t"]))
    payload = draw(
        st.one_of(
            st.none(),
            st.fixed_dictionaries({"v": st.integers(-(2**70), 2**70)}),
            st.fixed_dictionaries(
                {"s": st.text(max_size=8), "l": st.lists(st.booleans(), max_size=3)}
            ),
        )
    )
    doc: dict[str, Any] = {"topic": key[0], "event_id": key[1], "timestamp": sent, "source": source}
    if payload is not None:
        doc["payload"] = payload
    model.valid(key, payload or {}, stored, source)
    return json.dumps(doc).encode()


def _long_line(draw: st.DrawFn, model: Model) -> bytes:
    """A well-formed event over the line limit: invalid, and it must not claim its key."""
    doc = {
        "topic": draw(st.sampled_from(TOPICS)),
        "event_id": draw(st.sampled_from(IDS)),
        "timestamp": TIMESTAMPS[0][0],
        "source": "s",
        "payload": {"pad": "x" * draw(st.integers(MAX_LINE, 3 * MAX_LINE))},
    }
    model.bad()
    return json.dumps(doc).encode()


@dataclass
class Scenario:
    lines: list[bytes]
    endings: list[bytes]
    model: Model
    options: IngestOptions
    mode: str
    cuts: list[int]
    again: IngestOptions

    def data(self) -> bytes:
        return b"".join(x + e for x, e in zip(self.lines, self.endings, strict=True))


def _options(draw: st.DrawFn) -> IngestOptions:
    return IngestOptions(
        batch_size=draw(st.integers(1, 25)),
        flush_interval=draw(st.sampled_from([0.001, 0.01, 0.2])),
        queue_size=draw(st.integers(1, 4)),
        max_line_bytes=MAX_LINE,
    )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    model = Model()
    lines: list[bytes] = []
    for kind in draw(st.lists(st.sampled_from("vvvvdibl"), max_size=40)):
        if kind == "v" or (kind == "d" and not model.first):
            lines.append(_valid_line(draw, model))
        elif kind == "d":  # the same key again, with another payload
            key = draw(st.sampled_from(sorted(model.first)))
            doc = {"topic": key[0], "event_id": key[1], "timestamp": TIMESTAMPS[0][0]}
            doc.update(source="dup", payload={"other": draw(st.integers())})
            model.valid(key, None, "", "")
            lines.append(json.dumps(doc).encode())
        elif kind == "i":
            model.bad()
            lines.append(draw(st.sampled_from(INVALID)))
        elif kind == "l":
            lines.append(_long_line(draw, model))
        else:
            lines.append(draw(st.sampled_from(BLANK)))
    endings = [draw(st.sampled_from([b"\n", b"\r\n"])) for _ in lines]
    if endings and draw(st.booleans()):
        endings[-1] = b""  # the last line without a newline
    mode = draw(st.sampled_from(["stream", "files"]))
    cuts = sorted(draw(st.lists(st.integers(0, 1 << 16), max_size=12)))
    return Scenario(lines, endings, model, _options(draw), mode, cuts, _options(draw))


class _Pieces:
    """A byte stream that hands out its data in the given pieces, as a pipe would."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = deque(p for p in pieces if p)

    def read1(self, size: int = -1) -> bytes:
        if not self._pieces:
            return b""
        piece = self._pieces.popleft()
        if 0 < size < len(piece):
            self._pieces.appendleft(piece[size:])
            piece = piece[:size]
        return piece

    read = read1


def _run(scenario: Scenario, db: str, workdir: Path, options: IngestOptions) -> IngestReport:
    with open_store(db) as store:
        if scenario.mode == "stream":
            data = scenario.data()
            bounds = sorted([0, *(c % (len(data) + 1) for c in scenario.cuts), len(data)])
            pieces = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
            stdin = cast(BinaryIO, _Pieces(pieces))
            return ingest(store, [Source("-")], options, stdin=stdin)
        # files: the lines are split into consecutive files at the cut points
        n = len(scenario.lines)
        bounds = sorted({0, n, *(c % (n + 1) for c in scenario.cuts[:2])})
        sources = []
        for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
            path = workdir / f"part{i}.jsonl"
            part = zip(scenario.lines[a:b], scenario.endings[a:b], strict=True)
            path.write_bytes(b"".join(x + e for x, e in part))
            sources.append(Source(str(path)))
        return ingest(store, sources, options)


def _stored(db: str) -> dict[tuple[str, str], tuple[Any, str, str]]:
    with open_store(db, create=False) as store:
        rows = list(store.events(EventQuery(limit=None, newest_first=False)))
        assert store.check().ok, store.check().problems
    by_key = {
        (e.topic, e.event_id): (json.loads(e.payload_json), e.timestamp, e.source) for e in rows
    }
    assert len(by_key) == len(rows)
    return by_key


@settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios())
def test_store_equals_first_copy_of_each_key(scenario: Scenario) -> None:
    """One run stores the first copy of each key; a second run of the same input adds nothing."""
    model = scenario.model
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        db = str(workdir / "store.db")

        report = _run(scenario, db, workdir, scenario.options)

        assert report.source_errors == []
        assert (report.received, report.duplicates, report.invalid) == (
            model.received,
            model.duplicates,
            model.invalid,
        )
        assert report.accepted == len(model.first)
        assert report.received == report.accepted + report.duplicates + report.invalid
        assert _stored(db) == model.first

        again = _run(scenario, db, workdir, scenario.again)

        assert again.accepted == 0
        assert again.duplicates == model.received - model.invalid
        assert again.invalid == model.invalid
        assert _stored(db) == model.first
        with open_store(db, create=False) as store:
            stats = store.stats()
        assert stats.counters.received == 2 * model.received
        assert stats.counters.accepted == len(model.first)
        assert stats.counters.duplicates == model.duplicates + again.duplicates
        assert stats.counters.invalid == 2 * model.invalid
        assert sum(t.events for t in stats.topics.values()) == len(model.first)
