"""A throwaway PostgreSQL server for the tests (and the benchmark), started with initdb + pg_ctl.

`pg_server` is a session fixture: one server in a temporary directory, on a free TCP port
of 127.0.0.1 (and a unix socket in the same directory), with password authentication for
TCP. `pg_url` gives a test an empty schema of its own in one database shared by the
session (a URL with `options=-csearch_path%3D<schema>`, as the README's "Scaling out"
shows) and drops it afterwards; `pg_database_url` gives a whole new database, for what is
database-wide (extensions, a database without a store), and drops it afterwards.
`fresh_database(server)` creates a new, empty database and returns its URL.

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
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode

import pytest
from helpers import free_port

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
SHARED_DATABASE = "logagg_tests"  # holds one schema per test
_databases = itertools.count(1)
_schemas = itertools.count(1)


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
    server = PgServer(bindir, root, free_port(), run_as, dict(TEST_SETTINGS | (settings or {})))
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
                server.port = free_port()  # someone took the port meanwhile
    except BaseException:
        server.destroy()
        raise
    raise AssertionError("unreachable")


def admin_execute(server: PgServer, statement: str, database: str = "postgres") -> None:
    """Run one statement as the superuser in `database` (autocommit)."""
    import psycopg

    with psycopg.connect(server.url(database), autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


def fresh_database(server: PgServer, prefix: str = "t") -> str:
    """CREATE a new empty database on `server`; return its URL (with the password)."""
    name = f"{prefix}_{os.getpid()}_{next(_databases)}"
    admin_execute(server, f'CREATE DATABASE "{name}"')
    return server.url(name)


def drop_database(server: PgServer, url: str) -> None:
    """DROP the database a URL of `fresh_database` names, closing its connections."""
    name = url.rsplit("/", 1)[1].partition("?")[0]
    admin_execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def with_options(url: str, option: str) -> str:
    """`url` with a server `option` (`-c name=value`) added to its `options` parameter."""
    head, _, query = url.partition("?")
    params = parse_qsl(query, keep_blank_values=True)
    options = " ".join([*(v for k, v in params if k == "options"), option])
    params = [(k, v) for k, v in params if k != "options"] + [("options", options)]
    return f"{head}?{urlencode(params, quote_via=quote)}"


def schema_url(url: str, schema: str) -> str:
    """`url` with logagg's tables in `schema`: the first schema of the search_path."""
    return with_options(url, f"-csearch_path={schema}")


def schema_of(url: str) -> str:
    """The schema a URL of `fresh_schema` puts logagg's tables in."""
    return url.rpartition("search_path%3D")[2].partition("%20")[0]


def as_user(url: str, user: str, password: str) -> str:
    """`url` (of this server) for another role."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{rest.partition('@')[2]}"


def fresh_schema(server: PgServer, database: str = SHARED_DATABASE, prefix: str = "s") -> str:
    """CREATE a new empty schema in `database`; return a URL that puts logagg's tables in it."""
    name = f"{prefix}_{os.getpid()}_{next(_schemas)}"
    admin_execute(server, f'CREATE SCHEMA "{name}"', database)
    return schema_url(server.url(database), name)


def drop_schema(server: PgServer, url: str) -> None:
    """DROP the schema a URL of `fresh_schema` names, with everything in it.

    A connection a test left open may hold a lock on it: after a short wait, the other
    connections to the database are closed and the drop is tried again.
    """
    import psycopg

    database = url.rsplit("/", 1)[1].partition("?")[0]
    schema = schema_of(url)
    with psycopg.connect(server.url(database), autocommit=True) as conn:
        conn.execute("SET lock_timeout = '5s'")
        try:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')  # type: ignore[arg-type]
        except psycopg.errors.LockNotAvailable:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')  # type: ignore[arg-type]


_running: list[PgServer] = []  # the session's server, shared by every module importing it


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the whole test session, deleted at the end."""
    if _running:
        yield _running[0]
        return
    try:
        server = start_server()
    except RuntimeError as exc:
        pytest.fail(f"cannot start a PostgreSQL server for the tests: {exc}", pytrace=False)
    _running.append(server)
    try:
        yield server
    finally:
        _running.clear()
        server.destroy()


@pytest.fixture(scope="session")
def pg_shared_database(pg_server: PgServer) -> str:
    """The database that holds every test's schema (it goes with the server)."""
    import psycopg

    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [SHARED_DATABASE]
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{SHARED_DATABASE}"')  # type: ignore[arg-type]
    return SHARED_DATABASE


@pytest.fixture
def pg_url(pg_server: PgServer, pg_shared_database: str) -> Iterator[str]:
    """A URL of an empty schema of this test's own in the shared database; dropped after."""
    url = fresh_schema(pg_server, pg_shared_database)
    yield url
    drop_schema(pg_server, url)


@pytest.fixture
def pg_database_url(pg_server: PgServer) -> Iterator[str]:
    """A URL of a whole new database, for what is database-wide; dropped afterwards."""
    url = fresh_database(pg_server)
    yield url
    drop_database(pg_server, url)
