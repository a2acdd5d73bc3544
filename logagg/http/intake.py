"""Reading a request body: the size limit, a client that goes away, compressed bodies.

Every route that takes a body reads it here, so that the limit holds for all of them: the
bytes on the wire, and (for `Content-Encoding: gzip` or `deflate`) the bytes they expand
to, which are never produced beyond the limit.
"""

from __future__ import annotations

import zlib

from fastapi import HTTPException, Request
from starlette.requests import ClientDisconnect

from logagg.http.body import CLOUDEVENTS_TYPES

ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class ClientGone(Exception):
    """The client went away before its whole body arrived."""

    def __init__(self, received: int) -> None:
        super().__init__(f"{received} bytes")
        self.received = received


def too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"the body is over the limit of {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body; raises HTTPException(413) beyond `limit` bytes, without reading on,
    and ClientGone when the client disconnects first."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone(size) from None
    return b"".join(chunks)


def content_encoding(request: Request) -> str | None:
    """The body's compression (`gzip`, `deflate`), None for none; raises HTTPException(415)
    for any other."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding not in ENCODINGS:
        raise HTTPException(
            415, f"Content-Encoding {encoding[:40]!r} is not supported (use gzip or deflate)"
        )
    return encoding


def expand(data: bytes, encoding: str | None, limit: int) -> bytes:
    """`data` decompressed (as `content_encoding` named it), at most `limit` bytes of it:
    HTTPException(413) beyond, (400) for data that is not what its encoding says."""
    if encoding is None:
        return data
    pieces: list[bytes] = []
    size = 0
    while True:  # gzip allows several members one after the other
        decoder = zlib.decompressobj(ENCODINGS[encoding])
        try:
            piece = decoder.decompress(data, limit + 1 - size)
        except zlib.error as exc:
            raise HTTPException(400, f"the body is not valid {encoding} data: {exc}") from None
        size += len(piece)
        if size > limit:
            raise HTTPException(413, f"the body expands to over the limit of {limit} bytes")
        pieces.append(piece)
        if not decoder.eof:
            raise HTTPException(400, f"the {encoding} body is cut off")
        data = decoder.unused_data
        if not data.strip(b"\0"):
            return b"".join(pieces)


async def read_expanded(request: Request, limit: int) -> bytes:
    """The request body, decompressed when it says it is compressed; every limit of
    `read_body` and `expand`."""
    encoding = content_encoding(request)
    return expand(await read_body(request, limit), encoding, limit)


def media_type(request: Request) -> str:
    """The body's media type, lower case, without parameters ('' when there is none)."""
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def client_name(request: Request) -> str:
    """The source of events that name none: the server's `--source`, else the client's
    address."""
    fixed: str | None = getattr(request.app.state, "source", None)
    if fixed is not None:
        return fixed
    client = request.client
    return client.host if client is not None and client.host else "unknown"


def json_media(request: Request) -> bool:
    """True for a CloudEvents body; raises HTTPException(415) unless the body is JSON
    (a web page can send text/plain or a form without asking: those are refused)."""
    media = media_type(request)
    if media in CLOUDEVENTS_TYPES:
        return True
    if media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    ):
        return False
    raise HTTPException(
        415,
        f"the body must be sent as JSON (Content-Type: application/json), not"
        f" {media[:100] or 'without a Content-Type'}",
    )
