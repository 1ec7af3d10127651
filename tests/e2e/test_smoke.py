"""The shortest path through the product: one WebSocket and one TCP client echo through the tunnel."""

from __future__ import annotations

import asyncio
import re

from harness import Topology, http_get
from websockets.asyncio.client import connect


def test_echo_through_ws_and_tcp(topology: Topology) -> None:
    topology.certs(["internal1"])
    _, backend = topology.start_backend("echo")
    topology.dmz_config({"echo": {}}, {"internal1": ["echo"]})
    topology.internal_config("internal1", {"echo": f"tcp://127.0.0.1:{backend}"})
    dmz = topology.start_dmz()
    connector = topology.start_connector("internal1")
    topology.dmz_ready()
    # Both run on shield's own reactor (eager socket writes), chosen by the plugins themselves.
    for process in (dmz, connector):
        assert "reactor: ShieldReactor (epoll, eager socket writes)" in process.log()

    async def clients() -> tuple[bytes, bytes]:
        async with connect(topology.url("ws-echo", "ws", "/echo")) as ws:
            await ws.send(b"hello over websocket")
            ws_reply = await ws.recv()
        reader, writer = await asyncio.open_connection("127.0.0.1", topology.port("tcp-echo"))
        writer.write(b"hello over tcp")
        writer.write_eof()
        tcp_reply = await reader.read()
        writer.close()
        return ws_reply, tcp_reply

    ws_reply, tcp_reply = asyncio.run(clients())
    assert ws_reply == b"hello over websocket"
    assert tcp_reply == b"hello over tcp"


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample, or 0 when the series is absent."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


def test_unix_backend_and_metrics(topology: Topology) -> None:
    topology.certs(["internal1"])
    _, socket_path = topology.start_unix_backend("echo")
    topology.dmz_config({"echo": {}, "orphan": {}}, {"internal1": ["echo"]})
    topology.internal_config("internal1", {"echo": f"unix:{socket_path}"})
    topology.start_dmz()
    topology.start_connector("internal1")

    async def clients() -> list[bytes]:
        replies = []
        for size in (1000, 20000, 300000):
            reader, writer = await asyncio.open_connection("127.0.0.1", topology.port("tcp-echo"))
            writer.write(b"u" * size)
            writer.write_eof()
            replies.append(await reader.read())
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", topology.port("tcp-orphan"))
        assert await reader.read() == b""  # no connector offers it: closed
        writer.close()
        return replies

    replies = asyncio.run(clients())
    assert replies == [b"u" * 1000, b"u" * 20000, b"u" * 300000]

    status, dmz = http_get(topology.url("dmz-admin", path="/metrics"))
    assert status == 200
    assert metric(dmz, "shield_links_up", endpoint="internal1") == 2
    assert metric(dmz, "shield_streams_total", service="echo") == 3
    assert metric(dmz, "shield_bytes_total", service="echo", direction="to_backend") == 321000
    assert metric(dmz, "shield_bytes_total", service="echo", direction="to_client") == 321000
    assert metric(dmz, "shield_open_failures_total", service="orphan", reason="no_link") == 1
    _, internal = http_get(topology.url("admin-internal1", path="/metrics"))
    assert metric(internal, "shield_streams_total", service="echo") == 3
    assert metric(internal, "shield_bytes_total", service="echo", direction="to_client") == 321000
    assert http_get(topology.url("dmz-admin", path="/healthz"))[0] == 200
    status, body = http_get(topology.url("dmz-admin", path="/readyz"))
    assert status == 503 and "orphan" in body and "'echo'" not in body
