"""Refusals a public client can meet, each with its status, its reason and one DMZ log line.

A WebSocket refusal is an HTTP status with a one-line reason as the body; a raw TCP client has
no status to read, so it is closed, and the DMZ log says why. (504, "the connector never
answers", needs a fake connector and lives with the fakes.)
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from urllib.parse import urlsplit

import pytest
from harness import Process, Topology, http_get, reserve_ports
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

MIB = 1024 * 1024
LOG_TIMEOUT = 30.0


def ws_connect(url: str, **kwargs):  # type: ignore[no-untyped-def]
    return connect(url, proxy=None, max_size=16 * MIB, open_timeout=30, **kwargs)


#: Client ports used so far in this run: each log line is looked up by a port never used before.
_USED_PORTS: set[int] = set()


def bound_socket() -> tuple[socket.socket, int]:
    """A client socket bound to a fresh local port, so the DMZ's log line can be found by it."""
    while True:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        if port not in _USED_PORTS:
            _USED_PORTS.add(port)
            sock.setblocking(False)
            return sock, port
        sock.close()


async def ws_refused(url: str, **kwargs) -> tuple[int, int, str]:  # type: ignore[no-untyped-def]
    """Try a WebSocket upgrade that must be refused: (client port, HTTP status, body)."""
    sock, port = bound_socket()
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", urlsplit(url).port))
    try:
        async with ws_connect(url, sock=sock, **kwargs):
            pass
    except InvalidStatus as refused:
        response = refused.response
        return port, response.status_code, response.body.decode("utf-8", "replace")
    raise AssertionError(f"the upgrade to {url} was accepted; expected a refusal")


async def tcp_refused(port: int) -> tuple[int, bytes | str]:
    """A raw TCP client the DMZ must close: (client port, what it read: b"" on EOF, or the error)."""
    sock, client_port = bound_socket()
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(b"anyone there?")
        got: bytes | str = await asyncio.wait_for(reader.read(), LOG_TIMEOUT)
    except ConnectionResetError as reset:
        got = repr(reset)
    finally:
        writer.close()
    return client_port, got


def client_lines(process: Process, client_port: int) -> list[str]:
    """The log lines that name this public client (its address is unique while the test runs)."""
    needle = re.compile(rf"client 127\.0\.0\.1:{client_port}(?!\d)")
    return [line for line in process.log().splitlines() if needle.search(line)]


def wait_client_lines(process: Process, client_port: int, timeout: float = LOG_TIMEOUT) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = client_lines(process, client_port)
        if lines:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"{process.name}: no line about client 127.0.0.1:{client_port}:\n{process.log()[-4000:]}")


def assert_one_shield_line(process: Process, client_port: int, *fragments: str) -> str:
    """Exactly one log line names the client, it comes from shield and says ``fragments``."""
    wait_client_lines(process, client_port)
    lines = client_lines(process, client_port)
    assert len(lines) == 1, f"expected one log line for client port {client_port}, got:\n" + "\n".join(lines)
    line = lines[0]
    assert "[shield." in line, line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def base_topology(topology: Topology, services: list[str]) -> None:
    names = ["backend", "backplane", "dmz-admin", "admin-internal1"]
    for service in services:
        names += [f"ws-{service}", f"tcp-{service}"]
    reserve_ports(topology, names)
    topology.certs(["internal1"])


# -- backend down ---------------------------------------------------------------------------------


