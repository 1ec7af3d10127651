"""The shortest path through the product: one WebSocket and one TCP client echo through the tunnel."""

from __future__ import annotations

import asyncio

from harness import Topology
from websockets.asyncio.client import connect


def test_echo_through_ws_and_tcp(topology: Topology) -> None:
    topology.certs(["internal1"])
    _, backend = topology.start_backend("echo")
    topology.dmz_config({"echo": {}}, {"internal1": ["echo"]})
    topology.internal_config("internal1", {"echo": f"tcp://127.0.0.1:{backend}"})
    topology.start_dmz()
    topology.start_connector("internal1")
    topology.dmz_ready()

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
