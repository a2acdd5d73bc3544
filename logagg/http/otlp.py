"""OpenTelemetry logs over OTLP/HTTP: `POST /v1/logs`, what the OpenTelemetry SDKs and the
Collector send.

The body is an export request in protobuf (`application/x-protobuf`, the exporters'
default) or OTLP/JSON (`application/json`), gzip-compressed or not; every log record is an
event, mapped as `ingest --preset otlp` maps it (logagg.otlp). The answer comes after the
commit, in the request's encoding: an export response whose `partial_success` counts the
records that were refused and says why. A request that cannot be read is 400, and one
that could not be stored now 503 with Retry-After (OTLP clients retry those), with a
`google.rpc.Status` body.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from logagg import otlp
from logagg.errors import StoreError
from logagg.http.intake import client_name, media_type, read_expanded
from logagg.http.service import Service
from logagg.http.storing import RETRY_AFTER_SECONDS, QueueFull, store_rows
from logagg.identity import Occurrences
from logagg.models import Row, describe, parse_json, validate_event
from logagg.pipeline import WriterDown

logger = logging.getLogger("logagg.serve")

PATH = "/v1/logs"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
REASONS_SHOWN = 3  # reasons of refused records named in the error message
# google.rpc.Code
INVALID_ARGUMENT = 3
RESOURCE_EXHAUSTED = 8
UNAVAILABLE = 14


def read_logs(body: bytes, protobuf: bool, source: str) -> tuple[list[Row], list[str]]:
    """The rows of the valid log records of an export request, and for each refused record
    why (numbered from 1 in the request's order). `source`: of records whose resource names
    none. Raises OtlpError for a body that is not an export request."""
    if protobuf:
        doc: Any = otlp.request_from_protobuf(body)
    else:
        try:
            doc = parse_json(body)
        except ValueError as exc:
            raise otlp.OtlpError(f"not an OTLP/JSON logs request: {exc}") from None
    rows: list[Row] = []
    refused: list[str] = []
    for number, event in enumerate(otlp.events(doc, source=source, occurrences=Occurrences()), 1):
        try:
            if isinstance(event, ValueError):
                raise event
            rows.append(validate_event(event))
        except ValidationError as exc:
            refused.append(f"log record {number}: {describe(exc)}")
        except ValueError as exc:
            refused.append(f"log record {number}: {exc}")
    return rows, refused


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, kind: int, payload: bytes) -> bytes:
    return _varint(number << 3 | kind) + payload


def status_protobuf(code: int, message: str) -> bytes:
    """A `google.rpc.Status` (code = 1, message = 2) in protobuf."""
    text = message.encode()
    return _field(1, 0, _varint(code)) + _field(2, 2, _varint(len(text)) + text)


def success(protobuf: bool, refused: list[str]) -> Response:
    """An `ExportLogsServiceResponse`: empty when every record was taken, else its
    `partial_success` with the count of refused records and why."""
    message = ""
    if refused:
        shown = "; ".join(refused[:REASONS_SHOWN])
        more = len(refused) - REASONS_SHOWN
        message = f"{len(refused)} log records refused: {shown}" + (
            f"; and {more} more" if more > 0 else ""
        )
    if protobuf:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsPartialSuccess,
            ExportLogsServiceResponse,
        )

        response = ExportLogsServiceResponse()
        if refused:
            response.partial_success.CopyFrom(
                ExportLogsPartialSuccess(rejected_log_records=len(refused), error_message=message)
            )
        return Response(response.SerializeToString(), media_type=PROTOBUF)
    doc: dict[str, Any] = {}
    if refused:
        doc["partialSuccess"] = {"rejectedLogRecords": str(len(refused)), "errorMessage": message}
    return Response(orjson.dumps(doc), media_type=JSON)


def failure(
    protobuf: bool, status: int, code: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    """A refused request: its HTTP status, and a `google.rpc.Status` in the request's
    encoding."""
    if protobuf:
        return Response(
            status_protobuf(code, message), status, headers=headers, media_type=PROTOBUF
        )
    doc = {"code": code, "message": message}
    return Response(orjson.dumps(doc), status, headers=headers, media_type=JSON)


def register(app: FastAPI, service: Service, max_body_bytes: int) -> None:
    """Add `POST /v1/logs` to `app`."""

    @app.post(
        PATH,
        summary="OpenTelemetry logs (OTLP/HTTP)",
        response_class=Response,
        responses={
            200: {"description": "Stored; `partial_success` counts refused log records."},
            400: {"description": "Not an OTLP logs export request."},
            415: {"description": "Neither application/x-protobuf nor application/json."},
            503: {"description": "Not stored now: retry after Retry-After seconds."},
        },
    )
    async def logs(request: Request) -> Response:
        """Store every log record of an OTLP logs export request (protobuf or JSON) as
        an event; answered once they are committed."""
        media = media_type(request)
        protobuf = media == PROTOBUF
        if media not in (PROTOBUF, JSON):
            return failure(
                False,
                415,
                INVALID_ARGUMENT,
                f"send OTLP logs as {PROTOBUF} or {JSON}, not {media[:100] or '(none)'}",
            )
        try:
            body = await read_expanded(request, max_body_bytes)
            rows, refused = await run_in_threadpool(read_logs, body, protobuf, client_name(request))
            result = await store_rows(service, rows, len(refused))
        except otlp.OtlpError as exc:
            return failure(protobuf, 400, INVALID_ARGUMENT, str(exc))
        except ModuleNotFoundError:
            message = (
                "OTLP in protobuf needs the opentelemetry-proto package (the serve extra; from"
                f" a checkout: pip install '.[serve]'); or send {JSON}"
            )
            return failure(False, 415, INVALID_ARGUMENT, message)
        except HTTPException as exc:
            return failure(protobuf, exc.status_code, INVALID_ARGUMENT, str(exc.detail))
        except QueueFull as exc:
            retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
            return failure(protobuf, 503, RESOURCE_EXHAUSTED, str(exc), retry)
        except WriterDown as exc:
            wait = service.retry_after(exc)
            message = f"the store cannot be written now: {exc}; send the request again in {wait} s"
            return failure(protobuf, 503, UNAVAILABLE, message, {"Retry-After": str(wait)})
        except StoreError as exc:
            message = f"store unavailable: {service.public(str(exc))}"
            return failure(protobuf, 503, UNAVAILABLE, message)
        logger.debug(
            "otlp logs: %d records, %d accepted, %d duplicates, %d refused",
            len(rows) + len(refused),
            result.accepted,
            result.duplicates,
            result.invalid,
        )
        return success(protobuf, refused)
