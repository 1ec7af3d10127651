"""Backpressure end to end: a public client that stops reading must not make either gateway buffer.

The `source` backend is asked for 256 MiB; the client then stops reading at the socket level.
The backend must be paused through the whole chain (public socket -> DMZ -> mux window ->
connector -> backend socket), so the RSS of the DMZ and the connector stays within a small bound
of what it was after a warm-up transfer, and everything arrives intact once the client reads again.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from typing import Callable

import pytest
from backend import pattern_digest
from harness import Process, Topology, http_get, reserve_ports, rss_kib
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK

MIB = 1024 * 1024
TOTAL = 256 * MIB
WARM_UP = 32 * MIB
#: What either gateway may grow by while a client holds 256 MiB back.
GROWTH_LIMIT_KIB = 32 * 1024
SAMPLE_EVERY = 0.5
#: The plateau: this many consecutive samples with the relay stopped and RSS flat.
STABLE_SAMPLES = 6
RSS_JITTER_KIB = 1024
PLATEAU_TIMEOUT = 120.0
TRANSFER_TIMEOUT = 300.0


def start_source(topology: Topology) -> tuple[Process, Process]:
    reserve_ports(topology, ["backend", "backplane", "dmz-admin", "ws-src", "tcp-src", "admin-internal1"])
    topology.certs(["internal1"])
    _, backend = topology.start_backend("source")
    # No WebSocket pings from the DMZ: a client that deliberately stops reading would not answer them.
    topology.dmz_config({"src": {"ws-ping-interval": 0}}, {"internal1": ["src"]})
    topology.internal_config("internal1", {"src": f"tcp://127.0.0.1:{backend}"})
    dmz = topology.start_dmz()
    connector = topology.start_connector("internal1")
    topology.dmz_ready()
    return dmz, connector


def bytes_to_client(admin: str, service: str = "src") -> float:
    """The gateway's ``shield_bytes_total`` toward the public client for ``service``."""
    status, text = http_get(f"{admin}/metrics")
    assert status == 200, text
    pattern = re.compile(
        r'^shield_bytes_total\{(?=[^}]*direction="to_client")(?=[^}]*service="' + re.escape(service) + r'")[^}]*\}\s+(\S+)$',
        re.M,
    )
    match = pattern.search(text)
    return float(match.group(1)) if match else 0.0


def wait_plateau(pids: dict[str, int], counters: dict[str, Callable[[], float]]) -> dict[str, int]:
    """Sample until RSS of every pid and every counter stopped moving; returns the last RSS (KiB)."""
    history: list[tuple[dict[str, int], dict[str, float]]] = []
    deadline = time.monotonic() + PLATEAU_TIMEOUT
    while time.monotonic() < deadline:
        rss = {name: rss_kib(pid) for name, pid in pids.items()}
        values = {name: read() for name, read in counters.items()}
        history.append((rss, values))
        recent = history[-STABLE_SAMPLES:]
        if len(recent) == STABLE_SAMPLES:
            flat_rss = all(
                max(sample[0][name] for sample in recent) - min(sample[0][name] for sample in recent) <= RSS_JITTER_KIB
                for name in pids
            )
            flat_counters = all(len({sample[1][name] for sample in recent}) == 1 for name in counters)
            if flat_rss and flat_counters:
                return rss
        time.sleep(SAMPLE_EVERY)
    raise AssertionError(f"no plateau within {PLATEAU_TIMEOUT} s; last samples: {history[-STABLE_SAMPLES:]}")


async def tcp_fetch_all(port: int, size: int) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(size.to_bytes(8, "big"))
        return await asyncio.wait_for(read_all(reader), TRANSFER_TIMEOUT)
    finally:
        writer.close()


async def read_all(reader: asyncio.StreamReader) -> tuple[int, str]:
    digest = hashlib.sha256()
    total = 0
    while data := await reader.read(1 << 16):
        digest.update(data)
        total += len(data)
    return total, digest.hexdigest()


def ws_connect(url: str, **kwargs):  # type: ignore[no-untyped-def]
    # No keepalive pings from the client either: it is not reading, so it would not see the pongs.
    return connect(url, proxy=None, max_size=16 * MIB, ping_interval=None, open_timeout=30, **kwargs)


