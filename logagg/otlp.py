"""OpenTelemetry logs (OTLP) as logagg events: one event per LogRecord.

An export request (`ExportLogsServiceRequest`) arrives as OTLP/JSON (a decoded object:
lowerCamelCase keys, hex trace and span ids, 64-bit integers as strings) or as protobuf
bytes, which `request_from_protobuf` turns into the same shape. The rules are in the
README ("Your logs", and "Send from your shipper").
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from logagg.identity import Occurrences, content_id
from logagg.models import Mapped
from logagg.timestamps import epoch_to_utc

DEFAULT_TOPIC = "otel"
UID_ATTRIBUTE = "log.record.uid"


class OtlpError(ValueError):
    """A log record (or a request) that cannot be an event; one line naming why."""


def _field(obj: dict[str, Any], camel: str, snake: str) -> Any:
    """A field by its OTLP/JSON name, or its protobuf name (some senders use those)."""
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def _list(obj: dict[str, Any], camel: str, snake: str, what: str) -> list[Any]:
    value = _field(obj, camel, snake)
    if value is None:
        return []
    if type(value) is not list:
        raise OtlpError(f"OTLP {what} is not an array")
    return value


def any_value(value: Any) -> Any:
    """An OTLP AnyValue as plain JSON: strings, numbers, booleans, arrays and objects as
    themselves, bytes as `{"base64": ...}`, an empty value as null."""
    if type(value) is not dict:
        raise OtlpError("an OTLP AnyValue is not an object")
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return value["boolValue"]
    if "intValue" in value:
        return _int(value["intValue"], "intValue")
    if "doubleValue" in value:
        return value["doubleValue"]
    if "bytesValue" in value:
        return {"base64": value["bytesValue"]}
    if "arrayValue" in value:
        return [any_value(v) for v in _list(value["arrayValue"] or {}, "values", "values", "array")]
    if "kvlistValue" in value:
        return attributes(_list(value["kvlistValue"] or {}, "values", "values", "kvlist"))
    return None


def attributes(pairs: list[Any]) -> dict[str, Any]:
    """A list of OTLP KeyValue as one object (a key given twice: the last one, as OTLP
    requires keys to be unique)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if type(pair) is not dict or not isinstance(pair.get("key"), str):
            raise OtlpError("an OTLP attribute has no key")
        out[pair["key"]] = any_value(pair.get("value") or {})
    return out


def _attributes_of(obj: dict[str, Any]) -> dict[str, Any]:
    return attributes(_list(obj, "attributes", "attributes", "attributes"))


def _int(value: Any, name: str) -> int:
    if type(value) is int:
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    raise OtlpError(f"OTLP {name} is not an integer: {str(value)[:32]!r}")


def _hex_id(value: Any, name: str) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise OtlpError(f"OTLP {name} is not hex")
    return value.lower()


def _records(doc: Any) -> Iterator[tuple[dict[str, Any], dict[str, Any], Any]]:
    """(resource attributes, scope, log record) for every record of a request, in order."""
    if type(doc) is not dict:
        raise OtlpError("an OTLP logs request is a JSON object with resourceLogs")
    for resource_logs in _list(doc, "resourceLogs", "resource_logs", "resourceLogs"):
        if type(resource_logs) is not dict:
            raise OtlpError("OTLP resourceLogs holds a non-object")
        resource = attributes(
            _list(resource_logs.get("resource") or {}, "attributes", "attributes", "attributes")
        )
        for scope_logs in _list(resource_logs, "scopeLogs", "scope_logs", "scopeLogs"):
            if type(scope_logs) is not dict:
                raise OtlpError("OTLP scopeLogs holds a non-object")
            scope_doc = scope_logs.get("scope") or {}
            scope = {
                k: v
                for k, v in (
                    ("name", scope_doc.get("name")),
                    ("version", scope_doc.get("version")),
                    (
                        "attributes",
                        attributes(_list(scope_doc, "attributes", "attributes", "attributes")),
                    ),
                )
                if v
            }
            for record in _list(scope_logs, "logRecords", "log_records", "logRecords"):
                yield resource, scope, record


def events(
    doc: Any, *, source: str | None = None, occurrences: Occurrences | None = None
) -> Mapped:
    """The events of one export request, or for each record the reason it cannot be one.

    topic: `service.name` (else `otel`); timestamp: `timeUnixNano`, else
    `observedTimeUnixNano`; source: `service.instance.id`, else `host.name`, else
    `source`; event_id: the `log.record.uid` attribute, else a content id of the event
    without `source` (numbered by `occurrences`), so that the same record read from
    elsewhere has the same id. Raises OtlpError when the request itself is not one.
    """
    out: Mapped = []
    for resource, scope, record in list(_records(doc)):
        try:
            out.append(_event(resource, scope, record, source, occurrences))
        except (OtlpError, ValueError) as exc:
            out.append(exc if isinstance(exc, OtlpError) else OtlpError(str(exc)))
    return out


