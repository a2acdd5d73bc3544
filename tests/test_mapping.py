"""Mapping JSON log lines to events: presets over samples/formats, paths, times, CloudEvents."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import RowView

from logagg.cli.ingest import parse_key, parse_map_options
from logagg.mapping import (
    PRESETS,
    Mapping,
    MappingError,
    content_id,
    get_preset,
)
from logagg.models import validate_event
from logagg.timestamps import epoch_to_utc

FORMATS = Path(__file__).resolve().parent.parent / "samples" / "formats"
NOW = "2025-06-01T00:00:00.000000Z"


def lines(name: str) -> list[Any]:
    """The decoded lines of a sample file."""
    with open(FORMATS / f"{name}.jsonl", "rb") as handle:
        return [orjson.loads(raw) for raw in handle if raw.strip()]


def rows(events: list[dict[str, Any]]) -> list[RowView]:
    """Validate mapped events as logagg does and return their rows."""
    return [RowView(*validate_event(event)) for event in events]


def one(mapping: Mapping, obj: Any) -> dict[str, Any]:
    events = mapping.apply(obj, now=NOW)
    assert len(events) == 1
    return events[0]


def row_of(mapping: Mapping, obj: Any) -> RowView:
    return rows([one(mapping, obj)])[0]


def error(mapping: Mapping, obj: Any) -> str:
    with pytest.raises(MappingError) as caught:
        mapping.apply(obj, now=NOW)
    message = str(caught.value)
    assert "\n" not in message
    return message


def key(row: RowView) -> tuple[str, str]:
    return row.topic, row.event_id


# --- presets over their sample files ---------------------------------------------------

LINE_PRESETS = ["docker", "pino", "bunyan", "structlog", "journald", "gelf"]


@pytest.mark.parametrize("name", LINE_PRESETS)
def test_preset_maps_every_sample_line_to_a_valid_event(name: str) -> None:
    mapping = PRESETS[name].with_default_source(f"{name}.jsonl")
    decoded = lines(name)
    assert 5 <= len(decoded) <= 10
    events = [event for obj in decoded for event in mapping.apply(obj)]
    assert len(events) == len(decoded)
    stored = rows(events)
    assert all(row.timestamp.endswith("Z") and len(row.timestamp) == 27 for row in stored)
    assert all(row.extra is None for row in stored)
    assert all(json.loads(row.payload) for row in stored)


@pytest.mark.parametrize("name", LINE_PRESETS)
def test_preset_sample_lines_are_each_an_event_and_the_same_again_on_a_second_read(
    name: str,
) -> None:
    mapping = PRESETS[name].with_default_source(f"{name}.jsonl")
    decoded = lines(name)
    texts = [orjson.dumps(obj, option=orjson.OPT_SORT_KEYS) for obj in decoded]
    assert len(set(texts)) < len(texts), "each sample repeats a line"
    first, second = mapping.for_input(), mapping.for_input()
    keys = [key(RowView(*validate_event(first(obj)[0]))) for obj in decoded]
    again = [key(RowView(*validate_event(second(obj)[0]))) for obj in decoded]
    if PRESETS[name].id_from_content:
        assert len(set(keys)) == len(keys)  # a line that repeats is another event
    else:  # ids of its own: a line that repeats is a re-sent event
        assert len(set(keys)) == len(set(texts))
    assert again == keys  # reading the same input again finds the same ids


def test_docker_preset() -> None:
    mapping = PRESETS["docker"].with_default_source("/var/lib/docker/containers/4f1c/4f1c-json.log")
    first = row_of(mapping, lines("docker")[0])
    assert first.topic == "docker"
    assert first.source == "/var/lib/docker/containers/4f1c/4f1c-json.log"
    assert first.timestamp == "2024-05-14T09:21:07.112233Z"  # nanoseconds truncated
    assert json.loads(first.payload) == {
        "log": "2024/05/14 09:21:07 [notice] 1#1: start worker processes\n",
        "stream": "stderr",
    }
    assert len(first.event_id) == 32
    assert first.event_id == content_id(lines("docker")[0])


def test_docker_preset_without_a_source_names_it() -> None:
    assert "missing source" in error(PRESETS["docker"], lines("docker")[0])
    assert one(PRESETS["docker"].override(source="nginx"), lines("docker")[0])["source"] == "nginx"


def test_pino_preset() -> None:
    decoded = lines("pino")
    first = row_of(PRESETS["pino"], decoded[0])
    assert (first.topic, first.source) == ("checkout", "web-1")
    assert first.timestamp == "2024-05-14T09:21:07.123000Z"
    assert json.loads(first.payload) == {
        "level": 30,
        "pid": 4211,
        "msg": "server listening",
        "port": 3000,
    }
    nameless = row_of(PRESETS["pino"], decoded[-1])
    assert (nameless.topic, nameless.source) == ("pino", "worker-2")
    assert json.loads(row_of(PRESETS["pino"], decoded[3]).payload)["err"]["message"] == (
        "card declined"
    )


def test_bunyan_preset() -> None:
    decoded = lines("bunyan")
    first = row_of(PRESETS["bunyan"], decoded[0])
    assert (first.topic, first.source) == ("myservice", "banana.local")
    assert first.timestamp == "2013-01-04T18:46:23.851000Z"
    assert json.loads(first.payload) == {"pid": 40161, "level": 30, "msg": "hi", "v": 0}
    offset = row_of(PRESETS["bunyan"], decoded[-1])
    assert (offset.topic, offset.timestamp) == ("billing", "2013-01-04T17:47:01.500000Z")


def test_structlog_preset() -> None:
    mapping = PRESETS["structlog"].with_default_source("app.log")
    decoded = lines("structlog")
    first = row_of(mapping, decoded[0])
    assert (first.topic, first.source) == ("auth", "app.log")
    assert first.timestamp == "2024-05-14T09:21:07.123456Z"
    assert json.loads(first.payload) == {
        "event": "user logged in",
        "user": "alice",
        "ip": "10.0.0.7",
        "level": "info",
    }
    epoch = row_of(mapping, decoded[2])  # TimeStamper() without fmt: epoch seconds
    assert (epoch.topic, epoch.timestamp) == ("structlog", "2024-05-14T09:21:10.250000Z")


def test_journald_preset() -> None:
    decoded = lines("journald")
    nginx = row_of(PRESETS["journald"], decoded[1])
    assert nginx.topic == "nginx.service"
    assert nginx.source == "web-1"
    assert nginx.event_id == decoded[1]["__CURSOR"]
    assert nginx.timestamp == "2024-05-14T09:21:07.597780Z"  # a string of microseconds
    payload = json.loads(nginx.payload)
    assert payload["MESSAGE"] == '10.0.0.7 - - "GET /healthz HTTP/1.1" 200 2'
    assert payload["SYSLOG_IDENTIFIER"] == "nginx"
    assert not {"__CURSOR", "__REALTIME_TIMESTAMP", "_HOSTNAME", "_SYSTEMD_UNIT"} & set(payload)
    kernel = row_of(PRESETS["journald"], decoded[2])
    assert kernel.topic == "journald"  # no _SYSTEMD_UNIT


def test_journald_line_without_cursor_is_rejected() -> None:
    line = {k: v for k, v in lines("journald")[0].items() if k != "__CURSOR"}
    assert "missing event_id" in error(PRESETS["journald"], line)
    assert "__CURSOR" in error(PRESETS["journald"], line)


def test_gelf_preset() -> None:
    first = row_of(PRESETS["gelf"], lines("gelf")[0])
    assert (first.topic, first.source) == ("gelf", "example.org")
    assert first.timestamp == "2013-11-21T17:11:02.307200Z"
    payload = json.loads(first.payload)
    assert payload["_user_id"] == 9001
    assert payload["short_message"].startswith("A short message")
    assert "host" not in payload and "timestamp" not in payload
    integral = row_of(PRESETS["gelf"], lines("gelf")[-1])  # an integer epoch is fine too
    assert integral.timestamp == "2024-05-14T09:21:20.000000Z"


def test_every_preset_is_listed_and_unknown_ones_are_named() -> None:
    assert set(PRESETS) == {*LINE_PRESETS, "cloudevents", "otlp"}
    assert get_preset("gelf") is PRESETS["gelf"]
    with pytest.raises(ValueError, match="unknown preset 'syslog'.*bunyan, cloudevents"):
        get_preset("syslog")


# --- content ids -----------------------------------------------------------------------


def test_content_id_ignores_key_order_and_whitespace() -> None:
    a = orjson.loads(b'{"msg":"hi","level":30,"ctx":{"b":1,"a":[1,2]},"name":"caf\\u00e9"}')
    b = orjson.loads(
        '{ "name" : "café",\n "ctx": { "a": [1, 2], "b": 1 },  "level": 30, "msg": "hi" }'
    )
    assert content_id(a) == content_id(b)
    assert len(content_id(a)) == 32
    assert all(c in "0123456789abcdef" for c in content_id(a))


def test_content_id_changes_with_any_value() -> None:
    base = {"msg": "hi", "level": 30, "ctx": {"a": [1, 2]}}
    for other in (
        {"msg": "hi!", "level": 30, "ctx": {"a": [1, 2]}},
        {"msg": "hi", "level": 31, "ctx": {"a": [1, 2]}},
        {"msg": "hi", "level": 30, "ctx": {"a": [2, 1]}},
        {"msg": "hi", "level": 30, "ctx": {"a": [1, 2]}, "x": None},
    ):
        assert content_id(other) != content_id(base)


def test_content_id_is_the_hash_of_the_canonical_json() -> None:
    expected = hashlib.sha256('{"a":"é","b":1}'.encode()).hexdigest()[:32]
    assert content_id({"b": 1, "a": "é"}) == expected


def test_content_id_of_an_integer_beyond_64_bits() -> None:
    assert content_id({"n": 2**70, "a": 1}) == content_id({"a": 1, "n": 2**70})


def test_id_from_content_gives_a_resent_line_the_same_key() -> None:
    mapping = Mapping(topic="app", source="host", id_from_content=True)
    first = one(mapping, orjson.loads(b'{"timestamp":"2025-01-01T00:00:00Z","msg":"x","n":1}'))
    again = one(mapping, orjson.loads(b'{"n": 1, "msg": "x", "timestamp": "2025-01-01T00:00:00Z"}'))
    assert first["event_id"] == again["event_id"]
    assert first == again


def test_id_in_the_line_wins_over_the_content_id() -> None:
    mapping = Mapping(fields={"event_id": "id"}, topic="t", source="s", id_from_content=True)
    line = {"id": "abc", "timestamp": "2025-01-01T00:00:00Z"}
    assert one(mapping, line)["event_id"] == "abc"
    del line["id"]
    assert one(mapping, line)["event_id"] == content_id(line)
    assert one(mapping, {**line, "id": ""})["event_id"] == content_id({**line, "id": ""})


# --- timestamps ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1715678467, "2024-05-14T09:21:07.000000Z"),
        (1715678467.25, "2024-05-14T09:21:07.250000Z"),
        (1715678467123, "2024-05-14T09:21:07.123000Z"),
        (1715678467123.5, "2024-05-14T09:21:07.123500Z"),
        (1715678467123456, "2024-05-14T09:21:07.123456Z"),
        (1715678467123456789, "2024-05-14T09:21:07.123456Z"),  # nanoseconds, truncated
        (315532800, "1980-01-01T00:00:00.000000Z"),  # the first plausible second
        (4102444799999, "2099-12-31T23:59:59.999000Z"),  # the last plausible millisecond
        ("1715678467123456", "2024-05-14T09:21:07.123456Z"),
        ("1715678467", "2024-05-14T09:21:07.000000Z"),
        ("1385053862.3072", "2013-11-21T17:11:02.307200Z"),
    ],
)
def test_epoch_unit_detected_by_magnitude(value: Any, expected: str) -> None:
    event = one(Mapping(topic="t", source="s"), {"event_id": "e", "timestamp": value})
    assert event["timestamp"] == expected
    assert rows([event])[0].timestamp == expected


@pytest.mark.parametrize(
    ("value", "read_as"),
    [
        (0, "s is 1970-01-01"),
        (-86400, "s is 1969-12-31"),
        (315532799, "s is 1979-12-31"),  # one second before 1980
        (99_999_999_999, "s is 5138-11-16"),  # just below 1e11: seconds
        (100_000_000_000, "ms is 1973-03-03"),  # 1e11: milliseconds
        (99_999_999_999_999, "ms is 5138-11-16"),  # just below 1e14: ms
        (100_000_000_000_000, "us is 1973-03-03"),  # 1e14: microseconds
        (10**20, "ns is 5138-11-16"),
    ],
)
def test_an_epoch_of_ambiguous_unit_is_refused_never_stored(value: Any, read_as: str) -> None:
    message = error(Mapping(topic="t", source="s"), {"event_id": "e", "timestamp": value})
    assert message.startswith(f"timestamp: epoch {value} read as {read_as}, outside 1980..2099")
    assert "unit is ambiguous" in message
    unit = read_as.split()[0]
    explicit = Mapping(topic="t", source="s", time_unit=unit)  # type: ignore[arg-type]
    assert one(explicit, {"event_id": "e", "timestamp": value})["timestamp"].startswith(
        read_as.split()[-1]
    )


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (1715678467, "s", "2024-05-14T09:21:07.000000Z"),
        (1715678467, "ms", "1970-01-20T20:34:38.467000Z"),
        (1715678467, "us", "1970-01-01T00:28:35.678467Z"),
        (1715678467123, "ms", "2024-05-14T09:21:07.123000Z"),
        (1385053862.3072, "s", "2013-11-21T17:11:02.307200Z"),
        ("1715678467123456", "us", "2024-05-14T09:21:07.123456Z"),
        (17156784, "s", "1970-07-18T13:46:24.000000Z"),  # small, but the unit says seconds
        (0, "s", "1970-01-01T00:00:00.000000Z"),  # a unit given is taken at its word
        (1715678467123456789, "ns", "2024-05-14T09:21:07.123456Z"),
    ],
)
def test_explicit_time_unit(value: Any, unit: Any, expected: str) -> None:
    mapping = Mapping(topic="t", source="s", time_unit=unit)
    assert one(mapping, {"event_id": "e", "timestamp": value})["timestamp"] == expected
    assert epoch_to_utc(float(value) if unit == "s" else int(value), unit) == expected


def test_pino_seconds_are_told_from_milliseconds_by_magnitude() -> None:
    """pino's stdTimeFunctions.unixTime writes seconds, the default writes milliseconds."""
    pino = get_preset("pino")
    seconds = one(pino, {"time": 1715678467, "msg": "a", "hostname": "h"})
    millis = one(pino, {"time": 1715678467000, "msg": "a", "hostname": "h"})
    assert seconds["timestamp"] == millis["timestamp"] == "2024-05-14T09:21:07.000000Z"


