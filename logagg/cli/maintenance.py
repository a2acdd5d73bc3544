"""Keeping a store for years: `logagg prune`, `vacuum`, `backup` and `conflicts`."""

import sys
from pathlib import Path
from typing import Annotated

import typer

from logagg.cli.options import DEFAULT_DB, Db, Format, FormatOpt, JsonOpt
from logagg.cli.output import printable
from logagg.cli.paths import Reads, check_outputs
from logagg.errors import Interrupted, UsageError


def prune(
    older_than: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION", help="Prune events whose time is older than this: 30d, 12h, 1w."
        ),
    ] = None,
    before: Annotated[
        str | None,
        typer.Option(metavar="TIME", help="Prune events whose time is before this ISO-8601 time."),
    ] = None,
    topic: Annotated[str | None, typer.Option(help="Only this topic (exact match).")] = None,
    forget_keys: Annotated[
        bool,
        typer.Option(
            "--forget-keys",
            help="Drop the keys too (also those kept by earlier prunes): re-sends of these"
            " events would then be accepted again.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be pruned; change nothing.")
    ] = False,
    json_: JsonOpt = False,
    db: Db = DEFAULT_DB,
) -> None:
    """Remove old events, keeping their keys as tombstones so that a late re-send of one is
    still a duplicate; counters stay exact (unique_processed = stored + pruned). In short
    steps: other writers go on meanwhile, and Ctrl-C stops between steps."""
    from logagg.cli.render import print_json
    from logagg.store import cutoff, open_store
    from logagg.timestamps import normalize_timestamp
    from logagg.units import parse_duration

    if (older_than is None) == (before is None):
        raise UsageError("say what to prune: --older-than DURATION or --before TIME (one)")
    if older_than is not None:
        try:
            limit = cutoff(parse_duration(older_than))
        except ValueError as exc:
            raise UsageError(f"--older-than: {exc}") from None
    else:
        assert before is not None
        try:
            limit = normalize_timestamp(before)
        except ValueError as exc:
            raise UsageError(f"--before: {exc}") from None
    check_outputs(Reads(db), writes_stdout=json_)
    from logagg.cli.subscribe import stop_on_signals

    with open_store(db, create=False) as store, stop_on_signals() as stop:
        result = store.prune(
            limit,
            topic=topic,
            forget_keys=forget_keys,
            dry_run=dry_run,
            stop=lambda: bool(stop.caught),
        )
    if json_:
        print_json(result.to_dict())
    else:
        verb = "would prune" if dry_run else "pruned"
        kept = "" if forget_keys else " (their keys kept as tombstones)"
        line = f"{verb} {result.events:,} events older than {result.before}{kept}"
        if forget_keys:
            verb = "would forget" if dry_run else "forgot"
            line += f"; {verb} {result.keys:,} keys"
        topics = len(set(result.pruned) | set(result.forgotten))
        sys.stderr.write(f"{printable(line)} in {topics:,} topics\n")
        if not dry_run and result.events:
            sys.stderr.write("`logagg vacuum` returns the space to the file system\n")
    if stop.caught:
        raise Interrupted(stop.caught[0])


def vacuum(db: Db = DEFAULT_DB) -> None:
    """Return the space of pruned events to the file system (SQLite), or have PostgreSQL
    make it reusable; says what was done."""
    from logagg.store import open_store

    check_outputs(Reads(db))
    with open_store(db, create=False) as store:
        message = store.vacuum()
    sys.stderr.write(printable(message) + "\n")


def backup(
    target: Annotated[
        Path, typer.Argument(metavar="PATH", help="The new file to write.", show_default=False)
    ],
    db: Db = DEFAULT_DB,
) -> None:
    """Write a consistent copy of a live SQLite store to a new file, while ingests go on
    (SQLite's backup API, in one read transaction)."""
    from logagg.store import is_postgres, open_store
    from logagg.units import human_bytes

    if is_postgres(db):
        raise UsageError("backup copies SQLite stores; for a PostgreSQL store use pg_dump")
    path = str(target)
    if target.exists() or target.is_symlink():
        raise UsageError(f"{path}: already exists: name a new file")
    if not target.parent.is_dir():
        raise UsageError(f"{path}: directory {target.parent} does not exist")
    check_outputs(Reads(db))
    with open_store(db, create=False) as store:
        store.backup(path)
    size = human_bytes(target.stat().st_size)
    sys.stderr.write(f"{printable(path)}: a copy of {printable(db)} ({size})\n")


def conflicts(
    topic: Annotated[str | None, typer.Option(help="Only this topic (exact match).")] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, metavar="N", help="Most conflicts to list.")
    ] = 100,
    all_: Annotated[bool, typer.Option("--all", help="List every one (no limit).")] = False,
    fmt: FormatOpt = None,
    json_: JsonOpt = False,
    db: Db = DEFAULT_DB,
) -> None:
    """List keys whose copies differed (same topic and event_id, other content), the latest
    first: both content hashes, when first and last seen, and how many copies differed."""
    from logagg.cli.render import choose_format, console, print_json
    from logagg.store import open_store

    check_outputs(Reads(db), writes_stdout=True)
    with open_store(db, create=False) as store:
        found = store.conflicts(topic, None if all_ else limit)
    chosen = Format.json if json_ else choose_format(fmt, Format.jsonl)
    docs = [c.to_dict() for c in found]
    if chosen is Format.json:
        print_json(docs)
    elif chosen is Format.jsonl:
        for doc in docs:
            print_json(doc)
    elif chosen is Format.csv:
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        names = ["topic", "event_id", "first_hash", "last_hash", "first_seen", "last_seen"]
        writer.writerow([*names, "copies"])
        writer.writerows([doc[name] for name in [*names, "copies"]] for doc in docs)
    else:
        from rich.table import Table

        from logagg.cli.render import _text

        table = Table(show_edge=False, pad_edge=False)
        for name in ("topic", "event_id", "stored first", "last differing", "last seen"):
            table.add_column(name, no_wrap=True)
        table.add_column("copies", justify="right", no_wrap=True)
        for doc in docs:
            table.add_row(
                _text(doc["topic"]),
                _text(doc["event_id"]),
                doc["first_hash"],
                doc["last_hash"],
                doc["last_seen"],
                f"{doc['copies']:,}",
            )
        console().print(table)
        if not docs:
            console(stderr=True).print("no conflicts")
