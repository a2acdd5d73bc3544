"""`logagg serve`: the HTTP face over the same pipeline and store (FastAPI + uvicorn)."""

from __future__ import annotations

import copy
import logging
import socket
from dataclasses import replace
from typing import Any

import uvicorn

from logagg import __version__
from logagg.errors import LogaggError, UsageError
from logagg.http.app import create_app
from logagg.http.security import is_loopback
from logagg.http.service import SERVE_OPTIONS, store_label
from logagg.http.subscribe import end_streams_on_exit
from logagg.models import MAX_NAME
from logagg.pipeline import IngestOptions
from logagg.store import open_store

__all__ = ["create_app", "run"]

logger = logging.getLogger("logagg.serve")

GRACEFUL_SHUTDOWN_SECONDS = 10
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging set-up, with logagg's own messages at the same level; every log
    line goes to stderr (stdout is for data)."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    for handler in config["handlers"].values():
        handler["stream"] = "ext://sys.stderr"
    config["loggers"]["logagg"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (not yet listening); raises OSError."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _options(retain: float | None) -> IngestOptions:
    """The writer's options: the server's, with a retention when one is given."""
    return SERVE_OPTIONS if retain is None else replace(SERVE_OPTIONS, retain=retain)


def run(
    db: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    log_level: str = "info",
    *,
    token: str | None = None,
    insecure: bool = False,
    retain: float | None = None,
    source: str | None = None,
) -> None:
    """Serve the API until SIGINT or SIGTERM; what is queued is committed before it returns.
    `retain`: seconds after which the writer prunes events (see Store.configure); `source`:
    of events that name none, instead of the client's address.

    Listening beyond loopback needs a `token` (or `insecure`). Raises UsageError for an
    unknown log level or a non-loopback address without a token, StoreError when the store
    cannot be opened and LogaggError when host:port cannot be bound or the server fails to
    start.
    """
    level = log_level.lower()
    if level not in LOG_LEVELS:
        raise UsageError(f"--log-level {log_level!r}: expected one of {', '.join(LOG_LEVELS)}")
    if source is not None and not 1 <= len(source) <= MAX_NAME:
        raise UsageError(f"--source: expected 1 to {MAX_NAME} characters, got {len(source)}")
    try:
        sock = _listen(host, port)
    except OSError as exc:
        raise LogaggError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        address = sock.getsockname()[0]
        beyond = not is_loopback(address)
        if beyond and token is None and not insecure:
            raise UsageError(
                f"--host {host} listens beyond this machine and no token is set: anyone who"
                " reaches it could read and write the store. Set a token (--token-file PATH"
                " or LOGAGG_TOKEN), or give --insecure to serve without one"
            )
        open_store(db).close()  # a bad store is one line of error before anything listens
        config = uvicorn.Config(
            create_app(db, _options(retain), token=token, insecure=insecure, source=source),
            host=host,
            port=port,
            log_level=level,
            log_config=_log_config(level),
            lifespan="on",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
        shown = f"[{host}]" if ":" in host else host
        logger.info(
            "logagg %s serving %s on http://%s:%d (docs: /docs; %s)",
            __version__,
            store_label(db),
            shown,
            port,
            "token required on every route but /health" if token else "no token",
        )
        if beyond and token is None:
            logger.warning(
                "--insecure: listening on %s without a token: anyone who can reach this address"
                " can read and write the store (IP addresses are served as Host, names are not)",
                shown,
            )
        server = uvicorn.Server(config)
        end_streams_on_exit(server)
        try:
            server.run(sockets=[sock])
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise LogaggError("the server failed to start (see the log above)") from None
    finally:
        sock.close()
