"""A throwaway PostgreSQL server for the tests (and the benchmark), started with initdb + pg_ctl.

`pg_server` is a session fixture: one server in a temporary directory, on a free TCP port
of 127.0.0.1 (and a unix socket in the same directory), with password authentication for
TCP. `fresh_database(server)` creates a new, empty database and returns its URL.

initdb refuses to run as root: under root, the server runs as the `postgres` user (or
`nobody`), which owns the temporary directory. Missing server binaries fail the session
with a message saying what to install; nothing is skipped.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

USER = "logagg"
PASSWORD = "s3cret-Pa55word"  # tests check that this never appears in any output
MISSING = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or in "
    "/usr/lib/postgresql/*/bin: install the distribution's postgresql package "
    "(`make test` does this when pg_ctl is missing)"
)
# Settings for a disposable server: no fsync (a killed client loses nothing the server
# committed; only an OS crash would), quick checkpoints off, enough connections.
TEST_SETTINGS = {
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "60",
    "max_wal_size": "1GB",
}
_databases = itertools.count(1)


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres (newest version first)."""
    found = shutil.which("pg_ctl")
    candidates = [Path(found).resolve().parent] if found else []
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates += [Path(p) for p in reversed(versions)]
    for directory in candidates:
        if all((directory / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> str | None:
    """The unprivileged account to run the server as when we are root, else None."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' account exists")


@dataclass
class PgServer:
    """A running server: its directory, port and the superuser's credentials."""

    bindir: Path
    root: Path
    port: int
    run_as: str | None
    settings: dict[str, str] = field(default_factory=dict)
    user: str = USER
    password: str = PASSWORD

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        """A `postgresql://` URL for `database` over TCP (the given or the real password)."""
        secret = quote(self.password if password is None else password, safe="")
        return f"postgresql://{self.user}:{secret}@127.0.0.1:{self.port}/{database}"

    def _argv(self, command: tuple[str | Path, ...]) -> list[str]:
        """The command line, run as the server's account when we are root."""
        argv = [str(c) for c in command]
        if self.run_as is None:
            return argv
        if shutil.which("runuser"):
            return ["runuser", "-u", self.run_as, "--", *argv]
        return ["su", "-s", "/bin/sh", self.run_as, "-c", shlex.join(argv)]

    def _run(self, *command: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = self._argv(command)
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, cwd=self.root, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}"
                f"{self._log_tail()}"
            )
        return proc

    def _log_tail(self) -> str:
        try:
            lines = self.logfile.read_text(errors="replace").splitlines()[-8:]
        except OSError:
            return ""
        return "\nserver log:\n" + "\n".join(lines) if lines else ""

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = [
            f"-p {self.port}",
            f"-k {self.root}",
            "-c listen_addresses=127.0.0.1",
            *(f"-c {k}={v}" for k, v in self.settings.items()),
        ]
        self._run(
            self.bindir / "pg_ctl",
            "start",
            "-D",
            self.datadir,
            "-l",
            self.logfile,
            "-w",
            "-t",
            "60",
            "-o",
            " ".join(options),
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: roll back open transactions and shut down cleanly)."""
        self._run(self.bindir / "pg_ctl", "stop", "-D", self.datadir, "-m", mode, "-w")

    def running(self) -> bool:
        argv = self._argv((self.bindir / "pg_ctl", "status", "-D", self.datadir))
        return subprocess.run(argv, capture_output=True, cwd=self.root).returncode == 0

    def destroy(self) -> None:
        """Stop the server at once and delete its directory."""
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_server(settings: dict[str, str] | None = None, attempts: int = 3) -> PgServer:
    """initdb a new cluster in a temporary directory and start it on a free port.

    Raises RuntimeError (with the reason) when the binaries are missing or it cannot start.
    """
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError(MISSING)
    run_as = _server_user()
    root = Path(tempfile.mkdtemp(prefix="logagg-pg-"))
    server = PgServer(bindir, root, _free_port(), run_as, dict(TEST_SETTINGS | (settings or {})))
    try:
        pwfile = root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if run_as is not None:
            account = pwd.getpwnam(run_as)
            for path in (root, pwfile):
                os.chown(path, account.pw_uid, account.pw_gid)
        root.chmod(0o700)
        server._run(
            bindir / "initdb",
            "-D",
            server.datadir,
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        pwfile.unlink()
        for attempt in range(attempts):
            try:
                server.start()
                return server
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                server.port = _free_port()  # someone took the port meanwhile
                time.sleep(0.2)
    except BaseException:
        server.destroy()
        raise
    raise AssertionError("unreachable")


def admin_execute(server: PgServer, statement: str) -> None:
    """Run one statement as the superuser in the `postgres` database (autocommit)."""
    import psycopg

    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


def fresh_database(server: PgServer, prefix: str = "t") -> str:
    """CREATE a new empty database on `server`; return its URL (with the password)."""
    name = f"{prefix}_{os.getpid()}_{next(_databases)}"
    admin_execute(server, f'CREATE DATABASE "{name}"')
    return server.url(name)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the whole test session, deleted at the end."""
    try:
        server = start_server()
    except RuntimeError as exc:
        pytest.fail(f"cannot start a PostgreSQL server for the tests: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.destroy()
