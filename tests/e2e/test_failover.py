"""Failover with real processes: a connector killed and restarted, a DMZ restarted, a DMZ drained.

Every figure a product requirement is about (how fast clients learn their link died, how fast a
restarted connector serves again, how fast connectors rejoin a restarted DMZ) is measured and
printed (run with -s to see them).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Callable

import pytest
from harness import Process, Topology, http_get, iter_log_lines
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

#: Generous bounds for a busy 2-core machine.
WAIT = 30.0
#: Public clients must learn that their connector died within this (a reset should take < 1 s).
CLOSE_BOUND = 10.0
#: Product goal: a restarted connector serves a new client within 2 s of its start (docs/ha.md).
#: A cold process start plus TLS to the first echoed client: a generous bound (as test_priority.py's),
#: the time itself is printed and measured in docs/ha.md.
RESTART_SERVE_BOUND = 10.0
#: Connectors rejoin a restarted DMZ within their backoff (0.5 s doubling, full jitter, 30 s cap).
REJOIN_BOUND = 20.0
#: Pause between two echoes of one client: traffic keeps flowing without hogging the CPUs.
PACE = 0.02


def wait_until(what: str, condition: Callable[[], bool], timeout: float = WAIT, *logs: Process) -> float:
    """Poll ``condition``; return the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.02)
    tails = "\n".join(f"----- {p.name} -----\n{p.log()[-3000:]}" for p in logs)
    raise AssertionError(f"not within {timeout} s: {what}\n{tails}")


def readyz(topology: Topology, admin: str) -> int:
    try:
        return http_get(f"{topology.url(admin)}/readyz", timeout=2.0)[0]
    except OSError:
        return 0


def refused(port: int) -> bool:
    """Is nothing listening on 127.0.0.1:``port`` any more?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def set_grace_period(topology: Topology, seconds: float) -> None:
    path = topology.folder / "dmz.toml"
    text = path.read_text()
    assert "grace-period = 5\n" in text
    path.write_text(text.replace("grace-period = 5\n", f"grace-period = {seconds:g}\n"))


def echo_setup(topology: Topology, links: int = 2) -> tuple[Process, Process, Process]:
    """DMZ, connector internal1 and the echo backend, all up and ready."""
    topology.certs(["internal1"])
    backend, port = topology.start_backend("echo")
    topology.dmz_config({"echo": {}}, {"internal1": ["echo"]})
    topology.internal_config("internal1", {"echo": f"tcp://127.0.0.1:{port}"}, links=links)
    dmz = topology.start_dmz()
    connector = topology.start_connector("internal1")
    topology.dmz_ready()
    return dmz, connector, backend


def start_dmz_again(topology: Topology) -> tuple[Process, float]:
    """Start the DMZ on the same ports (same log file); return it once listening, and when that was."""
    before = topology.folder.joinpath("dmz.log").read_text().count("ready for connectors")
    dmz = topology.start_dmz(wait=False)
    wait_until(
        "the new DMZ is listening",
        lambda: dmz.log().count("ready for connectors") > before or not dmz.alive(),
        WAIT,
        dmz,
    )
    assert dmz.alive(), dmz.log()[-3000:]
    return dmz, time.monotonic()


async def exit_time(process: Process, timeout: float) -> tuple[int | None, float]:
    """Wait for ``process`` to exit: (status, monotonic time of the exit, within 20 ms).

    The status is None if it was still running after ``timeout``.
    """
    assert process.popen is not None
    deadline = time.monotonic() + timeout
    while (status := process.popen.poll()) is None:
        if time.monotonic() > deadline:
            return None, time.monotonic()
        await asyncio.sleep(0.02)
    return status, time.monotonic()


# -- clients carrying traffic until their tunnel ends ----------------------------------------------


@dataclass
class Ending:
    """How a client's tunnel ended."""

    kind: str  # "ws close", "eof", "reset", or "STILL OPEN ..." when it neither echoed nor ended
    at: float
    code: int | None = None
    reason: str = ""
    echoes: int = 0