def _event(
    resource: dict[str, Any],
    scope: dict[str, Any],
    record: Any,
    default_source: str | None,
    occurrences: Occurrences | None,
) -> dict[str, Any]:
    if type(record) is not dict:
        raise OtlpError("an OTLP log record is not an object")
    nanos = _int(_field(record, "timeUnixNano", "time_unix_nano") or 0, "timeUnixNano")
    if not nanos:
        nanos = _int(
            _field(record, "observedTimeUnixNano", "observed_time_unix_nano") or 0,
            "observedTimeUnixNano",
        )
    if not nanos:
        raise OtlpError("missing timestamp: neither timeUnixNano nor observedTimeUnixNano")
    record_attributes = _attributes_of(record)
    payload: dict[str, Any] = {}
    if record.get("body"):
        payload["body"] = any_value(record["body"])
    for name, value in (
        ("severity_text", _field(record, "severityText", "severity_text")),
        ("severity_number", _field(record, "severityNumber", "severity_number")),
        ("event_name", _field(record, "eventName", "event_name")),
        ("attributes", record_attributes),
        ("resource", resource),
        ("scope", scope),
        ("trace_id", _hex_id(_field(record, "traceId", "trace_id"), "traceId")),
        ("span_id", _hex_id(_field(record, "spanId", "span_id"), "spanId")),
        ("flags", _field(record, "flags", "flags")),
    ):
        if value is not None and value != "" and value != {} and value is not False and value != 0:
            payload[name] = value
    topic = resource.get("service.name")
    source = resource.get("service.instance.id") or resource.get("host.name") or default_source
    event = {
        "topic": topic if isinstance(topic, str) and topic else DEFAULT_TOPIC,
        "timestamp": epoch_to_utc(Decimal(nanos), "ns"),
        "source": source if isinstance(source, str) and source else "otel",
        "payload": payload,
    }
    uid = record_attributes.get(UID_ATTRIBUTE)
    if isinstance(uid, str) and uid:
        event["event_id"] = uid
    else:
        # The record's own content (its resource included), not a source given from
        # outside: a file name or a client address differs between two reads of one record.
        own = {"topic": event["topic"], "timestamp": event["timestamp"], "payload": payload}
        event["event_id"] = occurrences.content_id(own) if occurrences else content_id(own)
    return event


def request_from_protobuf(data: bytes) -> dict[str, Any]:
    """An `ExportLogsServiceRequest` in protobuf as the OTLP/JSON shape `events` reads.
    Needs the `opentelemetry-proto` package; raises OtlpError for bytes that are not one."""
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    request = ExportLogsServiceRequest()
    try:
        request.ParseFromString(data)
    except DecodeError as exc:
        raise OtlpError(f"not an OTLP logs request in protobuf: {exc}") from None
    return {
        "resourceLogs": [
            {
                "resource": {"attributes": [_pb_pair(kv) for kv in rl.resource.attributes]},
                "scopeLogs": [
                    {
                        "scope": {
                            "name": sl.scope.name,
                            "version": sl.scope.version,
                            "attributes": [_pb_pair(kv) for kv in sl.scope.attributes],
                        },
                        "logRecords": [_pb_record(r) for r in sl.log_records],
                    }
                    for sl in rl.scope_logs
                ],
            }
            for rl in request.resource_logs
        ]
    }


def _pb_record(record: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "timeUnixNano": record.time_unix_nano,
        "observedTimeUnixNano": record.observed_time_unix_nano,
        "severityNumber": record.severity_number,
        "severityText": record.severity_text,
        "attributes": [_pb_pair(kv) for kv in record.attributes],
        "flags": record.flags,
        "traceId": record.trace_id.hex(),
        "spanId": record.span_id.hex(),
        "eventName": record.event_name,
    }
    if record.HasField("body"):
        doc["body"] = _pb_value(record.body)
    return doc


def _pb_pair(pair: Any) -> dict[str, Any]:
    return {"key": pair.key, "value": _pb_value(pair.value)}


def _pb_value(value: Any) -> dict[str, Any]:
    kind = value.WhichOneof("value")
    if kind is None:
        return {}
    if kind == "array_value":
        return {"arrayValue": {"values": [_pb_value(v) for v in value.array_value.values]}}
    if kind == "kvlist_value":
        return {"kvlistValue": {"values": [_pb_pair(kv) for kv in value.kvlist_value.values]}}
    if kind == "bytes_value":
        return {"bytesValue": base64.b64encode(value.bytes_value).decode()}
    if kind == "double_value":
        return {"doubleValue": value.double_value}
    camel = {"string_value": "stringValue", "bool_value": "boolValue", "int_value": "intValue"}
    return {camel[kind]: getattr(value, kind)}