async def ws_fetch_all(url: str, size: int) -> tuple[int, str]:
    async with ws_connect(url) as ws:
        await ws.send(size.to_bytes(8, "big"))
        return await asyncio.wait_for(ws_read_all(ws), TRANSFER_TIMEOUT)


async def ws_read_all(ws) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """Every message until the DMZ closes normally (the backend finished)."""
    digest = hashlib.sha256()
    total = 0
    try:
        while True:
            message = await ws.recv()
            assert isinstance(message, bytes)
            digest.update(message)
            total += len(message)
    except ConnectionClosedOK:
        pass
    return total, digest.hexdigest()


def check_stalled(
    topology: Topology, dmz: Process, connector: Process, baseline: dict[str, int], before: float
) -> tuple[dict[str, int], float]:
    """Wait for the stall to settle; check both gateways' growth and that the relay really stopped."""
    counters = {
        "dmz": lambda: bytes_to_client(topology.url("dmz-admin")),
        "connector": lambda: bytes_to_client(topology.url("admin-internal1")),
    }
    plateau = wait_plateau({"dmz": dmz.pid, "connector": connector.pid}, counters)
    relayed = counters["dmz"]() - before
    growth = {name: plateau[name] - baseline[name] for name in plateau}
    report = (
        f"baseline {baseline} KiB, plateau {plateau} KiB, growth {growth} KiB, "
        f"relayed to the client while it was not reading: {relayed / MIB:.1f} MiB"
    )
    print(report)
    assert relayed > 0, f"the transfer never started: {report}"
    assert relayed < TOTAL / 2, f"the backend was not held back: {report}"
    for name, grew in growth.items():
        assert grew < GROWTH_LIMIT_KIB, f"{name} grew by {grew} KiB (limit {GROWTH_LIMIT_KIB} KiB): {report}"
    return growth, relayed


def settled_baseline(dmz: Process, connector: Process) -> dict[str, int]:
    return wait_plateau({"dmz": dmz.pid, "connector": connector.pid}, {})


def test_tcp_client_that_stops_reading_holds_the_backend_back(topology: Topology) -> None:
    dmz, connector = start_source(topology)
    port = topology.port("tcp-src")
    assert asyncio.run(tcp_fetch_all(port, WARM_UP)) == (WARM_UP, pattern_digest(WARM_UP))
    baseline = settled_baseline(dmz, connector)
    before = bytes_to_client(topology.url("dmz-admin"))

    async def run() -> tuple[int, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(TOTAL.to_bytes(8, "big"))
            writer.transport.pause_reading()  # type: ignore[attr-defined]
            await writer.drain()
            # The event loop must keep running while the gateways settle: check from a thread.
            await asyncio.to_thread(check_stalled, topology, dmz, connector, baseline, before)
            writer.transport.resume_reading()  # type: ignore[attr-defined]
            return await asyncio.wait_for(read_all(reader), TRANSFER_TIMEOUT)
        finally:
            writer.close()

    total, digest = asyncio.run(run())
    assert total == TOTAL
    assert digest == pattern_digest(TOTAL)


def test_websocket_client_that_stops_reading_holds_the_backend_back(topology: Topology) -> None:
    dmz, connector = start_source(topology)
    url = topology.url("ws-src", "ws", "/src")
    assert asyncio.run(ws_fetch_all(url, WARM_UP)) == (WARM_UP, pattern_digest(WARM_UP))
    baseline = settled_baseline(dmz, connector)
    before = bytes_to_client(topology.url("dmz-admin"))

    async def run() -> tuple[int, str]:
        # max_queue=4: once 4 messages wait unread, websockets pauses reading the socket itself,
        # so not calling recv() stops the client reading at the socket level.
        async with ws_connect(url, max_queue=4) as ws:
            await ws.send(TOTAL.to_bytes(8, "big"))
            await asyncio.to_thread(check_stalled, topology, dmz, connector, baseline, before)
            return await asyncio.wait_for(ws_read_all(ws), TRANSFER_TIMEOUT)

    total, digest = asyncio.run(run())
    assert total == TOTAL
    assert digest == pattern_digest(TOTAL)


pytestmark = pytest.mark.timeout(600)
