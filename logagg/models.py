"""The event: its schema, its row form, rejects and checkpoints; decoding lines.

Shapes of an event: `Event` is the schema (validated by Pydantic once a line is parsed,
numbers kept exactly as written); `Row` is a valid event as stored (timestamp normalised,
payload and extra as JSON text), a plain tuple because millions of them pass through the
reader; `RowBatch` is a list of rows encoded once for the queue and the store;
`StoredEvent` is an event read back.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import (
    Annotated,
    Any,
    NotRequired,  # pydantic needs these on 3.11
)

import jiter
import orjson
from pydantic import (
    AfterValidator,
    ConfigDict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    with_config,
)
from typing_extensions import TypedDict

from logagg.timestamps import is_stored_form, normalize_timestamp

MAX_NAME = 255
REJECT_RAW_LIMIT = 64 * 1024  # bytes of a rejected line kept in the rejects file
FIELDS = ("topic", "event_id", "timestamp", "source", "payload")
NOT_FINITE = "invalid JSON: NaN and Infinity are not JSON"
NUL = "\x00"
MAX_DEPTH = 200  # of arrays and objects in a line: jiter's limit, which `parse_json` keeps
_MINUS_ZERO = re.compile(rb"(?<![\w.+-])-0(?![\w.+-])")  # may be the integer -0 (or text)
_loads, _dumps = orjson.loads, orjson.dumps
LosslessFloat = jiter.LosslessFloat  # a JSON number with a fraction or exponent, as written


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


def _plain_row(obj: Any, exact: bool = False) -> Row | None:
    """The row of the commonest valid event, without the validator's cost: the four names
    (strings of 1 to MAX_NAME characters), the time already in its stored form, an object
    payload or none, and no other field. Anything else is None: the validator decides.
    `exact`: `obj` came from `_exact_line`, so orjson writes its payload as it was."""
    if type(obj) is not dict:
        return None
    size = len(obj)
    if size == 5:
        payload = obj.get("payload")
        if type(payload) is not dict:
            return None
    elif size == 4:
        payload = None
    else:
        return None
    get = obj.get
    topic, event_id = get("topic"), get("event_id")
    timestamp, source = get("timestamp"), get("source")
    if not (
        type(topic) is str
        and type(event_id) is str
        and type(source) is str
        and type(timestamp) is str
        and 0 < len(topic) <= MAX_NAME
        and 0 < len(event_id) <= MAX_NAME
        and 0 < len(source) <= MAX_NAME
        and is_stored_form(timestamp)
    ):
        return None
    if not payload:
        text = "{}"
    elif exact:
        text = _dumps(payload).decode()
    else:
        text = encode_json(payload)
    return (topic, event_id, timestamp, source, text, None)


def _check_keys(row: Row) -> Row:
    """Refuse U+0000 in a name or the time: text columns cannot keep it byte-exact."""
    for name, value in zip(FIELDS[:4], row[:4], strict=False):
        if NUL in value:
            raise ValueError(f"{name}: contains U+0000 (a NUL character), which is not allowed")
    return row


def validate_event(event: Any) -> Row:
    """Validate one decoded event (a dict) into a row; raises ValidationError or ValueError."""
    return _check_keys(_row(EVENT.validate_python(event)))


def parse_json(data: bytes | str) -> Any:
    """Strict JSON: no NaN or Infinity, no key twice in an object; integers of any size
    kept exactly, other numbers (and an integer written `-0`) as `LosslessFloat` (their
    text as written). Raises ValueError with a one-line reason."""
    text = data if isinstance(data, bytes) else data.encode()
    try:
        value = jiter.from_json(
            text,
            allow_inf_nan=False,
            cache_mode="all",
            catch_duplicate_keys=True,
            float_mode="lossless-float",
        )
        if b"-0" in text and _MINUS_ZERO.search(text):
            value = _keeping_minus_zero(text)
        return value
    except ValueError as exc:
        if _parses_with_nan(data):
            raise ValueError(NOT_FINITE) from None
        detail = str(exc).replace(" at line 1 column ", " at column ")
        if detail.startswith("Detected duplicate key "):
            key, _, where = detail.removeprefix("Detected duplicate key ").rpartition(" at ")
            detail = f"the key {key} twice (at {where})"
        raise ValueError(f"invalid JSON: {detail}") from None


@dataclass(frozen=True, slots=True)
class RowBatch:
    """Rows in a store's form, compact to queue, written by a store in one statement:
    `data` is one JSON array of `[topic, event_id, timestamp, source, payload, extra]`, or
    the form a store's own `encode_rows` made (SQLite: a database image). `keys`: how many
    different keys the rows hold, in a store's own form (None in the plain one)."""

    data: str | bytes
    count: int
    keys: int | None = None


