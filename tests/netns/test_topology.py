"""The real topology: public, DMZ and trusted hosts as network namespaces with iptables firewalls.

- A client on the public host reaches an echo backend on the trusted host through the DMZ gateway
  and a connector, over ws:// and tcp://, with the ``shield client`` CLI and in-process clients.
- The firewalls are real: the DMZ cannot open a connection to the trusted host, the public host
  reaches only the frontplane ports of the DMZ.
- A silent partition of the path between the DMZ and the primary connector (iptables DROP both ways,
  established traffic too, so neither side hears a thing) is found by the backplane keepalive:
  the clients on that path are told why, new clients are served by the standby connector, which
  reaches the DMZ over the other path, and the primary takes over again once the path heals.

Figures are printed (run with -s to see them).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import pytest
from harness import SHIELD, Process
from nstopology import (
    BACKPLANE_PORT,
    CONNECTORS,
    DMZ_A_IP,
    DMZ_ADMIN_PORT,
    DMZ_B_IP,
    DMZ_PUBLIC_IP,
    PUBLIC_IP,
    TCP_PORT,
    TCP_URL,
    TRUSTED_A_IP,
    TRUSTED_B_IP,
    WS_PORT,
    WS_URL,
    ShieldNet,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

#: Generous bounds: a busy 2-core machine must not make these tests flake.
WAIT = 30.0
#: A dropped connection attempt is given this long to prove it does not connect.
DROP_WAIT = 2.0
#: Keepalive of both backplanes in the partition test.
PING_INTERVAL = 1.0
PING_MISSES = 3
#: Product requirement: a silent partition is found, and new clients served by the standby, within
#: ``misses`` ping intervals plus one interval (the ping phase) = 4 s of the DROP. The test allows
#: twice that on a busy machine; the figure itself is printed.
FAILOVER_REQUIRED = PING_MISSES * PING_INTERVAL + PING_INTERVAL
FAILOVER_BOUND = 2 * FAILOVER_REQUIRED
#: After the path heals, the primary redials (10 s connect timeout, backoff) and takes over again.
HEAL_BOUND = 60.0
#: Pause between two echoes of one client: traffic keeps flowing without hogging the CPUs.
PACE = 0.02


# -- clients on the public host -----------------------------------------------------------------


async def _public_socket(net: ShieldNet, port: int, timeout: float = WAIT) -> socket.socket:
    """A TCP socket of the public namespace, connected to the DMZ's frontplane ``port``."""
    sock = net.ns.socket("public")
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (DMZ_PUBLIC_IP, port)), timeout)
    except BaseException:
        sock.close()
        raise
    assert sock.getsockname()[0] == PUBLIC_IP, sock.getsockname()  # really on the public host
    return sock


async def open_ws(net: ShieldNet, open_timeout: float = WAIT) -> ClientConnection:
    sock = await _public_socket(net, WS_PORT)
    return await connect(WS_URL, sock=sock, open_timeout=open_timeout, close_timeout=5, max_size=None)


async def open_tcp(net: ShieldNet) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(sock=await _public_socket(net, TCP_PORT))


async def until(what: str, condition: Callable[[], bool], timeout: float = WAIT) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@dataclass
class Ending:
    """How a long-lived client's tunnel ended."""

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

    def _silent(self) -> Ending:
        return Ending(f"STILL OPEN: no echo and no close for {WAIT:g} s", time.monotonic(), echoes=self.echoes)

    async def websocket(self, net: ShieldNet) -> Ending:
        ws = await open_ws(net)
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
        finally:
            await ws.close()

    async def tcp(self, net: ShieldNet) -> Ending:
        reader, writer = await open_tcp(net)
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


