"""The image and deploy/compose.yaml, run for real with podman or docker; checked from the host.

The topology of deploy/compose.yaml (host networking, everything on 127.0.0.1): dmz1 and dmz2 in a
cluster, a balancer on dmz1 at the demo's URLs (ws://127.0.0.1:8080/echo, tcp://127.0.0.1:9000),
each member's own echo service (8081/9001 and 8082/9002), connectors internal1 (priority 200) and
internal2 (100) configured by SHIELD_* variables only, and an echo backend. Steps, in order, in one
test since each builds on the last: healthy; ws and tcp through the containers; uid 65532 and a
read-only root; the environment-only sidecar serves; stopping the active connector fails over to
the standby; stopping dmz2 drains it (exit 0) while a client of dmz1 carries on.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
import urllib.request
from typing import Callable, Iterator

import pytest
from engine import REPO, Engine
from websockets.sync.client import connect as ws_connect

sys.path.insert(0, str(REPO / "tests" / "e2e"))
from harness import echo  # noqa: E402

WAIT = 120.0  # generous: containers start slowly on a busy 2-core machine
PORTS = [8080, 9000, 8081, 9001, 8082, 9002, 9100, 9200, 9101, 9102, 5941, 5942, 5951, 5952, 7000]
GATEWAYS = ["dmz1", "dmz2", "internal1", "internal2"]


def until(what: str, condition: Callable[[], object], timeout: float = WAIT) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.2)
    return time.monotonic() - started


def port_busy(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def tcp_echo(port: int, payload: bytes) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            return echo(sock, payload)
    except OSError as problem:
        return f"failed: {problem!r}"


def ws_echo(url: str, payload: str) -> str:
    try:
        with ws_connect(url, open_timeout=10, close_timeout=5) as ws:
            ws.send(payload.encode())  # binary frames: the tunnel carries bytes
            reply = ws.recv(timeout=10)
            return "echoed" if reply == payload.encode() else f"wrong echo {reply!r}"
    except Exception as problem:  # noqa: BLE001 - the outcome is what the test reports
        return f"failed: {problem!r}"


def streams_total(admin_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith('shield_streams_total{service="echo"}'):
                return float(line.split()[-1])
    return 0.0


@pytest.fixture(scope="module")
def compose(engine: Engine, image: str) -> Iterator[Engine]:
    engine.compose_run("down", "-v", "-t", "5", check=False)  # a crashed earlier run's leftovers
    busy = [port for port in PORTS if port_busy(port)]
    assert not busy, f"ports deploy/compose.yaml needs are taken on 127.0.0.1: {busy} (is `make demo` running?)"
    up = engine.compose_run("up", "-d")
    try:
        yield engine
    finally:
        tails = []
        for service in ["certs", "echo", *GATEWAYS]:
            try:
                tails.append(f"----- {service} -----\n{engine.logs(engine.container(service))[-3000:]}")
            except AssertionError as problem:
                tails.append(f"----- {service}: {problem}")
        print("\n" + up.stdout[-2000:] + "\n" + "\n".join(tails))
        engine.compose_run("down", "-v", "-t", "10", check=False)


def test_image(engine: Engine, image: str) -> None:
    """What the Dockerfile promises: uid 65532, tini, HEALTHCHECK, labels, no compilers, read-only."""
    inspected = engine.inspect(image)
    config = inspected["Config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["/usr/bin/tini", "--"]
    assert config["Cmd"] == ["twistd", "-n", "--pidfile=", "shield-internal"]
    healthcheck = config.get("Healthcheck") or inspected.get("Healthcheck")  # docker | podman
    assert healthcheck and healthcheck["Test"] == ["CMD", "shield", "healthcheck"], inspected
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "shield" and labels["org.opencontainers.image.version"]
    facts = engine.run(
        "run", "--rm", "--read-only", "--tmpfs", "/tmp", image, "sh", "-c",
        "id -u; command -v gcc cc x86_64-linux-gnu-gcc || echo no-compiler; touch /opt/shield/x 2>&1; "
        "touch /tmp/x && echo tmp-writable; python3 --version",
    ).stdout  # fmt: skip
    lines = facts.splitlines()
    assert lines[0] == "65532", facts
    assert "no-compiler" in lines, facts
    assert any("Read-only file system" in line for line in lines), facts
    assert "tmp-writable" in lines and any(line.startswith("Python 3.11") for line in lines), facts
    # The sidecar's entry point with a variable missing: exit 2, naming it.
    bad = engine.run("run", "--rm", "--read-only", "-e", "SHIELD_NAME=app", image, check=False)
    assert bad.returncode == 2, (bad.returncode, bad.stdout, bad.stderr)
    assert "environment: SHIELD_DMZ: is required to configure the connector from the environment" in bad.stderr


def test_compose_topology(compose: Engine) -> None:
    engine = compose
    ids = {service: engine.container(service) for service in ["certs", "echo", *GATEWAYS]}

    # -- healthy: the image's HEALTHCHECK (shield healthcheck) passes on every gateway ------------
    started = time.monotonic()
    for service in GATEWAYS:
        outcome: list[str] = []

        def healthy(service: str = service, outcome: list[str] = outcome) -> bool:
            ok, output = engine.healthy(ids[service])
            outcome.append(output)
            return ok

        try:
            until(f"{service} healthy", healthy)
        except AssertionError:
            raise AssertionError(f"{service} not healthy within {WAIT:g} s; last check said {outcome[-1:]}\n"
                                 f"{engine.logs(ids[service])[-3000:]}") from None
        assert outcome[-1].startswith("ready: http://127.0.0.1:"), outcome[-1]
    assert engine.exit_code(ids["certs"]) == 0
    made = engine.logs(ids["certs"]).count("/var/lib/shield/certs/dmz1.pem")
    assert made == 1, f"the development certificates were made {made} times"
    print(f"\ncompose: all four gateways healthy {time.monotonic() - started:.1f} s after `up -d` returned")

    # -- a client reaches the backend through the containers, over ws and tcp ---------------------
    until("the balancer serves tcp", lambda: tcp_echo(9000, b"tcp via the balancer\n") == "echoed")
    assert ws_echo("ws://127.0.0.1:8080/echo", "ws via the balancer") == "echoed"
    for ws_port, tcp_port in ((8081, 9001), (8082, 9002)):
        assert tcp_echo(tcp_port, f"tcp via {tcp_port}\n".encode()) == "echoed"
        assert ws_echo(f"ws://127.0.0.1:{ws_port}/echo", f"ws via {ws_port}") == "echoed"
    assert tcp_echo(9000, b"z" * 1_000_000) == "echoed"

    # -- uid 65532 and a read-only root filesystem, in every running gateway ----------------------
    for service in GATEWAYS:
        assert engine.inspect(ids[service])["HostConfig"]["ReadonlyRootfs"] is True, service
        uid = engine.run("exec", ids[service], "id", "-u").stdout.strip()
        assert uid == "65532", f"{service} runs as {uid}"
        write = engine.run("exec", ids[service], "sh", "-c", "touch /etc/shield/x", check=False)
        assert write.returncode != 0 and "Read-only file system" in write.stderr, (service, write)

    # -- internal1 is configured by SHIELD_* variables only, and serves its backend ---------------
    config = engine.inspect(ids["internal1"])["Config"]
    assert config["Cmd"] == ["twistd", "-n", "--pidfile=", "shield-internal"], config["Cmd"]
    assert any(variable.startswith("SHIELD_BACKEND=") for variable in config["Env"])
    before = streams_total(9101)
    for index in range(10):
        assert tcp_echo(9000, f"to the active connector {index}\n".encode()) == "echoed"
    assert streams_total(9101) >= before + 10, "the priority-200 sidecar did not serve the new clients"

    # -- stopping the active connector fails over to the standby ----------------------------------
    standby_before = streams_total(9102)
    stopped_at = time.monotonic()
    engine.run("stop", "-t", "20", ids["internal1"], timeout=60)
    stop_seconds = time.monotonic() - stopped_at
    assert engine.exit_code(ids["internal1"]) == 0, engine.logs(ids["internal1"])[-3000:]
    outcomes = [tcp_echo(9000, f"after failover {index}\n".encode()) for index in range(20)]
    assert outcomes == ["echoed"] * 20, outcomes
    assert streams_total(9102) >= standby_before + 20, "the standby did not take the new clients"
    print(f"failover: `stop` of internal1 took {stop_seconds:.1f} s (exit 0); 20 of 20 new clients served by internal2")

    # -- stopping dmz2 drains it; a client of dmz1 carries on -------------------------------------
    on_dmz1 = socket.create_connection(("127.0.0.1", 9001), timeout=10)
    on_dmz2 = socket.create_connection(("127.0.0.1", 9002), timeout=10)
    assert echo(on_dmz1, b"dmz1 before\n") == "echoed" and echo(on_dmz2, b"dmz2 before\n") == "echoed"
    problems: list[str] = []
    echoes = 0
    done = threading.Event()

    def keep_talking() -> None:
        nonlocal echoes
        while not done.is_set():
            outcome = echo(on_dmz1, f"dmz1 during {echoes}\n".encode())
            if outcome != "echoed":
                problems.append(outcome)
                return
            echoes += 1
            time.sleep(0.02)

    talker = threading.Thread(target=keep_talking, daemon=True)
    talker.start()
    stop_result: list[float] = []

    def stop_dmz2() -> None:
        began = time.monotonic()
        engine.run("stop", "-t", "20", ids["dmz2"], timeout=60)
        stop_result.append(time.monotonic() - began)

    stopper = threading.Thread(target=stop_dmz2, daemon=True)
    stopper.start()
    until("dmz2 logs that it drains", lambda: "draining: no new clients" in engine.logs(ids["dmz2"]), 30)
    # dmz2's open client is served while it drains; dmz2 waits for it.
    assert echo(on_dmz2, b"dmz2 while draining\n") == "echoed"
    time.sleep(1.0)
    assert stopper.is_alive(), "dmz2 exited with a client still open, before its grace period"
    on_dmz2.close()
    stopper.join(60)
    assert stop_result, "podman/docker stop of dmz2 did not return"
    assert engine.exit_code(ids["dmz2"]) == 0, engine.logs(ids["dmz2"])[-3000:]
    time.sleep(1.0)
    done.set()
    talker.join(30)
    assert not problems, f"the client of dmz1 was lost while dmz2 drained: {problems}"
    assert echo(on_dmz1, b"dmz1 after\n") == "echoed"
    on_dmz1.close()
    outcomes = [tcp_echo(9000, f"after dmz2 left {index}\n".encode()) for index in range(10)]
    assert outcomes == ["echoed"] * 10, outcomes
    print(f"drain: `stop` of dmz2 returned {stop_result[0]:.1f} s after it began (it waited for its open client), "
          f"exit 0; the client of dmz1 echoed {echoes} times meanwhile, none lost")
