"""NDJSON publish bodies: one event a line, read as `ingest` reads a file.

A line is an event in logagg's schema (a CloudEvent, or a batch of them, is recognised by
its `"specversion"`), or with a preset (`?preset=pino`) a line of that format; a preset's
lines without a source of their own get `?source=`, else the client's address. Identical
lines of one body are numbered by occurrence, so the same body sent again adds nothing.
Each invalid line is one error with its line number (and, for an element of a batch on
one line, its index from 1).
"""

from __future__ import annotations

from fastapi import HTTPException

from logagg.http.body import Parsed
from logagg.mapping import PRESETS, Mapping, get_preset
from logagg.models import decode_lines

MEDIA_TYPES = frozenset(
    {
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/jsonlines",
        "application/x-jsonlines",
    }
)
NAME = "body"  # how rejects name the input
_CLOUDEVENTS = PRESETS["cloudevents"]


def mapping_for(preset: str | None, source: str | None, client: str) -> Mapping | None:
    """The mapping of a body: the preset's, with `source` (else `client`) as the source of
    lines that have none; None without a preset (`source` is then refused: logagg's own
    lines carry theirs). Raises HTTPException(422) for an unknown preset."""
    if preset is None:
        if source is not None:
            raise HTTPException(
                422, "?source= goes with a ?preset=: events in logagg's schema carry their own"
            )
        return None
    try:
        mapping = get_preset(preset)
    except ValueError as exc:
        raise HTTPException(422, f"preset: {exc}") from None
    return mapping.with_default_source(source or client)


def read_ndjson(body: bytes, mapping: Mapping | None) -> Parsed:
    """The events of an NDJSON body (blank lines skipped), each validated on its own."""
    lines = [
        (number, line.strip(b" \t\r"))
        for number, line in enumerate(body.split(b"\n"), 1)
        if line.strip(b" \t\r")
    ]
    mapper = mapping.for_input() if mapping is not None else None
    rows, rejects = decode_lines(lines, NAME, mapper, _CLOUDEVENTS.events)
    errors = []
    for reject in rejects:
        error: dict[str, object] = {"line": reject.line}
        if reject.index is not None:
            error["index"] = reject.index
        error["error"] = reject.reason
        errors.append(error)
    return Parsed(rows, errors, single=False)