def test_rfc3339_strings_pass_through_unchanged() -> None:
    mapping = Mapping(topic="t", source="s")
    for text in ("2025-01-01T12:00:00+07:00", "2025-01-01T12:00:00.5Z", "2025-01-01 12:00:00"):
        assert one(mapping, {"event_id": "e", "timestamp": text})["timestamp"] == text
    assert row_of(mapping, {"event_id": "e", "timestamp": "2025-01-01T12:00:00+07:00"}) == (
        RowView("t", "e", "2025-01-01T05:00:00.000000Z", "s", "{}", None)
    )


@pytest.mark.parametrize("value", [10**20, -(10**20), 1e300])
def test_epoch_out_of_range_is_a_mapping_error(value: Any) -> None:
    mapping = Mapping(topic="t", source="s", time_unit="s")
    message = error(mapping, {"event_id": "e", "timestamp": value})
    assert message.startswith("timestamp: epoch") and "out of range" in message


@pytest.mark.parametrize(
    ("value", "kind"), [(True, "boolean"), ({"s": 1}, "object"), ([1], "array")]
)
def test_timestamp_of_a_wrong_type_is_named(value: Any, kind: str) -> None:
    message = error(Mapping(topic="t", source="s"), {"event_id": "e", "timestamp": value})
    assert message.startswith(f"timestamp: field 'timestamp' is {kind}")


