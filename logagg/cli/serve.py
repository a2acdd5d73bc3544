"""`logagg serve`: the HTTP face, started from the command line."""

from importlib.util import find_spec
from pathlib import Path
from typing import Annotated

import typer

from logagg.cli.options import DEFAULT_DB, Db, RetainOpt, parse_retain
from logagg.errors import LogaggError


def serve(
    host: Annotated[
        str,
        typer.Option(
            metavar="ADDRESS", help="Address to listen on; beyond loopback a token is required."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="PORT", min=1, max=65535, help="TCP port.")] = 8080,
    log_level: Annotated[
        str,
        typer.Option(
            envvar="LOG_LEVEL", metavar="LEVEL", help="critical, error, warning, info or debug."
        ),
    ] = "info",
    token_file: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="File holding the token every route but /health requires (Authorization:"
            " Bearer TOKEN, or Basic with it as the password); env LOGAGG_TOKEN instead.",
            dir_okay=False,
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="Listen beyond loopback without a token (anyone may read and write)."
        ),
    ] = False,
    db: Db = DEFAULT_DB,
    retain: RetainOpt = None,
    source: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="The source of events that name none (a shipper's documents, OTLP records,"
            " NDJSON lines); default: the client's address.",
        ),
    ] = None,
) -> None:
    """Serve the HTTP API (POST /publish, GET /events, /stats, /health, /metrics) on the store."""
    missing = [
        name for name in ("fastapi", "uvicorn", "prometheus_client") if find_spec(name) is None
    ]
    if missing:
        raise LogaggError(
            f"logagg serve needs the serve extra ({', '.join(missing)} is missing):"
            " install logagg with it (from a checkout: pip install '.[serve]')"
        )
    from logagg.http import run
    from logagg.http.security import load_token

    token = load_token(token_file)
    kept = parse_retain(retain)
    run(
        db=db,
        host=host,
        port=port,
        log_level=log_level.lower(),
        token=token,
        insecure=insecure,
        retain=kept,
        source=source,
    )
