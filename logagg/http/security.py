"""Who may use the API: the token, the Host names served, and requests from web pages.

One ASGI middleware (`Guard`) decides for every route, those of protocols added later too:

- With a token, every route but `/health` needs it: `Authorization: Bearer TOKEN`, or HTTP
  Basic with the token as the password (any user name), for shippers that only speak Basic,
  or an Elasticsearch API key whose key is the token (any id), for shippers configured so.
  Compared in constant time.
- Without a token, only loopback Host names are served (`localhost`, `*.localhost`,
  127.0.0.0/8, `[::1]`): a web page that rebinds its own DNS name to this machine cannot
  read anything. With `insecure` (listening beyond loopback without a token, on purpose),
  IP addresses are served too; names still are not.
- A request that changes something and carries the `Origin` of another site is refused:
  no web page may write (there is no CORS).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from logagg.errors import UsageError

TOKEN_ENV = "LOGAGG_TOKEN"
MIN_TOKEN_LENGTH = 16
OPEN_PATHS = frozenset({"/health"})  # served without the token
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CHALLENGE = 'Bearer realm="logagg", Basic realm="logagg", charset="UTF-8"'


def load_token(token_file: Path | None, environ: dict[str, str] | None = None) -> str | None:
    """The token from `--token-file` or LOGAGG_TOKEN (not both), or None; surrounding
    whitespace is not part of it. Raises UsageError for an unreadable file or a token
    that is empty, too short or not printable ASCII."""
    env = os.environ if environ is None else environ
    from_env = env.get(TOKEN_ENV)
    if token_file is not None and from_env is not None:
        raise UsageError(f"give the token by --token-file or by {TOKEN_ENV}, not both")
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise UsageError(f"--token-file {token_file}: cannot read it: {reason}") from None
        where = f"--token-file {token_file}"
    elif from_env is not None:
        token, where = from_env.strip(), TOKEN_ENV
    else:
        return None
    if len(token) < MIN_TOKEN_LENGTH:
        raise UsageError(
            f"{where}: the token is {len(token)} characters; use at least {MIN_TOKEN_LENGTH}"
            " (for example: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    if not token.isascii() or not token.isprintable() or " " in token:
        raise UsageError(f"{where}: the token must be printable ASCII without spaces")
    return token


def is_loopback(host: str) -> bool:
    """True for a name or address of this machine only: `localhost`, `*.localhost`,
    127.0.0.0/8, ::1 (a bare address, without port or brackets)."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    address = _address(name)
    return address is not None and address.is_loopback


def _address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def host_name(header: str) -> str:
    """The name or address of a Host header, without port or brackets."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    if header.count(":") > 1:
        return header  # an IPv6 address without brackets
    return header.partition(":")[0]


@dataclass(frozen=True, slots=True)
class Access:
    """The access rules of one server."""

    token: str | None = None
    insecure: bool = False

    def host_refusal(self, host: str | None) -> str | None:
        """Why a request with this Host header is not served, or None."""
        if self.token is not None:
            return None
        name = host_name(host or "")
        if is_loopback(name) or (self.insecure and _address(name) is not None):
            return None
        served = "loopback names (localhost, 127.0.0.1, [::1])"
        if self.insecure:
            served += " and IP addresses"
        return (
            f"Host {name or '(none)'!r} is not served: without a token only {served} are"
            " (a protection against DNS rebinding); set a token to serve other names"
        )

    def authorized(self, authorization: str | None) -> bool:
        """True when no token is set or the header carries it: Bearer, the password of Basic,
        or the key of an Elasticsearch ApiKey (base64 of `id:key`, any id)."""
        if self.token is None:
            return True
        if not authorization:
            return False
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer":
            offered = credentials
        elif scheme.lower() in ("basic", "apikey"):
            try:
                decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False
            offered = decoded.partition(":")[2]
        else:
            return False
        return secrets.compare_digest(offered.encode(), self.token.encode())


def same_origin(origin: str, host: str | None) -> bool:
    """True when an Origin header names the Host the request was sent to."""
    if not host:
        return False
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(netloc) and netloc.lower() == host.lower()


class Guard:
    """ASGI middleware applying `access` to every HTTP request before any route runs."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host")
        refusal = self.access.host_refusal(host)
        if refusal is not None:
            response = JSONResponse({"detail": refusal}, status_code=421)
        elif scope["path"] not in OPEN_PATHS and not self.access.authorized(
            headers.get("authorization")
        ):
            detail = (
                "missing or wrong token: send Authorization: Bearer TOKEN"
                " (or HTTP Basic with the token as the password, or ApiKey with it as the key)"
            )
            response = JSONResponse(
                {"detail": detail}, status_code=401, headers={"WWW-Authenticate": CHALLENGE}
            )
        elif (
            scope["method"] not in SAFE_METHODS
            and "origin" in headers
            and not same_origin(headers["origin"], host)
        ):
            detail = (
                f"requests from web pages of other sites are refused (Origin"
                f" {headers['origin'][:100]!r}); logagg serves no CORS"
            )
            response = JSONResponse({"detail": detail}, status_code=403)
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)