def test_a_bad_time_string_is_left_to_the_event_validation() -> None:
    event = one(Mapping(topic="t", source="s"), {"event_id": "e", "timestamp": "yesterday"})
    with pytest.raises(ValueError, match="timestamp"):
        validate_event(event)


# --- field mapping ---------------------------------------------------------------------

GITHUB_EVENT = {
    "id": "2489651045",
    "type": "CreateEvent",
    "actor": {"id": 665991, "login": "petroav"},
    "repo": {"id": 28688495, "name": "petroav/6.828", "url": "https://api.github.com/repos/x"},
    "payload": {"ref": "master", "ref_type": "branch"},
    "public": True,
    "created_at": "2015-01-01T15:00:00Z",
}
GITHUB_MAPPING = Mapping(
    fields=parse_map_options(
        ["topic=type", "event_id=id", "timestamp=created_at", "source=repo.name"]
    )
)


def test_dotted_paths_and_the_rest_of_the_object_as_payload() -> None:
    event = one(GITHUB_MAPPING, GITHUB_EVENT)
    assert event == {
        "topic": "CreateEvent",
        "event_id": "2489651045",
        "timestamp": "2015-01-01T15:00:00Z",
        "source": "petroav/6.828",
        "payload": {
            "actor": {"id": 665991, "login": "petroav"},
            "repo": {"id": 28688495, "url": "https://api.github.com/repos/x"},
            "payload": {"ref": "master", "ref_type": "branch"},
            "public": True,
        },
    }
    assert GITHUB_EVENT["repo"]["name"] == "petroav/6.828"  # the input is not changed
    rows([event])


