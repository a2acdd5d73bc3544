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

    from logagg.cli.table import TableWriter
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


def write_events(
    events: Iterable[StoredEvent], fmt: Format, table: TableWriter | None = None
) -> int:
    """Write events to stdout in `fmt` as they are read; returns the count. A table is
    written by `table` (else `events_table()`'s)."""
    if fmt is Format.table:
        count = (table or events_table()).write(events)
        if not count:
            sys.stderr.write("no events match\n")
        return count
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


def events_table(*, wide: bool = False, terminal: bool = False) -> TableWriter:
    """A table of events for stdout, as wide as the terminal (COLUMNS, else the terminal's,
    else 80) unless `wide`; its header bold on a `terminal` (unless NO_COLOR)."""
    import os
    import shutil

    from logagg.cli.table import TableWriter

    width = shutil.get_terminal_size().columns
    bold = terminal and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
    return TableWriter(width, wide, bold)


def _text(value: str) -> Text:
    """Data in a table cell: shown as text, never read as markup, controls escaped."""
    from rich.text import Text

    return Text(printable(value))


# --- stats ---------------------------------------------------------------------------


TOPIC_FIELDS = ("topic", "events", "first_timestamp", "last_timestamp", "conflicts", "pruned")


def write_stats(stats: StoreStats, fmt: Format) -> None:
    """The stats in `fmt`: json, the whole document; csv and jsonl, a row per topic
    (TOPIC_FIELDS); table, the counters, times and size, then the topics, for people."""
    topics = [
        (name, t.events, t.first_timestamp, t.last_timestamp, t.conflicts, t.pruned)
        for name, t in stats.topics.items()
    ]
    if fmt is Format.json:
        print_json(stats.to_dict())
    elif fmt is Format.jsonl:
        sys.stdout.write(
            "".join(json.dumps(dict(zip(TOPIC_FIELDS, t, strict=True))) + "\n" for t in topics)
        )
    elif fmt is Format.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(TOPIC_FIELDS)
        writer.writerows(topics)
    else:
        import shutil

        sys.stdout.write(stats_text(stats, shutil.get_terminal_size().columns))
    sys.stdout.flush()


def stats_text(stats: StoreStats, width: int) -> str:
    """The stats for people: labels in one column; numbers right-aligned in the next, times
    and the database starting where the numbers do; sizes in KiB / MiB; then the topics,
    fitted to `width`."""
    from logagg.cli.table import keep_start, short_time

    def when(value: str | None) -> str:
        return "-" if value is None else printable(short_time(value))

    numbers = {**stats.counters.to_dict(), "stored": stats.stored}
    digits = max(len(f"{n:,}") for n in numbers.values())
    wal = "" if stats.wal_bytes is None else f" (WAL {human_bytes(stats.wal_bytes)})"
    texts = {
        "first event": when(stats.first_timestamp),
        "last event": when(stats.last_timestamp),
        "last ingest": when(stats.last_ingest_at),
        "database": printable(stats.database),
        "size": human_bytes(stats.size_bytes) + wal,
    }
    label = max(map(len, [*numbers, *texts]))
    lines = [f"{name:<{label}}  {n:>{digits},}" for name, n in numbers.items()]
    lines += [f"{name:<{label}}  {text}" for name, text in texts.items()]
    if stats.topics:
        counts = max(len("events"), *(len(f"{t.events:,}") for t in stats.topics.values()))
        time = len(short_time("2025-01-01T00:00:00.000000Z"))
        room = max(width - counts - 2 * time - 6, 12)
        names = {name: keep_start(printable(name), room) for name in stats.topics}
        column = max(len("topic"), *map(len, names.values()))
        lines += ["", f"{'topic':<{column}}  {'events':>{counts}}  {'first':<{time}}  last"]
        for name, t in stats.topics.items():
            first, last = when(t.first_timestamp), when(t.last_timestamp)
            lines.append(f"{names[name]:<{column}}  {t.events:>{counts},}  {first:<{time}}  {last}")
    return "\n".join(lines) + "\n"


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
    con = console(stderr=True)  # the verdict is a message: its data form is --json
    if result.ok:
        facts = result.facts
        con.print(
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
    )

    tasks: dict[str, Any] = {}
    started = time.monotonic()
    with Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(binary_units=True),
        "{task.fields[speed]}",
        "{task.fields[rate]}",
        TimeRemainingColumn(),
        console=console(stderr=True),
        transient=True,
    ) as bar:

        def update(source: Any, position: int, size: int, lines: int) -> None:
            if source.name not in tasks:
                tasks[source.name] = bar.add_task(
                    printable(source.name), total=size, rate="", speed=""
                )
            seconds = max(time.monotonic() - started, 1e-3)
            bar.update(
                tasks[source.name],
                completed=position,
                speed=f"{human_bytes(position / seconds)}/s",
                rate=f"{lines / seconds:,.0f} lines/s",
            )

        yield update
