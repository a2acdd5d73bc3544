"""Options shared by several commands, and the choices they take."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

DEFAULT_DB = "logagg.db"


class Emit(StrEnum):
    new = "new"
    duplicates = "duplicates"


class OnConflict(StrEnum):
    keep_first = "keep-first"
    keep_last = "keep-last"


class Order(StrEnum):
    desc = "desc"
    asc = "asc"


class Format(StrEnum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


Db = Annotated[
    str,
    typer.Option(
        "--db",
        envvar="LOGAGG_DB",
        metavar="PATH",
        help="The store: a SQLite file, or a postgresql:// URL.",
    ),
]
FormatOpt = Annotated[
    Format | None,
    typer.Option(
        "--format",
        "-f",
        help="Output format [default: table on a terminal, else machine-readable].",
        case_sensitive=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
RetainOpt = Annotated[
    str | None,
    typer.Option(
        "--retain",
        metavar="DURATION",
        help="Prune events older than this (30d, 12h) as it goes, keeping their keys so that"
        " re-sends stay duplicates; in small steps, between commits.",
    ),
]
OnConflictOpt = Annotated[
    OnConflict,
    typer.Option(
        "--on-conflict",
        help="A duplicate whose content differs from the stored copy: keep the stored one"
        " (keep-first), or store it instead (keep-last); either way it is counted and"
        " recorded (logagg conflicts).",
        case_sensitive=False,
    ),
]


def parse_retain(value: str | None) -> float | None:
    """`--retain`'s seconds (None: keep everything); a usage error when it is not a
    duration."""
    if value is None:
        return None
    from logagg.errors import UsageError
    from logagg.units import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"--retain: {exc}") from None