def test_a_parent_emptied_by_a_nested_path_is_dropped() -> None:
    mapping = Mapping(fields={"source": "meta.host", "topic": "meta.app"}, id_from_content=True)
    line = {"meta": {"host": "h1", "app": "shop"}, "timestamp": 1735689601, "msg": "x"}
    event = one(mapping, line)
    assert (event["topic"], event["source"]) == ("shop", "h1")
    assert event["payload"] == {"msg": "x"}


def test_deep_paths_array_indexes_and_literal_dotted_keys() -> None:
    mapping = Mapping(
        fields={"topic": "log.logger", "source": "host.names.0", "event_id": "trace.ids.1"}
    )
    line = {
        "log.logger": "ecs-app",  # a key holding a dot (Elastic Common Schema style)
        "host": {"names": ["web-1", "web-1.example"]},
        "trace": {"ids": ["a", "b"]},
        "timestamp": "2025-01-01T00:00:00Z",
        "message": "hi",
    }
    event = one(mapping, line)
    assert (event["topic"], event["source"], event["event_id"]) == ("ecs-app", "web-1", "b")
    assert event["payload"] == {
        "host": {"names": ["web-1", "web-1.example"]},  # array elements are not removed
        "trace": {"ids": ["a", "b"]},
        "message": "hi",
    }


