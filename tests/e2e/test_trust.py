"""Who may serve what: connector certificates, per-identity service lists, and the connector's own
service map, each checked against a peer that tries to get around it.

The misbehaving peers are real programs speaking the real protocol (tests/e2e/fakes/): a DMZ that
asks a connector for a service it does not have, a connector that never answers an OPEN.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Callable

from harness import Process, Topology, http_get, iter_log_lines, make_certs
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

FAKES = Path(__file__).resolve().parent / "fakes"

#: Generous bounds for a busy 2-core machine.
WAIT = 30.0


def wait_until(what: str, condition: Callable[[], bool], timeout: float = WAIT, *logs: Process) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    tails = "\n".join(f"----- {p.name} -----\n{p.log()[-3000:]}" for p in logs)
    raise AssertionError(f"not within {timeout} s: {what}\n{tails}")


def start_fake(topology: Topology, name: str, script: str, args: list[str], ready: str) -> Process:
    """Run tests/e2e/fakes/``script`` as a process of the topology; wait for its ``ready`` line."""
    argv = [sys.executable, str(FAKES / script), *args]
    process = Process(name, argv, topology.folder / f"{name}.log", topology.folder).start()
    topology.processes.append(process)
    process.wait_for_log(ready)
    return process


def connections(backend: Process) -> int:
    """Connections the test backend accepted (it prints one line per connection)."""
    return sum(1 for _ in iter_log_lines(backend, "connection from"))


def readyz(topology: Topology, admin: str) -> tuple[int, str]:
    return http_get(f"{topology.url(admin)}/readyz")


async def ws_echo(url: str, payload: bytes) -> bytes:
    async with connect(url, open_timeout=WAIT, close_timeout=10) as ws:
        await ws.send(payload)
        reply = await asyncio.wait_for(ws.recv(), WAIT)
    assert isinstance(reply, bytes)
    return reply


async def ws_refused(url: str) -> tuple[int, str, float]:
    """Connect expecting an HTTP refusal: (status, body, seconds it took)."""
    started = time.monotonic()
    try:
        async with connect(url, open_timeout=WAIT):
            pass
    except InvalidStatus as refused:
        body = refused.response.body.decode(errors="replace") if refused.response.body else ""
        return refused.response.status_code, body, time.monotonic() - started
    raise AssertionError(f"{url}: the WebSocket upgrade was accepted")


async def tcp_closed_without_data(port: int) -> tuple[bytes, float]:
    """Connect, send a line, and read until the DMZ closes: (what came back, seconds it took)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"anyone there?\n")
    try:
        data = await asyncio.wait_for(reader.read(), WAIT)
    except ConnectionResetError:
        data = b""
    elapsed = time.monotonic() - started
    writer.close()
    return data, elapsed


def test_unknown_connector_identity_is_refused_at_tls(topology: Topology) -> None:
    """'rogue' has a valid certificate from the DMZ's own CA but is not in [dmz.backplane.connectors]."""
    topology.certs(["internal1", "rogue"])
    backend, backend_port = topology.start_backend("echo")
    topology.dmz_config({"echo": {}}, {"internal1": ["echo"]})
    topology.internal_config("internal1", {"echo": f"tcp://127.0.0.1:{backend_port}"})
    topology.internal_config("rogue", {"echo": f"tcp://127.0.0.1:{backend_port}"})
    dmz = topology.start_dmz()
    rogue = topology.start_connector("rogue", wait=False)

    dmz.wait_for_log("unknown identity 'rogue'")
    rogue.wait_for_log("TLS handshake failed")
    refusal = next(iter_log_lines(dmz, "unknown identity 'rogue'"))
    assert "refused connector certificate" in refusal, refusal

    # The legitimate connector on the same DMZ is served: the refusal is about 'rogue', not the DMZ.
    topology.start_connector("internal1")
    topology.dmz_ready()
    assert asyncio.run(ws_echo(topology.url("ws-echo", "ws", "/echo"), b"legit")) == b"legit"

    # 'rogue' keeps retrying (2 links) and is refused every time; its links never come up.
    wait_until(
        "the DMZ refused rogue's links at least 4 times",
        lambda: dmz.log().count("unknown identity 'rogue'") >= 4,
        WAIT, dmz, rogue,
    )
    status, body = readyz(topology, "admin-rogue")
    assert status == 503, (status, body)
    assert "no live link" in body
    assert "up; DMZ" not in rogue.log()
    assert "'rogue'" not in "".join(iter_log_lines(dmz, "serves")), "the DMZ registered a link from rogue"
    failures = list(iter_log_lines(rogue, "TLS handshake failed"))
    print(f"\nDMZ: {refusal.strip()}\nrogue: {failures[0].strip()}")


