"""The `logagg` command line: thin commands over the pipeline and the store.

This is the single place where errors become exit codes (`_App.invoke`, `_App.main`).
The core is imported inside the commands so that `logagg --help` starts quickly.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from logagg import __version__
from logagg.errors import ExitCode, LogaggError, UsageError
from logagg.output import Emit, Format, Order


class _App(TyperGroup):
    """Maps LogaggError to its exit code and usage errors to one line and exit 2."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LogaggError as exc:
            _fail(str(exc))
            raise typer.Exit(exc.exit_code) from None

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            code = super().main(
                args=args,
                prog_name=prog_name or "logagg",
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        except typer.TyperException as exc:  # the parser's usage errors
            _fail(exc.format_message() + _usage_hint(exc))
            code = ExitCode.USAGE
        except typer.Abort:
            code = ExitCode.INTERRUPTED
        code = code if isinstance(code, int) else ExitCode.OK
        if standalone_mode:
            sys.exit(code)
        return code


def _usage_hint(exc: typer.TyperException) -> str:
    ctx = getattr(exc, "ctx", None)
    return f" (see '{ctx.command_path} --help')" if ctx is not None else ""


def _fail(message: str) -> None:
    sys.stderr.write(f"logagg: error: {message}\n")


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"logagg {__version__}\n")
        raise typer.Exit()


app = typer.Typer(
    cls=_App,
    name="logagg",
    help="Keep every event of an at-least-once stream exactly once, in a local SQLite file.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Keep every event of an at-least-once stream exactly once, in a local SQLite file."""


Db = Annotated[
    str,
    typer.Option(
        "--db",
        envvar="LOGAGG_DB",
        metavar="PATH",
        help="The store: a SQLite file, or a postgresql:// URL.",
    ),
]
FormatOpt = Annotated[
    Format | None,
    typer.Option(
        "--format",
        "-f",
        help="Output format [default: table on a terminal, else machine-readable].",
        case_sensitive=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
DEFAULT_DB = "logagg.db"
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


@app.command()
def ingest(
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="PATH...",
            help="JSON-lines files (.gz too); '-' or none reads stdin.",
            show_default=False,
        ),
    ] = None,
    db: Db = DEFAULT_DB,
    batch_size: Annotated[int, typer.Option(min=1, help="Most events per transaction.")] = 50_000,
    flush_interval: Annotated[
        float,
        typer.Option(min=0.001, help="Most seconds an event waits before its transaction commits."),
    ] = 0.2,
    queue_size: Annotated[
        int,
        typer.Option(
            min=1, help="Batches that may wait between reader and writer (the memory bound)."
        ),
    ] = 12,
    max_line_bytes: Annotated[
        int, typer.Option(min=64, help="Longer lines are rejected without being read into memory.")
    ] = 1 << 20,
    rejects: Annotated[
        Path | None,
        typer.Option(
            help="Write rejected lines here as JSON lines: file, line, error, raw.", dir_okay=False
        ),
    ] = None,
    strict: Annotated[bool, typer.Option(help="Exit 3 if any line was rejected.")] = False,
    json_: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON on stdout.")
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="No report, no progress, no reject messages (rejects still counted).",
        ),
    ] = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-F",
            help="Keep reading the files as they grow, like tail -F (rotation, truncation, "
            "files that appear later), continuing where the last committed line ends.",
        ),
    ] = False,
    emit: Annotated[
        Emit | None,
        typer.Option(
            help="Write each committed new (or dropped duplicate) event to stdout as JSON "
            "lines, in input order.",
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Read a known log format: cloudevents, docker, pino, bunyan, structlog, "
            "journald or gelf.",
            rich_help_panel="Your logs",
        ),
    ] = None,
    map_: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            metavar="TARGET=PATH",
            help="Where a field is: topic, event_id, timestamp or source = a dotted path "
            "into the line; repeatable.",
            rich_help_panel="Your logs",
        ),
    ] = None,
    payload_field: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            help="The payload's path [default with a mapping: the rest of the line].",
            rich_help_panel="Your logs",
        ),
    ] = None,
    topic: Annotated[
        str | None,
        typer.Option(help="Topic for lines that have none.", rich_help_panel="Your logs"),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            help="Source for lines that have none [default with a mapping: the file name].",
            rich_help_panel="Your logs",
        ),
    ] = None,
    id_from_content: Annotated[
        bool,
        typer.Option(
            help="Lines without an id get a stable hash of their content as event_id.",
            rich_help_panel="Your logs",
        ),
    ] = False,
    time_unit: Annotated[
        str | None,
        typer.Option(
            metavar="s|ms|us",
            help="Unit of epoch-number timestamps [default: told by magnitude].",
            rich_help_panel="Your logs",
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            metavar="topic,event_id|source,id",
            help="What identifies an event: (topic, event_id) [default], or (source, id) as "
            "in CloudEvents.",
            rich_help_panel="Your logs",
        ),
    ] = None,
) -> None:
    """Read JSON-lines events into the store, dropping duplicates by (topic, event_id)."""
    import threading

    from logagg.output import Emitter, RejectPrinter, file_progress, print_json, write_report
    from logagg.pipeline import IngestOptions, stop_on_signals
    from logagg.pipeline import ingest as run_ingest
    from logagg.sources import Source
    from logagg.store import open_store

    sources = [Source(p) for p in (paths or ["-"])]
    if sum(s.is_stdin for s in sources) > 1:
        raise UsageError("stdin ('-') can be read only once")
    if emit is not None and json_:
        raise UsageError("--emit writes events to stdout: use it without --json")
    if follow and any(s.is_stdin for s in sources):
        raise UsageError("--follow reads files: name them (stdin is followed anyway)")
    mapping = _mapping(preset, map_, payload_field, topic, source, id_from_content, time_unit, key)
    options = IngestOptions(
        batch_size=batch_size,
        flush_interval=flush_interval,
        queue_size=queue_size,
        max_line_bytes=max_line_bytes,
        mapping=mapping,
        follow=follow,
    )
    try:
        # Rejected lines are raw events: created like the store, never world-writable.
        sink = os.fdopen(os.open(rejects, _CREATE, 0o644), "wb") if rejects else None
    except OSError as exc:
        raise UsageError(f"--rejects {rejects}: {exc.strerror}") from None
    printer = RejectPrinter(show=10, quiet=quiet, sink=sink)
    show_progress = (
        not quiet and not follow and sys.stderr.isatty() and not all(s.is_stdin for s in sources)
    )
    stop = threading.Event()
    try:
        with (
            open_store(db) as store,
            stop_on_signals(stop) as caught,
            file_progress(show_progress) as progress,
        ):
            report = run_ingest(
                store,
                sources,
                options,
                stop=stop,
                on_reject=printer,
                on_progress=progress,
                on_commit=Emitter(emit.value) if emit is not None else None,
            )
    finally:
        if sink:
            sink.close()
    printer.finish()
    for message in report.source_errors:
        _fail(message)
    if json_:
        print_json(report.to_dict())
    elif not quiet:
        write_report(report)
    if caught:
        interrupted = caught[0] == signal.SIGINT
        raise typer.Exit(ExitCode.INTERRUPTED if interrupted else ExitCode.TERMINATED)
    if report.source_errors:
        raise typer.Exit(ExitCode.ERROR)
    if strict and report.invalid:
        raise typer.Exit(ExitCode.DATA)


