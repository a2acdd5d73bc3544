"""Reading in commit order: `logagg events --follow / --cursor / --after`, `logagg cursors`.

A page of events is written and flushed to stdout, and only then is it acknowledged: the
cursor (`--cursor NAME`) moves past it in the store. So delivery is at least once: after a
crash, at most the last page written before the cursor was saved comes again. A stdout
whose reader has gone stops the follower without moving the cursor past what was written.
"""

import contextlib
import select
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from logagg.cli import signals
from logagg.cli.options import DEFAULT_DB, Db, Format, FormatOpt, JsonOpt
from logagg.cli.paths import Reads, check_outputs
from logagg.errors import Interrupted, LogaggError, OutputClosed, UsageError

if TYPE_CHECKING:
    from logagg.cli.table import TableWriter
    from logagg.models import StoredEvent
    from logagg.store import EventQuery, Store

PAGE = 1000  # events written, flushed and acknowledged at a time
POLL_SECONDS = 0.1  # a follower looks for new events this often: latency well under 0.5 s

FollowOpt = Annotated[
    bool,
    typer.Option(
        "--follow",
        "-F",
        help="Keep printing matching events as any process commits them, in commit order,"
        " until Ctrl-C: after the last --limit matches (or from --since, --after, --cursor).",
        rich_help_panel="Commit order",
    ),
]
CursorOpt = Annotated[
    str | None,
    typer.Option(
        "--cursor",
        metavar="NAME",
        help="Continue after the position kept in the store under NAME (a new name starts"
        " at the beginning, or --since), and keep it there once each page is flushed.",
        rich_help_panel="Commit order",
    ),
]
AfterOpt = Annotated[
    int | None,
    typer.Option(
        "--after",
        metavar="SEQ",
        min=0,
        help="Events committed after position SEQ (the `seq` of an event), in commit order.",
        rich_help_panel="Commit order",
    ),
]
SeqOpt = Annotated[
    bool,
    typer.Option(
        "--seq/--no-seq",
        help="In commit order, JSON output carries each event's position as `seq`"
        " (--no-seq: the events alone, to feed them to another store).",
        rich_help_panel="Commit order",
    ),
]


def in_commit_order(
    db: str,
    query: "EventQuery",
    *,
    follow: bool,
    cursor: str | None,
    after: int | None,
    last: int | None,
    fmt: Format | None,
    seq: bool,
) -> None:
    """`logagg events` with --follow, --cursor or --after (see the options).

    `last`: without a cursor or --after, following starts before the last `last` matches
    (None: all of them); a one-off listing lists at most `last`.
    """
    from logagg.store import open_store

    if cursor is not None and not cursor.strip():
        raise UsageError("--cursor: the name must not be empty")
    if cursor is not None and after is not None:
        raise UsageError("--cursor keeps its own position: use it without --after")
    if follow and fmt in (Format.table, Format.json):
        raise UsageError(f"--follow writes a stream: use --format jsonl or csv, not {fmt}")
    check_outputs(Reads(db), writes_stdout=True)
    out = _Output(fmt or Format.jsonl, seq)
    with open_store(db, create=False) as store, stop_on_signals() as stop:
        position = _start(store, query, cursor, after, last if follow else None)
        budget = None if follow else last
        try:
            while not stop.caught:
                room = PAGE if budget is None else min(PAGE, budget)
                page = store.read_after(position, query, room)
                if page.events:
                    out.write(page.events)  # written and flushed: acknowledged
                if cursor is not None and page.next > position:
                    store.save_cursor(cursor, page.next)
                position = page.next
                if budget is not None:
                    budget -= len(page.events)
                if page.full and (budget is None or budget > 0):
                    continue
                if not follow:
                    break
                stop.wait_or_closed(POLL_SECONDS)
        finally:
            out.finish()
    if stop.caught:
        raise Interrupted(stop.caught[0])


def _start(
    store: "Store", query: "EventQuery", cursor: str | None, after: int | None, last: int | None
) -> int:
    """The position reading starts after."""
    if cursor is not None:
        saved = store.cursor(cursor)
        if saved is not None:
            return saved
    if after is not None:
        return after
    if cursor is not None or query.since is not None or last is None:
        return store.start_position(query, None) if query.since is not None else 0
    return store.start_position(query, last)


