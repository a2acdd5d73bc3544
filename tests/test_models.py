"""Decoding one line into an event row or a reject: fields, timestamps, payload and extras."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import RowView
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from logagg.models import (
    EVENT,
    MAX_NAME,
    NOT_FINITE,
    Event,
    Reject,
    _plain_row,
    _row,
    decode_lines,
    describe,
    event_from_fields,
    parse_json,
    validate_event,
)
from logagg.timestamps import normalize_timestamp

DROP = object()  # a field value meaning "leave the field out"


def line(**fields: Any) -> bytes:
    """A JSON line of a valid event, with `fields` replaced (or dropped with DROP)."""
    doc: dict[str, Any] = {
        "topic": "user.login",
        "event_id": "e1",
        "timestamp": "2025-01-01T12:00:00Z",
        "source": "auth",
        "payload": {"user": "alice"},
    }
    for key, value in fields.items():
        if value is DROP:
            doc.pop(key, None)
        else:
            doc[key] = value
    return json.dumps(doc, ensure_ascii=False).encode()


def decode_line(raw: bytes, source: str, line: int) -> RowView | Reject:
    rows, rejects = decode_lines([(line, raw)], source)
    return RowView(*rows[0]) if rows else rejects[0]


def accept(raw: bytes) -> RowView:
    result = decode_line(raw, "in.jsonl", 7)
    assert isinstance(result, RowView), result
    return result


def reject(raw: bytes) -> Reject:
    result = decode_line(raw, "in.jsonl", 7)
    assert isinstance(result, Reject), result
    assert result.source == "in.jsonl"
    assert result.line == 7
    assert "\n" not in result.reason
    return result


# --- valid events ----------------------------------------------------------------------


def test_valid_event_becomes_a_row() -> None:
    """All five fields come through; the timestamp is normalised; no extra fields."""
    row = accept(line())
    assert row.topic == "user.login"
    assert row.event_id == "e1"
    assert row.timestamp == "2025-01-01T12:00:00.000000Z"
    assert row.source == "auth"
    assert json.loads(row.payload) == {"user": "alice"}
    assert row.extra is None


def test_payload_is_optional_and_defaults_to_an_empty_object() -> None:
    row = accept(line(payload=DROP))
    assert row.payload == "{}"
    assert row.extra is None


def test_empty_payload_is_kept_as_an_empty_object() -> None:
    assert accept(line(payload={})).payload == "{}"


def test_payload_keeps_key_order_nesting_and_unicode() -> None:
    payload = {"z": 1, "a": [1.5, "x", None, True, {"k": "ümlaut ✓"}], "m": {"n": {"o": []}}}
    row = accept(line(payload=payload))
    decoded = json.loads(row.payload)
    assert decoded == payload
    assert list(decoded) == ["z", "a", "m"]


def test_names_of_exactly_255_characters_are_accepted() -> None:
    """The limit counts characters, not bytes."""
    name = "é" * MAX_NAME
    row = accept(line(topic=name, event_id=name, source=name))
    assert (row.topic, row.event_id, row.source) == (name, name, name)


# --- required fields -------------------------------------------------------------------

REQUIRED = ("topic", "event_id", "timestamp", "source")


@pytest.mark.parametrize("field", REQUIRED)
def test_missing_required_field_is_rejected(field: str) -> None:
    result = reject(line(**{field: DROP}))
    assert result.reason == f"missing field '{field}'"


@pytest.mark.parametrize("field", REQUIRED)
def test_empty_required_field_is_rejected(field: str) -> None:
    result = reject(line(**{field: ""}))
    assert result.reason.startswith(f"{field}: ")


@pytest.mark.parametrize("field", ["topic", "event_id", "source"])
def test_name_over_255_characters_is_rejected(field: str) -> None:
    result = reject(line(**{field: "x" * (MAX_NAME + 1)}))
    assert result.reason.startswith(f"{field}: ")
    assert "255" in result.reason


@pytest.mark.parametrize("field", REQUIRED)
@pytest.mark.parametrize("value", [42, 1.5, True, None, ["x"], {"x": 1}])
def test_required_field_of_wrong_type_is_rejected(field: str, value: Any) -> None:
    """Strings only: no number, boolean, null, array or object is coerced."""
    result = reject(line(**{field: value}))
    assert result.reason.startswith(f"{field}: ")


def test_every_problem_is_named_up_to_three_then_counted() -> None:
    result = reject(b"{}")
    assert result.reason == (
        "missing field 'topic'; missing field 'event_id'; missing field 'timestamp'; and 1 more"
    )


# --- whole-line problems ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "kind"),
    [(b"[1, 2]", "array"), (b"5", "number"), (b'"text"', "string"), (b"null", "null")],
)
def test_top_level_value_that_is_not_an_object_is_rejected(raw: bytes, kind: str) -> None:
    assert reject(raw).reason == f"expected a JSON object, got {kind}"


@pytest.mark.parametrize("raw", [b'{"topic": ', b"{'topic': 'a'}", b"not json", b"{}}"])
def test_invalid_json_is_rejected(raw: bytes) -> None:
    result = reject(raw)
    assert result.reason.startswith("invalid JSON: ")
    assert result.raw == raw.decode()


def test_invalid_utf8_is_rejected_and_kept_escaped() -> None:
    result = reject(b'{"topic": "\xff"}')
    assert result.reason.startswith("invalid JSON")
    assert result.raw == '{"topic": "\\xff"}'


def test_reject_to_dict_has_file_line_error_raw() -> None:
    result = reject(b"[]")
    assert result.to_dict() == {
        "file": "in.jsonl",
        "line": 7,
        "error": "expected a JSON object, got array",
        "raw": "[]",
    }
    assert result.location() == "in.jsonl:7"


# --- payload ---------------------------------------------------------------------------


@pytest.mark.parametrize("payload", ["[1, 2]", "[]", "null", '"text"', "5", "true"])
def test_payload_that_is_not_an_object_is_rejected(payload: str) -> None:
    raw = line(payload=DROP)[:-1] + b', "payload": ' + payload.encode() + b"}"
    assert reject(raw).reason.startswith("payload: ")


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_in_payload_are_rejected(token: str) -> None:
    raw = line(payload=DROP)[:-1] + b', "payload": {"x": ' + token.encode() + b"}}"
    assert reject(raw).reason == NOT_FINITE


def test_nan_in_an_unknown_field_is_rejected() -> None:
    raw = line()[:-1] + b', "score": NaN}'
    assert "NaN" in reject(raw).reason


def test_the_words_nan_and_infinity_inside_strings_are_fine() -> None:
    row = accept(line(payload={"a": "NaN", "b": "Infinity"}, note="-Infinity"))
    assert json.loads(row.payload) == {"a": "NaN", "b": "Infinity"}


@pytest.mark.parametrize(
    "number",
    [
        "18446744073709551616",  # 2**64
        "-9223372036854775809",  # below int64
        "123456789012345678901234567890123456789",
    ],
)
def test_integers_beyond_64_bits_are_kept_exactly(number: str) -> None:
    raw = line(payload=DROP)[:-1] + b', "payload": {"n": ' + number.encode() + b', "f": 1.5}}'
    row = accept(raw)
    assert row.payload == '{"n":' + number + ',"f":1.5}'


def test_numbers_beyond_float_range_are_never_silently_changed() -> None:
    """A number a float cannot hold is either rejected or stored as written, never as null."""
    raw = line(payload=DROP)[:-1] + b', "payload": {"big": 1e400, "neg": -1e400}}'
    result = decode_line(raw, "in.jsonl", 1)
    if isinstance(result, RowView):
        assert "null" not in result.payload
        assert json.loads(result.payload, parse_float=str) == {"big": "1e400", "neg": "-1e400"}


# --- unknown top-level fields ----------------------------------------------------------


def test_unknown_top_level_fields_are_kept_in_extra() -> None:
    row = accept(line(host="web-1", tags=["a", 1], level={"n": 3}, big=2**70))
    assert row.extra is not None
    extra = json.loads(row.extra)
    assert extra == {"host": "web-1", "tags": ["a", 1], "level": {"n": 3}, "big": 2**70}
    assert json.loads(row.payload) == {"user": "alice"}


def test_unknown_fields_without_payload_are_kept() -> None:
    row = accept(line(payload=DROP, host="web-1"))
    assert row.payload == "{}"
    assert json.loads(row.extra or "null") == {"host": "web-1"}


# --- timestamps ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2025-01-01T12:00:00Z", "2025-01-01T12:00:00.000000Z"),
        ("2025-01-01T12:00:00+00:00", "2025-01-01T12:00:00.000000Z"),
        ("2025-01-01T12:00:00-00:00", "2025-01-01T12:00:00.000000Z"),
        ("2025-01-01T12:00:00", "2025-01-01T12:00:00.000000Z"),
        ("2025-01-01T12:00:00+07:00", "2025-01-01T05:00:00.000000Z"),
        ("2025-01-01T03:30:00+07:00", "2024-12-31T20:30:00.000000Z"),
        ("2024-12-31T22:15:00-05:30", "2025-01-01T03:45:00.000000Z"),
        ("2025-01-01T12:00:00.123456Z", "2025-01-01T12:00:00.123456Z"),
        ("2025-01-01T12:00:00.000000Z", "2025-01-01T12:00:00.000000Z"),
        ("2025-01-01T12:00:00.5+01:00", "2025-01-01T11:00:00.500000Z"),
    ],
)
def test_timestamps_are_stored_as_the_same_instant_in_utc(given: str, stored: str) -> None:
    assert normalize_timestamp(given) == stored
    assert accept(line(timestamp=given)).timestamp == stored


@pytest.mark.parametrize("digits", range(1, 10))
def test_fractional_seconds_of_one_to_nine_digits(digits: int) -> None:
    """Up to six digits are kept; more are truncated to microseconds."""
    fraction = "123456789"[:digits]
    expected = (fraction + "000000")[:6]
    stored = normalize_timestamp(f"2025-06-30T23:59:59.{fraction}Z")
    assert stored == f"2025-06-30T23:59:59.{expected}Z"


@pytest.mark.parametrize(
    "given",
    [
        "2025-01-01 12:00:00.000000Z",  # space separator, otherwise the stored form
        "2025-W01-3T12:00:00.000000Z",  # ISO week date
        "2025-01-01 12:00:00Z",
        "20250101T120000Z",
    ],
)
def test_other_iso_spellings_are_stored_in_the_one_stored_form(given: str) -> None:
    """Every accepted spelling becomes `YYYY-MM-DDTHH:MM:SS.ffffffZ`, so text order is time."""
    assert normalize_timestamp(given) == "2025-01-01T12:00:00.000000Z"


def test_stored_timestamps_sort_as_text_in_time_order() -> None:
    given = [
        "2025-01-01T12:00:00+07:00",  # 05:00Z
        "2025-01-01T06:00:00Z",
        "2025-01-01T04:59:59.999999",
        "2025-01-01T05:00:00.5Z",
        "2025-01-01 05:30:00.000000Z",
    ]
    stored = [normalize_timestamp(t) for t in given]
    assert sorted(stored) == [stored[2], stored[0], stored[3], stored[4], stored[1]]


@pytest.mark.parametrize(
    "given",
    [
        "2025-02-30T00:00:00Z",  # no such day
        "2023-02-29T00:00:00Z",  # not a leap year
        "2025-13-01T00:00:00Z",
        "2025-00-10T00:00:00Z",
        "2025-01-01T25:00:00Z",
        "2025-01-01T12:60:00Z",
        "2025-01-01T12:00:61Z",
        "yesterday",
        "",
        "1735732800",
    ],
)
def test_impossible_or_unparseable_times_are_rejected(given: str) -> None:
    with pytest.raises(ValueError, match="not an ISO-8601 time"):
        normalize_timestamp(given)
    result = reject(line(timestamp=given))
    assert result.reason.startswith("timestamp: not an ISO-8601 time")


def test_leap_day_is_accepted() -> None:
    assert normalize_timestamp("2024-02-29T00:00:00Z") == "2024-02-29T00:00:00.000000Z"


def test_timestamp_error_quotes_control_characters_on_one_line() -> None:
    result = reject(line(timestamp="12:00\nnext"))
    assert "\\n" in result.reason


# --- event_from_fields and describe ----------------------------------------------------


def test_event_from_fields_validates_python_values() -> None:
    row = RowView(
        *event_from_fields(
            topic="deploy",
            event_id="b-1",
            timestamp="2025-01-01T12:00:00+02:00",
            source="ci",
            payload={"n": 2**80, "ok": True},
        )
    )
    assert row.timestamp == "2025-01-01T10:00:00.000000Z"
    assert row.payload == '{"n":' + str(2**80) + ',"ok":true}'


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"topic": 1}, "topic: "),
        ({"topic": ""}, "topic: "),
        ({"timestamp": "soon"}, "timestamp: not an ISO-8601 time"),
        ({"payload": [1]}, "payload: "),
    ],
)
def test_event_from_fields_raises_value_error_naming_the_field(
    fields: dict[str, Any], message: str
) -> None:
    base = {"topic": "t", "event_id": "e", "timestamp": "2025-01-01T00:00:00Z", "source": "s"}
    with pytest.raises(ValueError, match=message):
        event_from_fields(**{**base, **fields})


def test_describe_gives_one_line_naming_each_field() -> None:
    with pytest.raises(ValidationError) as info:
        TypeAdapter(Event).validate_json(b'{"topic": 1, "event_id": "", "source": "s"}')
    text = describe(info.value)
    assert "\n" not in text
    assert text.split("; ") == [
        "topic: expected a string, got number",
        "event_id: expected 1 to 255 characters, got 0",
        "missing field 'timestamp'",
    ]


def test_describe_counts_problems_beyond_three() -> None:
    with pytest.raises(ValidationError) as info:
        TypeAdapter(Event).validate_json(
            b'{"topic": 1, "event_id": 2, "timestamp": 3, "source": 4, "payload": 5}'
        )
    text = describe(info.value)
    assert text.count("; ") == 3
    assert text.endswith("; and 2 more")


# --- the plain-event shortcut ---------------------------------------------------------------

_MISSING = object()
_VALID_NAMES = ["a", "é", "x" * MAX_NAME, " ", "\x1f"]
_NAMES = st.sampled_from(
    _VALID_NAMES + ["", "x" * (MAX_NAME + 1), 5, None, ["a"], True, _MISSING]
).flatmap(lambda odd: st.sampled_from([odd, *_VALID_NAMES]))
_STORED_TIMES = ["2025-01-01T00:00:00.000281Z", "2024-02-29T23:59:59.999999Z"]
_TIMES = st.sampled_from(
    _STORED_TIMES * 6
    + [
        "2025-01-01T00:00:00Z",
        "2025-01-01t00:00:00.000000z",
        "2025-01-01 00:00:00.000000Z",
        "2025-01-01T00:00:00.000000+00:00",
        "2016-12-31T23:59:60.000000Z",  # a leap second
        "2025-02-29T00:00:00.000000Z",  # no such day
        "2025-13-01T00:00:00.000000Z",
        "\uff12025-01-01T00:00:00.000000Z",
        "2025-01-01T00:00:00.0000001Z",
        5,
        None,
        _MISSING,
    ]
)
_PAYLOADS = st.sampled_from(
    [{}, {"a": 1}, {"n": [1, {"b": None}]}] * 3 + [[], "x", 5, None, True, _MISSING, _MISSING]
)
_EXTRA = st.sampled_from([{}] * 6 + [{"x": 1}, {"specversion": "1.0"}, {"Topic": "a"}])


@settings(max_examples=600, deadline=None, derandomize=True)
@given(
    topic=_NAMES, event_id=_NAMES, timestamp=_TIMES, source=_NAMES, payload=_PAYLOADS, extra=_EXTRA
)
def test_the_plain_event_shortcut_agrees_with_the_validator(
    topic: Any, event_id: Any, timestamp: Any, source: Any, payload: Any, extra: dict[str, Any]
) -> None:
    """What the shortcut accepts, the validator accepts with the same row; a plain valid
    event with its time in the stored form takes the shortcut (it may leave the rarer
    valid events, a leap second, to the validator)."""
    fields = {"topic": topic, "event_id": event_id, "timestamp": timestamp, "source": source}
    doc = {k: v for k, v in {**fields, "payload": payload}.items() if v is not _MISSING}
    doc = {**extra, **doc}
    shortcut = _plain_row(doc)
    try:
        validated: Any = _row(EVENT.validate_python(doc))
    except (ValidationError, ValueError):
        validated = None
    if shortcut is not None:
        assert shortcut == validated
    plain = (
        set(doc) <= {"topic", "event_id", "timestamp", "source", "payload"}
        and all(type(doc.get(k)) is str and 0 < len(doc[k]) <= MAX_NAME for k in fields)
        and type(doc.get("payload", {})) is dict
        and timestamp in _STORED_TIMES
    )
    assert (shortcut is not None) == plain


_NUMBER_TEXTS = st.one_of(
    st.sampled_from(
        ["0", "-0", "1.5", "1.50", "1e5", "1E5", "1e-7", "0.1", "-0.0", "5e-324", "1.0"]
        + ["1.7976931348623157e308", "1e400", "18446744073709551615", "18446744073709551616"]
        + ["-9223372036854775809", "123456789012345678901234567890", "100000.0", "NaN"]
    ),
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
_STRING_TEXTS = st.one_of(
    st.text(max_size=8).map(lambda s: json.dumps(s, ensure_ascii=False)),
    st.text(max_size=8).map(json.dumps),
    st.sampled_from(['"\\/"', '"\\u00e9"', '"\\ud800"', '"\\u0000"', '"a\\"b"', '"\\\\"']),
)
_JSON_TEXTS = st.recursive(
    st.one_of(_NUMBER_TEXTS, _STRING_TEXTS, st.sampled_from(["true", "false", "null"])),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.lists(
            st.tuples(st.sampled_from(['"a"', '"b"', '"\\u0061"', '"c"']), inner), max_size=4
        ).map(lambda pairs: "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"),
    ),
    max_leaves=12,
)


@settings(max_examples=1500, deadline=None, derandomize=True)
@given(payload=_JSON_TEXTS.map(lambda text: "{" + f'"p":{text}' + "}"), spaced=st.booleans())
def test_compact_lines_decode_exactly_as_the_validator_reads_them(
    payload: str, spaced: bool
) -> None:
    """A line written compactly (as most producers write JSON lines) may be read by the
    quicker parser; whatever its numbers, strings and keys, the row or the reason is the
    one the validator gives, and the payload is stored as written."""
    head = '{"topic":"t","event_id":"e","timestamp":"2025-01-01T00:00:00.000281Z","source":"s"'
    text = head + (', "payload": ' if spaced else ',"payload":') + payload + "}"
    raw = text.encode("utf-8", "surrogatepass")
    rows, rejects = decode_lines([(1, raw)], "in.jsonl")
    try:
        expected = validate_event(parse_json(raw))
    except (ValidationError, ValueError) as exc:
        assert not rows and len(rejects) == 1
        reason = describe(exc) if isinstance(exc, ValidationError) else str(exc)
        assert rejects[0].reason == reason
        return
    assert rows == [expected] and not rejects
    try:
        canonical = json.dumps(json.loads(payload), separators=(",", ":"), ensure_ascii=False)
    except ValueError:  # NaN or the like: refused above
        return
    if canonical == payload:
        assert rows[0][4] == payload


@pytest.mark.parametrize(("depth", "accepted"), [(199, True), (200, False), (260, False)])
def test_compact_lines_nest_as_deep_as_the_validator_reads(depth: int, accepted: bool) -> None:
    """The line's own object is one level: its payload may nest 199 more, in any form."""
    payload = '{"a":' * depth + "1" + "}" * depth
    raw = (
        '{"topic":"t","event_id":"e","timestamp":"2025-01-01T00:00:00.000281Z","source":"s",'
        f'"payload":{payload}}}'
    ).encode()
    rows, rejects = decode_lines([(1, raw)], "in.jsonl")
    assert bool(rows) == accepted
    if not accepted:
        assert rejects[0].reason.startswith("invalid JSON: recursion limit exceeded")
    else:
        assert rows[0][4] == payload


@pytest.mark.parametrize("spaced", [False, True])
def test_an_integer_written_minus_zero_is_kept_as_written(spaced: bool) -> None:
    """JSON allows `-0`; it was stored as `0`. Text that only looks like it is untouched."""
    payload = '{"a":-0,"b":[-0,0,-0.0,-0e0,"-0","x-0"],"c":{"d":-0}}'
    head = '{"topic":"t","event_id":"e-0","timestamp":"2025-01-01T00:00:00.000281Z","source":"s"'
    text = head + (', "payload": ' if spaced else ',"payload":') + payload + "}"
    assert accept(text.encode()).payload == payload