def test_a_nested_path_beats_nothing_and_literal_key_beats_the_nested_path() -> None:
    mapping = Mapping(fields={"topic": "a.b"}, source="s")
    line = {"a.b": "literal", "a": {"b": "nested"}, "event_id": "e", "timestamp": 1735689600}
    event = one(mapping, line)
    assert event["topic"] == "literal"
    assert event["payload"] == {"a": {"b": "nested"}}
    assert error(mapping, {"a": "text", "event_id": "e", "timestamp": 1735689600}).startswith(
        "missing topic: the line has no 'a.b'"
    )


def test_an_unmapped_target_is_read_from_its_own_name() -> None:
    mapping = Mapping(fields={"timestamp": "ts"})
    event = one(mapping, {"topic": "t", "event_id": "e", "source": "s", "ts": 1735689600, "x": 1})
    assert event == {
        "topic": "t",
        "event_id": "e",
        "timestamp": "2025-01-01T00:00:00.000000Z",
        "source": "s",
        "payload": {"x": 1},
    }


def test_constants_fill_in_only_where_the_line_has_none() -> None:
    mapping = Mapping(fields={"topic": "app", "source": "host"}, topic="default", source="here")
    base = {"event_id": "e", "timestamp": 1735689600}
    assert one(mapping, {**base, "app": "shop", "host": "h"})["topic"] == "shop"
    assert one(mapping, {**base, "app": "shop", "host": "h"})["source"] == "h"
    assert one(mapping, {**base, "app": None})["topic"] == "default"
    assert one(mapping, base)["source"] == "here"


def test_integer_names_become_text() -> None:
    mapping = Mapping(fields={"event_id": "id", "source": "pid"}, topic="t")
    event = one(mapping, {"id": 2489651045, "pid": 7, "timestamp": 1735689600})
    assert (event["event_id"], event["source"]) == ("2489651045", "7")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ({"id": 1.5}, "event_id: field 'id' is number, expected a string"),
        ({"id": True}, "event_id: field 'id' is boolean, expected a string"),
        ({"id": {"a": 1}}, "event_id: field 'id' is object, expected a string"),
    ],
)
def test_names_of_a_wrong_type_are_named(line: dict[str, Any], expected: str) -> None:
    mapping = Mapping(fields={"event_id": "id"}, topic="t", source="s")
    assert error(mapping, {**line, "timestamp": 1735689600}) == expected


