"""The memory budget with real gateways: readers that read fast and then stall, many at once.

Each reader asks the ``source`` backend for more than it will read soon, reads the first part
as fast as it can (so its stream window grows) and then stops reading at the socket (a small
receive buffer, nothing read). While they are stalled:

- each gateway holds at most 256 KiB of tunnel data per stalled reader (``shield_buffered_bytes``)
  and its RSS grows by no more than that plus a constant;
- a fresh client on the same links is served at once (no head-of-line blocking);
- once they read again every byte arrives, in order.

With a small ``buffer-budget``, stalled readers exhaust it: new clients are refused with 503 and
a reason, and served again once the stalled ones are gone.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import time

import pytest
from backend import pattern_digest
from harness import Process, Topology, http_get, reserve_ports
from test_memory import wait_plateau
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

KiB = 1024
MiB = 1024 * KiB
BASE_WINDOW = 256 * KiB
READERS = 24
TOTAL = 24 * MiB  # each reader's download
FAST = 8 * MiB  # read at once before stalling
#: What the gateways' RSS may grow by beyond 256 KiB per stalled reader (interpreter, sockets).
RSS_CONSTANT_KIB = 16 * 1024
FRESH_CLIENT_BOUND = 5.0  # seconds; the goal (milliseconds) is measured in make bench
RCVBUF = 64 * KiB


def start(topology: Topology, extra_dmz: str = "") -> tuple[Process, Process]:
    reserve_ports(topology, ["src", "echo", "backplane", "dmz-admin", "ws-src", "tcp-src", "ws-echo", "tcp-echo", "admin-internal1"])
    topology.certs(["internal1"])
    _, source = topology.start_backend("source", name="src")
    _, echo = topology.start_backend("echo", name="echo")
    topology.dmz_config(
        {"src": {"ws-ping-interval": 0}, "echo": {}}, {"internal1": ["src", "echo"]}, extra_dmz=extra_dmz
    )
    topology.internal_config("internal1", {"src": f"tcp://127.0.0.1:{source}", "echo": f"tcp://127.0.0.1:{echo}"})
    dmz = topology.start_dmz()
    connector = topology.start_connector("internal1")
    topology.dmz_ready()
    return dmz, connector


def metric(admin: str, name: str) -> float:
    status, text = http_get(f"{admin}/metrics")
    assert status == 200, text
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


class Reader:
    """A blocking TCP client with a small receive buffer that reads on demand."""

    def __init__(self, port: int, total: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(total.to_bytes(8, "big"))
        self.total = total
        self.received = 0
        self.digest = hashlib.sha256()

    def read(self, upto: int) -> None:
        self.sock.settimeout(120)
        while self.received < upto:
            data = self.sock.recv(min(1 << 20, upto - self.received))
            if not data:
                raise AssertionError(f"closed after {self.received} of {self.total} bytes")
            self.digest.update(data)
            self.received += len(data)

    def close(self) -> None:
        self.sock.close()


def fresh_echo(topology: Topology) -> float:
    """Seconds for a new TCP and a new WebSocket client to each get 1 KiB echoed."""

    async def both() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", topology.port("tcp-echo"))
        writer.write(b"x" * 1024)
        assert await reader.readexactly(1024) == b"x" * 1024
        writer.close()
        async with connect(topology.url("ws-echo", "ws", "/echo"), proxy=None) as ws:
            await ws.send(b"y" * 1024)
            assert await ws.recv() == b"y" * 1024

    started = time.monotonic()
    asyncio.run(asyncio.wait_for(both(), 30))
    return time.monotonic() - started


def test_readers_that_read_fast_then_stall_cost_at_most_the_base_window(topology: Topology) -> None:
    dmz, connector = start(topology)
    port = topology.port("tcp-src")
    pids = {"dmz": dmz.pid, "connector": connector.pid}
    # Warm-up: the same number of transfers, completed, so code and allocator are warm.
    warm = [Reader(port, FAST) for _ in range(READERS)]
    for reader in warm:
        reader.read(FAST)
        reader.close()
    baseline = wait_plateau(pids, {})

    readers = [Reader(port, TOTAL) for _ in range(READERS)]
    try:
        for reader in readers:
            reader.read(FAST)  # fast: the windows grow
        counters = {name: (lambda url=topology.url(key): metric(url, "shield_buffered_bytes"))
                    for name, key in (("dmz", "dmz-admin"), ("connector", "admin-internal1"))}  # fmt: skip
        plateau = wait_plateau(pids, counters)
        held = {name: read() for name, read in counters.items()}
        report = f"held {held}, rss baseline {baseline} KiB, plateau {plateau} KiB"
        print(report)
        for name in pids:
            assert held[name] <= READERS * BASE_WINDOW, f"{name}: more than 256 KiB per stalled reader: {report}"
            growth = plateau[name] - baseline[name]
            assert growth <= READERS * BASE_WINDOW // KiB + RSS_CONSTANT_KIB, f"{name} RSS grew by {growth} KiB: {report}"
        assert held["dmz"] > 0, f"the readers never stalled: {report}"
        assert fresh_echo(topology) < FRESH_CLIENT_BOUND

        for reader in readers:  # reading again: everything arrives, in order
            reader.read(TOTAL)
            assert reader.digest.hexdigest() == pattern_digest(TOTAL)
    finally:
        for reader in readers:
            reader.close()


def test_a_websocket_reader_that_stalls_costs_at_most_the_base_window(topology: Topology) -> None:
    """The same through ws://: Autobahn's transport pauses the stream like a TCP socket."""
    dmz, connector = start(topology)
    url = topology.url("ws-src", "ws", "/src")
    readers = 8

    async def run() -> None:
        clients = []
        for _ in range(readers):
            ws = await connect(url, proxy=None, max_size=16 * MiB, ping_interval=None, max_queue=4)
            ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            await ws.send(TOTAL.to_bytes(8, "big"))
            clients.append(ws)
        got = [0] * readers
        digests = [hashlib.sha256() for _ in range(readers)]

        async def read(index: int, upto: int) -> None:
            while got[index] < upto:
                message = await clients[index].recv()
                digests[index].update(message)
                got[index] += len(message)

        await asyncio.gather(*(read(i, FAST) for i in range(readers)))
        # No recv() from now on: websockets stops reading the socket once 4 messages wait.
        counter = lambda: metric(topology.url("dmz-admin"), "shield_buffered_bytes")  # noqa: E731
        await asyncio.to_thread(wait_plateau, {"dmz": dmz.pid, "connector": connector.pid}, {"dmz": counter})
        held = counter()
        assert 0 < held <= readers * BASE_WINDOW, f"DMZ holds {held} bytes for {readers} stalled readers"
        await asyncio.gather(*(read(i, TOTAL) for i in range(readers)))
        for index in range(readers):
            assert digests[index].hexdigest() == pattern_digest(TOTAL)
            await clients[index].close()

    asyncio.run(run())


