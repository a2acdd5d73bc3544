"""The events table: written as rows are read, fitted to the terminal's width.

The layout (each column's width) is fixed from the first rows and the width, so that a
listing of any length is written in chunks with constant memory, and every row of it is
aligned. Fitted, every column is at least partly visible: a long value is shortened with
an ellipsis, at its end, or for an event_id at its start (ids differ at their end), and
times are shown to the second. Wide, every value is shown whole.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

from rich.cells import cell_len, get_character_cell_size

from logagg.cli.output import printable

if TYPE_CHECKING:
    from logagg.models import StoredEvent

COLUMNS = ("timestamp", "topic", "event_id", "source", "payload")
GAP = "  "
CHUNK = 200  # rows measured for the layout, and written at a time
SHORT_TIME = len("2025-01-01T10:00:37Z")
# A fitted column is never narrower than this (or than its widest value, when narrower).
MINIMUM = {"topic": 8, "event_id": 10, "source": 6, "payload": 10}
ELLIPSIS = "…"
_SPACE_OUTSIDE_STRINGS = re.compile(r'("(?:\\.|[^"\\])*")|\s+')


def compact_json(text: str) -> str:
    """JSON text without the spaces and line breaks between its tokens (strings kept)."""
    return _SPACE_OUTSIDE_STRINGS.sub(lambda m: m.group(1) or "", text)


def short_time(stored: str) -> str:
    """`2025-01-01T10:00:37.123456Z` -> `2025-01-01T10:00:37Z` (an ISO-8601 time still)."""
    return stored[:19] + "Z" if len(stored) > 20 and stored.endswith("Z") else stored


def cells(event: StoredEvent, wide: bool) -> tuple[str, ...]:
    """The row's texts, as shown: controls escaped; fitted, times to the second."""
    time = event.timestamp if wide else short_time(event.timestamp)
    payload = compact_json(event.payload_json)
    return tuple(printable(v) for v in (time, event.topic, event.event_id, event.source, payload))


def keep_start(text: str, width: int) -> str:
    """`text` in at most `width` cells: its start and an ellipsis when it is longer."""
    if cell_len(text) <= width:
        return text
    used = end = 0
    while used + get_character_cell_size(text[end]) <= width - 1:
        used += get_character_cell_size(text[end])
        end += 1
    return text[:end] + ELLIPSIS


def keep_end(text: str, width: int) -> str:
    """`text` in at most `width` cells: an ellipsis and its end when it is longer."""
    if cell_len(text) <= width:
        return text
    return keep_start(text[::-1], width)[::-1]


def fit(natural: dict[str, int], width: int) -> dict[str, int]:
    """Column widths for a terminal `width` cells wide: the time in full (to the second);
    each other column its minimum, then the room left shared out, first among topic,
    event_id and source (the narrowest filled first), and what remains to the payload."""
    widths = {"timestamp": SHORT_TIME}
    for name, least in MINIMUM.items():
        widths[name] = min(natural[name], least)
    room = width - len(GAP) * (len(COLUMNS) - 1) - sum(widths.values())
    for group in (("topic", "event_id", "source"), ("payload",)):
        wanting = [n for n in group if widths[n] < natural[n]]
        while room > 0 and wanting:
            share = max(room // len(wanting), 1)
            for name in sorted(wanting, key=lambda n: natural[n] - widths[n]):
                grant = min(share, natural[name] - widths[name], room)
                widths[name] += grant
                room -= grant
            wanting = [n for n in group if widths[n] < natural[n]]
    return widths


@dataclass(frozen=True, slots=True)
class Layout:
    """Each column's width; `wide`: values are never shortened."""

    widths: dict[str, int]
    wide: bool

    @classmethod
    def measure(cls, rows: list[tuple[str, ...]], width: int, wide: bool) -> Layout:
        natural = {
            name: max([cell_len(name), *(cell_len(row[i]) for row in rows)])
            for i, name in enumerate(COLUMNS)
        }
        return cls(natural if wide else fit(natural, width), wide)

    def line(self, texts: Iterable[str]) -> str:
        parts = []
        for name, text in zip(COLUMNS, texts, strict=True):
            size = self.widths[name]
            if not self.wide:
                text = keep_end(text, size) if name == "event_id" else keep_start(text, size)
            parts.append(text + " " * (size - cell_len(text)))
        return GAP.join(parts).rstrip()


class TableWriter:
    """Writes events as table rows on stdout, a chunk at a time: the header and the layout
    come from the first rows it is given, and hold for every later call."""

    def __init__(self, width: int, wide: bool, bold: bool) -> None:
        self.width = width
        self.wide = wide
        self.bold = bold
        self.layout: Layout | None = None
        self.count = 0

    def write(self, events: Iterable[StoredEvent]) -> int:
        """Write `events`; returns how many."""
        rows = iter(events)
        written = 0
        while chunk := [cells(e, self.wide) for e in islice(rows, CHUNK)]:
            if self.layout is None:
                self.layout = Layout.measure(chunk, self.width, self.wide)
                self._header(self.layout)
            sys.stdout.write("".join(self.layout.line(row) + "\n" for row in chunk))
            sys.stdout.flush()
            written += len(chunk)
        self.count += written
        return written

    def _header(self, layout: Layout) -> None:
        header = layout.line(COLUMNS)
        rule = GAP.join("─" * layout.widths[n] for n in COLUMNS)
        sys.stdout.write((f"\x1b[1m{header}\x1b[0m" if self.bold else header) + "\n")
        sys.stdout.write(rule + "\n")


def write_table(events: Iterable[StoredEvent], width: int, wide: bool, bold: bool) -> int:
    """Write `events` as a table on stdout, a chunk at a time; returns how many."""
    return TableWriter(width, wide, bold).write(events)
