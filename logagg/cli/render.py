"""Rendering: Rich tables for people, JSON / JSON lines / CSV for programs.

Data goes to stdout; diagnostics, reports and progress go to stderr. Rich is imported
only when a table or a progress bar is drawn, so machine output and `--help` stay quick.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, Protocol

from logagg.cli.options import Emit, Format
from logagg.cli.output import printable
from logagg.errors import LogaggError, OutputClosed, OutputError
from logagg.units import human_bytes

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from logagg.models import StoredEvent
    from logagg.pipeline import IngestReport
    from logagg.store import BatchResult, CheckResult, StoreStats


def choose_format(requested: Format | None, piped: Format) -> Format:
    """The requested format, else a table on a terminal and `piped` otherwise."""
    if requested is not None:
        return requested
    return Format.table if sys.stdout.isatty() else piped


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


class BinaryOut(Protocol):
    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class BinarySink(Protocol):
    def write(self, data: bytes, /) -> object: ...


def _binary_stdout() -> BinaryOut:
    buffer: BinaryOut | None = getattr(sys.stdout, "buffer", None)
    return buffer if buffer is not None else _TextAsBytes(sys.stdout)


class _TextAsBytes:
    def __init__(self, text: IO[str]) -> None:
        self._text = text

    def write(self, data: bytes) -> int:
        return self._text.write(data.decode())

    def flush(self) -> None:
        self._text.flush()


def print_json(doc: Any) -> None:
    """One JSON document on stdout, keys sorted, as a stable envelope for scripts."""
    sys.stdout.write(json.dumps(doc, sort_keys=True, ensure_ascii=False) + "\n")
    sys.stdout.flush()


# --- events --------------------------------------------------------------------------


def write_events(events: Iterable[StoredEvent], fmt: Format) -> int:
    """Write events to stdout in `fmt`, streaming where the format allows; returns the count."""
    if fmt is Format.table:
        return _events_table(list(events))
    out = _binary_stdout()
    count = 0
    if fmt is Format.jsonl:
        for event in events:
            out.write(event.to_json_bytes() + b"\n")
            count += 1
    elif fmt is Format.json:
        out.write(b"[")
        for event in events:
            out.write((b",\n" if count else b"\n") + event.to_json_bytes())
            count += 1
        out.write(b"\n]\n" if count else b"]\n")
    else:
        # The data as is, in UTF-8 whatever the locale: a row at a time through a buffer.
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["topic", "event_id", "timestamp", "source", "payload", "extra"])
        for e in events:
            writer.writerow(
                [e.topic, e.event_id, e.timestamp, e.source, e.payload_json, e.extra_json or ""]
            )
            count += 1
            if text.tell() >= 1 << 16:
                out.write(text.getvalue().encode())
                text.seek(0)
                text.truncate()
        out.write(text.getvalue().encode())
    out.flush()
    return count


def _text(value: str) -> Text:
    """Data in a table cell: shown as text, never read as markup, controls escaped."""
    from rich.text import Text

    return Text(printable(value))


def _events_table(events: list[StoredEvent]) -> int:
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    for name in ("timestamp", "topic", "event_id", "source"):
        # The identifying columns keep their full width; the payload gets what is left.
        widest = max((len(printable(getattr(e, name))) for e in events), default=len(name))
        table.add_column(name, no_wrap=True, min_width=min(max(widest, len(name)), 40))
    table.add_column("payload", overflow="ellipsis", no_wrap=True, min_width=10)
    for e in events:
        table.add_row(*map(_text, (e.timestamp, e.topic, e.event_id, e.source, e.payload_json)))
    con = console()
    con.print(table)
    if not events:
        console(stderr=True).print("no events match")
    return len(events)


# --- stats ---------------------------------------------------------------------------


def write_stats(stats: StoreStats, fmt: Format) -> None:
    if fmt is not Format.table:
        print_json(stats.to_dict())
        return
    from rich.table import Table

    con = console()
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    for label, value in stats.counters.to_dict().items():
        summary.add_row(label, f"{value:,}")
    summary.add_row("first event", _text(stats.first_timestamp or "-"))
    summary.add_row("last event", _text(stats.last_timestamp or "-"))
    summary.add_row("last ingest", _text(stats.last_ingest_at or "-"))
    wal = "" if stats.wal_bytes is None else f", WAL {human_bytes(stats.wal_bytes)}"
    summary.add_row("database", _text(f"{stats.database} ({human_bytes(stats.size_bytes)}{wal})"))
    con.print(summary)
    if stats.topics:
        topics = Table(show_edge=False, pad_edge=False)
        widest = max(len(printable(name)) for name in stats.topics)
        topics.add_column("topic", no_wrap=True, min_width=min(max(widest, 5), 40))
        counts = max(len(f"{t.events:,}") for t in stats.topics.values())
        topics.add_column("events", justify="right", no_wrap=True, min_width=max(counts, 6))
        topics.add_column("first", no_wrap=True, min_width=27)
        topics.add_column("last", no_wrap=True, min_width=27)
        for name, t in stats.topics.items():
            topics.add_row(
                _text(name),
                f"{t.events:,}",
                _text(t.first_timestamp or "-"),
                _text(t.last_timestamp or "-"),
            )
        con.print()
        con.print(topics)


# --- ingest / check / publish ----------------------------------------------------------


def write_report(report: IngestReport) -> None:
    """The end-of-ingest report, for people, on stderr."""
    con = console(stderr=True)
    con.print(
        f"received {report.received:,}  accepted {report.accepted:,}  "
        f"duplicates {report.duplicates:,}  invalid {report.invalid:,}  "
        f"in {report.elapsed_seconds:.2f} s ({report.events_per_second:,.0f} events/s)",
        markup=False,
    )
    times = report.times
    if times.naive:
        twice = (
            f"; {times.ambiguous:,} happen twice there (a daylight-saving change): the earlier"
            " was taken"
            if times.ambiguous
            else ""
        )
        con.print(
            f"{times.naive:,} timestamps had no offset: taken as {times.name} (--assume-tz){twice}",
            markup=False,
        )
    if report.conflicts:
        con.print(
            f"{report.conflicts:,} of the duplicates differed from the stored copy (conflicts:"
            " see `logagg conflicts`)",
            markup=False,
        )
    if report.pruned:
        con.print(f"{report.pruned:,} events older than --retain were pruned", markup=False)


def write_check(result: CheckResult, as_json: bool) -> None:
    if as_json:
        doc = {"ok": result.ok, "problems": result.problems, "warnings": result.warnings}
        print_json({**doc, **result.facts})
        return
    con = console(stderr=True)
    if result.ok:
        facts = result.facts
        console().print(
            f"ok: {facts['rows']:,} events, counters consistent "
            f"(received {facts['received']:,} = {facts['unique_processed']:,} unique"
            f" + {facts['duplicate_dropped']:,} duplicate + {facts['invalid']:,} invalid),"
            f" integrity {facts['integrity']}, schema version {facts['schema_version']}",
            markup=False,
        )
    for problem in result.problems:
        con.print(f"problem: {printable(problem)}", markup=False)
    for warning in result.warnings:
        con.print(f"warning: {printable(warning)}", markup=False)


class RejectPrinter:
    """Prints the first `show` rejects as `FILE:LINE: reason` on stderr, counts the rest."""

    def __init__(self, show: int, quiet: bool, sink: BinarySink | None) -> None:
        self.show = show
        self.quiet = quiet
        self.sink = sink
        self.count = 0

    def __call__(self, reject: Any) -> None:
        self.count += 1
        if not self.quiet and self.count <= self.show:
            sys.stderr.write(f"{printable(reject.location())}: {printable(reject.reason)}\n")
        if self.sink is not None:
            self.sink.write(json.dumps(reject.to_dict(), ensure_ascii=False).encode() + b"\n")

    def finish(self) -> None:
        hidden = self.count - self.show
        if not self.quiet and hidden > 0:
            where = "" if self.sink else " (keep them all with --rejects FILE)"
            sys.stderr.write(f"... and {hidden:,} more invalid lines{where}\n")


class Emitter:
    """After each commit, writes the events it stored (`new`) or dropped (`duplicates`).

    JSON lines in the stored form on stdout, in input order, flushed per commit: nothing
    is written before it is committed. When stdout cannot be written (its reader has gone,
    or a full disk) the failure is kept in `failure`, `on_failure` is called once (the
    ingest stops reading; what was read is still committed) and nothing more is written.
    """

    def __init__(self, what: Emit, on_failure: Callable[[], None] | None = None) -> None:
        self.what = what
        self.out = _binary_stdout()
        self.on_failure = on_failure
        self.failure: LogaggError | None = None

    def __call__(self, result: BatchResult) -> None:
        events = result.new if self.what is Emit.new else result.dropped
        if not events or self.failure is not None:
            return
        try:
            self.out.write(b"\n".join(e.to_json_bytes() for e in events) + b"\n")
            self.out.flush()
        except (OutputClosed, OutputError) as exc:
            self.failure = exc
        except BrokenPipeError:
            self.failure = OutputClosed("")
        except OSError as exc:
            self.failure = OutputError(f"stdout: {exc.strerror or exc}")
        if self.failure is not None and self.on_failure is not None:
            self.on_failure()


@contextmanager
def file_progress(enabled: bool) -> Iterator[Callable[[Any, int, int, int], None] | None]:
    """A Rich progress bar on stderr for file input (bytes, and events per second).

    Yields its update callback `(source, position, size, lines so far)`, or None.
    """
    if not enabled:
        yield None
        return
    import time

    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    tasks: dict[str, Any] = {}
    started = time.monotonic()
    with Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        "{task.fields[rate]}",
        TimeRemainingColumn(),
        console=console(stderr=True),
        transient=True,
    ) as bar:

        def update(source: Any, position: int, size: int, lines: int) -> None:
            if source.name not in tasks:
                tasks[source.name] = bar.add_task(printable(source.name), total=size, rate="")
            rate = lines / max(time.monotonic() - started, 1e-3)
            bar.update(tasks[source.name], completed=position, rate=f"{rate:,.0f} lines/s")

        yield update
