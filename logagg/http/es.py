"""Elasticsearch's bulk API under `/es`: what rsyslog, syslog-ng, Fluent Bit, Vector,
Filebeat, Logstash and the Elasticsearch clients send, stored as events.

`POST /es/_bulk` and `POST /es/{index}/_bulk` take NDJSON action/document pairs (`create`
and `index`; gzip bodies too) and answer item by item as Elasticsearch does, after the
commit: a new event `201 created`, a duplicate `409 version_conflict_engine_exception`
under `create` and `200 noop` under `index` (nothing is ever overwritten), an invalid
document `400`; every answer with `X-Elastic-Product: Elasticsearch`. What clients ask
before sending (`GET /es/`, the license, cluster health, templates) is es_cluster's. The
mapping is in the README ("Send from your shipper").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from logagg.errors import StoreError
from logagg.http import es_cluster
from logagg.http.es_cluster import PREFIX, answer, error
from logagg.http.intake import client_name, media_type, read_expanded
from logagg.http.service import Service
from logagg.http.storing import RETRY_AFTER_SECONDS, QueueFull, store_rows
from logagg.identity import Occurrences
from logagg.models import LosslessFloat, Row, describe, json_type, parse_json, validate_event
from logagg.pipeline import WriterDown
from logagg.timestamps import epoch_to_utc, utc_now

logger = logging.getLogger("logagg.serve")

BULK_MEDIA = frozenset(
    {
        "application/json",
        "application/x-ndjson",
        "application/vnd.elasticsearch+json",
        "application/vnd.elasticsearch+x-ndjson",
    }
)
OPERATIONS = ("create", "delete", "index", "update")
TIME_FIELDS = ("@timestamp", "timestamp")
SOURCE_FIELDS = (
    ("host.name", ("host", "name")),
    ("host", ("host",)),
    ("agent.name", ("agent", "name")),
)
_SPACE = b" \t\r"


class Malformed(ValueError):
    """A bulk body Elasticsearch refuses whole (400): an action line that cannot be read."""


@dataclass(slots=True)
class Item:
    """One action of a bulk request: where its row is among the valid ones, or why it has
    none (an Elasticsearch error type and reason)."""

    op: str
    index: str | None
    id: str | None
    row: int = -1
    error: tuple[str, str] | None = None


@dataclass(slots=True)
class Bulk:
    items: list[Item] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)

    @property
    def invalid(self) -> int:
        return len(self.items) - len(self.rows)


# --- reading a bulk body -----------------------------------------------------------------


def _lines(body: bytes) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of a body, numbered from 1."""
    for number, line in enumerate(body.split(b"\n"), 1):
        line = line.strip(_SPACE)
        if line:
            yield number, line


def read_bulk(body: bytes, default_index: str | None, source: str, now: str) -> Bulk:
    """The actions of a bulk body and the rows of its valid documents.

    `default_index`: the index of the path (`/es/{index}/_bulk`); `source`: the source of
    documents that name no host; `now`: the time of those without one. Identical documents
    without an `_id` are numbered by occurrence per index within the body, so the same body
    sent again gives the same ids. Raises Malformed for an action line that cannot be read.
    """
    bulk = Bulk()
    occurrences: dict[str, Occurrences] = {}
    lines = _lines(body)
    for number, line in lines:
        op, meta = _action(number, line)
        document: tuple[int, bytes] | None = None
        if op != "delete":
            document = next(lines, None)
            if document is None:
                raise Malformed(
                    f"Malformed action/metadata line [{number}]: the {op} action has no"
                    " document line after it"
                )
        index = meta.get("_index", default_index)
        raw_id = meta.get("_id")
        given_id = str(raw_id) if type(raw_id) in (str, int) else None
        item = Item(op, index if isinstance(index, str) else None, given_id)
        bulk.items.append(item)
        try:
            if op in ("update", "delete"):
                raise _ItemError(
                    "action_request_validation_exception",
                    f"Validation Failed: 1: {op} is not supported: logagg keeps every event"
                    " as it was first stored;",
                )
            if raw_id is not None and given_id is None:
                raise _ItemError(
                    "action_request_validation_exception",
                    f"Validation Failed: 1: _id is {json_type(raw_id)}, expected a string;",
                )
            if not item.index:
                raise _ItemError(
                    "action_request_validation_exception", "Validation Failed: 1: index is missing;"
                )
            assert document is not None
            event = _event(item, document, source, now, occurrences)
            row = validate_event(event)
        except _ItemError as exc:
            item.error = (exc.kind, exc.reason)
            continue
        except ValidationError as exc:
            item.error = ("document_parsing_exception", describe(exc))
            continue
        except ValueError as exc:
            item.error = ("document_parsing_exception", str(exc))
            continue
        item.row = len(bulk.rows)
        bulk.rows.append(row)
    return bulk


