"""The bodies `POST /publish` takes besides JSON events: NDJSON (one event a line),
CloudEvents in binary mode (`ce-*` headers), and compressed bodies of any of its forms
(`Content-Encoding: gzip` or `deflate`).

`publish_other` answers those and leaves the rest to the JSON route. Each form is read by
its own module; the answer is `POST /publish`'s.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from logagg.http import cloudevents, ndjson
from logagg.http.body import parse_body
from logagg.http.intake import (
    client_name,
    content_encoding,
    json_media,
    media_type,
    read_expanded,
)
from logagg.http.service import Service
from logagg.http.storing import publish_answer


async def publish_other(
    request: Request, service: Service, max_body_bytes: int
) -> JSONResponse | None:
    """The answer to a publish in NDJSON, in CloudEvents binary mode or compressed; None
    for a plain JSON body (the route reads it). Raises HTTPException (413, 415, 422, 400
    for a body that is not what its encoding says) and what storing raises."""
    headers = request.headers
    binary = cloudevents.is_binary(headers.keys())
    media = media_type(request)
    lines = media in ndjson.MEDIA_TYPES
    encoding = content_encoding(request)
    if not (binary or lines or encoding):
        return None
    if binary:
        body = await read_expanded(request, max_body_bytes)
        parsed = cloudevents.read_binary(headers.items(), body)
    elif lines:
        params = request.query_params
        mapping = ndjson.mapping_for(
            params.get("preset"), params.get("source"), client_name(request)
        )
        body = await read_expanded(request, max_body_bytes)
        parsed = await run_in_threadpool(ndjson.read_ndjson, body, mapping)
    else:
        is_cloudevents = json_media(request)
        body = await read_expanded(request, max_body_bytes)
        parsed = await run_in_threadpool(parse_body, body, is_cloudevents)
    return await publish_answer(service, parsed)
