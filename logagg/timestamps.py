"""Times: parsing, normalising to the one stored form, epoch numbers, and now.

The stored form is UTC with microseconds, `2025-01-01T12:00:00.000000Z`, so that text
order is time order.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

TimeUnit = Literal["s", "ms", "us"]

_EPOCH = datetime(1970, 1, 1)
_MICROS_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1}


def format_utc(moment: datetime) -> str:
    """A naive UTC (or aware) datetime in the stored form."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds") + "Z"


def utc_now() -> str:
    """The current time in the stored form."""
    return format_utc(datetime.now(UTC))


def normalize_timestamp(value: str) -> str:
    """Parse an ISO-8601 time and return it in the stored form.

    A time without an offset is taken as UTC. More than six fractional digits are
    truncated to microseconds. Raises ValueError for anything that is not a valid time.
    """
    try:
        moment = datetime.fromisoformat(value)
        if _is_stored_form(value):
            return value
        offset = moment.utcoffset()
        if offset:
            moment -= offset
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"not an ISO-8601 time: {value[:64]!r} ({exc})") from None
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _is_stored_form(value: str) -> bool:
    """True for `YYYY-MM-DDTHH:MM:SS.ffffffZ` (once fromisoformat accepted it)."""
    return (
        len(value) == 27
        and value.isascii()
        and value[4] == value[7] == "-"
        and value[10] == "T"
        and value[13] == value[16] == ":"
        and value[19] == "."
        and value[26] == "Z"
    )


def epoch_to_utc(value: int | float, unit: TimeUnit | None = None) -> str:
    """An epoch time in the stored form.

    `unit` is `s`, `ms` or `us`; None detects it by magnitude: below 1e11 seconds, below
    1e14 milliseconds, otherwise microseconds. Raises ValueError when out of range.
    """
    if unit is None:
        size = abs(value)
        unit = "s" if size < 1e11 else "ms" if size < 1e14 else "us"
    try:
        micros = value * _MICROS_PER_UNIT[unit]
        if type(micros) is not int:
            micros = round(micros)
        moment = _EPOCH + timedelta(microseconds=micros)
    except (OverflowError, ValueError):
        raise ValueError(f"timestamp: epoch {value!r} ({unit}) is out of range") from None
    return format_utc(moment)