@dataclass
class Talker:
    """One public client echoing numbered messages through the tunnel until the tunnel ends."""

    name: str
    echoes: int = 0

    async def websocket(self, url: str) -> Ending:
        async with connect(url, open_timeout=WAIT, close_timeout=5) as ws:
            return await self._talk_ws(ws)

    async def _talk_ws(self, ws: ClientConnection) -> Ending:
        try:
            while True:
                message = f"{self.name} {self.echoes}".encode()
                await ws.send(message)
                try:
                    reply = await asyncio.wait_for(ws.recv(), WAIT)
                except asyncio.TimeoutError:
                    return self._silent()
                assert reply == message, (reply, message)
                self.echoes += 1
                await asyncio.sleep(PACE)
        except ConnectionClosed as closed:
            frame = closed.rcvd
            return Ending(
                "ws close",
                time.monotonic(),
                frame.code if frame is not None else None,
                frame.reason if frame is not None else "",
                self.echoes,
            )

    def _silent(self) -> Ending:
        return Ending(f"STILL OPEN: no echo and no close for {WAIT:g} s", time.monotonic(), echoes=self.echoes)

    async def tcp(self, port: int) -> Ending:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                message = f"{self.name} {self.echoes:08d}\n".encode()
                writer.write(message)
                await writer.drain()
                try:
                    reply = await asyncio.wait_for(reader.readexactly(len(message)), WAIT)
                except asyncio.TimeoutError:
                    return self._silent()
                assert reply == message, (reply, message)
                self.echoes += 1
                await asyncio.sleep(PACE)
        except asyncio.IncompleteReadError:
            return Ending("eof", time.monotonic(), echoes=self.echoes)
        except (ConnectionResetError, BrokenPipeError):
            return Ending("reset", time.monotonic(), echoes=self.echoes)
        finally:
            writer.close()


async def until(what: str, condition: Callable[[], bool], timeout: float = WAIT) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def served_once(topology: Topology, payload: bytes) -> bool:
    """One fresh WebSocket client through the tunnel: True if it echoed, False if it was refused."""
    try:
        async with connect(topology.url("ws-echo", "ws", "/echo"), open_timeout=5, close_timeout=2) as ws:
            await ws.send(payload)
            return await asyncio.wait_for(ws.recv(), 5) == payload
    except (InvalidStatus, ConnectionClosed, OSError, asyncio.TimeoutError):
        return False


async def first_served(topology: Topology, since: float, timeout: float) -> float:
    """Keep trying new clients until one is served; return the seconds from ``since`` to that echo."""
    attempt = 0
    while time.monotonic() - since < timeout:
        attempt += 1
        if await served_once(topology, f"attempt {attempt}".encode()):
            return time.monotonic() - since
        await asyncio.sleep(0.01)
    raise AssertionError(f"no client served within {timeout} s ({attempt} attempts)")


