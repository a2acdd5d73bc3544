"""The face of the command: `logagg` alone explains itself, help speaks the user's words,
a wait on a terminal's stdin is announced, and shells complete commands and options."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import logagg_cmd, run_logagg
from terminal import LOGAGG, on_terminal

COMMANDS = [
    "ingest", "publish", "events", "stats", "check", "gen", "serve", "cursors", "prune",
    "vacuum", "backup", "conflicts", "completion",
]  # fmt: skip
PYTHON_WORDS = re.compile(r"<[a-z][a-z |\[\]-]*>|\{[a-z_]+\}|\bx[<>]=")


# --- logagg alone ---------------------------------------------------------------------------


def test_logagg_alone_prints_an_overview_on_stdout_and_succeeds() -> None:
    proc = run_logagg()
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""
    text = proc.stdout.decode()
    assert "\\n" not in text
    assert len(text.splitlines()) <= 30
    assert max(map(len, text.splitlines())) <= 80
    listed = re.findall(r"^  ([a-z]+)  +\S", text.split("Commands:")[1].split("Examples:")[0], re.M)
    assert listed == COMMANDS
    examples = text.split("Examples:")[1]
    assert len(re.findall(r"logagg \w+", examples)) >= 2


# --- help ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_no_python_internals(command: str) -> None:
    proc = run_logagg(command, "--help", env={"COLUMNS": "100"})
    assert proc.returncode == 0
    text = proc.stdout.decode()
    assert not PYTHON_WORDS.search(text), PYTHON_WORDS.findall(text)


def test_command_summaries_are_whole() -> None:
    text = run_logagg("--help", env={"COLUMNS": "80"}).stdout.decode()
    lines = text.split("Commands:")[1].strip("\n").splitlines()
    assert [line.split()[0] for line in lines] == COMMANDS
    for line in lines:
        assert not line.endswith("..."), line
        assert line.endswith("."), line


def test_your_logs_options_are_a_group_of_their_own() -> None:
    text = run_logagg("ingest", "--help", env={"COLUMNS": "100"}).stdout.decode()
    sections = re.split(r"^(\S[^\n]*):$", text, flags=re.M)
    groups = dict(zip(sections[1::2], sections[2::2], strict=True))
    assert "Your logs" in groups, list(groups)
    for option in ("--preset", "--map", "--payload-field", "--key", "--assume-tz"):
        assert option in groups["Your logs"] and option not in groups["Options"]
    assert "--batch-size" in groups["Options"]
    assert "gzip" in text and "zstd" in text


# --- waiting on a terminal -------------------------------------------------------------------


def test_reading_a_terminal_stdin_is_announced_once(tmp_path: Path) -> None:
    typed: list[bool] = []

    def type_one_event_then_ctrl_d(master: int, _proc: object, screen: bytearray) -> None:
        if not typed and b"Ctrl-D" in screen:
            line = b'{"topic":"t","event_id":"1","timestamp":"2025-01-01T00:00:00Z","source":"s"}'
            os.write(master, line + b"\n\x04")
            typed.append(True)

    run = on_terminal(
        "ingest", "--db", tmp_path / "s.db",
        stdin_terminal=True, stderr_terminal=True, send=type_one_event_then_ctrl_d,
    )  # fmt: skip
    assert run.code == 0, run.screen
    assert run.screen.count("logagg: reading events from stdin (Ctrl-D to end)\n") == 1
    assert "accepted 1" in run.screen


def test_stdin_from_a_pipe_is_read_without_a_word(tmp_path: Path) -> None:
    proc = run_logagg("ingest", "--db", tmp_path / "s.db", "-", input=b"")
    assert proc.returncode == 0
    assert b"stdin" not in proc.stderr


# --- completion ------------------------------------------------------------------------------


def completions(shell_protocol: dict[str, str]) -> list[str]:
    proc = subprocess.run(
        [LOGAGG], capture_output=True, env={**os.environ, **shell_protocol}, timeout=30
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode().split()


def test_bash_completion_is_installed_by_sourcing_the_script() -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    path = f"{Path(LOGAGG).parent}:{os.environ['PATH']}"
    proc = subprocess.run(
        ["bash", "--norc", "-c", 'eval "$(logagg completion bash)" && complete -p logagg'],
        capture_output=True,
        env={**os.environ, "PATH": path},
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip().endswith(" logagg")
    assert "-F _logagg_completion" in proc.stdout.decode()
    asked = {"_LOGAGG_COMPLETE": "complete_bash", "COMP_WORDS": "logagg ev", "COMP_CWORD": "1"}
    assert completions(asked) == ["events"]
    asked = {**asked, "COMP_WORDS": "logagg events --ord", "COMP_CWORD": "2"}
    assert completions(asked) == ["--order"]


def test_zsh_and_fish_scripts_and_their_answers() -> None:
    zsh = run_logagg("completion", "zsh")
    assert zsh.returncode == 0
    assert "compdef _logagg_completion logagg" in zsh.stdout.decode()
    asked = {"_LOGAGG_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "logagg st"}
    assert any("stats" in word for word in completions(asked))
    fish = run_logagg("completion", "fish")
    assert fish.returncode == 0
    assert fish.stdout.decode().startswith("complete --command logagg")
    asked = {
        "_LOGAGG_COMPLETE": "complete_fish",
        "_TYPER_COMPLETE_FISH_ACTION": "get-args",
        "_TYPER_COMPLETE_ARGS": "logagg st",
    }
    assert any(word.startswith("stats") for word in completions(asked))


def test_an_unknown_shell_is_a_usage_error() -> None:
    proc = run_logagg("completion", "tcsh")
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert len(proc.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["events", "-n", "0"], "--limit / -n: expected at least 1"),
        (["events", "-n", "x"], "--limit / -n: expected a whole number"),
        (["stats", "--format", "xml"], "--format / -f: 'xml' is not one of"),
        (["completion"], "missing SHELL: bash, zsh or fish"),
    ],
    ids=["range", "integer", "choice", "missing"],
)
def test_usage_errors_are_one_line_in_plain_words(args: list[str], said: str) -> None:
    proc = run_logagg(*args)
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "\\n" not in err and "\\t" not in err, err
    assert said in err, err
    assert not re.search(r"Input should|Value error|unable to parse", err), err


INTERRUPT_WHILE_LOADING = '''
import os, signal, sys


class Interrupt:
    """Ctrl-C exactly while the command line's library is being imported."""

    def find_spec(self, name, path=None, target=None):
        if name == "typer":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None


sys.meta_path.insert(0, Interrupt())
'''


@pytest.mark.parametrize("how", ["python -m logagg", "the logagg command"])
def test_ctrl_c_while_the_command_is_still_loading_is_quiet(tmp_path: Path, how: str) -> None:
    (tmp_path / "sitecustomize.py").write_text(INTERRUPT_WHILE_LOADING)
    argv = [*logagg_cmd("stats")] if how.startswith("python") else [LOGAGG, "stats"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert (result.returncode, result.stderr) == (130, ""), result.stderr
