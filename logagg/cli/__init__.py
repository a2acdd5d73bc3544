"""The `logagg` command line: the Typer app and the one place errors become exit codes.

Each command group lives in its own module; the core is imported inside the commands so
that `logagg --help` starts quickly.
"""

import contextlib
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from logagg import __version__
from logagg.cli import gen, ingest, maintenance, publish, read, serve, subscribe, usage
from logagg.cli.output import guard_streams, printable
from logagg.errors import ExitCode, LogaggError, exit_code_for


class _App(TyperGroup):
    """Runs a command and turns whatever ended it into a message and an exit status."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        usage.enable_completion()
        try:
            code = super().main(
                args=args,
                prog_name=prog_name or "logagg",
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
            code = code if isinstance(code, int) else ExitCode.OK
        except BaseException as exc:
            code = _outcome(exc)
        code = _flush_stdout(code)
        if standalone_mode:
            sys.exit(code)
        return code


def _flush_stdout(code: int) -> int:
    """Write out what stdout still holds, inside the boundary: a full disk is reported
    here, not by the interpreter on its way out. The command's own failure comes first."""
    try:
        sys.stdout.flush()
    except (LogaggError, OSError) as exc:
        late = _outcome(exc)
        return code or late
    return code


def _outcome(exc: BaseException) -> int:
    """Report what ended a command in one line on stderr; return its exit status."""
    if isinstance(exc, typer.Exit):
        return exc.exit_code
    if isinstance(exc, typer.TyperException):  # the parser's usage errors
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        _fail(usage.plain_words(exc.format_message()) + hint)
        return ExitCode.USAGE
    if isinstance(exc, typer.Abort):
        return ExitCode.INTERRUPTED
    if isinstance(exc, LogaggError):
        if str(exc):
            _fail(str(exc))
        return exit_code_for(exc)
    if isinstance(exc, OSError):  # I/O that no command turned into a message of its own
        name = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{name}{exc.strerror or exc}")
        return ExitCode.ERROR
    raise exc


def _fail(message: str) -> None:
    """One line on stderr; data in it (file names, values) is shown as text."""
    with contextlib.suppress(OSError):
        sys.stderr.write(f"logagg: error: {printable(message)}\n")
        sys.stderr.flush()


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"logagg {__version__}\n")
        raise typer.Exit()


app = typer.Typer(
    cls=_App,
    name="logagg",
    help="Keep every event of an at-least-once stream exactly once, in a local SQLite file.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Keep every event of an at-least-once stream exactly once, in a local SQLite file."""
    if ctx.invoked_subcommand is None:  # `logagg` alone: an overview, not an error
        sys.stdout.write(usage.overview())


for _command in (
    ingest.ingest,
    publish.publish,
    read.events,
    read.stats,
    read.check,
    gen.gen,
    serve.serve,
    subscribe.cursors,
    maintenance.prune,
    maintenance.vacuum,
    maintenance.backup,
    maintenance.conflicts,
    usage.completion,
):
    _name = _command.__name__
    app.command(_name, cls=usage.Command, short_help=usage.SUMMARIES[_name])(_command)


def main() -> None:
    """Console-script entry point: the standard streams made safe, then the command."""
    guard_streams()
    app()
