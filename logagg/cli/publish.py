"""`logagg publish`: one event given on the command line."""

import json
import sys
import uuid
from typing import Annotated, Any

import typer

from logagg.cli.options import DEFAULT_DB, Db, JsonOpt
from logagg.cli.output import printable
from logagg.cli.paths import Reads, check_outputs
from logagg.errors import UsageError


def publish(
    topic: Annotated[str, typer.Option(help="The event's topic.")],
    event_id: Annotated[
        str | None,
        typer.Option(
            metavar="ID", help="The event's id [default: a new UUID, printed].", show_default=False
        ),
    ] = None,
    source: Annotated[str, typer.Option(help="Who produced it.")] = "cli",
    timestamp: Annotated[
        str | None,
        typer.Option(metavar="TIME", help="ISO-8601 time [default: now, UTC].", show_default=False),
    ] = None,
    payload: Annotated[
        str | None, typer.Option(metavar="JSON", help="The payload as a JSON object.")
    ] = None,
    field: Annotated[
        list[str] | None,
        typer.Option(
            "-p",
            "--field",
            metavar="KEY=VALUE",
            help="A payload field: key=string or key:=json; repeatable.",
        ),
    ] = None,
    db: Db = DEFAULT_DB,
    json_: JsonOpt = False,
) -> None:
    """Record one event given on the command line.

    A duplicate (the same topic and event id again) is reported, not an error. The verdict
    is a message on stderr; --json prints it as data on stdout.
    """
    from logagg.cli.render import print_json
    from logagg.models import event_from_fields, json_type
    from logagg.store import open_store
    from logagg.timestamps import utc_now

    body: dict[str, Any] = {}
    if payload is not None:
        body = _json_value("--payload", payload)
        if not isinstance(body, dict):
            raise UsageError(f"--payload: expected a JSON object, got {json_type(body)}")
    body.update(_parse_fields(field or []))
    try:
        row = event_from_fields(
            topic=topic,
            event_id=str(uuid.uuid4()) if event_id is None else event_id,
            timestamp=timestamp or utc_now(),
            source=source,
            payload=body,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_outputs(Reads(db), writes_stdout=True)
    with open_store(db) as store:
        result = store.write_batch([row])
    accepted = result.accepted == 1
    topic, event_id = row[0], row[1]
    if json_:
        print_json({"accepted": accepted, "topic": topic, "event_id": event_id})
    else:  # a message for people: stdout carries data only (--json)
        verdict = "accepted" if accepted else "duplicate (already stored)"
        sys.stderr.write(f"{verdict}: {printable(topic)} {printable(event_id)}\n")


def _json_value(option: str, text: str) -> Any:
    """Parse a JSON value given on the command line; a UsageError names the option."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{option}: not valid JSON ({exc})") from None
    except RecursionError:
        raise UsageError(f"{option}: JSON nested too deeply") from None


def _parse_fields(pairs: list[str]) -> dict[str, Any]:
    """`key=value` gives a string, `key:=json` a JSON value (as in httpie)."""
    fields: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"-p {pair}: expected key=value or key:=json")
        if key.endswith(":"):
            key = key[:-1]
            fields[key] = _json_value(f"-p {key}:=", value)
        else:
            fields[key] = value
        if not key:
            raise UsageError(f"-p {pair}: empty key")
    return fields
