"""Reading the store: `logagg events`, `stats` and `check`."""

import sys
from typing import Annotated

import typer

from logagg.cli.options import DEFAULT_DB, Db, Format, FormatOpt, JsonOpt, Order
from logagg.cli.paths import Reads, check_outputs
from logagg.cli.subscribe import AfterOpt, CursorOpt, FollowOpt, SeqOpt
from logagg.errors import Unhealthy, UsageError

DEFAULT_LIMIT = 100  # events listed when neither --limit nor --all is given
COUNT_AT_MOST = 10_000  # rows counted for "showing 100 of N" (beyond: "more than")


def events(
    topic: Annotated[str | None, typer.Option(help="Only this topic (exact match).")] = None,
    source: Annotated[str | None, typer.Option(help="Only this source (exact match).")] = None,
    since: Annotated[
        str | None,
        typer.Option(
            metavar="TIME",
            help="From this time on (inclusive): ISO-8601, or 15m, 3h, 2d, 1w ago, today,"
            " yesterday, now.",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(metavar="TIME", help="Before this time (exclusive), in the same forms."),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            "-n",
            min=1,
            metavar="N",
            help=f"Most events to list [default: {DEFAULT_LIMIT}].",
            show_default=False,
        ),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="List every match (no limit).")] = False,
    order: Annotated[
        Order, typer.Option(help="By timestamp: newest first (desc) or oldest first (asc).")
    ] = Order.desc,
    fmt: FormatOpt = None,
    wide: Annotated[
        bool,
        typer.Option(
            "--wide",
            "-w",
            help="A table shows every value whole (else it fits the terminal, long values"
            " shortened with an ellipsis).",
        ),
    ] = False,
    no_pager: Annotated[
        bool,
        typer.Option(
            "--no-pager",
            help="On a terminal, print without a pager (else $PAGER, default less -R, when"
            " the listing is longer than the screen).",
        ),
    ] = False,
    db: Db = DEFAULT_DB,
    follow: FollowOpt = False,
    cursor: CursorOpt = None,
    after: AfterOpt = None,
    seq: SeqOpt = True,
) -> None:
    """List stored events in the input schema, with their original payloads.

    Rows are written as they are read, in every format. On a terminal: a table that fits
    its width, paged when longer than the screen, and a line on stderr when the default
    limit left events out.
    """
    from logagg.cli.pager import paged
    from logagg.cli.render import choose_format, events_table, write_events
    from logagg.store import BadTime, EventQuery, open_store

    shown = DEFAULT_LIMIT if limit is None else limit
    try:
        query = EventQuery.parse(
            topic=topic,
            source=source,
            since=since,
            until=until,
            limit=None if all_ else shown,
            newest_first=order is Order.desc,
        )
    except BadTime as exc:
        raise UsageError(f"--{exc.name}: {exc}") from None
    if follow or cursor is not None or after is not None:
        from logagg.cli.subscribe import in_commit_order

        last = None if all_ else shown
        in_commit_order(
            db, query, follow=follow, cursor=cursor, after=after, last=last, fmt=fmt, seq=seq
        )
        return
    check_outputs(Reads(db), writes_stdout=True)
    terminal = sys.stdout.isatty()
    chosen = choose_format(fmt, Format.jsonl)
    # Measured before a pager takes stdout: the terminal's width is then out of sight.
    table = events_table(wide=wide, terminal=terminal) if chosen is Format.table else None
    with open_store(db, create=False) as store:
        rows = store.events(query)
        try:
            with paged(terminal and not no_pager):
                count = write_events(rows, chosen, table)
        finally:  # closed while the store is open, also when stdout's reader has gone
            close = getattr(rows, "close", None)
            if close is not None:
                close()
        if terminal and limit is None and not all_ and count == shown:
            total = store.count(query, at_most=COUNT_AT_MOST + 1)
            if total > COUNT_AT_MOST:
                sys.stderr.write(
                    f"showing {count:,} of more than {COUNT_AT_MOST:,}; --all for every one\n"
                )
            elif total > count:
                sys.stderr.write(f"showing {count:,} of {total:,}; --all for every one\n")


def stats(db: Db = DEFAULT_DB, fmt: FormatOpt = None, json_: JsonOpt = False) -> None:
    """Counters, topics and their counts (reads no events: instant on any size)."""
    from logagg.cli.render import choose_format, write_stats
    from logagg.store import open_store

    check_outputs(Reads(db), writes_stdout=True)
    with open_store(db, create=False) as store:
        write_stats(store.stats(), Format.json if json_ else choose_format(fmt, Format.json))


def check(db: Db = DEFAULT_DB, json_: JsonOpt = False) -> None:
    """Verify integrity, schema version and that the counters agree with the rows.

    The verdict is a message on stderr; --json prints it as data on stdout. Exit 1 when
    unhealthy."""
    from logagg.cli.render import write_check
    from logagg.store import open_store

    check_outputs(Reads(db), writes_stdout=json_)
    with open_store(db, create=False) as store:
        result = store.check()
    write_check(result, json_)
    if not result.ok:
        raise Unhealthy("")
