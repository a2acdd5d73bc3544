"""CloudEvents over HTTP: binary mode, and `POST /cloudevents`.

In binary mode (a `ce-specversion` header) the attributes are `ce-*` headers
(percent-encoded, as the HTTP binding says), `Content-Type` is `datacontenttype` and the
body is `data`; the event is then read as `ingest` reads a structured one (the CloudEvents
mapping of logagg.mapping). Structured (`application/cloudevents+json`) and batched
(`application/cloudevents-batch+json`) bodies are read by logagg.http.body.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from logagg.http.body import Parsed, parse_body, validate_events
from logagg.http.intake import media_type, read_expanded
from logagg.http.service import Service
from logagg.http.storing import publish_answer
from logagg.models import parse_json

PATH = "/cloudevents"
PREFIX = "ce-"
SPECVERSION = "ce-specversion"


def is_binary(headers: Iterable[str]) -> bool:
    """True for a CloudEvent in binary mode: it has a `ce-specversion` header."""
    return SPECVERSION in headers


def _is_json(media: str) -> bool:
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _is_text(media: str) -> bool:
    return media.startswith("text/") or media in ("application/xml", "application/x-ndjson")


def from_binary(headers: Iterable[tuple[str, str]], body: bytes) -> dict[str, Any]:
    """The structured form of a binary-mode CloudEvent: its `ce-*` headers (names lower
    case, values percent-decoded), `datacontenttype` from `Content-Type`, and `data`: the
    decoded JSON for a JSON media type (a body that is not JSON: ValueError), the text for
    a text type, else `data_base64`. No body: no data."""
    event: dict[str, Any] = {}
    content_type = None
    for name, value in headers:
        name = name.lower()
        if name.startswith(PREFIX) and len(name) > len(PREFIX):
            event[name[len(PREFIX) :]] = unquote(value)
        elif name == "content-type":
            content_type = value.strip()
    if content_type:
        event["datacontenttype"] = content_type
    if not body:
        return event
    media = (content_type or "").partition(";")[0].strip().lower()
    if _is_json(media) or not media:
        try:
            event["data"] = parse_json(body)
            return event
        except ValueError as exc:
            if media:
                raise ValueError(f"data: {exc} (the body is sent as {media})") from None
    if _is_text(media):
        try:
            event["data"] = body.decode("utf-8")
            return event
        except UnicodeDecodeError:
            pass
    event["data_base64"] = base64.b64encode(body).decode("ascii")
    return event


def read_binary(headers: Iterable[tuple[str, str]], body: bytes) -> Parsed:
    """A binary-mode CloudEvent as one event of a publish body."""
    try:
        events: list[Any] = [from_binary(headers, body)]
    except ValueError as exc:
        events = [exc]
    rows, errors = validate_events(events, cloudevents=True)
    return Parsed(rows, errors, single=True)


def register(app: FastAPI, service: Service, max_body_bytes: int) -> None:
    """Add `POST /cloudevents` to `app`."""

    @app.post(
        PATH,
        summary="CloudEvents (binary, structured or batched mode)",
        responses={
            413: {"description": "The body is too large."},
            415: {"description": "Neither binary mode nor a JSON body."},
            422: {"description": "Nothing stored and something invalid."},
            503: {"description": "Not stored now: retry after Retry-After seconds."},
        },
    )
    async def cloudevents(request: Request) -> JSONResponse:
        """Store CloudEvents: one in binary mode (`ce-*` headers, the body is `data`), one
        structured (`application/cloudevents+json`, or `application/json`) or a batch (an
        array, `application/cloudevents-batch+json`). Answered as `POST /publish` is, once
        the events are committed."""
        if is_binary(request.headers.keys()):
            body = await read_expanded(request, max_body_bytes)
            return await publish_answer(service, read_binary(request.headers.items(), body))
        media = media_type(request)
        if not _is_json(media):
            raise HTTPException(
                415,
                "send a CloudEvent in binary mode (ce-* headers) or as JSON"
                " (application/cloudevents+json, application/cloudevents-batch+json),"
                f" not {media[:100] or 'without a Content-Type'}",
            )
        body = await read_expanded(request, max_body_bytes)
        return await publish_answer(service, await run_in_threadpool(parse_body, body, True))
