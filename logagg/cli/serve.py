"""`logagg serve`: the HTTP face, started from the command line."""

from __future__ import annotations

from importlib.util import find_spec
from typing import Annotated

import typer

from logagg.cli.options import DEFAULT_DB, Db
from logagg.errors import LogaggError


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="PORT", min=1, max=65535, help="TCP port.")] = 8080,
    log_level: Annotated[
        str, typer.Option(envvar="LOG_LEVEL", help="critical, error, warning, info or debug.")
    ] = "info",
    db: Db = DEFAULT_DB,
) -> None:
    """Serve the HTTP API (POST /publish, GET /events, /stats, /health) on the store."""
    missing = [name for name in ("fastapi", "uvicorn") if find_spec(name) is None]
    if missing:
        raise LogaggError(
            f"logagg serve needs the serve extra ({', '.join(missing)} is missing):"
            " pip install 'logagg[serve]'"
        )
    from logagg.http import run

    run(db=db, host=host, port=port, log_level=log_level.lower())