def _mapping(
    preset: str | None,
    maps: list[str] | None,
    payload_field: str | None,
    topic: str | None,
    source: str | None,
    id_from_content: bool,
    time_unit: str | None,
    key: str | None,
) -> Any:
    """The Mapping the "Your logs" options ask for, or None for logagg's own schema."""
    if not (
        preset or maps or payload_field or topic or source or id_from_content or time_unit or key
    ):
        return None
    from logagg.mapping import Mapping, get_preset, parse_key, parse_map_options

    try:
        return (get_preset(preset) if preset else Mapping()).override(
            fields=parse_map_options(maps or []),
            payload_field=payload_field,
            topic=topic,
            source=source,
            id_from_content=id_from_content,
            time_unit=time_unit,  # type: ignore[arg-type]
            key=parse_key(key) if key else None,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _json_value(option: str, text: str) -> Any:
    """Parse a JSON value given on the command line; a UsageError names the option."""
    import json

    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{option}: not valid JSON ({exc})") from None
    except RecursionError:
        raise UsageError(f"{option}: JSON nested too deeply") from None


def _parse_fields(pairs: list[str]) -> dict[str, Any]:
    """`key=value` gives a string, `key:=json` a JSON value (as in httpie)."""
    fields: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"-p {pair}: expected key=value or key:=json")
        if key.endswith(":"):
            key = key[:-1]
            fields[key] = _json_value(f"-p {key}:=", value)
        else:
            fields[key] = value
        if not key:
            raise UsageError(f"-p {pair}: empty key")
    return fields


