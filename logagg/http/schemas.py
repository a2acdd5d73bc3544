"""The documents of the HTTP API: the answers, and the request body for the docs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from logagg.models import EVENT


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
    detail: str = Field(description="Why nothing was stored.")


class Problem(BaseModel):
    detail: str


class EventsPage(BaseModel):
    topic: str | None
    count: int
    events: list[dict[str, Any]] = Field(
        description="Events in the input schema, with their original payloads."
    )


class ServiceInfo(BaseModel):
    service: str
    version: str
    description: str
    endpoints: dict[str, str] = Field(description="`METHOD /path`: what it does.")
    docs: str


class Stats(BaseModel):
    received: int
    unique_processed: int
    duplicate_dropped: int
    invalid: int
    topics: list[str] = Field(description="The stored topics, by name.")
    topic_counts: dict[str, int] = Field(description="Events stored per topic.")
    uptime_seconds: float
    uptime_human: str
    first_timestamp: str | None
    last_timestamp: str | None
    last_ingest_at: str | None


class Health(BaseModel):
    status: Literal["healthy", "unhealthy"]
    consumer_running: bool = Field(description="The writer runs (it may be retrying).")
    queue_size: int = Field(description="Batches waiting for the writer now.")
    timestamp: str
    error: str | None = Field(description="Why the writer cannot write (null when healthy).")
    retry_after_seconds: float | None = Field(
        description="When an unhealthy writer tries again (null when healthy or stopped)."
    )


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