class LogWatcher:
    """Polls a process log from ``offset`` on: when (seconds after ``since``) each new line appeared."""

    def __init__(self, process: Process, offset: int, since: float) -> None:
        self.process = process
        self.offset = offset
        self.since = since
        self.seen: dict[str, float] = {}
        self._task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            self._read()
            await asyncio.sleep(0.02)

    def _read(self) -> None:
        text = self.process.log()[self.offset:]
        complete = text[: text.rfind("\n") + 1]
        for line in complete.splitlines():
            self.seen.setdefault(line, time.monotonic() - self.since)

    def lines(self, needle: str) -> list[str]:
        self._read()
        return [line for line in self.seen if needle in line]

    def stop(self) -> None:
        self._read()
        self._task.cancel()


async def ws_once(net: ShieldNet, payload: bytes, open_timeout: float = WAIT) -> str:
    """One new WebSocket client: "echoed", or why not (status, close, error)."""
    try:
        ws = await open_ws(net, open_timeout)
    except InvalidStatus as refused:
        body = (refused.response.body or b"").decode(errors="replace").strip()
        return f"refused {refused.response.status_code}: {body}"
    except (OSError, asyncio.TimeoutError) as problem:
        return f"failed: {problem!r}"
    try:
        await ws.send(payload)
        reply = await asyncio.wait_for(ws.recv(), 10.0)
        return "echoed" if reply == payload else f"wrong echo {reply!r}"
    except ConnectionClosed as closed:
        return f"closed: {closed}"
    except asyncio.TimeoutError:
        return "no echo within 10 s"
    finally:
        await ws.close()


async def served_by(net: ShieldNet, payload: bytes, connectors: list[str]) -> tuple[str, str | None]:
    """One new client; (outcome, the connector whose backend got the connection, if any)."""
    before = {name: net.connections(name) for name in connectors}
    outcome = await ws_once(net, payload)
    if outcome != "echoed":
        return outcome, None
    # The backend logs its connection before it echoes anything back; give the log a moment.
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        grown = [name for name in connectors if net.connections(name) > before[name]]
        if grown:
            assert len(grown) == 1, f"one client, connections at several backends: {grown}"
            return outcome, grown[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"a client echoed but no backend logged its connection: {before}")


async def first_served_by(
    net: ShieldNet, connector: str, connectors: list[str], since: float, timeout: float
) -> tuple[float, list[str]]:
    """New clients one after another until one is served by ``connector``: (seconds from ``since``, attempts)."""
    attempts: list[str] = []
    while time.monotonic() - since < timeout:
        started = time.monotonic() - since
        outcome, by = await served_by(net, f"attempt {len(attempts)}".encode(), connectors)
        attempts.append(f"{started:6.2f} s -> {time.monotonic() - since:6.2f} s: {outcome} (by {by})")
        if by == connector:
            return time.monotonic() - since, attempts
        await asyncio.sleep(0.05 if by is None else 0.25)
    raise AssertionError(f"no client served by {connector} within {timeout} s:\n" + "\n".join(attempts))


