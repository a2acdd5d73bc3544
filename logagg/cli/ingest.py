"""`logagg ingest`: files and stdin into the store, with the report and exit status."""

import contextlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from logagg.cli.options import (
    DEFAULT_DB,
    Db,
    Emit,
    OnConflict,
    OnConflictOpt,
    RetainOpt,
    parse_retain,
)
from logagg.cli.output import printable
from logagg.cli.paths import Reads, RejectsFile, check_outputs, open_rejects
from logagg.cli.signals import stop_on_signals
from logagg.errors import (
    EmitClosed,
    InputErrors,
    Interrupted,
    LogaggError,
    OutputClosed,
    OutputError,
    Rejected,
    UsageError,
)

if TYPE_CHECKING:
    from logagg.mapping import Mapping


def ingest(
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="PATH...",
            help="JSON-lines files, plain or compressed (gzip, zstd); '-' or none reads stdin.",
            show_default=False,
        ),
    ] = None,
    db: Db = DEFAULT_DB,
    batch_size: Annotated[
        int, typer.Option(min=1, metavar="N", help="Most events per transaction.")
    ] = 50_000,
    flush_interval: Annotated[
        float,
        typer.Option(
            min=0.001,
            metavar="SECONDS",
            help="Most seconds an event waits before its transaction commits.",
        ),
    ] = 0.2,
    queue_size: Annotated[
        int,
        typer.Option(
            min=1,
            metavar="N",
            help="Batches that may wait between reader and writer (the memory bound).",
        ),
    ] = 12,
    max_line_bytes: Annotated[
        int,
        typer.Option(
            min=64,
            metavar="BYTES",
            help="Longer lines are rejected without being read into memory.",
        ),
    ] = 1 << 20,
    rejects: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="Write rejected lines here as JSON lines: file, line, error, raw.",
            dir_okay=False,
        ),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 3 if any line was rejected.")
    ] = False,
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
    rotate_wait: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            min=0,
            help="With --follow: a rotated file is read until it has been quiet this long.",
        ),
    ] = 5.0,
    emit: Annotated[
        Emit | None,
        typer.Option(
            help="Write each committed new (or dropped duplicate) event to stdout as JSON "
            "lines, in input order; at most once (a crash between a commit and its write "
            "loses those lines): `events --follow --cursor` is the durable way.",
        ),
    ] = None,
    retain: RetainOpt = None,
    on_conflict: OnConflictOpt = OnConflict.keep_first,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Read a known log format: cloudevents, docker, pino, bunyan, structlog, "
            "journald, gelf or otlp.",
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
            "--id-from-content",
            help="Lines without an id get a stable hash of their content as event_id.",
            rich_help_panel="Your logs",
        ),
    ] = False,
    time_unit: Annotated[
        str | None,
        typer.Option(
            metavar="s|ms|us|ns",
            help="Unit of epoch-number timestamps [default: told by magnitude, and refused"
            " when that gives a time before 1980 or after 2099].",
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
    assume_tz: Annotated[
        str,
        typer.Option(
            metavar="ZONE",
            help="The zone of timestamps without an offset: an IANA name (Europe/Berlin), UTC,"
            " or local.",
            rich_help_panel="Your logs",
        ),
    ] = "UTC",
) -> None:
    """Read JSON-lines events into the store, dropping duplicates by (topic, event_id)."""
    from logagg.cli.render import Emitter, RejectPrinter, file_progress, print_json, write_report
    from logagg.pipeline import IngestOptions
    from logagg.pipeline import ingest as run_ingest
    from logagg.sources import Source
    from logagg.store import open_store
    from logagg.timestamps import zone_named

    sources = [Source(p) for p in (paths or ["-"])]
    if sum(s.is_stdin for s in sources) > 1:
        raise UsageError("stdin ('-') can be read only once")
    if emit is not None and json_:
        raise UsageError("--emit writes events to stdout: use it without --json")
    if follow and any(s.is_stdin for s in sources):
        raise UsageError("--follow reads files: name them (stdin is followed anyway)")
    mapping = _mapping(preset, map_, payload_field, topic, source, id_from_content, time_unit, key)
    try:
        zone_named(assume_tz)
    except ValueError as exc:
        raise UsageError(f"--assume-tz: {exc}") from None
    options = IngestOptions(
        keep_last=on_conflict is OnConflict.keep_last,
        retain=parse_retain(retain),
        batch_size=batch_size,
        flush_interval=flush_interval,
        queue_size=queue_size,
        max_line_bytes=max_line_bytes,
        mapping=mapping,
        follow=follow,
        rotate_wait=rotate_wait,
        assume_tz=assume_tz,
    )
    show_progress = (
        not quiet and not follow and sys.stderr.isatty() and not all(s.is_stdin for s in sources)
    )
    # Nothing is opened for writing before the outputs are known not to be the inputs.
    reads = Reads(
        db, tuple(s.path for s in sources if not s.is_stdin), any(s.is_stdin for s in sources)
    )
    check_outputs(
        reads,
        rejects=None if rejects is None else str(rejects),
        writes_stdout=emit is not None or json_,
    )
    if not quiet and any(s.is_stdin for s in sources) and sys.stdin.isatty():
        sys.stderr.write("logagg: reading events from stdin (Ctrl-D to end)\n")
        sys.stderr.flush()
    stop = threading.Event()
    emitter = Emitter(emit, on_failure=stop.set) if emit is not None else None
    with _rejects_file(rejects, reads, stop) as sink:
        printer = RejectPrinter(show=10, quiet=quiet, sink=sink)
        with (
            open_store(db) as store,
            stop_on_signals(stop) as caught,
            file_progress(show_progress) as progress,
        ):
            store.on_notice = _warn
            report = run_ingest(
                store,
                sources,
                options,
                stop=stop,
                on_reject=printer,
                on_progress=progress,
                on_commit=emitter,
                on_notice=_notice,
            )
    printer.finish()
    for message in report.source_errors:
        sys.stderr.write(f"logagg: error: {printable(message)}\n")
    faults: list[LogaggError] = []
    for output in (sink, emitter):
        if output is not None and output.failure is not None:
            faults.append(output.failure)
    try:
        if json_:
            print_json(report.to_dict())
        elif not quiet:
            write_report(report)
    except OutputError as exc:
        faults.append(exc)
    except OutputClosed:
        pass  # the reader of the --json report has gone: it took what it wanted
    _finish(faults, caught, report.source_errors, strict and report.invalid > 0)


def _finish(
    faults: list[LogaggError], caught: list[int], input_errors: list[str], rejected: bool
) -> None:
    """The exit status of an ingest whose report is printed: a signal's (130 / 143); 1 for
    an output that could not be written or an input that could not be read; 141 when
    --emit's stdout was closed before every event was written; 3 under --strict."""
    errors = [f for f in faults if not isinstance(f, OutputClosed)]
    for fault in errors[1:]:
        sys.stderr.write(f"logagg: error: {printable(str(fault))}\n")
    if caught:
        if errors:
            sys.stderr.write(f"logagg: error: {printable(str(errors[0]))}\n")
        raise Interrupted(caught[0])
    if errors:
        raise errors[0]
    if input_errors:
        raise InputErrors("")
    if faults:
        raise EmitClosed("")
    if rejected:
        raise Rejected("")


@contextlib.contextmanager
def _rejects_file(
    path: Path | None, reads: Reads, stop: threading.Event
) -> Iterator[RejectsFile | None]:
    """The `--rejects` file, replaced (see logagg.cli.paths); created like the store, never
    world-writable. A write error on it stops the reading; it is reported at the end."""
    if path is None:
        yield None
        return
    sink = open_rejects(str(path), reads, on_failure=stop.set)
    try:
        yield sink
    finally:
        sink.close()


def _warn(message: str) -> None:
    """A warning from the store (a WAL that a reader keeps growing), once, as it happens."""
    sys.stderr.write(f"logagg: warning: {printable(message)}\n")
    sys.stderr.flush()


def _notice(message: str, problem: bool) -> None:
    """A followed file that cannot be read (or can be again), as it happens."""
    sys.stderr.write(f"logagg: {'error: ' if problem else ''}{printable(message)}\n")
    sys.stderr.flush()


def _mapping(
    preset: str | None,
    maps: list[str] | None,
    payload_field: str | None,
    topic: str | None,
    source: str | None,
    id_from_content: bool,
    time_unit: str | None,
    key: str | None,
) -> "Mapping | None":
    """The Mapping the "Your logs" options ask for, or None for logagg's own schema."""
    if not (
        preset or maps or payload_field or topic or source or id_from_content or time_unit or key
    ):
        return None
    from logagg.mapping import Mapping, get_preset

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


def parse_map_options(pairs: list[str]) -> dict[str, str]:
    """`["topic=type", "source=repo.name"]` -> `{"topic": "type", "source": "repo.name"}`.

    Raises ValueError with a one-line message for a pair without `=`, an unknown target,
    a target given twice or an invalid path.
    """
    from logagg.mapping import TARGETS, parse_path

    fields: dict[str, str] = {}
    for pair in pairs:
        target, sep, path = pair.partition("=")
        target, path = target.strip(), path.strip()
        if not sep or not target or not path:
            raise ValueError(f"invalid --map {pair!r}: use TARGET=PATH, e.g. topic=type")
        if target not in TARGETS:
            hint = "; use --payload-field for the payload" if target == "payload" else ""
            raise ValueError(
                f"unknown --map target {target!r} (targets: {', '.join(TARGETS)}){hint}"
            )
        if target in fields:
            raise ValueError(f"--map {target} is given twice")
        parse_path(path)
        fields[target] = path
    return fields


def parse_key(text: str) -> tuple[str, str]:
    """`"source,id"` -> `("source", "id")`; ValueError for anything but the known keys."""
    from logagg.mapping import KEYS

    key = tuple(part.strip() for part in text.split(","))
    if key not in KEYS:
        raise ValueError(f"invalid --key {text!r} (use topic,event_id or source,id)")
    return key[0], key[1]
