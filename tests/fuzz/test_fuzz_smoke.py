"""A short run of each atheris harness in fuzz/, so `make test` proves they work and that a few
thousand fuzzed inputs from their seeds find nothing. The real runs are `make fuzz`
(docs/protocol.md, "Fuzzing").

atheris is in the `test` extra (setup.cfg), so `make test` installs it: if it cannot be
imported, these tests fail rather than skip.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HARNESSES = ["fuzz_frames.py", "fuzz_open_header.py", "fuzz_proxy_header.py"]
RUNS = 4000


def test_atheris_is_installed() -> None:
    try:
        import atheris  # noqa: F401
    except ImportError as error:
        pytest.fail(f"atheris cannot be imported ({error}): `make test` installs it from the test extra")


@pytest.mark.parametrize("harness", HARNESSES)
def test_harness_runs_clean_from_its_seeds(harness: str, tmp_path: Path) -> None:
    script = ROOT / "fuzz" / harness
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, str(script), "--make-seeds", str(corpus)], check=True, timeout=120)
    seeds = sorted(corpus.iterdir())
    assert len(seeds) >= 10, seeds
    result = subprocess.run(
        [
            sys.executable, str(script), f"-runs={RUNS}", "-seed=1", "-max_total_time=240",
            f"-artifact_prefix={tmp_path}/", "-print_final_stats=1", str(corpus),
        ],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    report = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, report
    assert f"Done {RUNS} runs" in result.stderr, report
    assert "INITED" in result.stderr, report  # the seeds were loaded and run first
    assert not list(tmp_path.glob("crash-*")), report
