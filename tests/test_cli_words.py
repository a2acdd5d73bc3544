"""Words: reject reasons and usage errors in the product's own sentences, help without
Python internals, a first run that explains itself, stdout for data and stderr for people,
and shell completion."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
from conftest import invoke, logagg_cmd, run_logagg, write_jsonl
from helpers import free_port, wait_until
from typer.testing import CliRunner

COMMANDS = ["ingest", "publish", "events", "stats", "check", "gen", "serve", "completion"]
RAW_WORDS = re.compile(
    r"Input should|String should|Value error|Invalid isoformat|Invalid value|Missing |"
    r"No such|Got unexpected|requires an argument|Possible options|Error"
)


# --- reject reasons ---------------------------------------------------------------------------


def good(**fields: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "topic": "t",
        "event_id": "e1",
        "timestamp": "2025-01-01T00:00:00Z",
        "source": "s",
    }
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not None}


REASONS = [
    (good(topic=1), "topic: expected a string, got number"),
    (good(event_id=["a"]), "event_id: expected a string, got array"),
    (good(payload=[1]), "payload: expected a JSON object, got array"),
    (good(payload="x"), "payload: expected a JSON object, got string"),
    (good(source=""), "source: expected 1 to 255 characters, got 0"),
    (good(event_id="x" * 256), "event_id: expected 1 to 255 characters, got 256"),
    (good(timestamp="x"), "timestamp: not an ISO-8601 time: 'x'"),
    (good(timestamp=1735689600), "timestamp: expected a string, got number"),
    (
        good(timestamp="2025-02-30T00:00:00Z"),
        "timestamp: not an ISO-8601 time: '2025-02-30T00:00:00Z' (day is out of range for month)",
    ),
    (good(topic=None), "missing field 'topic'"),
    (
        good(topic=None, source="", payload=[]),
        "missing field 'topic'; source: expected 1 to 255 characters, got 0; "
        "payload: expected a JSON object, got array",
    ),
]


def test_reject_reasons_are_the_products_own_sentences(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", [doc for doc, _ in REASONS])
    rejects = tmp_path / "rejects.jsonl"
    proc = run_logagg("ingest", "--db", tmp_path / "s.db", "--rejects", rejects, data)
    assert proc.returncode == 0, proc.stderr.decode()
    reasons = [json.loads(line)["error"] for line in rejects.read_text().splitlines()]
    assert reasons == [reason for _, reason in REASONS]
    shown = proc.stderr.decode()
    for n, (_, reason) in enumerate(REASONS[:10], 1):
        assert f"{data}:{n}: {reason}\n" in shown
    assert not RAW_WORDS.search(shown), shown


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--topic", ""], "topic: expected 1 to 255 characters, got 0"),
        (["--topic", "t", "--timestamp", "x"], "timestamp: not an ISO-8601 time: 'x'"),
        (["--topic", "t", "--payload", "[1]"], "--payload: expected a JSON object, got array"),
    ],
    ids=["empty-topic", "bad-time", "payload"],
)
def test_publish_bad_values_speak_the_same_words(
    runner: CliRunner, tmp_path: Path, args: list[str], message: str
) -> None:
    result = invoke(runner, "publish", "--db", tmp_path / "s.db", *args)
    assert result.exit_code == 2
    assert result.stderr == f"logagg: error: {message}\n"


# --- stdout is data, stderr is for people -------------------------------------------------------


def test_publish_says_its_verdict_on_stderr_and_prints_data_only_with_json(
    tmp_path: Path,
) -> None:
    db = tmp_path / "s.db"
    args = ["publish", "--db", db, "--topic", "deploy", "--event-id", "b1"]
    first = run_logagg(*args)
    assert (first.returncode, first.stdout, first.stderr) == (0, b"", b"accepted: deploy b1\n")
    again = run_logagg(*args)
    assert (again.stdout, again.stderr) == (b"", b"duplicate (already stored): deploy b1\n")
    as_json = run_logagg(*args, "--json")
    assert as_json.stderr == b""
    assert json.loads(as_json.stdout) == {"accepted": False, "topic": "deploy", "event_id": "b1"}


def test_serve_writes_its_access_log_to_stderr(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    port = free_port()
    proc = subprocess.Popen(
        logagg_cmd("serve", "--db", tmp_path / "s.db", "--port", str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def answers() -> bool:
        assert proc.poll() is None, "serve ended early"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    try:
        wait_until(answers, 30, "serve to answer /health")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert b"GET /health" in err
    assert out == b""
