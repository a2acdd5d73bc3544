"""Reading the store: `logagg events`, `stats` and `check`."""

from __future__ import annotations

from typing import Annotated

import typer

from logagg.cli.options import DEFAULT_DB, Db, Format, FormatOpt, JsonOpt, Order
from logagg.cli.paths import Reads, check_outputs
from logagg.cli.subscribe import AfterOpt, CursorOpt, FollowOpt, SeqOpt
from logagg.errors import Unhealthy, UsageError


def events(
    topic: Annotated[str | None, typer.Option(help="Only this topic (exact match).")] = None,
    source: Annotated[str | None, typer.Option(help="Only this source (exact match).")] = None,
    since: Annotated[str | None, typer.Option(help="From this ISO-8601 time (inclusive).")] = None,
    until: Annotated[
        str | None, typer.Option(help="Before this ISO-8601 time (exclusive).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most events to list.")] = 100,
    all_: Annotated[bool, typer.Option("--all", help="List every match (no limit).")] = False,
    order: Annotated[
        Order, typer.Option(help="By timestamp: newest first (desc) or oldest first (asc).")
    ] = Order.desc,
    fmt: FormatOpt = None,
    db: Db = DEFAULT_DB,
    follow: FollowOpt = False,
    cursor: CursorOpt = None,
    after: AfterOpt = None,
    seq: SeqOpt = True,
) -> None:
    """List stored events in the input schema, with their original payloads."""
    from logagg.cli.render import choose_format, write_events
    from logagg.store import BadTime, EventQuery, open_store

    try:
        query = EventQuery.parse(
            topic=topic,
            source=source,
            since=since,
            until=until,
            limit=None if all_ else limit,
            newest_first=order is Order.desc,
        )
    except BadTime as exc:
        raise UsageError(f"--{exc.name}: {exc}") from None
    if follow or cursor is not None or after is not None:
        from logagg.cli.subscribe import in_commit_order

        last = None if all_ else limit
        in_commit_order(
            db, query, follow=follow, cursor=cursor, after=after, last=last, fmt=fmt, seq=seq
        )
        return
    check_outputs(Reads(db), writes_stdout=True)
    with open_store(db, create=False) as store:
        rows = store.events(query)
        try:
            write_events(rows, choose_format(fmt, Format.jsonl))
        finally:  # closed while the store is open, also when stdout's reader has gone
            close = getattr(rows, "close", None)
            if close is not None:
                close()


def stats(db: Db = DEFAULT_DB, fmt: FormatOpt = None, json_: JsonOpt = False) -> None:
    """Counters, topics and their counts (reads no events: instant on any size)."""
    from logagg.cli.render import choose_format, write_stats
    from logagg.store import open_store

    check_outputs(Reads(db), writes_stdout=True)
    with open_store(db, create=False) as store:
        write_stats(store.stats(), Format.json if json_ else choose_format(fmt, Format.json))


def check(db: Db = DEFAULT_DB, json_: JsonOpt = False) -> None:
    """Verify integrity, schema version and that the counters agree with the rows."""
    from logagg.cli.render import write_check
    from logagg.store import open_store

    check_outputs(Reads(db), writes_stdout=True)
    with open_store(db, create=False) as store:
        result = store.check()
    write_check(result, json_)
    if not result.ok:
        raise Unhealthy("")