@pytest.mark.parametrize(
    ("drop", "expected"),
    [
        ("type", "missing topic: the line has no 'type'"),
        ("id", "missing event_id: the line has no 'id'"),
        ("created_at", "missing timestamp: the line has no 'created_at'"),
        ("repo", "missing source: the line has no 'repo.name'"),
    ],
)
def test_missing_fields_are_named(drop: str, expected: str) -> None:
    line = {k: v for k, v in GITHUB_EVENT.items() if k != drop}
    assert error(GITHUB_MAPPING, line).startswith(expected)


def test_a_null_field_counts_as_missing() -> None:
    assert error(GITHUB_MAPPING, {**GITHUB_EVENT, "created_at": None}).startswith(
        "missing timestamp"
    )
    assert error(GITHUB_MAPPING, {**GITHUB_EVENT, "id": None}).startswith("missing event_id")


@pytest.mark.parametrize(("value", "kind"), [([1, 2], "array"), ("x", "string"), (3, "number")])
def test_a_line_that_is_not_an_object_is_a_mapping_error(value: Any, kind: str) -> None:
    assert error(GITHUB_MAPPING, value) == f"expected a JSON object, got {kind}"


def test_payload_field_keeps_the_other_fields_at_the_top_level() -> None:
    mapping = Mapping(fields={"topic": "kind"}, payload_field="body", source="s")
    event = one(
        mapping, {"kind": "k", "event_id": "e", "timestamp": 1735689600, "body": {"a": 1}, "x": 2}
    )
    assert event["payload"] == {"a": 1}
    assert event["x"] == 2
    row = rows([event])[0]
    assert json.loads(row.extra or "{}") == {"x": 2}


def test_payload_field_wraps_other_values_and_may_be_absent() -> None:
    mapping = Mapping(payload_field="data.value", topic="t", source="s")
    base = {"event_id": "e", "timestamp": 1735689600}
    assert one(mapping, {**base, "data": {"value": "text"}})["payload"] == {"value": "text"}
    assert one(mapping, {**base, "data": {"value": [1]}, "k": 1})["payload"] == {"value": [1]}
    event = one(mapping, {**base, "data": {"value": {"a": 1}, "more": 2}})
    assert event["payload"] == {"a": 1}
    assert event["data"] == {"more": 2}  # what the path did not take stays
    absent = one(mapping, base)
    assert "payload" not in absent
    assert rows([absent])[0].payload == "{}"


def test_logagg_lines_with_a_default_topic() -> None:
    mapping = Mapping(topic="deploy", payload_field="payload")
    line = {"event_id": "b-417", "timestamp": "2025-01-01T00:00:00Z", "source": "ci"}
    event = one(mapping, {**line, "payload": {"status": "ok"}, "region": "eu"})
    assert event == {**line, "topic": "deploy", "payload": {"status": "ok"}, "region": "eu"}


def test_source_id_key_rule_for_any_mapping() -> None:
    mapping = GITHUB_MAPPING.override(key=("source", "event_id"))
    event = one(mapping, GITHUB_EVENT)
    assert event["event_id"] == "petroav/6.828 2489651045"
    assert event["topic"] == "CreateEvent"


# --- CloudEvents -----------------------------------------------------------------------

CE = PRESETS["cloudevents"]
CE_SOURCE_KEY = CE.override(key=("source", "id"))


def ce(**attrs: Any) -> dict[str, Any]:
    """A valid CloudEvent with `attrs` replaced (None drops an attribute)."""
    doc: dict[str, Any] = {
        "specversion": "1.0",
        "type": "com.example.object.deleted",
        "source": "/mycontext",
        "id": "C234-1234-1234",
        "time": "2018-04-05T17:31:00Z",
        "datacontenttype": "application/json",
        "data": {"objectId": 42},
    }
    doc.update(attrs)
    return {k: v for k, v in doc.items() if v is not None}


