"""`logagg serve`: the HTTP face over the same pipeline and store (FastAPI + uvicorn)."""

from __future__ import annotations

import copy
import logging
import socket
from typing import Any

import uvicorn

from logagg import __version__
from logagg.errors import LogaggError, UsageError
from logagg.http.app import create_app
from logagg.store import open_store

__all__ = ["create_app", "run"]

logger = logging.getLogger("logagg.serve")

GRACEFUL_SHUTDOWN_SECONDS = 10
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging set-up, with logagg's own messages at the same level."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
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


def run(db: str, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info") -> None:
    """Serve the API until SIGINT or SIGTERM; what is queued is committed before it returns.

    Raises UsageError for an unknown log level, StoreError when the store cannot be opened
    and LogaggError when host:port cannot be bound or the server fails to start.
    """
    level = log_level.lower()
    if level not in LOG_LEVELS:
        raise UsageError(f"--log-level {log_level!r}: expected one of {', '.join(LOG_LEVELS)}")
    open_store(db).close()  # a bad store is one line of error before anything listens
    try:
        sock = _listen(host, port)
    except OSError as exc:
        raise LogaggError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        config = uvicorn.Config(
            create_app(db),
            host=host,
            port=port,
            log_level=level,
            log_config=_log_config(level),
            lifespan="on",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
        shown = f"[{host}]" if ":" in host else host
        logger.info(
            "logagg %s serving %s on http://%s:%d (docs: /docs)", __version__, db, shown, port
        )
        server = uvicorn.Server(config)
        try:
            server.run(sockets=[sock])
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise LogaggError("the server failed to start (see the log above)") from None
    finally:
        sock.close()