def test_certificate_from_another_ca_is_refused(topology: Topology) -> None:
    """A certificate naming a listed connector, but signed by a CA the DMZ does not trust."""
    topology.certs(["internal1"])
    make_certs(topology.folder / "other-ca", [topology.dmz_name], ["internal1"])
    backend, backend_port = topology.start_backend("echo")
    topology.dmz_config({"echo": {}}, {"internal1": ["echo"]})
    config = topology.internal_config("internal1", {"echo": f"tcp://127.0.0.1:{backend_port}"})
    text = config.read_text()
    assert 'cert = "certs/internal1.pem"' in text
    # Its own CA file stays the real one, so the connector does trust the DMZ: the DMZ must refuse.
    config.write_text(text.replace('cert = "certs/internal1.pem"', 'cert = "other-ca/internal1.pem"'))
    dmz = topology.start_dmz()
    impostor = topology.start_connector("internal1", wait=False)

    dmz.wait_for_log("refused connector certificate")
    impostor.wait_for_log("TLS handshake failed")
    wait_until(
        "the DMZ refused the impostor's links at least 4 times",
        lambda: dmz.log().count("refused connector certificate") >= 4,
        WAIT, dmz, impostor,
    )
    refusal = next(iter_log_lines(dmz, "refused connector certificate"))
    assert "unable to get local issuer certificate" in refusal, refusal
    assert "'internal1'" in refusal, refusal
    assert "serves" not in "".join(iter_log_lines(dmz, "link from")), "the DMZ registered the impostor's link"
    assert "up; DMZ" not in impostor.log()
    assert readyz(topology, "admin-internal1")[0] == 503
    assert readyz(topology, "dmz-admin")[0] == 503
    assert connections(backend) == 0
    failures = list(iter_log_lines(impostor, "TLS handshake failed"))
    print(f"\nDMZ: {refusal.strip()}\nconnector: {failures[0].strip()}")


def test_service_not_listed_for_the_connector_is_not_routed(topology: Topology) -> None:
    """internal1 may serve echo only; it also offers 'secret', which the DMZ must not route to it."""
    topology.certs(["internal1"])
    backend, backend_port = topology.start_backend("echo")
    topology.dmz_config({"echo": {}, "secret": {}}, {"internal1": ["echo"]})
    target = f"tcp://127.0.0.1:{backend_port}"
    topology.internal_config("internal1", {"echo": target, "secret": target})
    dmz = topology.start_dmz()
    connector = topology.start_connector("internal1")  # its links are up: the DMZ accepted the link

    dmz.wait_for_log("may not serve 'secret'")
    line = next(iter_log_lines(dmz, "may not serve 'secret'"))
    assert "'internal1'" in line, line
    connector.wait_for_log("refused service 'secret'")
    refused = next(iter_log_lines(connector, "refused service 'secret'"))
    assert "DMZ 'dmz1'" in refused, refused

    # Only echo is live: the DMZ is not ready, and says which service is missing.
    status, body = readyz(topology, "dmz-admin")
    assert status == 503, (status, body)
    assert "'secret'" in body and "'echo'" not in body, body

    async def clients() -> tuple[tuple[int, str, float], tuple[bytes, float], bytes, bytes]:
        refused_ws = await ws_refused(topology.url("ws-secret", "ws", "/secret"))
        refused_tcp = await tcp_closed_without_data(topology.port("tcp-secret"))
        echo_ws = await ws_echo(topology.url("ws-echo", "ws", "/echo"), b"echo is fine")
        reader, writer = await asyncio.open_connection("127.0.0.1", topology.port("tcp-echo"))
        writer.write(b"tcp echo is fine")
        writer.write_eof()
        echo_tcp = await asyncio.wait_for(reader.read(), WAIT)
        writer.close()
        return refused_ws, refused_tcp, echo_ws, echo_tcp

    (status, body, _), (tcp_data, _), echo_ws, echo_tcp = asyncio.run(clients())
    assert status == 503, (status, body)
    assert "no live link for service 'secret'" in body, body
    assert tcp_data == b""
    assert echo_ws == b"echo is fine"
    assert echo_tcp == b"tcp echo is fine"
    # Exactly the two echo clients reached the backend; nothing for 'secret'.
    wait_until("the backend saw the two echo clients", lambda: connections(backend) >= 2, WAIT, backend)
    assert connections(backend) == 2
    # One line per refused client (ws and tcp), saying why.
    wait_until("the DMZ logged both refusals", lambda: len(list(iter_log_lines(dmz, "-> secret: 503"))) >= 2, WAIT, dmz)
    logged = list(iter_log_lines(dmz, "-> secret: 503"))
    assert len(logged) == 2, logged
    assert all("no live link for service 'secret'" in line for line in logged), logged


