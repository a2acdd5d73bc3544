"""`logagg serve` is safe to expose: a token, loopback-only Host names without one, no
writes from web pages, nothing secret in a response or a log line.

Real `logagg serve` processes where the behaviour depends on one (options, environment,
the address it listens on, its log); in-process servers for the rules on each request.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from conftest import event, run_logagg  # noqa: E402
from helpers import free_port, one_line_error, wait_until  # noqa: E402
from serving import WAIT, AppServer, ServeProcess  # noqa: E402

TOKEN = "t0ken-0123456789-abcdef"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def open_server(db: Path) -> Iterator[AppServer]:
    """A server without a token (loopback only)."""
    server = AppServer(db).start()
    yield server
    server.stop()


@pytest.fixture
def token_server(db: Path) -> Iterator[AppServer]:
    server = AppServer(db, token=TOKEN).start()
    yield server
    server.stop()


def test_a_token_guards_every_route_but_health(token_server: AppServer) -> None:
    url = token_server.url
    for method, path in (
        ("GET", "/"),
        ("POST", "/publish"),
        ("GET", "/events"),
        ("GET", "/stats"),
        ("GET", "/metrics"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("GET", "/no-such-route"),
    ):
        for auth in (None, "Bearer wrong-token-0123456789", basic("u", "nope"), "Token " + TOKEN):
            headers = {} if auth is None else {"authorization": auth}
            response = httpx.request(method, url + path, headers=headers, json=event(1))
            assert response.status_code == 401, (method, path, auth)
            assert "Bearer" in response.headers["www-authenticate"]
            assert "token" in response.json()["detail"]
    assert httpx.get(url + "/health").status_code == 200  # open: for probes

    bearer = httpx.post(
        url + "/publish", json=event(1), headers={"authorization": f"Bearer {TOKEN}"}
    )
    assert bearer.status_code == 200
    shipper = httpx.post(
        url + "/publish", json=event(2), headers={"authorization": basic("x", TOKEN)}
    )
    assert shipper.status_code == 200
    assert token_server.stats()["unique_processed"] == 2


def test_without_a_token_only_loopback_host_names_are_served(
    open_server: AppServer, token_server: AppServer
) -> None:
    for host in (
        "localhost",
        "127.0.0.1",
        f"127.0.0.1:{open_server.port}",
        "[::1]:80",
        "a.localhost",
    ):
        response = httpx.get(open_server.url + "/stats", headers={"host": host})
        assert response.status_code == 200, host
    for host in ("evil.example", "evil.example:80", "10.0.0.5", "localhost.evil.example"):
        response = httpx.get(open_server.url + "/events", headers={"host": host})
        assert response.status_code == 421, host
        assert "not served" in response.json()["detail"]
        posted = httpx.post(open_server.url + "/publish", json=event(1), headers={"host": host})
        assert posted.status_code == 421
    assert open_server.stats()["received"] == 0
    # with a token, any name is served to whoever holds it
    served = httpx.get(
        token_server.url + "/stats",
        headers={"host": "logs.example", "authorization": f"Bearer {TOKEN}"},
    )
    assert served.status_code == 200


def test_web_pages_cannot_write(open_server: AppServer) -> None:
    """A page may send text/plain or a form to any address without asking first: refused.
    An Origin of another site is refused whatever the body; no CORS is offered."""
    url = open_server.url + "/publish"
    body = (
        b'{"topic": "t", "event_id": "forged", "timestamp": "2025-01-01T00:00:00Z", "source": "x"}'
    )
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        response = httpx.post(url, content=body, headers={"content-type": content_type})
        assert response.status_code == 415, content_type
        assert "application/json" in response.json()["detail"]
    assert httpx.post(url, content=body).status_code == 415  # no Content-Type at all
    foreign = {"origin": "https://evil.example", "content-type": "text/plain"}
    assert httpx.post(url, content=body, headers=foreign).status_code == 403
    foreign["content-type"] = "application/json"
    refused = httpx.post(url, content=body, headers=foreign)
    assert refused.status_code == 403
    assert "Origin" in refused.json()["detail"]
    preflight = httpx.options(
        url,
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers
    assert open_server.stats()["received"] == 0
    same = {"origin": open_server.url, "content-type": "application/json"}
    assert httpx.post(url, content=body, headers=same).status_code == 200


# --- real processes --------------------------------------------------------------------


def test_listening_beyond_loopback_needs_a_token_or_insecure(db: Path, tmp_path: Path) -> None:
    port = str(free_port())
    refused = run_logagg("serve", "--db", db, "--host", "0.0.0.0", "--port", port)
    assert refused.returncode == 2
    line = one_line_error(refused.stderr)
    assert "no token is set" in line and "--insecure" in line
    assert not db.exists()

    short = tmp_path / "short"
    short.write_text("abc\n")
    for args, env, words in (
        (("--token-file", str(short)), {}, "at least 16"),
        (("--token-file", str(tmp_path / "missing")), {}, "cannot read"),
        (("--token-file", str(short)), {"LOGAGG_TOKEN": TOKEN}, "not both"),
    ):
        proc = run_logagg("serve", "--db", db, "--port", port, *args, env=env)
        assert proc.returncode == 2, proc.stderr
        assert words in one_line_error(proc.stderr)

    log = tmp_path / "insecure.log"
    server = ServeProcess(db, log, log_level="info", args=("--host", "0.0.0.0", "--insecure"))
    try:
        server.start()
        assert server.post(event(1)).status_code == 200  # Host 127.0.0.1: an address
        wait_until(lambda: "--insecure" in log.read_text(), WAIT, "the warning in the log")
        warning = [line for line in log.read_text().splitlines() if "--insecure" in line]
        assert len(warning) == 1 and "WARNING" in warning[0] and "without a token" in warning[0]
        named = httpx.get(server.url + "/stats", headers={"host": "myhost.example"})
        assert named.status_code == 421
    finally:
        server.kill()


@pytest.mark.parametrize("how", ["token-file", "env"])
def test_a_token_from_a_file_or_the_environment(db: Path, tmp_path: Path, how: str) -> None:
    """A real process beyond loopback with a token; its log names neither the token nor the
    absolute path of the store."""
    log = tmp_path / "serve.log"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    args: tuple[str, ...] = ("--host", "0.0.0.0")
    env: dict[str, str] = {}
    if how == "env":
        env["LOGAGG_TOKEN"] = TOKEN
    else:
        args += ("--token-file", str(token_file))
    server = ServeProcess(db, log, log_level="info", args=args, env=env, token=TOKEN)
    try:
        server.start()
        assert server.post(event(1)).status_code == 200
        assert httpx.get(server.url + "/stats").status_code == 401
        assert httpx.get(server.url + "/health").json()["status"] == "healthy"
    finally:
        server.kill()
    text = log.read_text()
    assert "token required" in text
    assert TOKEN not in text
    assert str(db) not in text and str(db.parent) not in text
    assert "serving store.db" in text


def test_a_client_that_leaves_mid_body_is_one_line(db: Path, tmp_path: Path) -> None:
    """A real process at info level: the client sends half a body and closes."""
    log = tmp_path / "serve.log"
    server = ServeProcess(db, log, log_level="info")
    try:
        server.start()
        half = b'[{"topic": "t", "event_id": "e1"'
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
            sock.sendall(
                b"POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + half
            )
        wait_until(lambda: "went away" in log.read_text(), WAIT, "the line about the client")
        assert server.post(event(1)).status_code == 200  # the server serves on
        text = log.read_text()
        lines = [line for line in text.splitlines() if "went away" in line]
        assert len(lines) == 1
        assert "POST /publish" in lines[0] and f"after {len(half)} bytes" in lines[0]
        assert "Traceback" not in text and "internal error" not in text
    finally:
        server.kill()
