"""The documents of the HTTP API: request bodies read into rows, and the answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import HTTPException
from pydantic import BaseModel, Field, ValidationError

from logagg.models import EVENT, Row, describe, json_type, parse_json, validate_event
from logagg.store import BatchResult


class EventError(BaseModel):
    index: int = Field(description="Position of the event in the batch (0 for one event).")
    error: str = Field(description="Why it is invalid, naming the field.")


class PublishResult(BaseModel):
    received: int
    accepted: int = Field(description="Stored now (new).")
    duplicates: int = Field(description="Already stored, or repeated earlier in the batch.")
    invalid: int = Field(description="Not valid events; listed in `errors`.")
    message: str
    errors: list[EventError] = Field(default_factory=list)


class PublishError(PublishResult):
    detail: str = Field(description="Why the event was rejected.")


class Problem(BaseModel):
    detail: str


class EventsPage(BaseModel):
    topic: str | None
    count: int
    events: list[dict[str, Any]] = Field(
        description="Events in the input schema, with their original payloads."
    )


class Stats(BaseModel):
    received: int
    unique_processed: int
    duplicate_dropped: int
    invalid: int
    topics: dict[str, int]
    uptime_seconds: float
    uptime_human: str
    first_timestamp: str | None
    last_timestamp: str | None
    last_ingest_at: str | None


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    consumer_running: bool
    queue_size: int = Field(description="Batches waiting for the writer now.")
    timestamp: str


_EVENT_SCHEMA = EVENT.json_schema()
_PUBLISH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        _EVENT_SCHEMA,
                        {
                            "title": "Batch",
                            "type": "object",
                            "required": ["events"],
                            "properties": {"events": {"type": "array", "items": _EVENT_SCHEMA}},
                        },
                        {"title": "Array", "type": "array", "items": _EVENT_SCHEMA},
                    ]
                },
                "example": {
                    "topic": "user.login",
                    "event_id": "login-1001",
                    "timestamp": "2025-01-01T10:00:37Z",
                    "source": "auth-service",
                    "payload": {"user": "alice"},
                },
            }
        },
    }
}


@dataclass(slots=True)
class Parsed:
    """A publish body: valid rows, the errors of the invalid events, and its shape."""

    rows: list[Row]
    errors: list[dict[str, Any]]
    single: bool

    @property
    def received(self) -> int:
        return len(self.rows) + len(self.errors)


def parse_body(body: bytes) -> Parsed:
    """Decode a publish body and validate each event; raises HTTPException(422) if unreadable."""
    try:
        doc = parse_json(body)
    except ValueError as exc:
        reason = str(exc).removeprefix("invalid JSON: ")
        raise HTTPException(422, f"the body is not valid JSON: {reason}") from None
    single = False
    if isinstance(doc, dict) and "events" in doc and "topic" not in doc:
        events = doc["events"]
        if not isinstance(events, list):
            raise HTTPException(
                422, f"'events' must be an array of events, got {json_type(events)}"
            )
    elif isinstance(doc, dict):
        events, single = [doc], True
    elif isinstance(doc, list):
        events = doc
    else:
        raise HTTPException(
            422,
            'the body must be an event object, {"events": [...]} or an array of events,'
            f" got {json_type(doc)}",
        )
    rows, errors = validate_events(events)
    return Parsed(rows, errors, single)


def validate_events(events: Sequence[Any]) -> tuple[list[Row], list[dict[str, Any]]]:
    """Rows of the valid events, and `{"index", "error"}` for each invalid one."""
    rows: list[Row] = []
    errors: list[dict[str, Any]] = []
    for index, event in enumerate(events):
        try:
            rows.append(validate_event(event))
        except ValidationError as exc:
            errors.append({"index": index, "error": describe(exc)})
        except ValueError as exc:
            errors.append({"index": index, "error": str(exc)})
    return rows, errors


def publish_document(parsed: Parsed, result: BatchResult) -> tuple[int, dict[str, Any]]:
    """The status and answer of a publish whose events were committed with `result`."""
    doc: dict[str, Any] = {
        "received": parsed.received,
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "invalid": result.invalid,
        "message": "",
        "errors": parsed.errors,
    }
    if parsed.single and parsed.errors:
        reason = parsed.errors[0]["error"]
        doc["message"] = doc["detail"] = f"invalid event: {reason}"
        return 422, doc
    if parsed.single:
        doc["message"] = (
            "event accepted" if result.accepted else "duplicate event dropped (already stored)"
        )
    else:
        doc["message"] = (
            f"{parsed.received} received: {result.accepted} accepted,"
            f" {result.duplicates} duplicates dropped, {result.invalid} invalid"
        )
    return 200, doc
