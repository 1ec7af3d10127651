"""Fixtures for end-to-end tests: a fresh folder of configs, certificates and processes per test."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Topology  # noqa: E402


@pytest.fixture
def topology(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Topology]:
    topo = Topology(tmp_path)
    yield topo
    topo.close()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for process in topo.processes:
            print(f"----- {process.name} log -----\n{process.log()[-6000:]}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
