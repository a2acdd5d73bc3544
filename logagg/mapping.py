"""Reading log lines that are not in logagg's schema: field mapping, presets, content ids
and CloudEvents.

A `Mapping` turns one decoded JSON line into event dicts in logagg's input schema, ready
for `logagg.models` to validate; a line it cannot map raises `MappingError` naming why.
Nothing here reads files, touches a store or prints. The rules are in the README
("Your logs").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from logagg import otlp
from logagg.identity import OCCURRENCE_WINDOW, Occurrences, content_id, keyed_id
from logagg.models import LosslessFloat, Mapped, Mapper, json_type
from logagg.timestamps import TIME_UNITS, TimeUnit, epoch_to_utc, utc_now

__all__ = [
    "KEYS",
    "OCCURRENCE_WINDOW",
    "PRESETS",
    "TARGETS",
    "Mapping",
    "MappingError",
    "content_id",
    "get_preset",
    "keyed_id",
    "parse_path",
]


TARGETS = ("topic", "event_id", "timestamp", "source")
KEYS: tuple[tuple[str, str], ...] = (
    ("topic", "event_id"),
    ("source", "id"),
    ("source", "event_id"),
)

_MISSING: Any = object()
_CE_REQUIRED = ("specversion", "id", "source", "type")
_CE_MAPPED = frozenset(("id", "source", "type", "time", "data", "data_base64"))
_RESERVED = frozenset(("topic", "event_id", "timestamp", "source", "payload"))

Path = tuple[str, ...]
Paths = tuple[tuple[str, Path], ...]  # fallbacks, first present non-null wins


class MappingError(ValueError):
    """A line that cannot be mapped to an event; the message is one line naming why."""


# --- paths -----------------------------------------------------------------------------


def parse_path(text: str) -> Path:
    """`"repo.name"` -> `("repo", "name")`; ValueError for an empty path or segment."""
    parts = tuple(text.split("."))
    if not text or "" in parts:
        raise ValueError(f"invalid field path {text!r}: use names joined by dots, e.g. repo.name")
    return parts


def _parse_paths(text: str) -> Paths:
    """`"timestamp,observed_timestamp"`: paths tried in order."""
    return tuple((one, parse_path(one)) for one in text.split(","))


def _lookup(obj: dict[str, Any], text: str, parts: Path) -> Any:
    """The value at a path, or _MISSING. A literal key `text` wins over walking `parts`."""
    value = obj.get(text, _MISSING)
    if value is not _MISSING or len(parts) == 1:
        return value
    current: Any = obj
    for part in parts:
        if type(current) is dict:
            current = current.get(part, _MISSING)
        elif type(current) is list and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return _MISSING
        if current is _MISSING:
            return _MISSING
    return current


def _first(obj: dict[str, Any], paths: Paths) -> tuple[Any, str, Path | None]:
    """The first present, non-null value of `paths`, with the path it was found at."""
    for text, parts in paths:
        value = _lookup(obj, text, parts)
        if value is not _MISSING and value is not None and value != "":
            return value, text, (text,) if text in obj else parts
    return _MISSING, ",".join(text for text, _ in paths), None


def _without(obj: dict[str, Any], paths: list[Path]) -> dict[str, Any]:
    """A copy of `obj` without the values at `paths`; a parent emptied by it is dropped."""
    top: set[str] = set()
    nested: dict[str, list[Path]] = {}
    for parts in paths:
        if len(parts) == 1:
            top.add(parts[0])
        else:
            nested.setdefault(parts[0], []).append(parts[1:])
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if key in top:
            continue
        if key in nested and type(value) is dict and value:
            value = _without(value, nested[key])
            if not value:
                continue
        out[key] = value
    return out


# --- values ----------------------------------------------------------------------------


def _name(value: Any, target: str, path: str) -> str | None:
    """A topic, event_id or source from the line: a string, an integer as text, or None."""
    if isinstance(value, str):
        return value
    if value is None or value is _MISSING:
        return None
    if type(value) is int:
        return str(value)
    raise MappingError(f"{target}: field '{path}' is {json_type(value)}, expected a string")


def _epoch(value: int | Decimal, unit: TimeUnit | None) -> str:
    try:
        return epoch_to_utc(value, unit)
    except ValueError as exc:
        raise MappingError(str(exc)) from None


def _timestamp(value: Any, unit: TimeUnit | None, path: str) -> str:
    """An RFC 3339 string as it is; an epoch number (or string of digits) converted."""
    if isinstance(value, str):
        if value[:1].isdigit() and value.isascii() and value.replace(".", "", 1).isdigit():
            return _epoch(Decimal(value) if "." in value else int(value), unit)
        return value
    kind = type(value)
    if kind is int:
        return _epoch(value, unit)
    if kind is LosslessFloat:
        return _epoch(Decimal(str(value)), unit)
    if kind is float and math.isfinite(value):
        return _epoch(Decimal(repr(value)), unit)
    if value is None or value is _MISSING:
        raise MappingError(f"missing timestamp: the line has no '{path}'")
    raise MappingError(
        f"timestamp: field '{path}' is {json_type(value)}, expected an RFC 3339 string or "
        "an epoch number"
    )


# --- the mapping -----------------------------------------------------------------------


@dataclass(frozen=True)
class Mapping:
    """How to read a JSON log line as logagg events (the README's "Your logs").

    `fields`: target -> dotted path, or several separated by commas (the first present,
    non-null one wins); `own_names`: a target without a path is read from the field of its
    own name (presets say every field they read instead); `payload_field`: path of the
    payload (None: the rest of the object); `topic`, `source`: constants where the line has
    none; `id_from_content`: hash the line when it has no id; `time_unit`: unit of epoch
    times (None: by magnitude); `cloudevents`: read CloudEvents 1.0 JSON; `otlp`: read
    OpenTelemetry log export requests (one event per record); `detect_cloudevents`: read
    lines that look like CloudEvents as such (default: when no field mapping is given);
    `key`: `("topic", "event_id")`, or `("source", "id")` to store event_id as
    `keyed_id(source, id)`.
    """

    fields: dict[str, str] = field(default_factory=dict)
    payload_field: str | None = None
    topic: str | None = None
    source: str | None = None
    id_from_content: bool = False
    time_unit: TimeUnit | None = None
    cloudevents: bool = False
    otlp: bool = False
    key: tuple[str, str] = ("topic", "event_id")
    own_names: bool = True
    detect_cloudevents: bool | None = None
    _paths: tuple[Paths, ...] = field(init=False, repr=False, compare=False)
    _payload: tuple[str, Path] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.fields) - set(TARGETS))
        if unknown:
            raise ValueError(
                f"unknown mapping target {unknown[0]!r} (targets: {', '.join(TARGETS)})"
            )
        if self.time_unit not in (None, *TIME_UNITS):
            raise ValueError(f"invalid time unit {self.time_unit!r} (use s, ms, us or ns)")
        if tuple(self.key) not in KEYS:
            raise ValueError(
                f"invalid key {','.join(self.key)!r} (use topic,event_id or source,id)"
            )
        for name in ("topic", "source"):
            if getattr(self, name) == "":
                raise ValueError(f"the constant {name} must not be empty")
        if (self.cloudevents or self.otlp) and (self.fields or self.payload_field):
            raise ValueError(
                "CloudEvents and OpenTelemetry have a fixed mapping: no field mapping or"
                " payload field"
            )
        paths = tuple(
            _parse_paths(self.fields[t])
            if t in self.fields
            else ((t, (t,)),)
            if self.own_names
            else ()
            for t in TARGETS
        )
        payload = None
        if self.payload_field is not None:
            payload = (self.payload_field, parse_path(self.payload_field))
        detect = self.detect_cloudevents
        if detect is None:
            detect = not (self.cloudevents or self.otlp or self.fields or self.payload_field)
        object.__setattr__(self, "fields", dict(self.fields))
        object.__setattr__(self, "key", tuple(self.key))
        object.__setattr__(self, "detect_cloudevents", detect)
        object.__setattr__(self, "_paths", paths)
        object.__setattr__(self, "_payload", payload)

    def with_default_source(self, name: str) -> Mapping:
        """This mapping with constant source `name` (a file name) unless it already has one."""
        return self if self.source is not None else replace(self, source=name)

    def override(
        self,
        *,
        fields: dict[str, str] | None = None,
        payload_field: str | None = None,
        topic: str | None = None,
        source: str | None = None,
        id_from_content: bool = False,
        time_unit: TimeUnit | None = None,
        key: tuple[str, str] | None = None,
    ) -> Mapping:
        """This mapping (a preset, say) with the options a user gave; fields merge by target."""
        fields = {**self.fields, **(fields or {})}
        payload_field = payload_field if payload_field is not None else self.payload_field
        detect = self.detect_cloudevents and not (fields or payload_field)
        return replace(
            self,
            fields=fields,
            payload_field=payload_field,
            topic=topic if topic is not None else self.topic,
            source=source if source is not None else self.source,
            id_from_content=id_from_content or self.id_from_content,
            time_unit=time_unit if time_unit is not None else self.time_unit,
            key=key if key is not None else self.key,
            detect_cloudevents=detect,
        )

    def for_input(self) -> Mapper:
        """A mapper for one input: it numbers identical lines (see `Occurrences`)."""
        occurrences = Occurrences()
        return lambda obj: self.events(obj, occurrences=occurrences)

    def apply(self, obj: Any, now: str | None = None) -> list[dict[str, Any]]:
        """The events of one decoded line; raises MappingError for the first that cannot be
        mapped."""
        events = []
        for event in self.events(obj, now):
            if isinstance(event, ValueError):
                raise event
            events.append(event)
        return events

    def events(
        self, obj: Any, now: str | None = None, occurrences: Occurrences | None = None
    ) -> Mapped:
        """The events of one decoded line, or for each the reason it cannot be one.

        One event per line, except a CloudEvents batch (a JSON array), which gives one per
        element, and an OpenTelemetry request, one per log record. `now` is the timestamp
        of a CloudEvent without `time` (default: current UTC time).
        """
        if self.otlp:
            try:
                return otlp.events(obj, source=self.source, occurrences=occurrences)
            except otlp.OtlpError as exc:
                return [exc]
        kind = type(obj)
        ce = self.cloudevents or (
            self.detect_cloudevents
            and (
                (kind is dict and "specversion" in obj)
                or (kind is list and bool(obj) and type(obj[0]) is dict and "specversion" in obj[0])
            )
        )
        try:
            if not ce:
                return [self._map(obj, occurrences)]
            if kind is not list:
                return [self._cloudevent(obj, now)]
        except MappingError as exc:
            return [exc]
        if now is None:
            now = utc_now()
        out: Mapped = []
        for item in obj:
            try:
                out.append(self._cloudevent(item, now))
            except MappingError as exc:
                out.append(exc)
        return out

    def _map(self, obj: Any, occurrences: Occurrences | None) -> dict[str, Any]:
        if type(obj) is not dict:
            raise MappingError(f"expected a JSON object, got {json_type(obj)}")
        t_paths, i_paths, ts_paths, s_paths = self._paths
        used: list[Path] = []
        value, t_text, t_used = _first(obj, t_paths)
        topic = _name(value, "topic", t_text) or self.topic
        if topic is None:
            raise MappingError(f"missing topic: the line has no '{t_text}' and no topic is set")
        value, s_text, s_used = _first(obj, s_paths)
        source = _name(value, "source", s_text) or self.source
        if source is None:
            raise MappingError(f"missing source: the line has no '{s_text}' and no source is set")
        value, i_text, i_used = _first(obj, i_paths)
        event_id = _name(value, "event_id", i_text)
        if not event_id:
            if not self.id_from_content:
                raise MappingError(
                    f"missing event_id: the line has no '{i_text}' (an id from the content "
                    "can be used instead)"
                )
            try:
                event_id = occurrences.content_id(obj) if occurrences else content_id(obj)
            except ValueError as exc:
                raise MappingError(str(exc)) from None
        if self.key[0] == "source":
            event_id = keyed_id(source, event_id)
        value, ts_text, ts_used = _first(obj, ts_paths)
        timestamp = _timestamp(value, self.time_unit, ts_text)
        for path in (t_used, s_used, i_used, ts_used):
            if path is not None:
                used.append(path)
        if self._payload is not None:
            p_text, p_parts = self._payload
            used.append((p_text,) if p_text in obj else p_parts)
        if all(len(parts) == 1 for parts in used):
            drop = {parts[0] for parts in used}
            rest = {k: v for k, v in obj.items() if k not in drop}
        else:
            rest = _without(obj, used)
        if self._payload is None:
            return {
                "topic": topic,
                "event_id": event_id,
                "timestamp": timestamp,
                "source": source,
                "payload": rest,
            }
        p_text, p_parts = self._payload
        value = _lookup(obj, p_text, p_parts)
        event = {k: v for k, v in rest.items() if k not in _RESERVED}
        event["topic"] = topic
        event["event_id"] = event_id
        event["timestamp"] = timestamp
        event["source"] = source
        if type(value) is dict:
            event["payload"] = value
        elif value is not None and value is not _MISSING:
            event["payload"] = {p_parts[-1]: value}
        return event

    def _cloudevent(self, obj: Any, now: str | None) -> dict[str, Any]:
        if type(obj) is not dict:
            raise MappingError(f"a CloudEvent is a JSON object, got {json_type(obj)}")
        for name in _CE_REQUIRED:
            value = obj.get(name)
            if value is None:
                raise MappingError(f"missing CloudEvents attribute '{name}'")
            if type(value) is not str:
                raise MappingError(
                    f"CloudEvents attribute '{name}' is {json_type(value)}, expected a string"
                )
            if not value:
                raise MappingError(f"CloudEvents attribute '{name}' is empty")
        version = obj["specversion"]
        if version.split(".", 1)[0] != "1":
            raise MappingError(f"unsupported CloudEvents specversion {version[:16]!r} (need 1.x)")
        time = obj.get("time")
        if time is None:
            time = now if now is not None else utc_now()
        elif type(time) is not str:
            raise MappingError(
                f"CloudEvents attribute 'time' is {json_type(time)}, expected an RFC 3339 string"
            )
        if "data_base64" in obj:
            if "data" in obj:
                raise MappingError("a CloudEvent has both 'data' and 'data_base64'")
            encoded = obj["data_base64"]
            if type(encoded) is not str:
                raise MappingError(
                    f"CloudEvents attribute 'data_base64' is {json_type(encoded)}, "
                    "expected a string"
                )
            payload: dict[str, Any] = {"data_base64": encoded}
        else:
            data = obj.get("data", _MISSING)
            if data is _MISSING:
                payload = {}
            elif type(data) is dict:
                payload = data
            else:
                payload = {"data": data}
        source = obj["source"]
        event_id = obj["id"] if self.key[0] == "topic" else keyed_id(source, obj["id"])
        return {
            "topic": obj["type"],
            "event_id": event_id,
            "timestamp": time,
            "source": source,
            "payload": payload,
            "cloudevents": {k: v for k, v in obj.items() if k not in _CE_MAPPED},
        }


# --- presets and options ---------------------------------------------------------------

PRESETS: dict[str, Mapping] = {
    "cloudevents": Mapping(cloudevents=True),
    "docker": Mapping(
        fields={"timestamp": "time"},
        topic="docker",
        id_from_content=True,
        own_names=False,
        detect_cloudevents=False,
    ),
    "pino": Mapping(
        fields={"topic": "name", "timestamp": "time", "source": "hostname"},
        topic="pino",
        id_from_content=True,
        own_names=False,
        detect_cloudevents=False,
    ),
    "bunyan": Mapping(
        fields={"topic": "name", "timestamp": "time", "source": "hostname"},
        topic="bunyan",
        id_from_content=True,
        own_names=False,
        detect_cloudevents=False,
    ),
    "structlog": Mapping(
        fields={"topic": "logger", "timestamp": "timestamp"},
        topic="structlog",
        id_from_content=True,
        own_names=False,
        detect_cloudevents=False,
    ),
    "journald": Mapping(
        fields={
            "topic": "_SYSTEMD_UNIT",
            "event_id": "__CURSOR",
            "timestamp": "__REALTIME_TIMESTAMP",
            "source": "_HOSTNAME",
        },
        topic="journald",
        time_unit="us",
        own_names=False,
        detect_cloudevents=False,
    ),
    "otlp": Mapping(otlp=True, detect_cloudevents=False),
    "gelf": Mapping(
        fields={"timestamp": "timestamp", "source": "host"},
        topic="gelf",
        id_from_content=True,
        time_unit="s",
        own_names=False,
        detect_cloudevents=False,
    ),
}


def get_preset(name: str) -> Mapping:
    """The preset called `name`; ValueError listing the presets for any other name."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown preset {name!r} (choose from {', '.join(sorted(PRESETS))})"
        ) from None