def encode_rows(rows: Sequence[Row]) -> RowBatch:
    """Encode rows for a store."""
    return RowBatch(orjson.dumps(rows).decode(), len(rows))


def _keeping_minus_zero(text: bytes) -> Any:
    """`text` (which jiter read) read again with every integer written `-0` kept as written
    (jiter reads it as 0), other numbers as jiter keeps them. The grammar is the same, and
    jiter has already refused what JSON does not allow."""
    return json.loads(text, parse_int=_int_as_written, parse_float=_float_as_written)


def _int_as_written(digits: str) -> Any:
    return LosslessFloat(b"-0") if digits == "-0" else int(digits)


def _float_as_written(digits: str) -> LosslessFloat:
    return LosslessFloat(digits.encode())


def _exact_line(raw: bytes) -> Any:
    """The value of a line that is exactly its own compact JSON as orjson writes it (which
    the common producers write), parsed by orjson; else None. Then nothing is lost that
    `parse_json` keeps: every number reads back as written, no key comes twice, and the
    text is valid JSON. About twice as quick as `parse_json` (call `_shallow` first)."""
    try:
        value = _loads(raw)
        return value if _dumps(value) == raw else None
    except (ValueError, TypeError):  # not JSON, or beyond orjson (big integers, surrogates)
        return None


def _shallow(raw: bytes) -> bool:
    """True if `raw` cannot nest deeper than `parse_json` reads (which orjson would)."""
    return len(raw) <= 2 * MAX_DEPTH + 1 or raw.count(b"{") + raw.count(b"[") <= MAX_DEPTH


def _parses_with_nan(data: bytes | str) -> bool:
    try:
        jiter.from_json(
            data if isinstance(data, bytes) else data.encode(),
            allow_inf_nan=True,
            catch_duplicate_keys=True,
        )
    except ValueError:
        return False
    return True


def encode_json(value: Any) -> str:
    """Compact JSON text, every number as it was written (`LosslessFloat`, integers of any
    size).

    Raises ValueError for NaN and infinities (not JSON: orjson would write them as null)
    and for text that is not valid Unicode (a lone surrogate).
    """
    text = dump_json(value)
    if b"null" in text and _has_non_finite(value):
        raise ValueError(NOT_FINITE)
    return text.decode()


def dump_json(value: Any, *, sort_keys: bool = False) -> bytes:
    """Compact JSON bytes, every number as it was written (`sort_keys`: at every level).

    Raises ValueError for what JSON cannot hold exactly (a lone surrogate)."""
    option = orjson.OPT_SORT_KEYS if sort_keys else None
    try:
        return orjson.dumps(value, default=_as_written, option=option)
    except TypeError:
        try:
            return orjson.dumps(_exact(value), default=_as_written, option=option)
        except TypeError as exc:
            raise ValueError(f"cannot be stored exactly: {exc}") from None


def _as_written(value: Any) -> Any:
    if type(value) is LosslessFloat:
        return orjson.Fragment(bytes(value))
    raise TypeError(f"not JSON: {type(value).__name__}")