async def tcp_echo(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    writer.write_eof()
    reply = await asyncio.wait_for(reader.read(), WAIT)
    writer.close()
    return reply


# -- the tests ---------------------------------------------------------------------------------


def test_connector_sigkill_closes_clients_and_restart_serves_fast(topology: Topology) -> None:
    """kill -9 the connector under traffic: every client is told at once; a restart serves within 2 s."""
    dmz, connector, backend = echo_setup(topology)
    ws_url = topology.url("ws-echo", "ws", "/echo")
    tcp_port = topology.port("tcp-echo")
    talkers = [Talker(f"ws{i}") for i in range(4)] + [Talker(f"tcp{i}") for i in range(4)]

    async def kill_under_traffic() -> tuple[float, list[Ending]]:
        tasks = [asyncio.create_task(t.websocket(ws_url)) for t in talkers[:4]]
        tasks += [asyncio.create_task(t.tcp(tcp_port)) for t in talkers[4:]]
        await until("every client echoed 5 times", lambda: all(t.echoes >= 5 for t in talkers))
        killed_at = time.monotonic()
        os.killpg(connector.pid, signal.SIGKILL)
        await asyncio.wait(tasks, timeout=WAIT)
        endings = []
        for talker, task in zip(talkers, tasks):
            if task.done():
                endings.append(task.result())
            else:
                task.cancel()
                endings.append(Ending(f"STILL OPEN {WAIT:g} s after the kill", time.monotonic(), echoes=talker.echoes))
        return killed_at, endings

    killed_at, endings = asyncio.run(kill_under_traffic())
    connector.popen.wait(timeout=10)  # type: ignore[union-attr]
    latencies = [ending.at - killed_at for ending in endings]
    in_ms = [f"{x * 1000:.0f}" for x in latencies]
    print(f"\nclose latency after SIGKILL of the connector: max {max(latencies) * 1000:.0f} ms "
          f"(ws {in_ms[:4]} ms, tcp {in_ms[4:]} ms)")
    for talker, ending in zip(talkers, endings):
        print(f"  {talker.name}: {ending.kind} code={ending.code} reason={ending.reason!r}, {ending.echoes} echoes")
    still_open = [talker.name for talker, ending in zip(talkers, endings) if ending.kind.startswith("STILL")]
    assert not still_open, f"clients never closed after the connector was killed: {still_open}"
    for talker, ending in zip(talkers[:4], endings[:4]):
        assert ending.kind == "ws close"
        assert ending.code is not None, f"{talker.name}: no close frame from the DMZ (connection dropped)"
        assert ending.code != 1000, f"{talker.name}: closed as if nothing went wrong: {ending}"
        assert ending.reason, f"{talker.name}: close without a reason: {ending}"
        assert "link" in ending.reason or "connector" in ending.reason, ending
    for talker, ending in zip(talkers[4:], endings[4:]):
        assert ending.kind in ("eof", "reset"), (talker.name, ending)
    assert max(latencies) < CLOSE_BOUND, latencies

    unready = wait_until("DMZ /readyz is 503", lambda: readyz(topology, "dmz-admin") == 503, 10.0, dmz)
    print(f"DMZ /readyz 503 {unready * 1000:.0f} ms after the clients were closed")
    assert "link down" in dmz.log()

    restarted = topology.start_connector("internal1", wait=False)
    served = asyncio.run(first_served(topology, restarted.started_at, WAIT))
    print(f"restarted connector served a new client {served * 1000:.0f} ms after its process started")
    assert served < RESTART_SERVE_BOUND, f"restarted connector served only after {served:.2f} s"
    assert asyncio.run(tcp_echo(tcp_port, b"tcp after restart")) == b"tcp after restart"


def test_killed_idle_connector_restarts_and_serves_within_2s(topology: Topology) -> None:
    """The restart half of the test above on its own, so the 2 s figure is measured whatever the clients saw."""
    dmz, connector, backend = echo_setup(topology)
    assert asyncio.run(served_once(topology, b"before")), "not served before the kill"
    connector.kill()  # SIGKILL
    wait_until("DMZ /readyz is 503", lambda: readyz(topology, "dmz-admin") == 503, 10.0, dmz)
    restarted = topology.start_connector("internal1", wait=False)
    served = asyncio.run(first_served(topology, restarted.started_at, WAIT))
    print(f"\nrestarted connector (killed while idle) served a new client {served * 1000:.0f} ms after its start")
    assert served < RESTART_SERVE_BOUND, f"restarted connector served only after {served:.2f} s"


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_connector_rejoins_restarted_dmz(topology: Topology, how: str) -> None:
    """The DMZ goes away and comes back on the same ports: the connector rejoins within its backoff."""
    dmz, connector, backend = echo_setup(topology)
    assert asyncio.run(served_once(topology, b"before")), "not served before the restart"
    ups_before = connector.log().count(": up; DMZ 'dmz1' accepted")
    assert ups_before == 2, connector.log()[-3000:]

    stopped_at = time.monotonic()
    if how == "SIGTERM":
        # Only that it exits: its exit status is test_dmz_sigterm_drains_open_tunnel's business.
        dmz.stop(timeout=WAIT)
    else:
        dmz.kill()
    down_for = time.monotonic() - stopped_at
    wait_until("the connector saw both links go", lambda: connector.log().count(": lost after") >= 2, WAIT, connector)
    wait_until("connector /readyz is 503", lambda: readyz(topology, "admin-internal1") == 503, 10.0, connector)

    dmz2, listening_at = start_dmz_again(topology)
    rejoined = asyncio.run(first_served(topology, listening_at, REJOIN_BOUND))
    print(f"\nDMZ {how}: down {down_for:.2f} s, restarted in {listening_at - dmz2.started_at:.2f} s; "
          f"first client served {rejoined:.2f} s after it was listening")
    both = wait_until(
        "both links up again",
        lambda: connector.log().count(": up; DMZ 'dmz1' accepted") >= ups_before + 2,
        WAIT + REJOIN_BOUND,
        connector,
    )
    print(f"both links up again {both + rejoined:.2f} s after the new DMZ was listening")
    # The connector's log tells the story: links lost, then up again on the new DMZ.
    log = connector.log()
    after_loss = log[log.index(": lost after"):]
    assert after_loss.count(": up; DMZ 'dmz1' accepted") >= 2, after_loss
    assert connector.alive()
    assert readyz(topology, "admin-internal1") == 200
    topology.dmz_ready(10.0)
    assert asyncio.run(tcp_echo(topology.port("tcp-echo"), b"tcp after rejoin")) == b"tcp after rejoin"
    for line in iter_log_lines(connector, "link to"):
        if "lost after" in line or "retrying" in line or ": up;" in line:
            print("  " + line.strip())


def test_dmz_sigterm_drains_open_tunnel(topology: Topology) -> None:
    """Stops accepting at once; the open client keeps working; exits 0 soon after it closes."""
    topology.certs(["internal1"])
    backend, port = topology.start_backend("echo")
    topology.dmz_config({"echo": {}}, {"internal1": ["echo"]})
    set_grace_period(topology, 20)
    topology.internal_config("internal1", {"echo": f"tcp://127.0.0.1:{port}"})
    dmz = topology.start_dmz()
    topology.start_connector("internal1")
    topology.dmz_ready()
    talker = Talker("drained")

    async def drain() -> tuple[float, int, float, Ending, int | None, float]:
        ws = await connect(topology.url("ws-echo", "ws", "/echo"), open_timeout=WAIT, close_timeout=5)
        talking = asyncio.create_task(talker._talk_ws(ws))
        await until("the client echoes", lambda: talker.echoes >= 5)
        exiting = asyncio.create_task(exit_time(dmz, 20 + WAIT))
        term_at = time.monotonic()
        dmz.signal(signal.SIGTERM)
        await until("the DMZ starts draining", lambda: "draining" in dmz.log(), 10.0)
        for name in ("ws-echo", "tcp-echo"):
            port = topology.port(name)
            await until(f"{name} port refuses connections", lambda: refused(port), 10.0)
        refused_after = time.monotonic() - term_at
        status, body = http_get(f"{topology.url('dmz-admin')}/readyz")  # the admin stays, saying why
        assert status == 503 and "draining: no new clients" in body, (status, body)
        # The open client keeps working while new ones are refused.
        echoes_then = talker.echoes
        await until("the open client keeps echoing", lambda: talker.echoes >= echoes_then + 50, WAIT)
        assert not talking.done(), talking.result()
        assert dmz.alive()
        closed_at = time.monotonic()
        await ws.close()
        ending = await asyncio.wait_for(talking, WAIT + 5)
        status, exited_at = await exiting
        return refused_after, echoes_then, closed_at, ending, status, exited_at

    refused_after, echoes_then, closed_at, ending, status, exited_at = asyncio.run(drain())
    assert ending.kind == "ws close" and ending.code == 1000, ending  # our own, normal close
    print(f"\nDMZ SIGTERM: listeners closed within {refused_after * 1000:.0f} ms; "
          f"client echoed {talker.echoes - echoes_then} times after that; "
          f"exit {status} {exited_at - closed_at:.2f} s after the client closed")
    assert status is not None, f"the DMZ was still running {20 + WAIT:g} s after SIGTERM"
    assert exited_at - closed_at < 10.0, "the DMZ did not exit soon after its last tunnel ended"
    assert status == 0, f"exit status {status} after a complete drain:\n{dmz.log()[-3000:]}"
    assert "grace period" not in dmz.log(), "the DMZ waited for the grace period with no tunnel open"
    assert "draining" in dmz.log()


def test_dmz_sigterm_grace_period_closes_lingering_client(topology: Topology) -> None:
    """A client that never closes is cut after grace-period; the DMZ still exits 0."""
    grace = 3
    topology.certs(["internal1"])
    backend, port = topology.start_backend("echo")
    topology.dmz_config({"echo": {}}, {"internal1": ["echo"]})
    set_grace_period(topology, grace)
    topology.internal_config("internal1", {"echo": f"tcp://127.0.0.1:{port}"})
    dmz = topology.start_dmz()
    topology.start_connector("internal1")
    topology.dmz_ready()
    talker = Talker("lingering")

    async def linger() -> tuple[float, Ending, int, float, int | None]:
        talking = asyncio.create_task(talker.websocket(topology.url("ws-echo", "ws", "/echo")))
        await until("the client echoes", lambda: talker.echoes >= 5)
        exiting = asyncio.create_task(exit_time(dmz, grace + WAIT))
        term_at = time.monotonic()
        dmz.signal(signal.SIGTERM)
        echoes_then = talker.echoes
        await asyncio.wait([talking], timeout=grace + WAIT)
        if talking.done():
            ending = talking.result()
        else:
            talking.cancel()
            ending = Ending(f"STILL OPEN {grace + WAIT:g} s after SIGTERM", time.monotonic(), echoes=talker.echoes)
        status, exited_at = await exiting
        return term_at, ending, echoes_then, exited_at, status

    term_at, ending, echoes_then, exited_at, status = asyncio.run(linger())
    closed_after = ending.at - term_at
    print(f"\nDMZ SIGTERM, grace {grace} s: client closed after {closed_after:.2f} s "
          f"(code={ending.code} reason={ending.reason!r}, {ending.echoes - echoes_then} echoes during the grace); "
          f"DMZ exit {status} after {exited_at - term_at:.2f} s")
    assert f"grace period of {grace} s over: closing 1 tunnels still open" in dmz.log()
    assert ending.kind == "ws close", f"the lingering client was not closed: {ending}"
    assert ending.code is not None and ending.code != 1000, f"cut without saying why: {ending}"
    assert ending.reason, ending
    assert grace - 0.5 <= closed_after <= grace + 10, closed_after
    assert ending.echoes - echoes_then > 10, "the client did not keep working during the grace period"
    assert status is not None, f"the DMZ was still running {grace + WAIT:g} s after SIGTERM"
    assert grace - 0.5 <= exited_at - term_at <= grace + 10, exited_at - term_at
    assert status == 0, f"exit status {status}:\n{dmz.log()[-3000:]}"
