"""The README is true: its install lines work from a checkout and name a distribution of
our own, and `make demo` tells the story in a few lines."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLES
from typer.testing import CliRunner

README = (ROOT / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent


def test_install_lines_work_from_a_checkout_and_name_our_own_distribution() -> None:
    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    assert name != "logagg", "the name logagg on the package index is another project"
    assert "pipx install ." in README and "pip install '.[serve]'" in README
    assert "pip install 'logagg[" not in README
    hints = [p for p in (ROOT / "logagg").rglob("*.py") if "logagg[" in p.read_text("utf-8")]
    assert hints == [], "an install hint names the other project's distribution"
    assert f"`{name}`" in README
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"logagg": "logagg.__main__:main"}


def test_make_demo_tells_the_story_in_a_few_lines(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = BIN.parent
    proc = subprocess.run(
        [
            "make", "--no-print-directory", "-C", str(ROOT), "-o", f"{venv}/.installed",
            "demo", f"VENV={venv}", f"DEMO_DB={tmp_path / 'demo.db'}",
            f"DEMO_REJECTS={tmp_path / 'rejects.jsonl'}",
        ],
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    text = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 0, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) <= 30, text
    assert not [line for line in lines if re.match(r"(\S*/)?(logagg|rm) ", line)], text
    for told in ("duplicates", "rejected", "nothing new", "newest"):
        assert told in text, told
    assert (tmp_path / "rejects.jsonl").exists()


# --- the examples of the command sections run as written -----------------------------------

# Examples that cannot end by themselves or need what a test machine lacks: a live
# stream, the journal, Docker's files, a server, an installation, a shell's start-up file.
NOT_HERE = re.compile(
    r"tail -[fF]|ingest -F |--follow|journalctl|/var/lib/docker|\bserve\b|\bpipx? |\bmake |"
    r"completion (bash|zsh)\)|~/"
)
FILES = {
    "app.log": SAMPLES / "formats" / "pino.jsonl",
    "worker.log": SAMPLES / "formats" / "pino.jsonl",
    "graylog.jsonl": SAMPLES / "formats" / "gelf.jsonl",
}
OTLP = {
    "resourceLogs": [
        {
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "api"}}]},
            "scopeLogs": [
                {
                    "logRecords": [
                        {"timeUnixNano": "1735725600000000000", "body": {"stringValue": "hi"}}
                    ]
                }
            ],
        }
    ]
}


def command_sections() -> str:
    """The README from its start to `## The event`, and `## Commands` up to `### serve`."""
    start = README[: README.index("\n## The event")]
    commands = README[README.index("\n## Commands") : README.index("\n### serve")]
    return start + commands


def examples() -> list[str]:
    """Every `logagg ...` line of the fenced blocks of the command sections, without its
    comment, in order, but those NOT_HERE."""
    found = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", command_sections(), re.M | re.S):
        for line in block.splitlines():
            command = re.split(r"\s{2,}# ", line.strip())[0]
            if re.search(r"(^|\| )logagg\b", command) and not NOT_HERE.search(command):
                found.append(command)
    return found


def readme_workspace(tmp_path: Path) -> dict[str, str]:
    for name, source in FILES.items():
        shutil.copy(source, tmp_path / name)
    shutil.copy(SAMPLES / "events.jsonl", tmp_path / "events.jsonl")
    with gzip.open(tmp_path / "more.jsonl.gz", "wb") as f:
        f.write((SAMPLES / "resend.jsonl").read_bytes())
    (tmp_path / "otel-logs.jsonl").write_text(json.dumps(OTLP) + "\n")
    (tmp_path / "otel.jsonl").write_text('{"observed_timestamp": "2025-01-01T00:00:00Z"}\n')
    gh = {
        "id": "1",
        "type": "PushEvent",
        "created_at": "2025-01-01T00:00:00Z",
        "repo": {"name": "a/b"},
    }
    (tmp_path / "gh.jsonl").write_text(json.dumps(gh) + "\n")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.update(LOGAGG_DB=str(tmp_path / "logagg.db"), PAGER="cat")
    env.pop("NO_COLOR", None)
    for db in ("a.db", "logagg.db"):  # a.db: the store the copy example copies
        seed = subprocess.run(
            ["logagg", "ingest", "-q", "--db", db, "events.jsonl"], cwd=tmp_path, env=env
        )
        assert seed.returncode == 0
    return env


def test_every_command_example_runs(tmp_path: Path) -> None:
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    env = readme_workspace(tmp_path)
    lines = examples()
    assert len(lines) >= 25, lines

    def run(line: str) -> None:
        # A synthetic file as in the example, of a size a test writes in a moment.
        command = re.sub(r"\bgen \d{5,}", "gen 1000", line)
        proc = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )
        said = proc.stderr.decode()
        assert proc.returncode == 0, f"{line}\n{said}"
        assert "Traceback" not in said, line

    # Several at once, as several processes may use a store; those that write an input
    # file the others read come last.
    writers = [line for line in lines if " > " in line]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(run, [line for line in lines if line not in writers]))
    for line in writers:
        run(line)


def test_the_copy_example_keeps_the_order_of_equal_times(tmp_path: Path) -> None:
    env = readme_workspace(tmp_path)
    (copy,) = [line for line in examples() if "copy a store" in README.split(line)[1][:40]]
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", copy], cwd=tmp_path, env=env)
    assert proc.returncode == 0

    def listing(db: str) -> list[str]:
        out = subprocess.run(
            ["logagg", "events", "--all", "--order", "asc", "--db", db],
            cwd=tmp_path, env=env, capture_output=True, check=True,
        ).stdout  # fmt: skip
        return out.decode().splitlines()

    original = listing("a.db")
    times = [json.loads(line)["timestamp"] for line in original]
    assert len(set(times)) < len(times)  # the sample has events at the same time
    assert listing("copy.db") == original


def test_the_db_sentence_names_the_commands_without_a_store() -> None:
    from logagg.cli import app

    sentence = README[README.index("\n## Commands") :].split("\n\n")[1]
    for command in ("ingest", "publish", "events", "stats", "check", "gen", "completion"):
        helped = CliRunner().invoke(app, [command, "--help"])
        assert helped.exit_code == 0
        if "--db" not in helped.stdout:
            assert f"`{command}`" in sentence, command


def test_the_http_stats_example_adds_up_its_requests() -> None:
    block = README[README.index("\n### serve") :]
    block = block[: block.index("/health")]
    answers = [
        json.loads(line)
        for line in re.findall(r"^(\{\"received\".*\})$", block, re.M)
        if "unique_processed" not in line
    ]
    stats_line = re.search(r"^(\{\"received\".*), \.\.\.\}$", block, re.M)
    assert answers and stats_line
    stats = json.loads(stats_line.group(1) + "}")
    for total, each in (
        ("received", "received"),
        ("unique_processed", "accepted"),
        ("duplicate_dropped", "duplicates"),
        ("invalid", "invalid"),
    ):
        assert stats[total] == sum(a[each] for a in answers), total