def mapped(mapping: Mapping, decoded: list[Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The events of every line that maps, and the errors of the others."""
    events: list[dict[str, Any]] = []
    errors: list[str] = []
    for obj in decoded:
        try:
            events.extend(mapping.apply(obj, now=NOW))
        except MappingError as exc:
            errors.append(str(exc))
    return events, errors


def test_cloudevents_sample() -> None:
    decoded = lines("cloudevents")
    events, errors = mapped(CE, decoded)
    assert errors == ["missing CloudEvents attribute 'id'"]
    assert len(events) == 8  # six lines of one event, a batch of two; one line rejected
    stored = rows(events)
    assert all(
        json.loads(row.extra or "{}")["cloudevents"]["specversion"] == "1.0" for row in stored
    )
    # default identity (type, id): the legacy source's ord-5000 is taken for the shop's
    assert len({key(row) for row in stored}) == 6
    # CloudEvents identity (source, id): only the re-sent line is a duplicate
    by_source = rows(mapped(CE_SOURCE_KEY, decoded)[0])
    assert len({key(row) for row in by_source}) == 7


def test_cloudevent_attributes_map_to_the_event() -> None:
    obj = lines("cloudevents")[0]
    row = row_of(CE, obj)
    assert row.topic == "com.github.pull_request.opened"
    assert row.event_id == "A234-1234-1234"
    assert row.source == "https://github.com/cloudevents/spec/pull"
    assert row.timestamp == "2018-04-05T17:31:00.000000Z"
    assert json.loads(row.payload) == {"action": "opened", "number": 123, "title": "Add batch mode"}
    assert json.loads(row.extra or "") == {
        "cloudevents": {
            "specversion": "1.0",
            "subject": "123",
            "comexampleextension1": "value",
            "datacontenttype": "application/json",
        }
    }


def test_cloudevent_dataschema_and_extensions_are_kept() -> None:
    event = one(CE, ce(dataschema="https://x/s.json", traceparent="00-ab-cd-01", partitionkey=7))
    assert event["cloudevents"] == {
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "dataschema": "https://x/s.json",
        "traceparent": "00-ab-cd-01",
        "partitionkey": 7,
    }


@pytest.mark.parametrize("attribute", ["specversion", "id", "source", "type"])
def test_cloudevent_missing_required_attribute_is_named(attribute: str) -> None:
    assert error(CE, ce(**{attribute: None})) == f"missing CloudEvents attribute '{attribute}'"


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"id": 17}, "CloudEvents attribute 'id' is number, expected a string"),
        ({"type": ""}, "CloudEvents attribute 'type' is empty"),
        ({"specversion": "0.3"}, "unsupported CloudEvents specversion '0.3' (need 1.x)"),
        ({"time": 1522949460}, "CloudEvents attribute 'time' is number, expected an RFC 3339"),
        ({"data_base64": "AA=="}, "a CloudEvent has both 'data' and 'data_base64'"),
        ({"data": None, "data_base64": 5}, "CloudEvents attribute 'data_base64' is number"),
    ],
)
def test_cloudevent_invalid_attributes(attrs: dict[str, Any], expected: str) -> None:
    assert error(CE, ce(**attrs)).startswith(expected)


def test_cloudevent_data_base64_and_non_object_data() -> None:
    binary = one(CE, ce(data=None, data_base64="AAECAwQ=", datacontenttype="image/png"))
    assert binary["payload"] == {"data_base64": "AAECAwQ="}
    assert one(CE, ce(data="alive"))["payload"] == {"data": "alive"}
    assert one(CE, ce(data=[1, 2]))["payload"] == {"data": [1, 2]}
    nothing = ce()
    del nothing["data"]
    assert one(CE, nothing)["payload"] == {}
    assert one(CE, {**ce(), "data": None})["payload"] == {"data": None}
    rows([binary])


def test_cloudevent_without_time_gets_the_mapping_time() -> None:
    event = one(CE, ce(time=None))
    assert event["timestamp"] == NOW
    assert "time" not in event["cloudevents"]
    assert rows([event])[0].timestamp == NOW
    current = CE.apply(ce(time=None))[0]["timestamp"]
    assert rows([{**event, "timestamp": current}])[0].timestamp == current


def test_cloudevent_time_offset_is_normalised_by_the_event_validation() -> None:
    assert row_of(CE, ce(time="2018-04-05T19:31:00+02:00")).timestamp == (
        "2018-04-05T17:31:00.000000Z"
    )


def test_cloudevents_batch_gives_one_event_per_element() -> None:
    batch = [ce(id="1"), ce(id="2", data="x"), ce(id="3", time=None)]
    events = CE.apply(batch, now=NOW)
    assert [e["event_id"] for e in events] == ["1", "2", "3"]
    assert events[2]["timestamp"] == NOW
    rows(events)
    assert CE.apply([]) == []
    undated = CE.apply([ce(id="1", time=None), ce(id="2", time=None)])
    assert undated[0]["timestamp"] == undated[1]["timestamp"]


def test_cloudevents_batch_maps_each_element_on_its_own() -> None:
    good, bad = CE.events([ce(id="1"), ce(source=None)], now=NOW)
    assert isinstance(good, dict) and good["event_id"] == "1"
    assert isinstance(bad, MappingError)
    assert str(bad) == "missing CloudEvents attribute 'source'"
    good, bad = CE.events([ce(), "x"], now=NOW)
    assert isinstance(good, dict)
    assert str(bad) == "a CloudEvent is a JSON object, got string"
    assert error(CE, "x") == "a CloudEvent is a JSON object, got string"


def test_cloudevents_source_id_key() -> None:
    shop = one(CE_SOURCE_KEY, ce(source="/shop/orders", id="ord-5000"))
    legacy = one(CE_SOURCE_KEY, ce(source="/shop/legacy-orders", id="ord-5000"))
    assert shop["event_id"] == "/shop/orders ord-5000"
    assert shop["topic"] == shop["topic"] == "com.example.object.deleted"
    assert key(rows([shop])[0]) != key(rows([legacy])[0])
    default = [key(row_of(CE, ce(source=s, id="ord-5000"))) for s in ("/a", "/b")]
    assert default[0] == default[1]
    source, _, event_id = shop["event_id"].partition(" ")
    assert (source, event_id) == (shop["source"], "ord-5000")


def test_cloudevents_mapping_takes_no_field_mapping() -> None:
    with pytest.raises(ValueError, match="CloudEvents and OpenTelemetry have a fixed mapping"):
        CE.override(fields={"topic": "subject"})


# --- options ---------------------------------------------------------------------------


def test_parse_map_options() -> None:
    assert parse_map_options(["topic=type", " source = repo.name "]) == {
        "topic": "type",
        "source": "repo.name",
    }
    assert parse_map_options([]) == {}
    assert parse_map_options(["timestamp=a=b"]) == {"timestamp": "a=b"}


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["topic"], "invalid --map 'topic': use TARGET=PATH"),
        (["=type"], "invalid --map '=type'"),
        (["topic="], "invalid --map 'topic='"),
        (
            ["kind=type"],
            "unknown --map target 'kind' (targets: topic, event_id, timestamp, source)",
        ),
        (["payload=body"], "use --payload-field for the payload"),
        (["topic=a", "topic=b"], "--map topic is given twice"),
        (["source=repo..name"], "invalid field path 'repo..name'"),
        (["source=.name"], "invalid field path '.name'"),
    ],
)
def test_parse_map_options_errors(pairs: list[str], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_map_options(pairs)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_parse_key() -> None:
    assert parse_key("source,id") == ("source", "id")
    assert parse_key("topic, event_id") == ("topic", "event_id")
    with pytest.raises(ValueError, match="invalid --key 'id,source'"):
        parse_key("id,source")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fields": {"kind": "type"}}, "unknown mapping target 'kind'"),
        ({"time_unit": "ps"}, "invalid time unit 'ps'"),
        ({"key": ("event_id", "topic")}, "invalid key 'event_id,topic'"),
        ({"topic": ""}, "the constant topic must not be empty"),
        ({"payload_field": "a..b"}, "invalid field path 'a..b'"),
    ],
)
def test_invalid_mappings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        Mapping(**kwargs)


def test_override_merges_options_into_a_preset() -> None:
    pino = PRESETS["pino"]
    mine = pino.override(fields={"source": "pid"}, topic="web", time_unit="s")
    assert mine.fields == {"topic": "name", "timestamp": "time", "source": "pid"}
    assert (mine.topic, mine.time_unit, mine.id_from_content) == ("web", "s", True)
    assert pino.fields["source"] == "hostname"  # the preset is unchanged
    assert pino.override() == pino


def test_with_default_source_keeps_a_given_source() -> None:
    assert PRESETS["docker"].with_default_source("a.log").source == "a.log"
    given = PRESETS["docker"].override(source="web")
    assert given.with_default_source("a.log") is given
