"""Bytes through the whole tunnel: public client -> DMZ -> mux link -> connector -> backend and back.

Each test runs real processes (see harness.py) and asyncio clients: the ``websockets`` library for
WebSocket, asyncio streams for raw TCP. What is checked is exactness (SHA-256 of every byte each
way), isolation between many concurrent clients, and TCP half-close travelling end to end.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random

import pytest
from harness import Topology, reserve_ports
from websockets.asyncio.client import connect

MIB = 1024 * 1024
CHUNK = 64 * 1024
#: Generous: a busy 2-core machine carries tens of MiB/s through two Python gateways.
BULK_TIMEOUT = 300.0


def start_echo(topology: Topology, mode: str = "echo", connect_timeout: float | None = None) -> None:
    """A DMZ with service ``echo`` (ws at /echo and tcp), one connector, a backend in ``mode``."""
    reserve_ports(topology, ["backend", "backplane", "dmz-admin", "ws-echo", "tcp-echo", "admin-internal1"])
    topology.certs(["internal1"])
    _, backend = topology.start_backend(mode)
    topology.dmz_config({"echo": {}}, {"internal1": ["echo"]})
    path = topology.internal_config("internal1", {"echo": f"tcp://127.0.0.1:{backend}"})
    if connect_timeout is not None:
        text = path.read_text().replace("connect-timeout = 3\n", f"connect-timeout = {connect_timeout:g}\n")
        path.write_text(text)
    topology.start_dmz()
    topology.start_connector("internal1")
    topology.dmz_ready()


def ws_connect(url: str, **kwargs):  # type: ignore[no-untyped-def]
    """A WebSocket client with room for any message the DMZ sends and a generous handshake time."""
    return connect(url, proxy=None, max_size=16 * MIB, open_timeout=60, **kwargs)


def ws_url(topology: Topology) -> str:
    return topology.url("ws-echo", "ws", "/echo")


def tcp_port(topology: Topology) -> int:
    return topology.port("tcp-echo")


async def read_all(reader: asyncio.StreamReader) -> tuple[int, str]:
    """Reads to EOF; returns the length and SHA-256 of what came."""
    digest = hashlib.sha256()
    total = 0
    while data := await reader.read(1 << 16):
        digest.update(data)
        total += len(data)
    return total, digest.hexdigest()


# -- bulk -----------------------------------------------------------------------------------------


def test_websocket_64_mib_each_way(topology: Topology) -> None:
    start_echo(topology)
    payload = os.urandom(64 * MIB)

    async def run() -> tuple[int, str]:
        async with ws_connect(ws_url(topology)) as ws:

            async def send() -> None:
                view = memoryview(payload)
                for offset in range(0, len(payload), CHUNK):
                    await ws.send(view[offset : offset + CHUNK].tobytes())

            async def receive() -> tuple[int, str]:
                digest = hashlib.sha256()
                total = 0
                while total < len(payload):
                    message = await ws.recv()
                    assert isinstance(message, bytes), f"backend bytes must come as binary messages, got {type(message)}"
                    digest.update(message)
                    total += len(message)
                return total, digest.hexdigest()

            _, received = await asyncio.wait_for(asyncio.gather(send(), receive()), BULK_TIMEOUT)
            return received

    total, digest = asyncio.run(run())
    assert total == len(payload)
    assert digest == hashlib.sha256(payload).hexdigest()


def test_tcp_64_mib_each_way(topology: Topology) -> None:
    start_echo(topology)
    payload = os.urandom(64 * MIB)

    async def run() -> tuple[int, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port(topology))

        async def send() -> None:
            view = memoryview(payload)
            for offset in range(0, len(payload), CHUNK):
                writer.write(view[offset : offset + CHUNK])
                await writer.drain()
            writer.write_eof()

        try:
            _, received = await asyncio.wait_for(asyncio.gather(send(), read_all(reader)), BULK_TIMEOUT)
        finally:
            writer.close()
        return received

    total, digest = asyncio.run(run())
    assert total == len(payload)
    assert digest == hashlib.sha256(payload).hexdigest()


# -- many clients at once -------------------------------------------------------------------------


def test_200_concurrent_clients_get_their_own_bytes(topology: Topology) -> None:
    # 200 backend connections are dialled nearly at once: give the connector's dial a generous
    # deadline, so a briefly full accept queue at the test backend cannot turn into a 502.
    start_echo(topology, connect_timeout=30)
    rng = random.Random(20240601)
    clients = 100

    def chunks_for() -> list[bytes]:
        return [rng.randbytes(rng.randint(1, 48 * 1024)) for _ in range(rng.randint(3, 8))]

    plans = [("ws", chunks_for()) for _ in range(clients)] + [("tcp", chunks_for()) for _ in range(clients)]
    rng.shuffle(plans)

    async def ws_client(index: int, chunks: list[bytes]) -> bytes:
        received = bytearray()
        async with ws_connect(ws_url(topology)) as ws:
            sent = 0
            for chunk in chunks:
                await ws.send(chunk)
                sent += len(chunk)
                # Wait for this chunk's echo before the next: every client's traffic interleaves
                # with everyone else's on the shared links.
                while len(received) < sent:
                    message = await ws.recv()
                    assert isinstance(message, bytes)
                    received += message
                await asyncio.sleep(rng.random() * 0.02)
        return bytes(received)

    async def tcp_client(index: int, chunks: list[bytes]) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port(topology))
        received = bytearray()
        try:
            sent = 0
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
                while len(received) < sent:
                    data = await reader.read(1 << 16)
                    assert data, f"tcp client {index}: EOF after {len(received)} of {sent} bytes"
                    received += data
                await asyncio.sleep(rng.random() * 0.02)
            writer.write_eof()
            rest = await reader.read()
            received += rest
        finally:
            writer.close()
        return bytes(received)

    async def run() -> list[bytes | BaseException]:
        tasks = [
            ws_client(index, chunks) if kind == "ws" else tcp_client(index, chunks)
            for index, (kind, chunks) in enumerate(plans)
        ]
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), BULK_TIMEOUT)

    results = asyncio.run(run())
    problems = []
    for index, ((kind, chunks), result) in enumerate(zip(plans, results)):
        expected = b"".join(chunks)
        if isinstance(result, BaseException):
            problems.append(f"{kind} client {index}: {result!r}")
        elif result != expected:
            problems.append(
                f"{kind} client {index}: got {len(result)} bytes (sha256 {hashlib.sha256(result).hexdigest()[:16]}), "
                f"expected {len(expected)} (sha256 {hashlib.sha256(expected).hexdigest()[:16]})"
            )
    assert not problems, f"{len(problems)} of {len(plans)} clients failed:\n" + "\n".join(problems[:20])


# -- half-close -----------------------------------------------------------------------------------


def test_tcp_half_close_still_receives_full_echo_then_eof(topology: Topology) -> None:
    start_echo(topology)
    payload = os.urandom(4 * MIB)

    async def run() -> tuple[bytes, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port(topology))
        try:
            # Everything is written and half-closed before a single byte is read back.
            writer.write(payload)
            writer.write_eof()
            received = await asyncio.wait_for(reader.read(), BULK_TIMEOUT)
            after = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        return received, after

    received, after = asyncio.run(run())
    assert len(received) == len(payload)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    assert after == b""


def test_tcp_half_close_reaches_the_backend_and_reply_comes_back(topology: Topology) -> None:
    # The `count` backend answers only after it has seen EOF: a reply proves the client's
    # half-close travelled DMZ -> connector -> backend while the way back stayed open.
    start_echo(topology, mode="count")
    payload = os.urandom(3 * MIB + 12345)

    async def run() -> tuple[bytes, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port(topology))
        try:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()
            line = await asyncio.wait_for(reader.readline(), BULK_TIMEOUT)
            rest = await asyncio.wait_for(reader.read(), 30)
        finally:
            writer.close()
        return line, rest

    line, rest = asyncio.run(run())
    assert line == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode()
    assert rest == b"", "after its answer the backend closes: the client must see EOF and nothing else"


# -- text messages --------------------------------------------------------------------------------


def test_text_websocket_messages_are_passed_as_bytes(topology: Topology) -> None:
    start_echo(topology)
    texts = ["hello, text", "héllo wörld ✓ — 😀 漢字", "x" * 70000]

    async def run() -> list[list[bytes | str]]:
        replies = []
        async with ws_connect(ws_url(topology)) as ws:
            for text in texts:
                await ws.send(text)
                want = len(text.encode("utf-8"))
                got: list[bytes | str] = []
                while sum(len(m) for m in got) < want:
                    got.append(await asyncio.wait_for(ws.recv(), 30))
                replies.append(got)
        return replies

    replies = asyncio.run(run())
    for text, messages in zip(texts, replies):
        assert all(isinstance(message, bytes) for message in messages), (
            f"the echo of a text message must come back as binary messages, got {[type(m) for m in messages]}"
        )
        assert b"".join(messages) == text.encode("utf-8")  # type: ignore[arg-type]


pytestmark = pytest.mark.timeout(600)