def _exact(value: Any) -> Any:
    """`value` with integers beyond 64 bits as their digits (orjson refuses them)."""
    kind = type(value)
    if kind is int and not -(2**63) <= value < 2**64:
        return orjson.Fragment(str(value))
    if kind is dict:
        return {k: _exact(v) for k, v in value.items()}
    if kind is list:
        return [_exact(v) for v in value]
    return value


def _has_non_finite(value: Any) -> bool:
    if type(value) is float:
        return value != value or value in (float("inf"), float("-inf"))
    if type(value) is dict:
        return any(_has_non_finite(v) for v in value.values())
    if type(value) is list:
        return any(_has_non_finite(v) for v in value)
    return False


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far a followed file has been read: every line before `offset` is committed.

    `device` and `inode` tell the file itself from another file put at the same path;
    `head`, the file's first bytes (up to 256), tells it from a file rewritten in place or
    made anew with the same inode (None: a checkpoint written before there were heads).
    For a compressed file `offset` is a position in its decompressed content.
    """

    path: str
    device: int
    inode: int
    offset: int
    line: int
    head: bytes | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    """An event that is not valid: where it was (a line, and for an event of a batch on
    one line its position, from 1), why, and what it said."""

    source: str
    line: int
    reason: str
    raw: str
    index: int | None = None

    def location(self) -> str:
        at = f"{self.source}:{self.line}"
        return at if self.index is None else f"{at}#{self.index}"

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"file": self.source, "line": self.line}
        if self.index is not None:
            doc["index"] = self.index
        doc.update(error=self.reason, raw=self.raw)
        return doc


def raw_text(raw: bytes) -> str:
    """A rejected line as text for the rejects file: invalid bytes escaped, length capped."""
    text = raw[:REJECT_RAW_LIMIT].decode("utf-8", "backslashreplace")
    if len(raw) > REJECT_RAW_LIMIT:
        text += f"... [{len(raw) - REJECT_RAW_LIMIT} more bytes]"
    return text


Mapped = list[dict[str, Any] | ValueError]
"""What a mapper makes of one line: an event (a dict in logagg's schema) or the reason it
cannot be one, for every event the line holds (a batch holds several)."""
Mapper = Callable[[Any], Mapped]


def decode_lines(
    lines: Iterable[tuple[int, bytes]],
    source: str,
    mapper: Mapper | None = None,
    fallback: Mapper | None = None,
) -> tuple[list[Row], list[Reject]]:
    """Validate numbered JSON lines (no newlines) into rows; explain the others in Rejects.

    Without a `mapper`, a line is an event in logagg's schema; one that is not but names a
    `"specversion"` goes to `fallback` (CloudEvents). With a `mapper`, every line is mapped
    to events first. A line may hold several events (a batch): each is validated, and each
    invalid one rejected, on its own.
    """
    rows: list[Row] = []
    rejects: list[Reject] = []
    validate, append = EVENT.validate_python, rows.append
    for line, raw in lines:
        try:
            if mapper is None and b'": ' not in raw and _shallow(raw):
                obj = _exact_line(raw)
                row = None if obj is None else _plain_row(obj, exact=True)
                if row is not None:
                    append(_check_keys(row) if b"\\u0000" in raw else row)
                    continue
            obj = parse_json(raw)
            if mapper is None:
                try:
                    row = _plain_row(obj) or _row(validate(obj))
                    append(_check_keys(row) if b"\\u0000" in raw else row)
                    continue
                except ValidationError:
                    if fallback is None or b'"specversion"' not in raw:
                        raise
                mapped = fallback(obj)
            else:
                mapped = mapper(obj)
        except ValidationError as exc:
            rejects.append(Reject(source, line, describe(exc), raw_text(raw)))
            continue
        except ValueError as exc:
            rejects.append(Reject(source, line, str(exc), raw_text(raw)))
            continue
        batch = type(obj) is list or len(mapped) != 1
        for index, event in enumerate(mapped, 1):
            try:
                if isinstance(event, ValueError):
                    raise event
                append(_check_keys(_row(validate(event))))
            except (ValidationError, ValueError) as exc:
                reason = describe(exc) if isinstance(exc, ValidationError) else str(exc)
                if batch:
                    item = obj[index - 1] if type(obj) is list else None
                    shown = raw_text(encode_json(item).encode()) if item else raw_text(raw)
                    rejects.append(Reject(source, line, reason, shown, index))
                else:
                    rejects.append(Reject(source, line, reason, raw_text(raw)))
    return rows, rejects


def event_from_fields(**fields: Any) -> Row:
    """Validate an event given as Python values (for `publish`); raises ValueError."""
    try:
        return validate_event(fields)
    except ValidationError as exc:
        raise ValueError(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """A one-line reason for a validation error, naming the field, in the product's words:
    `missing field 'topic'`, `source: expected 1 to 255 characters, got 0`, `payload:
    expected a JSON object, got array`, `timestamp: not an ISO-8601 time: 'x'`."""
    expected = {
        "string_type": "a string",
        "dict_type": "a JSON object",
        "model_type": "a JSON object",
        "model_attributes_type": "a JSON object",
        "list_type": "a JSON array",
    }
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"])
        kind = err["type"]
        given = err.get("input")
        if kind == "json_invalid":
            detail = str(err.get("ctx", {}).get("error", err["msg"]))
            reason = "invalid JSON: " + detail.replace(" at line 1 column ", " at column ")
        elif kind == "missing":
            parts.append(f"missing field '{loc}'")
            continue
        elif kind == "value_error":
            reason = str(err.get("ctx", {}).get("error", err["msg"].removeprefix("Value error, ")))
        elif kind in ("string_too_short", "string_too_long") and isinstance(given, str):
            reason = f"expected 1 to {MAX_NAME} characters, got {len(given)}"
        elif kind in expected:
            reason = f"expected {expected[kind]}, got {json_type(given)}"
        else:
            reason = err["msg"][:1].lower() + err["msg"][1:]
        parts.append(f"{loc}: {reason}" if loc else reason)
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
    if isinstance(value, (int, float, LosslessFloat)):
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
    seq: int | None = field(default=None, compare=False)  # its position in commit order

    def to_json_bytes(self, *, with_seq: bool = False) -> bytes:
        """The event in the input schema, as one compact JSON object (no newline); the
        payload and extra fields exactly as stored. `with_seq`: its position in commit
        order as a last member, `seq`."""
        if with_seq and self.seq is not None:
            return self.to_json_bytes()[:-1] + b',"seq":' + str(self.seq).encode() + b"}"
        head = orjson.dumps(
            {
                "topic": self.topic,
                "event_id": self.event_id,
                "timestamp": self.timestamp,
                "source": self.source,
                "payload": orjson.Fragment(self.payload_json),
            }
        )
        extra = self.extra_json
        if not extra or extra == "{}":
            return head
        return head[:-1] + b"," + extra.encode()[1:]  # extra is a JSON object: its members

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


def content_hash(timestamp: str, source: str, payload: str, extra: str | None) -> int:
    """A stored event's content (all but its key) as a signed 64-bit number: the first 8
    bytes of the MD5 of the stored texts joined by U+001F. Two copies of one key conflict
    when their content differs; the number stands for a pruned event's content and names
    both copies of a conflict. PostgreSQL computes the same number with `md5()`."""
    text = f"{timestamp}\x1f{source}\x1f{payload}\x1f{extra or ''}"
    digest = hashlib.md5(text.encode("utf-8", "surrogatepass"), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def hash_text(value: int) -> str:
    """A content hash as people see it: 16 hexadecimal digits."""
    return f"{value & 0xFFFF_FFFF_FFFF_FFFF:016x}"