class _Output:
    """Pages of events on stdout: JSON lines (or a JSON array, or CSV), each page flushed."""

    def __init__(self, fmt: Format, seq: bool) -> None:
        self.fmt = fmt
        self.seq = seq and fmt in (Format.json, Format.jsonl)
        self.out = sys.stdout.buffer
        self.count = 0
        self.table: TableWriter | None = None
        if fmt is Format.table:
            from logagg.cli.render import events_table

            self.table = events_table(terminal=sys.stdout.isatty())

    def write(self, events: "tuple[StoredEvent, ...]") -> None:
        if self.table is not None:
            self.count += self.table.write(events)
            return
        if self.fmt is Format.csv:
            data = _csv(events, header=self.count == 0)
        else:
            lines = [e.to_json_bytes(with_seq=self.seq) for e in events]
            if self.fmt is Format.json:
                lead = b"[\n" if self.count == 0 else b",\n"
                data = lead + b",\n".join(lines)
            else:
                data = b"\n".join(lines) + b"\n"
        self.count += len(events)
        self.out.write(data)
        self.out.flush()

    def finish(self) -> None:
        """Close what the format opened (a JSON array, a table), also after an error."""
        if self.table is not None:
            if not self.count:
                sys.stderr.write("no events match\n")
        elif self.fmt is Format.json:
            with contextlib.suppress(LogaggError, OSError):
                self.out.write(b"\n]\n" if self.count else b"[]\n")
                self.out.flush()


def _csv(events: "tuple[StoredEvent, ...]", header: bool) -> bytes:
    import csv
    import io

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    if header:
        writer.writerow(["topic", "event_id", "timestamp", "source", "payload", "extra", "seq"])
    for e in events:
        writer.writerow(
            [e.topic, e.event_id, e.timestamp, e.source, e.payload_json, e.extra_json or "", e.seq]
        )
    return text.getvalue().encode()


class _Stop:
    """The signals caught, and a wait that ends early on one or when stdout is closed."""

    def __init__(self) -> None:
        self.caught: list[int] = []
        self.event = threading.Event()

    def wait_or_closed(self, seconds: float) -> None:
        """Wait `seconds` (less when a signal comes); raise OutputClosed as soon as the
        reader of stdout (a pipe or terminal) has gone, even with nothing to write."""
        deadline = time.monotonic() + seconds
        poller = select.poll()
        poller.register(1, 0)  # no events asked: only a hang-up or an error is reported
        while not self.event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for _, flags in poller.poll(min(left, 0.05) * 1000):
                if flags & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                    raise OutputClosed("")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[_Stop]:
    """SIGINT and SIGTERM end the reading after the page being written (main thread)."""
    stop = _Stop()
    with signals.stop_on_signals(stop.event) as caught:
        stop.caught = caught
        yield stop


def cursors(
    delete: Annotated[
        str | None, typer.Option("--delete", metavar="NAME", help="Delete the cursor NAME.")
    ] = None,
    fmt: FormatOpt = None,
    json_: JsonOpt = False,
    db: Db = DEFAULT_DB,
) -> None:
    """List the cursors of `events --cursor`: position, lag (events committed after it) and
    when it last moved; or delete one."""
    from logagg.cli.render import choose_format, console, print_json
    from logagg.store import open_store

    check_outputs(Reads(db), writes_stdout=delete is None)
    with open_store(db, create=False) as store:
        if delete is not None:
            if not store.delete_cursor(delete):
                raise LogaggError(f"no cursor named {delete!r}")
            sys.stderr.write(f"deleted cursor {delete}\n")
            return
        found = store.cursors()
    chosen = Format.json if json_ else choose_format(fmt, Format.json)
    if chosen is Format.table:
        from rich.table import Table

        from logagg.cli.render import _text

        table = Table(show_edge=False, pad_edge=False)
        for name in ("cursor", "position", "lag", "updated_at"):
            table.add_column(name, no_wrap=True, justify="left" if name[0] in "cu" else "right")
        for c in found:
            table.add_row(_text(c.name), f"{c.position:,}", f"{c.lag:,}", c.updated_at)
        console().print(table)
        if not found:
            console(stderr=True).print("no cursors")
    elif chosen is Format.jsonl:
        for c in found:
            print_json(c.to_dict())
    elif chosen is Format.csv:
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["name", "position", "lag", "updated_at"])
        writer.writerows([c.name, c.position, c.lag, c.updated_at] for c in found)
    else:
        print_json([c.to_dict() for c in found])