@app.command()
def publish(
    topic: Annotated[str, typer.Option(help="The event's topic.")],
    event_id: Annotated[
        str | None,
        typer.Option(help="The event's id [default: a new UUID, printed].", show_default=False),
    ] = None,
    source: Annotated[str, typer.Option(help="Who produced it.")] = "cli",
    timestamp: Annotated[
        str | None, typer.Option(help="ISO-8601 time [default: now, UTC].", show_default=False)
    ] = None,
    payload: Annotated[str | None, typer.Option(help="The payload as a JSON object.")] = None,
    field: Annotated[
        list[str] | None,
        typer.Option(
            "-p",
            "--field",
            metavar="KEY=VALUE",
            help="A payload field: key=string or key:=json; repeatable.",
        ),
    ] = None,
    db: Db = DEFAULT_DB,
    json_: JsonOpt = False,
) -> None:
    """Record one event given on the command line (a duplicate is reported, not an error)."""
    from logagg.models import event_from_fields
    from logagg.output import console, print_json
    from logagg.store import open_store, utc_now

    body: dict[str, Any] = {}
    if payload is not None:
        body = _json_value("--payload", payload)
        if not isinstance(body, dict):
            raise UsageError("--payload: must be a JSON object")
    body.update(_parse_fields(field or []))
    try:
        event = event_from_fields(
            topic=topic,
            event_id=str(uuid.uuid4()) if event_id is None else event_id,
            timestamp=timestamp or utc_now(),
            source=source,
            payload=body,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    with open_store(db) as store:
        result = store.write_batch([event])
    accepted = result.accepted == 1
    if json_:
        print_json({"accepted": accepted, "topic": event.topic, "event_id": event.event_id})
    else:
        verdict = "accepted" if accepted else "duplicate (already stored)"
        console().print(f"{verdict}: {event.topic} {event.event_id}", markup=False)


@app.command()
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
) -> None:
    """List stored events in the input schema, with their original payloads."""
    from logagg.models import normalize_timestamp
    from logagg.output import choose_format, write_events
    from logagg.store import EventQuery, open_store

    def when(option: str, value: str | None) -> str | None:
        try:
            return normalize_timestamp(value) if value is not None else None
        except ValueError as exc:
            raise UsageError(f"{option}: {exc}") from None

    query = EventQuery(
        topic=topic,
        source=source,
        since=when("--since", since),
        until=when("--until", until),
        limit=None if all_ else limit,
        newest_first=order is Order.desc,
    )
    with open_store(db, create=False) as store:
        write_events(store.events(query), choose_format(fmt, Format.jsonl))


@app.command()
def stats(db: Db = DEFAULT_DB, fmt: FormatOpt = None, json_: JsonOpt = False) -> None:
    """Counters, topics and their counts (reads no events: instant on any size)."""
    from logagg.output import choose_format, write_stats
    from logagg.store import open_store

    with open_store(db, create=False) as store:
        write_stats(store.stats(), Format.json if json_ else choose_format(fmt, Format.json))


@app.command()
def check(db: Db = DEFAULT_DB, json_: JsonOpt = False) -> None:
    """Verify integrity, schema version and that the counters agree with the rows."""
    from logagg.output import write_check
    from logagg.store import open_store

    with open_store(db, create=False) as store:
        result = store.check()
    write_check(result, json_)
    if not result.ok:
        raise typer.Exit(ExitCode.ERROR)


@app.command()
def gen(
    count: Annotated[int, typer.Argument(min=0, help="How many lines to write.")],
    dup_rate: Annotated[
        float, typer.Option(min=0.0, max=0.99, help="Share of lines that re-send an earlier event.")
    ] = 0.2,
    topics: Annotated[int, typer.Option(min=1, help="How many topics.")] = 10,
    seed: Annotated[int, typer.Option(help="The same seed gives the same lines.")] = 42,
) -> None:
    """Write deterministic synthetic events to stdout; the unique count goes to stderr."""
    from logagg.gen import GenStats, generate

    stats = GenStats()
    out = sys.stdout
    batch: list[str] = []
    for line in generate(count, dup_rate=dup_rate, topics=topics, seed=seed, stats=stats):
        batch.append(line)
        if len(batch) >= 10_000:
            out.write("".join(batch))
            batch.clear()
    out.write("".join(batch))
    out.flush()
    sys.stderr.write(f"{stats.unique} unique events in {stats.lines} lines\n")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="PORT", min=1, max=65535, help="TCP port.")] = 8080,
    log_level: Annotated[
        str, typer.Option(envvar="LOG_LEVEL", help="critical, error, warning, info or debug.")
    ] = "info",
    db: Db = DEFAULT_DB,
) -> None:
    """Serve the HTTP API (POST /publish, GET /events, /stats, /health) on the store."""
    try:
        from logagg.serve import run
    except ImportError as exc:
        raise LogaggError(
            f"logagg serve needs the serve extra: pip install 'logagg[serve]' ({exc})"
        ) from None
    run(db=db, host=host, port=port, log_level=log_level.lower())


def main() -> None:
    """Console-script entry point."""
    app()
