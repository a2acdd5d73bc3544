"""Times: parsing, normalising to the one stored form, epoch numbers, and now.

The stored form is UTC with microseconds, `2025-01-01T12:00:00.000000Z`, so that text
order is time order. A leap second is kept as `23:59:60.ffffffZ`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

TimeUnit = Literal["s", "ms", "us", "ns"]
TIME_UNITS: tuple[TimeUnit, ...] = ("s", "ms", "us", "ns")

_EPOCH = datetime(1970, 1, 1)
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
# An epoch number without a unit is read by its magnitude; a result outside these years
# is more likely a wrong unit than a real time, so it is refused.
PLAUSIBLE = (datetime(1980, 1, 1), datetime(2100, 1, 1))


@dataclass(slots=True)
class NaiveTimes:
    """How times without an offset are read (`zone`), and how many were met."""

    zone: tzinfo = UTC
    name: str = "UTC"
    naive: int = 0  # times without an offset, taken in `zone`
    ambiguous: int = 0  # of those, times a daylight-saving change makes happen twice


_rules: ContextVar[NaiveTimes | None] = ContextVar("logagg_naive_times", default=None)


@contextmanager
def reading_times(rules: NaiveTimes) -> Iterator[NaiveTimes]:
    """While active (in this thread), `normalize_timestamp` takes naive times in
    `rules.zone` and counts them in `rules`."""
    token = _rules.set(rules)
    try:
        yield rules
    finally:
        _rules.reset(token)


def zone_named(name: str) -> NaiveTimes:
    """The rules for an IANA zone name, `UTC`, or `local` (the machine's zone: $TZ, else
    /etc/localtime). Raises ValueError for an unknown name."""
    if name.upper() == "UTC":
        return NaiveTimes()
    if name == "local":
        return NaiveTimes(_local_zone(), "local")
    try:
        return NaiveTimes(ZoneInfo(name), name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r} (an IANA name such as Europe/Berlin, UTC or local)"
        ) from None


def _local_zone() -> tzinfo:
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        with open("/etc/localtime", "rb") as handle:
            return ZoneInfo.from_file(handle, key="local")
    except OSError:
        local = datetime.now().astimezone().tzinfo
        return local if local is not None else UTC


def format_utc(moment: datetime) -> str:
    """A naive UTC (or aware) datetime in the stored form."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds") + "Z"


def utc_now() -> str:
    """The current time in the stored form."""
    return format_utc(datetime.now(UTC))


def normalize_timestamp(value: str) -> str:
    """Parse an ISO-8601 / RFC 3339 time and return it in the stored form.

    Accepts lower-case `t` / `z`, a space instead of `T`, a comma before the fraction,
    and a leap second (`:60`, stored as `23:59:60` UTC). A time without an offset is taken
    in the zone of `reading_times` (UTC by default). More than six fractional digits are
    truncated to microseconds. Raises ValueError naming why anything else is not a time.
    """
    if is_stored_form(value):
        return value
    if "\x00" in value:
        raise ValueError("contains U+0000 (a NUL character), which is not allowed")
    text = value
    if len(text) > 10 and text[10] == "t":
        text = text[:10] + "T" + text[11:]
    if text.endswith("z"):
        text = text[:-1] + "Z"
    leap = len(text) >= 19 and text[13] == ":" and text[16] == ":" and text[17:19] == "60"
    if leap:
        text = text[:17] + "59" + text[19:]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        # Python's own reason is kept where it says what is wrong (a day out of range).
        why = "" if str(exc).startswith("Invalid isoformat") else f" ({exc})"
        raise ValueError(f"not an ISO-8601 time: {value[:64]!r}{why}") from None
    if moment.tzinfo is None:
        moment = _assume_zone(moment, value)
    try:
        utc = moment.astimezone(UTC).replace(tzinfo=None)
    except (OverflowError, ValueError):
        raise ValueError(
            f"{value[:64]!r} is outside the years 1..9999 once converted to UTC"
        ) from None
    stored = utc.isoformat(timespec="microseconds") + "Z"
    if leap:
        if (utc.hour, utc.minute, utc.second) != (23, 59, 59):
            raise ValueError(f"{value[:64]!r}: a leap second (:60) comes only at 23:59:60 UTC")
        stored = stored[:17] + "60" + stored[19:]
    return stored


