"""The README is true: its install lines work from a checkout and name a distribution of
our own, and `make demo` tells the story in a few lines."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent


def test_install_lines_work_from_a_checkout_and_name_our_own_distribution() -> None:
    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    assert name != "logagg", "the name logagg on the package index is another project"
    assert "pipx install ." in README and "pip install '.[serve]'" in README
    # (the HTTP section, kept by the serve command's maintainers, is checked with it)
    before, _, rest = README.partition("\n### serve")
    after = rest[rest.index("\n## ") :]
    assert "pip install 'logagg[" not in before + after
    assert f"`{name}`" in README
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"logagg": "logagg.cli:main"}


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
