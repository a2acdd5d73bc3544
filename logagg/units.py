"""Durations and sizes as people read them, the same in every face."""

from __future__ import annotations

import re


def human_duration(seconds: float) -> str:
    """`3723.4` -> `"1h 2m 3s"`; leading zero units are left out (`"5s"`, `"2m 0s"`)."""
    rest = int(seconds)
    days, rest = divmod(rest, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    parts: list[str] = []
    for value, unit in ((days, "d"), (hours, "h"), (minutes, "m")):
        if parts or value:
            parts.append(f"{value}{unit}")
    parts.append(f"{secs}s")
    return " ".join(parts)


def human_bytes(n: float) -> str:
    """`1536` -> `"1.5 KiB"` (binary units; bytes as a whole number)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> float:
    """`"30d"` -> seconds: whole numbers each followed by s, m, h, d or w, in any
    combination (`"1d12h"`). Raises ValueError with a one-line reason."""
    value = text.strip().lower()
    parts = re.findall(r"(\d+)\s*([smhdw])", value)
    if not parts or re.sub(r"(\d+)\s*([smhdw])|\s+", "", value):
        raise ValueError(
            f"{text!r} is not a duration: use a number and a unit, s, m, h, d or w (30d, 12h)"
        )
    seconds = sum(int(n) * _UNITS[unit] for n, unit in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be longer than zero")
    return float(seconds)