_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}  # fmt: skip
_AGO = re.compile(r"-?\s*(\d{1,9})\s*([a-z]+)(?:\s+ago)?")
TIME_FILTER_FORMS = "15m, 3h, 2d, today, yesterday or now"


def parse_time_filter(value: str, now: datetime | None = None) -> str:
    """A time to filter by, in the stored form: an ISO-8601 time, or one relative to `now`
    (default: the clock): `now`, `today` and `yesterday` (their start, 00:00 UTC), or a
    span ago: `15m`, `3h`, `2d`, `1w`, `90s` (also `-15m`, `15min`, `3 hours ago`).

    Raises ValueError naming the forms for anything else.
    """
    text = value.strip().lower()
    moment = now if now is not None else datetime.now(UTC)
    if text == "now":
        return format_utc(moment)
    if text in ("today", "yesterday"):
        day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return format_utc(day - timedelta(days=text == "yesterday"))
    match = _AGO.fullmatch(text)
    if match and match.group(2) in _UNITS:
        try:
            return format_utc(
                moment - timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
            )
        except OverflowError:
            raise ValueError(f"{value[:64]!r} reaches back before the year 1") from None
    try:
        return normalize_timestamp(value)
    except ValueError as exc:
        if str(exc).startswith("not an ISO-8601 time") and not str(exc).endswith(")"):
            raise ValueError(f"{exc} (nor {TIME_FILTER_FORMS})") from None
        raise


def _assume_zone(moment: datetime, value: str) -> datetime:
    rules = _rules.get()
    if rules is None:
        return moment.replace(tzinfo=UTC)
    zone = rules.zone
    if zone is UTC:
        rules.naive += 1
        return moment.replace(tzinfo=UTC)
    first, second = moment.replace(tzinfo=zone, fold=0), moment.replace(tzinfo=zone, fold=1)
    if first.utcoffset() != second.utcoffset():
        back = first.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
        if back != moment:
            raise ValueError(
                f"{value[:64]!r} does not exist in {rules.name}"
                " (skipped by a daylight-saving change)"
            )
        rules.ambiguous += 1  # it happens twice: the first (earlier) one is taken
    rules.naive += 1
    return first


def is_stored_form(value: str) -> bool:
    """True for `YYYY-MM-DDTHH:MM:SS.ffffffZ` with valid fields."""
    if not (
        len(value) == 27
        and value.isascii()
        and value[4] == value[7] == "-"
        and value[10] == "T"
        and value[13] == value[16] == ":"
        and value[19] == "."
        and value[26] == "Z"
    ):
        return False
    try:
        datetime.fromisoformat(value[:26])
    except ValueError:
        return False
    return True


def epoch_to_utc(value: int | float | Decimal, unit: TimeUnit | None = None) -> str:
    """An epoch time in the stored form.

    `unit` is `s`, `ms`, `us` or `ns`; None reads it from the magnitude (below 1e11
    seconds, below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds) and
    refuses a result before 1980 or from 2100 on as ambiguous. Raises ValueError.
    """
    explicit = unit is not None
    if unit is None:
        size = abs(float(value))
        unit = "s" if size < 1e11 else "ms" if size < 1e14 else "us" if size < 1e17 else "ns"
    try:
        exact = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        micros = int((exact * 1_000_000 / _PER_SECOND[unit]).to_integral_value(ROUND_FLOOR))
        moment = _EPOCH + timedelta(microseconds=micros)
    except (OverflowError, ValueError, InvalidOperation):
        raise ValueError(f"timestamp: epoch {value} ({unit}) is out of range") from None
    if not explicit and not PLAUSIBLE[0] <= moment < PLAUSIBLE[1]:
        raise ValueError(
            f"timestamp: epoch {value} read as {unit} is {format_utc(moment)[:10]}, outside"
            " 1980..2099, so its unit is ambiguous: give the time unit (s, ms, us or ns)"
        )
    return format_utc(moment)