def test_connector_refuses_unknown_service_and_dials_nothing(topology: Topology) -> None:
    """A (compromised) DMZ names a service the connector does not have: refused, nothing dialled."""
    certs = topology.certs(["internal1"])
    backend, backend_port = topology.start_backend("echo")
    topology.internal_config("internal1", {"echo": f"tcp://127.0.0.1:{backend_port}"}, links=1)
    fake = start_fake(
        topology,
        "fake-dmz",
        "fake_dmz.py",
        [
            "--port", str(topology.port("backplane")),
            "--cert", str(certs / f"{topology.dmz_name}.pem"),
            "--ca", str(certs / "ca.pem"),
            "--name", topology.dmz_name,
            "--open", "nosuch",
            "--open", "echo",
        ],
        "listening",
    )
    connector = topology.start_connector("internal1")

    fake.wait_for_log("ALL OPENS DONE")
    replies = {line.split()[1]: line for line in iter_log_lines(fake, "OPEN_REPLY")}
    assert "status=UNKNOWN_SERVICE" in replies["service=nosuch"], replies
    assert "nosuch" in replies["service=nosuch"].split("reason=", 1)[1], replies
    assert "status=OK" in replies["service=echo"], replies
    assert "DATA service=echo echoed=True" in fake.log()

    connector.wait_for_log("no service 'nosuch' here")
    refusal = next(iter_log_lines(connector, "no service 'nosuch' here"))
    assert "refused" in refusal and "nothing dialled" in refusal, refusal
    # The valid OPEN produced exactly one backend connection; the refused one produced none.
    wait_until("the backend saw the echo stream", lambda: connections(backend) >= 1, WAIT, backend)
    assert connections(backend) == 1, backend.log()
    print(f"\nfake DMZ: {replies['service=nosuch'].strip()}\nconnector: {refusal.strip()}")


def test_connector_that_never_answers_gives_504(topology: Topology) -> None:
    """The DMZ gives up on a silent connector after open-timeout: 504 for WebSocket, close for TCP."""
    open_timeout = 2
    certs = topology.certs(["internal1"])
    topology.dmz_config({"echo": {}}, {"internal1": ["echo"]}, extra_dmz=f"open-timeout = {open_timeout}")
    dmz = topology.start_dmz()
    fake = start_fake(
        topology,
        "fake-connector",
        "fake_connector.py",
        [
            "--connect", str(topology.port("backplane")),
            "--cert", str(certs / "internal1.pem"),
            "--ca", str(certs / "ca.pem"),
            "--server-name", topology.dmz_name,
            "--name", "internal1",
            "--service", "echo",
        ],
        "LINK ACCEPTED",
    )
    topology.dmz_ready()

    async def clients() -> tuple[tuple[int, str, float], tuple[bytes, float]]:
        return await asyncio.gather(
            ws_refused(topology.url("ws-echo", "ws", "/echo")),
            tcp_closed_without_data(topology.port("tcp-echo")),
        )

    (status, body, ws_seconds), (tcp_data, tcp_seconds) = asyncio.run(clients())
    print(f"\nws: {status} {body.strip()!r} after {ws_seconds:.2f} s; tcp closed after {tcp_seconds:.2f} s")
    assert status == 504, (status, body)
    assert "did not answer within 2 s" in body and "'internal1'" in body, body
    assert open_timeout - 0.2 <= ws_seconds <= open_timeout + 10
    assert tcp_data == b""
    assert open_timeout - 0.2 <= tcp_seconds <= open_timeout + 10
    # Both OPENs did reach the connector (it read them and stayed silent).
    wait_until("the fake saw two OPENs", lambda: fake.log().count("OPEN service=echo") >= 2, WAIT, fake)
    wait_until(
        "the DMZ logged both 504s",
        lambda: len(list(iter_log_lines(dmz, "-> echo: 504"))) >= 2,
        WAIT, dmz,
    )
    lines = list(iter_log_lines(dmz, "-> echo: 504"))
    assert any(line.split("]", 1)[-1].strip().startswith("ws client") for line in lines), lines
    assert any(line.split("]", 1)[-1].strip().startswith("tcp client") for line in lines), lines
    assert all("did not answer within 2 s" in line for line in lines), lines