class _ItemError(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def _action(number: int, line: bytes) -> tuple[str, dict[str, Any]]:
    try:
        action = parse_json(line)
    except ValueError as exc:
        raise Malformed(f"Malformed action/metadata line [{number}]: {exc}") from None
    if type(action) is not dict or len(action) != 1:
        raise Malformed(
            f"Malformed action/metadata line [{number}], expected an object with one key,"
            f" one of [{', '.join(OPERATIONS)}]"
        )
    op, meta = next(iter(action.items()))
    if op not in OPERATIONS:
        raise Malformed(
            f"Malformed action/metadata line [{number}], expected one of"
            f" [{', '.join(OPERATIONS)}] but found [{op[:40]}]"
        )
    if type(meta) is not dict:
        raise Malformed(
            f"Malformed action/metadata line [{number}], expected an object after [{op}]"
        )
    return op, meta


def _event(
    item: Item,
    document: tuple[int, bytes],
    default_source: str,
    now: str,
    occurrences: dict[str, Occurrences],
) -> dict[str, Any]:
    number, line = document
    try:
        doc = parse_json(line)
    except ValueError as exc:
        raise _ItemError("document_parsing_exception", f"line [{number}]: {exc}") from None
    if type(doc) is not dict:
        raise _ItemError(
            "document_parsing_exception",
            f"line [{number}]: a document is a JSON object, got {json_type(doc)}",
        )
    assert item.index is not None
    if item.id is None:
        numbering = occurrences.setdefault(item.index, Occurrences())
        item.id = numbering.content_id(doc)
    return {
        "topic": item.index,
        "event_id": item.id,
        "timestamp": _timestamp(doc, now),
        "source": _source(doc) or default_source,
        "payload": doc,
    }


def _lookup(doc: dict[str, Any], dotted: str, path: tuple[str, ...]) -> Any:
    """A field by its dotted name as one key (`"host.name"`), else by walking the path."""
    if dotted in doc:
        return doc[dotted]
    value: Any = doc
    for part in path:
        if type(value) is not dict:
            return None
        value = value.get(part)
    return value


def _source(doc: dict[str, Any]) -> str | None:
    for dotted, path in SOURCE_FIELDS:
        value = _lookup(doc, dotted, path)
        if isinstance(value, str) and value:
            return value
    return None


def _timestamp(doc: dict[str, Any], now: str) -> str:
    """`@timestamp`, else `timestamp`: an RFC 3339 string, or epoch digits (by magnitude,
    as `ingest` reads them); else `now`."""
    for name in TIME_FIELDS:
        value = doc.get(name)
        if value is None or value == "":
            continue
        if isinstance(value, str):
            return epoch_to_utc(int(value)) if value.isascii() and value.isdigit() else value
        if type(value) is int:
            return epoch_to_utc(value)
        if type(value) is LosslessFloat:
            return epoch_to_utc(Decimal(str(value)))
        raise ValueError(f"{name} is {json_type(value)}, expected a date")
    return now


# --- answers -------------------------------------------------------------------------------


def item_result(item: Item, stored: bool) -> dict[str, Any]:
    """An item of the bulk answer, as Elasticsearch gives it."""
    doc: dict[str, Any] = {"_index": item.index, "_id": item.id}
    if item.error is not None:
        kind, reason = item.error
        doc.update(status=400, error={"type": kind, "reason": reason, "index": item.index})
    elif stored:
        doc.update(
            _version=1,
            result="created",
            _shards={"total": 1, "successful": 1, "failed": 0},
            _seq_no=0,
            _primary_term=1,
            status=201,
        )
    elif item.op == "create":
        doc.update(
            status=409,
            error={
                "type": "version_conflict_engine_exception",
                "reason": f"[{item.id}]: version conflict, document already exists"
                " (current version [1])",
                "index": item.index,
                "shard": "0",
            },
        )
    else:
        doc.update(
            _version=1,
            result="noop",
            _shards={"total": 0, "successful": 0, "failed": 0},
            _seq_no=0,
            _primary_term=1,
            status=200,
        )
    return {item.op: doc}


# --- routes --------------------------------------------------------------------------------


def register(app: FastAPI, service: Service, max_body_bytes: int) -> None:
    """Add the `/es` routes to `app`."""

    async def bulk(request: Request, index: str | None) -> Response:
        began = time.monotonic()
        media = media_type(request)
        if media not in BULK_MEDIA:
            shown = media[:100] or "(none)"
            return error(
                request,
                406,
                "media_type_header_exception",
                f"Content-Type header [{shown}] is not supported: send application/x-ndjson",
            )
        try:
            body = await read_expanded(request, max_body_bytes)
            source = client_name(request)
            parsed = await run_in_threadpool(read_bulk, body, index, source, utc_now())
            result = await store_rows(service, parsed.rows, parsed.invalid, each=True)
        except Malformed as exc:
            return error(request, 400, "illegal_argument_exception", str(exc))
        except HTTPException as exc:
            kind = "content_too_long_exception" if exc.status_code == 413 else "parse_exception"
            return error(request, exc.status_code, kind, str(exc.detail))
        except QueueFull as exc:
            retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
            return error(request, 429, "es_rejected_execution_exception", str(exc), retry)
        except WriterDown as exc:
            wait = service.retry_after(exc)
            reason = (
                f"the store cannot be written now: {exc}; nothing of this request is"
                f" acknowledged: send it again in {wait} s (duplicates are dropped)"
            )
            retry = {"Retry-After": str(wait)}
            return error(request, 503, "store_unavailable_exception", reason, retry)
        except StoreError as exc:
            reason = f"store unavailable: {service.public(str(exc))}"
            return error(request, 503, "store_unavailable_exception", reason)
        per_row = result.per_batch
        items = [
            item_result(item, item.row >= 0 and per_row[item.row] == 1) for item in parsed.items
        ]
        failed = any(next(iter(i.values()))["status"] >= 300 for i in items)
        took = int((time.monotonic() - began) * 1000)
        logger.debug(
            "bulk: %d items, %d stored, %d duplicates, %d invalid",
            len(items),
            result.accepted,
            result.duplicates,
            result.invalid,
        )
        return answer(request, {"took": took, "errors": failed, "items": items})

    @app.api_route(PREFIX + "/_bulk", methods=["POST", "PUT"], include_in_schema=False)
    async def bulk_any(request: Request) -> Response:
        return await bulk(request, None)

    @app.api_route(PREFIX + "/{index}/_bulk", methods=["POST", "PUT"], include_in_schema=False)
    async def bulk_index(request: Request, index: str) -> Response:
        return await bulk(request, index)

    es_cluster.register(app, service)