def test_new_clients_are_refused_while_stalled_readers_hold_the_budget(topology: Topology) -> None:
    dmz, _ = start(topology, extra_dmz=f"buffer-budget = {MiB}")
    port = topology.port("tcp-src")
    admin = topology.url("dmz-admin")
    assert metric(admin, "shield_buffer_budget_bytes") == MiB
    readers = [Reader(port, TOTAL) for _ in range(8)]  # 8 x up to 256 KiB: more than 1 MiB
    try:
        for reader in readers:
            reader.read(1 * MiB)
        deadline = time.monotonic() + 60
        while metric(admin, "shield_buffered_bytes") < MiB:
            assert time.monotonic() < deadline, "the stalled readers never filled the budget"
            time.sleep(0.2)

        async def refused() -> tuple[int, str]:
            try:
                async with connect(topology.url("ws-echo", "ws", "/echo"), proxy=None):
                    pass
            except InvalidStatus as refusal:
                return refusal.response.status_code, refusal.response.body.decode()
            raise AssertionError("a new client was served while the budget was exhausted")

        status, body = asyncio.run(refused())
        assert status == 503
        assert "buffer-budget" in body
        assert dmz.wait_for_log("gateway busy: stalled clients hold the whole buffer-budget")
        _, text = http_get(f"{admin}/metrics")
        assert re.search(r'shield_open_failures_total\{[^}]*reason="buffer_budget"[^}]*\} [1-9]', text), text
    finally:
        for reader in readers:
            reader.close()
    deadline = time.monotonic() + 30
    while metric(admin, "shield_buffered_bytes") >= MiB:  # the stalled streams are gone
        assert time.monotonic() < deadline, "the budget was not given back"
        time.sleep(0.2)
    assert fresh_echo(topology) < FRESH_CLIENT_BOUND


pytestmark = pytest.mark.timeout(600)
