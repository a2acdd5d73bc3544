"""Options shared by several commands, and the choices they take."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

DEFAULT_DB = "logagg.db"


class Emit(StrEnum):
    new = "new"
    duplicates = "duplicates"


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
