"""A publish body read event by event, and the answer to it.

Body shapes: one event object, `{"events": [...]}`, or a bare array of events (CloudEvents
too: an element with `"specversion"` that is not a logagg event, or every element when the
body is sent as `application/cloudevents+json` / `application/cloudevents-batch+json`).

Each event is decoded, validated and encoded on its own, so one bad event is one error with
its index while the others are stored. A body that does not parse as a whole is split into
the elements of its events array by a bracket- and string-aware scanner over the raw bytes,
and each element is parsed alone: `NaN`, a lone surrogate or too deep nesting in one element
costs that element only. The status rules are in the README ("serve: the HTTP API").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from logagg.mapping import PRESETS, Mapping
from logagg.models import Row, describe, json_type, parse_json, validate_event
from logagg.store import BatchResult
from logagg.timestamps import utc_now

CLOUDEVENTS_TYPES = ("application/cloudevents+json", "application/cloudevents-batch+json")
_CLOUDEVENTS: Mapping = PRESETS["cloudevents"]
# A JSON string (escapes included), a lone quote (a string never closed), or a structural
# character: enough to find the elements of an array without decoding them.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|["\[\]{},:]', re.DOTALL)
_SPACE = b" \t\r\n"


class NotEvents(ValueError):
    """A body that is not events at all (422, nothing counted); the message says why."""


@dataclass(slots=True)
class Parsed:
    """A publish body: valid rows, the errors of the invalid events, and its shape."""

    rows: list[Row]
    errors: list[dict[str, Any]]
    single: bool

    @property
    def received(self) -> int:
        return len(self.rows) + len(self.errors)


def parse_body(body: bytes, cloudevents: bool = False) -> Parsed:
    """Decode a publish body and validate each event on its own.

    `cloudevents`: every event is a CloudEvent (the body's media type said so). Raises
    NotEvents when the body is not events at all.
    """
    try:
        doc = parse_json(body)
    except ValueError as exc:
        reason = str(exc).removeprefix("invalid JSON: ")
        elements = split_events(body)
        if elements is None:
            raise NotEvents(f"the body is not valid JSON: {reason}") from None
        decoded: list[Any] = []
        for element in elements:
            try:
                decoded.append(parse_json(element))
            except ValueError as error:
                decoded.append(error)
        if not any(isinstance(item, ValueError) for item in decoded):
            # every event reads alone: what is wrong is around them
            raise NotEvents(f"the body is not valid JSON: {reason}") from None
        rows, errors = validate_events(decoded, cloudevents)
        return Parsed(rows, errors, single=False)
    single = False
    if isinstance(doc, dict) and "events" in doc and "topic" not in doc:
        events = doc["events"]
        if not isinstance(events, list):
            raise NotEvents(f"'events' must be an array of events, got {json_type(events)}")
    elif isinstance(doc, dict):
        events, single = [doc], True
    elif isinstance(doc, list):
        events = doc
    else:
        raise NotEvents(
            'the body must be an event object, {"events": [...]} or an array of events,'
            f" got {json_type(doc)}"
        )
    rows, errors = validate_events(events, cloudevents)
    return Parsed(rows, errors, single)


def validate_events(
    events: Sequence[Any], cloudevents: bool = False
) -> tuple[list[Row], list[dict[str, Any]]]:
    """Rows of the valid events, and `{"index", "error"}` for each invalid one (an element
    that could not be decoded is its ValueError)."""
    rows: list[Row] = []
    errors: list[dict[str, Any]] = []
    now = utc_now()  # the time of every CloudEvent of this body without one
    for index, event in enumerate(events):
        try:
            if isinstance(event, ValueError):
                raise event
            rows.append(_validate(event, cloudevents, now))
        except ValidationError as exc:
            errors.append({"index": index, "error": describe(exc)})
        except ValueError as exc:
            errors.append({"index": index, "error": str(exc)})
    return rows, errors


def _validate(event: Any, cloudevents: bool, now: str) -> Row:
    """One event as a row; a CloudEvent (by the media type, or by its `specversion` when it
    is not a logagg event) through the CloudEvents mapping. Raises ValueError."""
    if not cloudevents:
        try:
            return validate_event(event)
        except ValidationError:
            if not (isinstance(event, dict) and "specversion" in event):
                raise
    mapped = _CLOUDEVENTS.events(event, now)[0]
    if isinstance(mapped, ValueError):
        raise mapped
    return validate_event(mapped)


def publish_document(parsed: Parsed, result: BatchResult) -> tuple[int, dict[str, Any]]:
    """The status and answer of a publish whose events were committed with `result`.

    422 for one invalid event, and whenever nothing was stored and something was invalid;
    200 otherwise (duplicates count as stored: they are).
    """
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
    if result.accepted == 0 and parsed.errors:
        detail = f"no event was stored: {len(parsed.errors)} invalid (see errors)"
        if result.duplicates:
            detail += f", {result.duplicates} already stored before (duplicates)"
        doc["message"] = doc["detail"] = detail
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


def split_events(body: bytes) -> list[bytes] | None:
    """The raw elements of the events array of a body that does not parse as a whole: the
    top-level array, or the array under the top-level object's `"events"` key.

    None when the body is not shaped like a batch: one object without `"events"` (or with
    `"topic"`: one event), an `"events"` that is not an array or is there twice, brackets
    that do not balance, a string that does not end, or anything after the top-level value.
    """
    start = len(body) - len(body.lstrip(_SPACE))
    first = body[start : start + 1]
    if first not in (b"[", b"{"):
        return None
    is_object = first == b"{"
    inside = 0 if is_object else 1  # the depth of the elements (0: not found yet, -1: past)
    depth, segment, end = 0, -1, -1
    elements: list[bytes] = []
    previous, previous_end = b"", start  # the token before this one, and where it ended
    awaiting = False  # the "events" key was read: its value must be an array
    for match in _TOKEN.finditer(body, start):
        token, at = match.group(), match.start()
        if token == b'"':
            return None  # a string that never ends
        if awaiting:
            if token != b"[" or body[previous_end:at].strip(_SPACE):
                return None
            awaiting, inside = False, depth + 1
        if token in (b"[", b"{"):
            depth += 1
            if depth == inside and segment < 0:
                segment = match.end()
        elif token in (b"]", b"}"):
            if depth == inside:
                element = body[segment:at].strip(_SPACE)
                if element or elements:
                    elements.append(element)
                inside = -1
            depth -= 1
            if depth == 0:
                end = match.end()
                break
        elif token == b"," and depth == inside:
            elements.append(body[segment:at].strip(_SPACE))
            segment = match.end()
        elif token == b":" and is_object and depth == 1 and previous.startswith(b'"'):
            name = _key(previous)
            if name == "topic" or (name == "events" and inside != 0):
                return None  # one event, or "events" twice
            awaiting = name == "events"
        previous, previous_end = token, match.end()
    if end < 0 or inside >= 0 or body[end:].strip(_SPACE):
        return None
    return elements


def _key(token: bytes) -> str | None:
    try:
        name = parse_json(token)
    except ValueError:
        return None
    return name if isinstance(name, str) else None
