"""What `logagg` says about itself: help grouped by topic, one-line command summaries,
the overview printed when no command is given, and the shell completion scripts.

Typer carries its own copy of Click (`typer._click`) and its completion machinery in
modules of its own; both are used here, and nowhere else.
"""

import os
import re
import sys
from enum import Enum, StrEnum
from typing import Annotated, Any

import typer
from typer._click.core import Context
from typer._click.formatting import HelpFormatter
from typer.core import TyperCommand

COMPLETE_VAR = "_LOGAGG_COMPLETE"  # the variable a completion script sets to ask logagg

# Each command's line in `logagg --help` and in the overview: whole, never cut.
SUMMARIES = {
    "ingest": "Read JSON-lines events into the store, dropping duplicates.",
    "publish": "Record one event given on the command line.",
    "events": "List stored events, newest first, or follow new ones.",
    "stats": "Counters and topics with their counts (instant on any size).",
    "check": "Verify integrity and that the counters agree with the rows.",
    "gen": "Write synthetic events, for benchmarks and demos.",
    "serve": "Serve the HTTP API on the store.",
    "cursors": "List or delete the cursors of `events --cursor`.",
    "prune": "Remove old events, keeping their keys as tombstones.",
    "vacuum": "Return the space of pruned events to the file system.",
    "backup": "Copy a live SQLite store to a new file.",
    "conflicts": "List keys whose copies differed.",
    "completion": "Print the shell completion script for bash, zsh or fish.",
}

EXAMPLES = (
    ("tail -f app.log | logagg ingest -", "keep a live stream, once each"),
    ("logagg events --topic user.login -n 20", "the newest 20 events of a topic"),
)


class Command(TyperCommand):
    """A command whose help speaks the user's words: a value is named by its metavar (else
    its choices, `a|b`, or its name in capitals: `--topic TOPIC`, `COUNT`), never by a
    Python type, and options are listed in groups (each one's `rich_help_panel`, else
    "Options"), in plain text."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.metavar is None and not getattr(param, "is_flag", False):
                described = getattr(param, "type_descriptor", None)
                choices = getattr(described, "choices", None)
                name = (param.name or "value").upper()
                param.metavar = "|".join(map(_choice, choices)) if choices else name

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar or (param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_options(self, ctx: Context, formatter: HelpFormatter) -> None:
        arguments: list[tuple[str, str]] = []
        groups: dict[str, list[tuple[str, str]]] = {"Options": []}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            record = (record[0], _ranges_in_words(record[1]))
            if param.param_type_name == "argument":  # its name, without a type after it
                arguments.append((param.metavar or record[0], record[1]))
            else:
                panel = getattr(param, "rich_help_panel", None) or "Options"
                groups.setdefault(panel, []).append(record)
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        for title, records in groups.items():
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


def _ranges_in_words(text: str) -> str:
    """Click's `1<=x<=9`, `x>=1`, `x<=9` as `1 to 9`, `at least 1`, `at most 9`."""
    text = re.sub(r"(-?[\d.]+)<=x<=(-?[\d.]+)", r"\1 to \2", text)
    text = re.sub(r"\bx>=(-?[\d.]+)", r"at least \1", text)
    return re.sub(r"\bx<=(-?[\d.]+)", r"at most \1", text)


# The option parser's and its validator's phrases, in the product's words.
_PHRASES = (
    (
        r"^Invalid value for ('[^:]+'(?: / '[^:]+')*): ",
        lambda m: m.group(1).replace("'", "") + ": ",
    ),
    (r"Input should be greater than or equal to (\S+)", r"expected at least \1"),
    (r"Input should be less than or equal to (\S+)", r"expected at most \1"),
    (r"Input should be a valid integer.*", "expected a whole number"),
    (r"Input should be a valid number.*", "expected a number"),
    (r"Value error, ", ""),
    (r"^Missing (argument|option) '([^']+)'\.?", r"missing \2"),
)


def plain_words(message: str) -> str:
    """A usage error of the option parser in one line of the product's words:
    `Invalid value for '--limit' / '-n': Input should be greater than or equal to 1` ->
    `--limit / -n: expected at least 1`; a list of choices as `a, b or c`."""
    text = " ".join(message.split())
    choices = re.search(r"\.? Choose from: (.*)$", text)
    if choices:
        names = [c.strip(" ,.") for c in choices.group(1).split(",")]
        listed = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
        text = text[: choices.start()] + ": " + listed
    for pattern, replacement in _PHRASES:
        text = re.sub(pattern, replacement, text)
    return text


def _choice(value: object) -> str:
    return str(value.value) if isinstance(value, Enum) else str(value)


def overview() -> str:
    """The text `logagg` alone prints: what it is, its commands, two examples."""
    width = max(map(len, SUMMARIES))
    lines = [
        "logagg keeps every event of an at-least-once stream exactly once.",
        "",
        "Usage: logagg COMMAND [OPTIONS]",
        "",
        "Commands:",
        *(f"  {name:<{width}}  {text}" for name, text in SUMMARIES.items()),
        "",
        "Examples:",
        *(f"  {cmd:<40}  {text}" for cmd, text in EXAMPLES),
        "",
        "'logagg COMMAND --help' lists a command's options.",
    ]
    return "\n".join(lines) + "\n"


def enable_completion() -> None:
    """Let a completion request (COMPLETE_VAR set by a script) be answered in any shell's
    protocol, as the scripts of `logagg completion` speak it."""
    if os.environ.get(COMPLETE_VAR):
        from typer._completion_classes import completion_init

        completion_init()


class Shell(StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def completion(
    shell: Annotated[
        Shell,
        typer.Argument(
            metavar="SHELL", help="bash, zsh or fish.", show_default=False, case_sensitive=False
        ),
    ],
) -> None:
    """Print the completion script for SHELL on stdout.

    bash: eval "$(logagg completion bash)" in ~/.bashrc; zsh: the same in ~/.zshrc (after
    compinit); fish: logagg completion fish > ~/.config/fish/completions/logagg.fish
    """
    from typer._completion_classes import completion_init
    from typer._completion_shared import get_completion_script

    completion_init()
    script = get_completion_script(prog_name="logagg", complete_var=COMPLETE_VAR, shell=shell)
    sys.stdout.write(script + "\n")
