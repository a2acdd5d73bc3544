"""`logagg serve` for the tests, reached over real HTTP with httpx.

`AppServer` runs `create_app(db, ...)` in a uvicorn server thread of the test process, on
a port of its own: quick to start, and the test can reach the service behind it.
`ServeProcess` runs `python -m logagg serve` as a real process, for what depends on one:
kill -9, signals and exit statuses, settings from the environment, its log.
Both offer `post`, `get` and `stats`, and `restart` on the same store.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from conftest import logagg_cmd
from fastapi import FastAPI
from helpers import free_port, wait_until

from logagg.http import create_app
from logagg.http.service import Service

WAIT = 15.0  # the most a server may take to start or to stop
HTTP_TIMEOUT = 30.0


class _Client:
    """Requests to a running server (with `token`, if set, as a bearer token)."""

    http: httpx.Client | None = None
    token: str | None = None
    url: str

    def _open_http(self) -> None:
        headers = {} if self.token is None else {"authorization": f"Bearer {self.token}"}
        self.http = httpx.Client(base_url=self.url, timeout=HTTP_TIMEOUT, headers=headers)

    def post(self, body: Any, **headers: str) -> httpx.Response:
        """POST /publish with `body` as JSON, or as raw bytes (sent as JSON) when it is bytes."""
        assert self.http is not None
        if isinstance(body, bytes):
            sent = {"content-type": "application/json", **headers}
            return self.http.post("/publish", content=body, headers=sent)
        return self.http.post("/publish", json=body, headers=headers)

    def get(self, path: str, **params: Any) -> httpx.Response:
        assert self.http is not None
        return self.http.get(path, params=params)

    def stats(self) -> dict[str, Any]:
        response = self.get("/stats")
        assert response.status_code == 200, response.text
        doc: dict[str, Any] = response.json()
        return doc

    def _close_http(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None


class AppServer(_Client):
    """The app on store `db` in a uvicorn server thread; `options` go to create_app."""

    def __init__(self, db: Path | str, **options: Any) -> None:
        self.db = db
        self.options = options
        self.token = options.get("token")
        self.app: FastAPI | None = None
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def service(self) -> Service:
        assert self.app is not None
        service: Service = self.app.state.service
        return service

    def start(self) -> AppServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))  # bound before the server starts: no race for the port
        self.port = sock.getsockname()[1]
        self.app = create_app(str(self.db), **self.options)
        config = uvicorn.Config(self.app, log_level="warning", log_config=None, lifespan="on")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._server, self._thread = server, thread
        thread.start()
        wait_until(lambda: server.started or not thread.is_alive(), WAIT, "the server to start")
        assert server.started, "the server thread ended before it started"
        self._open_http()
        return self

    def stop(self) -> None:
        """Shut down as on SIGTERM: what is queued is committed and the store closed."""
        self._close_http()
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the server thread did not stop"
        self._server = self._thread = None

    def restart(self) -> AppServer:
        """Stop, then serve the same store again with a new app (on a new port)."""
        self.stop()
        return self.start()


class ServeProcess(_Client):
    """A `logagg serve` process on one store; `restart` keeps the store and the port.

    `by_env`: the store, port and log level come from LOGAGG_DB, PORT and LOG_LEVEL
    instead of options. `args` are further options, `env` further environment variables;
    `token` is sent as a bearer token. Its stdout and stderr go to `log`.
    """

    def __init__(
        self,
        db: Path | str,
        log: Path,
        log_level: str = "warning",
        by_env: bool = False,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        token: str | None = None,
    ) -> None:
        self.db = db
        self.log = log
        self.log_level = log_level
        self.by_env = by_env
        self.args = args
        self.env = env or {}
        self.token = token
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServeProcess:
        for _ in range(3):  # another process may take the free port before the server does
            settings = {
                "LOGAGG_DB": str(self.db),
                "PORT": str(self.port),
                "LOG_LEVEL": self.log_level,
            }
            args = ["--db", self.db, "--port", str(self.port), "--log-level", self.log_level]
            environ = {**os.environ, **(settings if self.by_env else {}), **self.env}
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen(
                    logagg_cmd("serve", *([] if self.by_env else args), *self.args),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=environ,
                )
            if self._ready():
                self._open_http()
                return self
            self.port = free_port()
        raise AssertionError(f"the server did not start:\n{self.log.read_text()}")

    def _ready(self) -> bool:
        """True once /health answers 200; False if the process ended first."""
        proc = self.proc
        assert proc is not None

        def health() -> bool:
            if proc.poll() is not None:
                return True
            try:
                return httpx.get(self.url + "/health", timeout=1.0).status_code == 200
            except httpx.TransportError:
                return False

        try:
            wait_until(health, WAIT, f"/health of the server (its log: {self.log})")
        except BaseException:
            self.kill()
            raise
        return proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, nothing more committed."""
        self._close_http()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(WAIT)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send `signum` (SIGTERM: commit what is queued and exit); return the exit status."""
        assert self.proc is not None
        self._close_http()
        self.proc.send_signal(signum)
        return self.proc.wait(WAIT)

    def restart(self) -> ServeProcess:
        return self.start()
