"""The event: its schema, its row form, rejects and checkpoints; decoding lines.

Shapes of an event: `Event` is the schema (validated by Pydantic straight from a line's
bytes); `Row` is a valid event as stored (timestamp normalised, payload and extra as JSON
text), a plain tuple because millions of them pass through the reader; `RowBatch` is a
list of rows encoded once for the queue and the store; `StoredEvent` is an event read back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import (
    Annotated,
    Any,
    NotRequired,  # pydantic needs these on 3.11
)

import orjson
import pydantic_core
from pydantic import (
    AfterValidator,
    ConfigDict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    with_config,
)
from typing_extensions import TypedDict

from logagg.timestamps import normalize_timestamp

MAX_NAME = 255
REJECT_RAW_LIMIT = 64 * 1024  # bytes of a rejected line kept in the rejects file
FIELDS = ("topic", "event_id", "timestamp", "source", "payload")
NOT_FINITE = "invalid JSON: NaN, Infinity and numbers beyond the float range are not JSON"


Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
Timestamp = Annotated[str, AfterValidator(normalize_timestamp)]


@with_config(ConfigDict(strict=True, extra="allow"))
class Event(TypedDict):
    """One event. Identity is `(topic, event_id)`; the first copy stored wins."""

    topic: Name
    event_id: Name
    timestamp: Timestamp
    source: Name
    payload: NotRequired[dict[str, Any]]


EVENT = TypeAdapter(Event)


Row = tuple[str, str, str, str, str, str | None]
"""A valid event as stored: (topic, event_id, timestamp, source, payload JSON, extra JSON)."""


def _row(event: Mapping[str, Any]) -> Row:
    payload = event.get("payload")
    extra = None
    if len(event) > (5 if payload is not None else 4):
        extra = encode_json({k: v for k, v in event.items() if k not in FIELDS})
    return (
        event["topic"],
        event["event_id"],
        event["timestamp"],
        event["source"],
        encode_json(payload) if payload else "{}",
        extra,
    )


def validate_event(event: Any) -> Row:
    """Validate one decoded event (a dict) into a row; raises ValidationError or ValueError."""
    return _row(EVENT.validate_python(event))


@dataclass(frozen=True, slots=True)
class RowBatch:
    """Rows as one JSON array of `[topic, event_id, timestamp, source, payload, extra]`.

    Compact to queue, and a store writes a whole batch in one statement.
    """

    json: str
    count: int


def encode_rows(rows: Sequence[Row]) -> RowBatch:
    """Encode rows for a store."""
    return RowBatch(orjson.dumps(rows).decode(), len(rows))


def encode_json(value: Any) -> str:
    """Compact JSON text; integers beyond 64 bits are kept exactly.

    Raises ValueError for NaN, infinities and numbers beyond the float range: they are not
    JSON, and storing them would change the data (orjson would write them as null).
    """
    try:
        try:
            text = orjson.dumps(value)
        except TypeError:
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        if b"null" in text:
            json.dumps(value, allow_nan=False)  # raises ValueError if a null was a NaN or inf
    except ValueError:
        raise ValueError(NOT_FINITE) from None
    return text.decode()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far a followed file has been read: every line before `offset` is committed.

    `device` and `inode` tell the file itself from another file put at the same path.
    """

    path: str
    device: int
    inode: int
    offset: int
    line: int


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


Mapper = Callable[[Any], list[dict[str, Any]]]  # a decoded line -> events (logagg.mapping)


def decode_lines(
    lines: Iterable[tuple[int, bytes]],
    source: str,
    mapper: Mapper | None = None,
    fallback: Mapper | None = None,
) -> tuple[list[Row], list[Reject]]:
    """Validate numbered JSON lines (no newlines) into rows; explain the others in Rejects.

    Without a `mapper`, a line is an event in logagg's schema, validated straight from its
    bytes; one that is not but names a `"specversion"` goes to `fallback` (CloudEvents).
    With a `mapper`, every line is decoded and mapped to events first. A mapper raises
    ValueError with a one-line reason for a line it cannot map.
    """
    rows: list[Row] = []
    rejects: list[Reject] = []
    validate, append = EVENT.validate_json, rows.append
    for line, raw in lines:
        try:
            if mapper is None:
                try:
                    append(_row(validate(raw)))
                    continue
                except ValidationError:
                    if fallback is None or b'"specversion"' not in raw:
                        raise
                mapped = fallback(_parse(raw))
            else:
                mapped = mapper(_parse(raw))
            rows.extend([_row(EVENT.validate_python(event)) for event in mapped])
        except ValidationError as exc:
            rejects.append(Reject(source, line, describe(exc), raw_text(raw)))
        except ValueError as exc:
            rejects.append(Reject(source, line, str(exc), raw_text(raw)))
    return rows, rejects


def _parse(raw: bytes) -> Any:
    """Strict JSON (no NaN or Infinity; integers of any size kept exactly)."""
    try:
        return pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        raise ValueError(f"invalid JSON: {exc}") from None


def event_from_fields(**fields: Any) -> Row:
    """Validate an event given as Python values (for `publish`); raises ValueError."""
    try:
        return _row(EVENT.validate_python(fields))
    except ValidationError as exc:
        raise ValueError(describe(exc)) from None
    except ValueError:
        raise ValueError(NOT_FINITE) from None


def describe(exc: ValidationError) -> str:
    """A one-line reason for a validation error, naming the field."""
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"])
        kind = err["type"]
        if kind == "json_invalid":
            detail = str(err.get("ctx", {}).get("error", err["msg"]))
            parts.append("invalid JSON: " + detail.replace(" at line 1 column ", " at column "))
        elif kind in ("dict_type", "model_type", "model_attributes_type") and not loc:
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