def test_backend_down_is_502_for_websocket_and_a_close_for_tcp(topology: Topology) -> None:
    base_topology(topology, ["down"])
    reserve_ports(topology, ["nothing-listens"])
    dead = topology.port("nothing-listens")  # reserved, never bound: connecting is refused
    topology.dmz_config({"down": {}}, {"internal1": ["down"]})
    topology.internal_config("internal1", {"down": f"tcp://127.0.0.1:{dead}"})
    dmz = topology.start_dmz()
    connector = topology.start_connector("internal1")
    topology.dmz_ready()

    ws_port, status, body = asyncio.run(ws_refused(topology.url("ws-down", "ws", "/down")))
    assert status == 502, body
    assert "backend of 'down' refused the connection" in body, body
    assert body.count("\n") == 1 and body.endswith("\n"), f"the reason is one line: {body!r}"
    assert str(dead) not in body, "the public reason must not say where the backend is"
    assert_one_shield_line(dmz, ws_port, "ws client", "-> down", "502", "refused")
    # The connector says what it dialled, naming the same client.
    connector_line = wait_client_lines(connector, ws_port)
    assert any(f"127.0.0.1:{dead}" in line and "refused" in line for line in connector_line), connector_line

    tcp_port, got = asyncio.run(tcp_refused(topology.port("tcp-down")))
    assert got == b"" or "ConnectionResetError" in str(got), f"the TCP client must be closed, got {got!r}"
    assert_one_shield_line(dmz, tcp_port, "tcp client", "-> down", "502", "refused")

    # Still one line each once everything has settled.
    assert len(client_lines(dmz, ws_port)) == 1
    assert len(client_lines(dmz, tcp_port)) == 1


# -- no connector ---------------------------------------------------------------------------------


def test_no_connector_for_the_service_is_503_and_not_ready(topology: Topology) -> None:
    base_topology(topology, ["echo", "orphan"])
    _, backend = topology.start_backend("echo")
    # The DMZ would accept "orphan" from internal1, but internal1 does not offer it.
    topology.dmz_config({"echo": {}, "orphan": {}}, {"internal1": ["echo", "orphan"]})
    topology.internal_config("internal1", {"echo": f"tcp://127.0.0.1:{backend}"})
    dmz = topology.start_dmz()
    topology.start_connector("internal1")
    dmz.wait_for_log("serves echo")

    admin = topology.url("dmz-admin")
    deadline = time.monotonic() + LOG_TIMEOUT
    status, body = http_get(f"{admin}/readyz")
    while "'echo'" in body and time.monotonic() < deadline:  # until echo's link counts
        time.sleep(0.05)
        status, body = http_get(f"{admin}/readyz")
    assert status == 503, body
    assert "'orphan'" in body and "'echo'" not in body, body

    ws_port, status, body = asyncio.run(ws_refused(topology.url("ws-orphan", "ws", "/orphan")))
    assert status == 503, body
    assert "no live link for service 'orphan'" in body, body
    assert body.count("\n") == 1, body
    assert_one_shield_line(dmz, ws_port, "ws client", "-> orphan", "503", "no live link")

    tcp_port, got = asyncio.run(tcp_refused(topology.port("tcp-orphan")))
    assert got == b"" or "ConnectionResetError" in str(got), f"the TCP client must be closed, got {got!r}"
    assert_one_shield_line(dmz, tcp_port, "tcp client", "-> orphan", "503", "no live link")

    # The service that has a connector is unaffected.
    async def echo() -> bytes:
        async with ws_connect(topology.url("ws-echo", "ws", "/echo")) as ws:
            await ws.send(b"still here")
            return await asyncio.wait_for(ws.recv(), 30)  # type: ignore[return-value]

    assert asyncio.run(echo()) == b"still here"
    assert len(client_lines(dmz, ws_port)) == 1


# -- origin ---------------------------------------------------------------------------------------


def test_origin_not_allowed_is_403_good_or_no_origin_is_allowed(topology: Topology) -> None:
    base_topology(topology, ["guarded"])
    _, backend = topology.start_backend("echo")
    topology.dmz_config({"guarded": {"allow-origin": ["https://good.example"]}}, {"internal1": ["guarded"]})
    topology.internal_config("internal1", {"guarded": f"tcp://127.0.0.1:{backend}"})
    dmz = topology.start_dmz()
    topology.start_connector("internal1")
    topology.dmz_ready()
    url = topology.url("ws-guarded", "ws", "/guarded")

    ws_port, status, body = asyncio.run(ws_refused(url, origin="https://evil.example"))
    assert status == 403, body
    assert "origin" in body and "https://evil.example" in body and "not allowed" in body, body
    assert body.count("\n") == 1, body
    assert_one_shield_line(dmz, ws_port, "ws client", "-> guarded", "403", "https://evil.example")

    async def echo(**kwargs) -> bytes:  # type: ignore[no-untyped-def]
        async with ws_connect(url, **kwargs) as ws:
            await ws.send(b"ok?")
            return await asyncio.wait_for(ws.recv(), 30)  # type: ignore[return-value]

    assert asyncio.run(echo()) == b"ok?", "no Origin header (not a browser) is allowed"
    assert asyncio.run(echo(origin="https://good.example")) == b"ok?"
    assert len(client_lines(dmz, ws_port)) == 1


