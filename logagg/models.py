"""The event, and decoding one input line into an `Event` or a `Reject`.

Rules (README "The event"): topic, event_id and source are strings of 1..255 characters;
timestamp is an ISO-8601 / RFC 3339 string, stored as UTC with microseconds
(`2025-01-01T12:00:00.000000Z`, so that text order is time order; no offset means UTC);
payload is an optional JSON object, stored whole. Unknown top-level fields are kept
(column `extra`) and returned at the top level, so nothing a producer sent is lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import pydantic_core
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

MAX_NAME = 255
REJECT_RAW_LIMIT = 64 * 1024  # bytes of a rejected line kept in the rejects file


def normalize_timestamp(value: str) -> str:
    """Parse an ISO-8601 time and return it in UTC as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.

    A time without an offset is taken as UTC. More than six fractional digits are
    truncated to microseconds. Raises ValueError for anything that is not a valid time.
    """
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is not None and moment.utcoffset():
            moment = moment.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"not an ISO-8601 time: {value[:64]!r} ({exc})") from None
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
Timestamp = Annotated[str, AfterValidator(normalize_timestamp)]


class Event(BaseModel):
    """One event. Identity is `(topic, event_id)`; the first copy stored wins."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    topic: Name
    event_id: Name
    timestamp: Timestamp
    source: Name
    payload: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.topic, self.event_id)

    def payload_json(self) -> str:
        """The payload as compact JSON text."""
        return encode_json(self.payload)

    def extra_json(self) -> str | None:
        """Unknown top-level fields as compact JSON text, or None when there are none."""
        extra = self.model_extra
        return encode_json(extra) if extra else None


def encode_json(value: Any) -> str:
    """Compact JSON text; integers beyond 64 bits are kept exactly."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, slots=True)
class Reject:
    """A line that is not a valid event: where it was, why, and what it said."""

    source: str
    line: int
    reason: str
    raw: str

    def location(self) -> str:
        return f"{self.source}:{self.line}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.source, "line": self.line, "error": self.reason, "raw": self.raw}


def raw_text(raw: bytes) -> str:
    """A rejected line as text for the rejects file: invalid bytes escaped, length capped."""
    text = raw[:REJECT_RAW_LIMIT].decode("utf-8", "backslashreplace")
    if len(raw) > REJECT_RAW_LIMIT:
        text += f"... [{len(raw) - REJECT_RAW_LIMIT} more bytes]"
    return text


def decode_line(raw: bytes, source: str, line: int) -> Event | Reject:
    """Validate one JSON line (no newline) into an Event, or explain why not in a Reject."""
    try:
        event = Event.model_validate_json(raw)
    except ValidationError as exc:
        return Reject(source, line, describe(exc), raw_text(raw))
    # The JSON parser accepts NaN and Infinity; they are not JSON and would make the
    # stored payload invalid, so a line that may hold them is parsed again strictly.
    if b"NaN" in raw or b"Infinity" in raw:
        try:
            pydantic_core.from_json(raw, allow_inf_nan=False)
        except ValueError:
            reason = "invalid JSON: NaN and Infinity are not JSON"
            return Reject(source, line, reason, raw_text(raw))
    return event


def event_from_fields(**fields: Any) -> Event:
    """Validate an event given as Python values (for `publish`); raises ValueError."""
    try:
        return Event.model_validate(fields)
    except ValidationError as exc:
        raise ValueError(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """A one-line reason for a validation error, naming the field."""
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"])
        kind = err["type"]
        if kind == "json_invalid":
            detail = str(err.get("ctx", {}).get("error", err["msg"]))
            parts.append("invalid JSON: " + detail.replace(" at line 1 column ", " at column "))
        elif kind in ("model_type", "model_attributes_type") and not loc:
            parts.append(f"expected a JSON object, got {json_type(err['input'])}")
        elif kind == "missing":
            parts.append(f"missing field '{loc}'")
        elif kind == "value_error":
            parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
        else:
            parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    more = len(exc.errors()) - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as read back from a store: JSON fields still as text."""

    topic: str
    event_id: str
    timestamp: str
    source: str
    payload_json: str
    extra_json: str | None
    ingested_at: str

    def to_json_bytes(self) -> bytes:
        """The event in the input schema, as one compact JSON object (no newline)."""
        doc: dict[str, Any] = {
            "topic": self.topic,
            "event_id": self.event_id,
            "timestamp": self.timestamp,
            "source": self.source,
            "payload": orjson.Fragment(self.payload_json),
        }
        if self.extra_json:
            doc.update(json.loads(self.extra_json))
        return orjson.dumps(doc)

    def to_dict(self) -> dict[str, Any]:
        """The event in the input schema, payload decoded."""
        doc: dict[str, Any] = {
            "topic": self.topic,
            "event_id": self.event_id,
            "timestamp": self.timestamp,
            "source": self.source,
            "payload": json.loads(self.payload_json),
        }
        if self.extra_json:
            doc.update(json.loads(self.extra_json))
        return doc
