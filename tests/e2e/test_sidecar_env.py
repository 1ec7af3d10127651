"""The container sidecar without a file: ``twistd -n shield-internal`` configured by SHIELD_* alone.

Also the two commands the image relies on: ``shield healthcheck`` (the image's HEALTHCHECK) and
``shield echo-backend`` (compose's backend). Real processes on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
from harness import SHIELD, TWISTD, Process, Topology, echo, free_port, http_get, wait_ready

WAIT = 30.0
EXIT_BAD_CONFIG = 2


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    topology = Topology(tmp_path)
    try:
        yield topology
    finally:
        topology.close()


def sidecar_env(topology: Topology, **changes: str | None) -> dict[str, str]:
    """The variables of a sidecar connector 'internal1' offering 'echo'; ``None`` removes one."""
    env = {
        "SHIELD_NAME": "internal1",
        "SHIELD_DMZ": f"tls://127.0.0.1:{topology.port('backplane')}",
        "SHIELD_SERVER_NAME": topology.dmz_name,
        "SHIELD_CERT": str(topology.folder / "certs" / "internal1.pem"),
        "SHIELD_CA": str(topology.folder / "certs" / "ca.pem"),
        "SHIELD_SERVICE": "echo",
        "SHIELD_BACKEND": f"tcp://127.0.0.1:{topology.port('backend')}",
        "SHIELD_ADMIN": topology.url("admin-internal1"),
    }
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def clean_environment() -> dict[str, str]:
    """This process's environment without any SHIELD_* variable (a developer may have some set)."""
    return {name: value for name, value in os.environ.items() if not name.startswith("SHIELD_")}


def run_connector(topology: Topology, env: dict[str, str]) -> Process:
    argv = [TWISTD, "-n", "--pidfile=", "--logfile=-", "shield-internal"]
    process = Process("internal1", argv, topology.folder / "internal1.log", topology.folder, env=env)
    topology.processes.append(process)
    return process.start()


def echo_through(port: int, payload: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return echo(sock, payload)


def healthcheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHIELD, "healthcheck", *args], capture_output=True, text=True, timeout=30,
        env=dict(clean_environment(), **(env or {})),
    )  # fmt: skip


def test_sidecar_configured_by_environment_serves_its_backend(topology: Topology) -> None:
    topology.certs(["internal1"])
    topology.dmz_config({"echo": {}}, {"internal1": ["echo"]})
    dmz = topology.start_dmz()
    topology.start_backend()
    env = sidecar_env(topology, SHIELD_PRIORITY="150", SHIELD_LINKS="3")
    connector = run_connector(topology, env)
    admin = topology.url("admin-internal1")

    # Not ready before its links are up? It may be quick; the check must turn healthy either way.
    wait_ready(admin, WAIT, connector)
    assert "connector 'internal1' (priority 150" in dmz.wait_for_log("connector 'internal1' (priority 150", WAIT)
    assert echo_through(topology.port("tcp-echo"), b"through a sidecar configured by environment\n") == "echoed"
    status, body = http_get(f"{admin}/metrics")
    assert status == 200 and 'shield_links_up{endpoint="127.0.0.1:' in body
    deadline = time.monotonic() + WAIT
    while dmz.log().count("connector 'internal1' (priority 150") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dmz.log().count("connector 'internal1' (priority 150") == 3, "SHIELD_LINKS=3: three links"

    # The image's HEALTHCHECK: healthy, found through SHIELD_ADMIN alone.
    healthy = healthcheck(env={"SHIELD_ADMIN": admin})
    assert (healthy.returncode, healthy.stdout.strip()) == (0, f"ready: {admin}/readyz"), healthy

    # SIGHUP rereads the certificate files (a rotated Secret) from the same variables.
    connector.signal(signal.SIGHUP)
    line = connector.wait_for_log("reloaded the environment", WAIT)
    assert "services echo; priority 150" in line

    assert connector.stop(WAIT) == 0, connector.log()[-3000:]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"SHIELD_DMZ": None, "SHIELD_CA": None},
         "SHIELD_DMZ: is required to configure the connector from the environment (so are SHIELD_CA)"),
        ({"SHIELD_PRIORITY": "high"}, "SHIELD_PRIORITY: expected an integer, got 'high'"),
        ({"SHIELD_BACKEND": "http://127.0.0.1:80"}, "SHIELD_BACKEND: "),
        ({"SHIELD_DMZ": "tls://127.0.0.1"}, "SHIELD_DMZ: "),
        ({"SHIELD_CERT": "/nonexistent/internal1.pem"}, "SHIELD_CERT: "),
        ({"SHIELD_NAME": "no spaces allowed"}, "SHIELD_NAME: "),
    ],
)
def test_a_bad_variable_is_exit_2_naming_it(topology: Topology, changes: dict[str, str | None], expected: str) -> None:
    topology.certs(["internal1"])
    env = dict(clean_environment(), **{k: v for k, v in sidecar_env(topology, **changes).items()})
    argv = [TWISTD, "-n", "--pidfile=", "--logfile=-", "shield-internal"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=topology.folder, env=env)
    assert done.returncode == EXIT_BAD_CONFIG, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("environment: " + expected), done.stderr


def test_without_config_or_variables_the_usage_says_both(topology: Topology) -> None:
    argv = [TWISTD, "-n", "--pidfile=", "shield-internal"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=topology.folder, env=clean_environment())
    assert done.returncode != 0
    assert "--config FILE is required (or the SHIELD_* environment variables)" in done.stdout + done.stderr


def test_healthcheck_reports_why_not_ready(topology: Topology) -> None:
    # Nothing listens: exit 1, one line.
    nobody = f"http://127.0.0.1:{free_port()}"
    refused = healthcheck(nobody)
    assert refused.returncode == 1
    assert refused.stdout.startswith(f"not ready: {nobody}/readyz: cannot ask it:") and refused.stdout.count("\n") == 1

    # A connector whose DMZ is not there: /readyz answers 503 and says why.
    topology.certs(["internal1"])
    connector = run_connector(topology, sidecar_env(topology))
    admin = topology.url("admin-internal1")
    deadline = time.monotonic() + WAIT
    result = healthcheck(admin)
    while "answered 503" not in result.stdout and time.monotonic() < deadline and connector.alive():
        time.sleep(0.1)
        result = healthcheck(admin)
    assert result.returncode == 1, result
    assert result.stdout.startswith(f"not ready: {admin}/readyz answered 503: "), result.stdout
    assert result.stdout.count("\n") == 1

    # The wildcard of SHIELD_ADMIN is asked on 127.0.0.1.
    wild = healthcheck(env={"SHIELD_ADMIN": f"http://0.0.0.0:{topology.port('admin-internal1')}"})
    assert wild.stdout.startswith(f"not ready: {admin}/readyz answered 503"), wild


def test_echo_backend(tmp_path: Path) -> None:
    port = free_port()
    backend = Process("echo", [SHIELD, "echo-backend", "--listen", f"tcp://127.0.0.1:{port}"], tmp_path / "echo.log", tmp_path)
    backend.start()
    try:
        backend.wait_for_log(f"echo backend listening on tcp://127.0.0.1:{port}", WAIT)
        assert echo_through(port, b"x" * 100_000) == "echoed"
        assert backend.stop(WAIT) == 0
    finally:
        backend.kill()
    bad = subprocess.run([SHIELD, "echo-backend", "--listen", "udp://127.0.0.1:1"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--listen" in bad.stderr, bad
