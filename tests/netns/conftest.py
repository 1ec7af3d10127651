"""Fixtures for the network-namespace tests: a fresh public / DMZ / trusted network per test.

These tests need root, ``ip`` (iproute2) and ``iptables``. They are skipped, saying why, only when
network namespaces cannot be created here; set SHIELD_NETNS_REQUIRED=1 (as CI may) to make that a
failure instead. Everything a test creates is deleted when it ends, whatever happened, and
namespaces left behind by an earlier run that crashed are deleted before the first test.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))  # harness.py, backend.py
sys.path.insert(0, str(HERE))

import nstopology  # noqa: E402
from nstopology import Lab, Namespaces, NetnsUnavailable, ShieldNet  # noqa: E402


@pytest.fixture(scope="session")
def netns_available() -> Iterator[None]:
    try:
        nstopology.check_available()
    except NetnsUnavailable as why:
        message = f"network namespace tests need root, ip and iptables: {why}"
        if os.environ.get("SHIELD_NETNS_REQUIRED", "") not in ("", "0"):
            pytest.fail(message + " (SHIELD_NETNS_REQUIRED is set)")
        pytest.skip(message)
    removed = nstopology.remove_stale()
    if removed:
        print(f"deleted namespaces left by earlier runs: {', '.join(removed)}")
    yield
    # Belt and braces: nothing of this run may outlive it.
    mine = f"{nstopology.PREFIX}{os.getpid()}x"
    for name in nstopology.list_namespaces():
        if name.startswith(mine):
            nstopology.run([nstopology.IP, "netns", "delete", name])  # type: ignore[list-item]


@pytest.fixture
def lab(netns_available: None, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    """An empty topology (the test adds namespaces); everything goes at the end, /etc/netns too."""
    lab = Lab(tmp_path, Namespaces())
    try:
        yield lab
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(f"----- test folder: {tmp_path}")
            print(lab.tails(size=6000))
    finally:
        lab.close()


@pytest.fixture
def net(netns_available: None, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ShieldNet]:
    namespaces = Namespaces()
    shield_net = ShieldNet(tmp_path, namespaces)
    try:
        namespaces.create()
        yield shield_net
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(f"----- test folder: {tmp_path}")
            for role in ("dmz", "trusted"):
                try:
                    print(f"----- iptables in {role} -----\n{namespaces.rules(role)}")
                except Exception as problem:  # noqa: BLE001 - only a diagnostic
                    print(f"----- iptables in {role}: {problem}")
            print(shield_net.tails(size=6000))
    finally:
        shield_net.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