async def run_cli(net: ShieldNet, url: str, payload: bytes, wait_for_echo: bool) -> tuple[int, bytes, str]:
    """``shield client URL`` on the public host, ``payload`` on its stdin: (status, stdout, stderr).

    With ``wait_for_echo`` stdin stays open until the whole echo arrived (a WebSocket client
    closes one second after its stdin ends, which must not cut the echo short on a busy machine).
    """
    process = await asyncio.create_subprocess_exec(
        *net.ns.wrap("public", [SHIELD, "client", url]),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    if not wait_for_echo:
        try:
            out, errors = await asyncio.wait_for(process.communicate(payload), WAIT)
        except asyncio.TimeoutError:
            process.kill()
            out, errors = await process.communicate()
            return -1, out, errors.decode(errors="replace")
        return process.returncode or 0, out, errors.decode(errors="replace")
    # Read the echo while writing: a full stdout pipe must not hold the client up.
    reading = asyncio.ensure_future(process.stdout.readexactly(len(payload)))
    process.stdin.write(payload)
    await process.stdin.drain()
    received = b""
    try:
        received = await asyncio.wait_for(reading, WAIT)
        process.stdin.close()
        rest, errors = await asyncio.wait_for(process.communicate(), WAIT)
    except (asyncio.TimeoutError, asyncio.IncompleteReadError):
        process.kill()
        rest, errors = await process.communicate()
        return -1, received + rest, errors.decode(errors="replace")
    return process.returncode or 0, received + rest, errors.decode(errors="replace")


# -- the tests -------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_public_client_reaches_trusted_backend_through_dmz(net: ShieldNet) -> None:
    """public -> DMZ frontplane (ws:// and tcp://) -> backplane link -> connector -> backend in trusted."""
    net.start(["primary"])
    # The CLI's echoes stay below a pipe's 64 KiB: `shield client` drops what it receives while its
    # stdout pipe is full (it writes to the fd Twisted's StandardIO made non-blocking), a bug of the
    # CLI, not of the tunnel. The in-process clients below move megabytes.
    tcp_payload = os.urandom(48 * 1024)
    ws_payload = os.urandom(32 * 1024)

    async def clients() -> None:
        # The CLI, as a process of the public host.
        status, out, errors = await run_cli(net, TCP_URL, tcp_payload, wait_for_echo=False)
        assert status == 0, errors
        assert out == tcp_payload, f"tcp:// echo: {len(out)} of {len(tcp_payload)} bytes, intact: {out == tcp_payload}"
        status, out, errors = await run_cli(net, WS_URL, ws_payload, wait_for_echo=True)
        assert status == 0, errors
        assert out == ws_payload, f"ws:// echo: {len(out)} of {len(ws_payload)} bytes"

        # Larger transfers from clients in this process, on sockets of the public namespace.
        big = os.urandom(4 * 1024 * 1024)
        reader, writer = await open_tcp(net)
        writer.write(big)
        writer.write_eof()
        echoed = await asyncio.wait_for(reader.read(), WAIT)
        writer.close()
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(big).digest(), f"{len(echoed)} of {len(big)} bytes"

        ws = await open_ws(net)
        messages = [os.urandom(64 * 1024) for _ in range(16)]
        for message in messages:
            await ws.send(message)
        received = b""
        while len(received) < sum(map(len, messages)):
            received += await asyncio.wait_for(ws.recv(), WAIT)
        await ws.close()
        assert received == b"".join(messages)

    asyncio.run(clients())
    # All four reached the backend through the connector (which connects from 127.0.0.1 in trusted).
    assert net.connections("primary") == 4, net.tails(["backend-primary"])


@pytest.mark.timeout(300)
def test_firewalls_are_real(net: ShieldNet) -> None:
    """The DMZ cannot connect to the trusted host; the public host reaches only the frontplane."""
    net.start(["primary"])
    admin = CONNECTORS["primary"].admin_port
    # Something listening on every address of the trusted host, besides the connector's admin.
    listener = net.ns.listen("trusted", "0.0.0.0", 7500)
    try:
        checks = {
            # (from, to host, port): expected
            ("dmz", TRUSTED_A_IP, admin): "timeout",
            ("dmz", TRUSTED_B_IP, admin): "timeout",
            ("dmz", TRUSTED_A_IP, 7500): "timeout",
            ("dmz", TRUSTED_B_IP, 7500): "timeout",
            ("trusted", TRUSTED_A_IP, admin): "connected",
            ("trusted", TRUSTED_A_IP, 7500): "connected",
            ("trusted", TRUSTED_B_IP, 7500): "connected",
            ("public", DMZ_PUBLIC_IP, BACKPLANE_PORT): "timeout",
            ("public", DMZ_PUBLIC_IP, DMZ_ADMIN_PORT): "timeout",
            ("public", DMZ_PUBLIC_IP, TCP_PORT): "connected",
            ("public", DMZ_PUBLIC_IP, WS_PORT): "connected",
            # Those ports are open (so the drops above are the firewall's): from the DMZ host itself.
            ("dmz", DMZ_PUBLIC_IP, BACKPLANE_PORT): "connected",
            ("dmz", DMZ_PUBLIC_IP, DMZ_ADMIN_PORT): "connected",
            # The trusted side reaches the backplane over both paths, and nothing else of the DMZ.
            ("trusted", DMZ_A_IP, BACKPLANE_PORT): "connected",
            ("trusted", DMZ_B_IP, BACKPLANE_PORT): "connected",
            ("trusted", DMZ_A_IP, DMZ_ADMIN_PORT): "timeout",
            ("trusted", DMZ_A_IP, TCP_PORT): "timeout",
        }
        with ThreadPoolExecutor(len(checks)) as pool:
            futures = {check: pool.submit(net.ns.try_connect, *check, DROP_WAIT) for check in checks}
            seen = {check: future.result() for check, future in futures.items()}
    finally:
        listener.close()
    wrong = {f"{src} -> {host}:{port}": f"{seen[(src, host, port)]}, expected {want}"
             for (src, host, port), want in checks.items() if seen[(src, host, port)] != want}
    assert not wrong, f"{wrong}\niptables in dmz:\n{net.ns.rules('dmz')}\niptables in trusted:\n{net.ns.rules('trusted')}"
    # And the tunnel still works through all that.
    assert asyncio.run(ws_once(net, b"through the firewalls")) == "echoed"


@dataclass
class PartitionRun:
    """What the partition test saw; times in seconds after the DROP."""

    primary_links: list[str]  # peer addresses of the primary's links, as the DMZ logs them
    ws_end: Ending
    tcp_end: Ending
    ws_closed: float
    tcp_closed: float
    failover: float  # first new client served by the standby
    attempts: list[str]
    primary_connections: int  # at its backend, once the standby served
    dmz_lines: dict[str, float]  # DMZ log lines after the DROP -> when they appeared
    back: float  # after the heal: first new client served by the primary again

    def dmz(self, *needles: str) -> dict[str, float]:
        return {line: at for line, at in self.dmz_lines.items() if all(needle in line for needle in needles)}


@pytest.mark.timeout(400)
def test_silent_partition_fails_over_to_standby_and_back(net: ShieldNet) -> None:
    """DROP path A both ways: keepalive finds it, clients are told, the standby serves, then primary again."""
    net.keepalive_interval = PING_INTERVAL
    net.keepalive_misses = PING_MISSES
    connectors = ["primary", "standby"]
    net.start(connectors)
    dmz = net.process("dmz")

    async def scenario() -> PartitionRun:
        outcome, by = await served_by(net, b"before", connectors)
        assert (outcome, by) == ("echoed", "primary"), "the higher priority connector does not serve first"
        ws_talker, tcp_talker = Talker("ws"), Talker("tcp")
        ws_task = asyncio.create_task(ws_talker.websocket(net))
        tcp_task = asyncio.create_task(tcp_talker.tcp(net))
        await until("both long-lived clients echo", lambda: ws_talker.echoes >= 5 and tcp_talker.echoes >= 5)
        assert net.connections("primary") == 3 and net.connections("standby") == 0
        log_before = dmz.log()
        primary_links = re.findall(r"link from (\S+): connector 'primary' \(priority", log_before)

        # The silent partition, at a random point of the ping interval (the bound covers every phase),
        # and from then on: new clients one after another until the standby serves one.
        await asyncio.sleep(random.random() * PING_INTERVAL)
        await asyncio.to_thread(net.ns.partition, "a")
        dropped_at = time.monotonic()
        watcher = LogWatcher(dmz, len(log_before), dropped_at)
        failover = asyncio.create_task(first_served_by(net, "standby", connectors, dropped_at, WAIT))
        await asyncio.wait([ws_task, tcp_task], timeout=WAIT)
        endings = []
        for talker, task in ((ws_talker, ws_task), (tcp_talker, tcp_task)):
            if task.done():
                endings.append(task.result())
            else:
                task.cancel()
                endings.append(Ending(f"STILL OPEN {WAIT:g} s after the DROP", time.monotonic(), echoes=talker.echoes))
        served_after, attempts = await failover
        primary_connections = net.connections("primary")
        # Each lost link gets its line in the DMZ log; note when each appeared.
        await until(
            f"{len(primary_links)} 'link down' lines in the DMZ log",
            lambda: len(watcher.lines("link down")) >= len(primary_links),
            WAIT,
        )
        watcher.stop()

        await asyncio.to_thread(net.ns.heal, "a")
        healed_at = time.monotonic()
        back, _ = await first_served_by(net, "primary", connectors, healed_at, HEAL_BOUND)
        ws_end, tcp_end = endings
        return PartitionRun(
            primary_links, ws_end, tcp_end, ws_end.at - dropped_at, tcp_end.at - dropped_at,
            served_after, attempts, primary_connections, watcher.seen, back,
        )

    run = asyncio.run(scenario())
    print(f"\npartition failover: {run.failover:.2f} s (new client served by the standby, from the DROP; "
          f"required {FAILOVER_REQUIRED:g} s, test bound {FAILOVER_BOUND:g} s)")
    print(f"  open ws client closed after {run.ws_closed:.2f} s: code={run.ws_end.code} reason={run.ws_end.reason!r}")
    print(f"  open tcp client closed after {run.tcp_closed:.2f} s: {run.tcp_end.kind}")
    for line in run.attempts:
        print(f"  new client {line}")
    for line, at in {**run.dmz("session ended"), **run.dmz("link down")}.items():
        print(f"  DMZ log after {at:.2f} s: {line.strip()}")
    print(f"partition healed: primary serves new clients again {run.back:.2f} s after the DROP was removed")

    # The clients on the cut path were told, with a reason, when the link was found dead.
    assert run.ws_end.kind == "ws close", f"ws client: {run.ws_end}"
    assert run.ws_end.code == 1001, f"ws client: close code {run.ws_end.code}, expected 1001 (going away): {run.ws_end}"
    assert "link" in run.ws_end.reason, f"ws close reason does not mention the link: {run.ws_end.reason!r}"
    assert run.tcp_end.kind in ("eof", "reset"), f"tcp client: {run.tcp_end}"
    assert run.ws_closed < FAILOVER_BOUND and run.tcp_closed < FAILOVER_BOUND, (run.ws_closed, run.tcp_closed)
    # New clients: the standby, soon enough; the primary's backend got nothing during the partition.
    assert run.failover < FAILOVER_BOUND, f"the standby served only {run.failover:.2f} s after the DROP"
    assert run.primary_connections == 3, "the primary's backend got a connection during the partition"
    # Each of the primary's links: found dead by the keepalive, and one DMZ line naming link, connector and why.
    assert len(run.primary_links) == net.links, run.primary_links
    why = f"keepalive timeout: {PING_MISSES} pings unanswered"
    late = {}
    for peer in run.primary_links:
        assert peer.startswith(f"{TRUSTED_A_IP}:"), peer
        ended = run.dmz(f"mux {peer}: session ended: {why}")
        assert len(ended) == 1 and max(ended.values()) < FAILOVER_BOUND, (peer, ended)
        down = run.dmz(f"link from {peer}: connector 'primary' link down: {why}")
        assert len(down) == 1, f"{peer}: {len(down)} 'link down' lines: {list(down)}"
        if max(down.values()) >= FAILOVER_BOUND:
            late[peer] = max(down.values())
    assert len(run.dmz("link down")) == net.links, list(run.dmz("link down"))
    assert not run.dmz("connector 'standby'"), "the standby's links were disturbed"
    # After the heal, the primary (the higher priority) serves again.
    assert run.back < HEAL_BOUND
    # A keepalive timeout cuts the link at once, even with frames queued (no graceful close the
    # partitioned peer would never answer), so every "link down" comes within the failover bound.
    assert not late, f"'link down' logged late after a keepalive timeout: {late} s after the DROP"