# -- message size ---------------------------------------------------------------------------------


def test_message_over_max_message_size_closes_with_1009(topology: Topology) -> None:
    base_topology(topology, ["small"])
    _, backend = topology.start_backend("echo")
    topology.dmz_config({"small": {"max-message-size": 1024}}, {"internal1": ["small"]})
    topology.internal_config("internal1", {"small": f"tcp://127.0.0.1:{backend}"})
    dmz = topology.start_dmz()
    topology.start_connector("internal1")
    topology.dmz_ready()
    url = topology.url("ws-small", "ws", "/small")

    async def run() -> tuple[int, int | None, str | None]:
        sock, client_port = bound_socket()
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", urlsplit(url).port))
        async with ws_connect(url, sock=sock) as ws:
            at_limit = os.urandom(1024)
            await ws.send(at_limit)
            echoed = b""
            while len(echoed) < len(at_limit):
                echoed += await asyncio.wait_for(ws.recv(), 30)  # type: ignore[operator]
            assert echoed == at_limit, "a message of exactly max-message-size passes"
            await ws.send(os.urandom(1025))
            with pytest.raises(ConnectionClosedError) as closed:
                await asyncio.wait_for(ws.recv(), 30)
            received = closed.value.rcvd
            return client_port, received.code if received else None, received.reason if received else None

    client_port, code, reason = asyncio.run(run())
    assert code == 1009, f"close code {code} ({reason!r})"
    # Not silently dropped: the DMZ's one line for this client says why it ended.
    assert_one_shield_line(dmz, client_port, "ws client", "-> small", "exceeds", "1024")


pytestmark = pytest.mark.timeout(300)


# -- what a public listener says about itself -----------------------------------------------------


def raw_http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_public_answers_do_not_name_the_server_software(topology: Topology) -> None:
    """No ``Server:`` header (TwistedWeb/<version>, AutobahnPython/<version>) in any public answer."""
    base_topology(topology, ["echo", "orphan"])
    _, backend = topology.start_backend("echo")
    topology.dmz_config({"echo": {}, "orphan": {}}, {"internal1": ["echo", "orphan"]})
    topology.internal_config("internal1", {"echo": f"tcp://127.0.0.1:{backend}"})
    dmz = topology.start_dmz()
    topology.start_connector("internal1")
    dmz.wait_for_log("serves echo")

    async def upgrade_headers() -> dict[str, str]:
        async with ws_connect(topology.url("ws-echo", "ws", "/echo")) as ws:
            return {name.lower(): value for name, value in ws.response.headers.raw_items()}

    accepted = asyncio.run(upgrade_headers())
    assert "upgrade" in accepted and "server" not in accepted, accepted
    port = topology.port("ws-echo")
    not_found = raw_http(port, b"GET /nothing-here HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert not_found.startswith(b"HTTP/1.1 404"), not_found
    bad = raw_http(port, b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # no upgrade headers
    assert bad.startswith(b"HTTP/1.1 4"), bad
    refused = raw_http(topology.port("ws-orphan"), (
        b"GET /orphan HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ))  # fmt: skip
    assert refused.startswith(b"HTTP/1.1 503"), refused
    for answer in (not_found, bad, refused):
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert b"\r\nserver:" not in head, answer
        assert b"twisted" not in answer.lower() and b"autobahn" not in answer.lower(), answer
    assert bad.startswith(b"HTTP/1.1 426"), bad  # what a plain GET of a WebSocket path gets
