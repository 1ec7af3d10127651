"""A DMZ cluster with real processes: membership, balancers (proxy and redirect), refusals, a member
SIGKILL, and the rolling restart of every member and connector under load.

Members run on 127.0.0.(i+1) (tests/e2e/cluster.py): each runs the balancer service "front" on the
same port numbers, as one DNS name with an address per member would give them, and the tunnel
service "echo" whose ``balance`` URIs name that balancer. Clients try the balancer addresses in
order and move to the next one only when a connection is refused, as clients of such a DNS name
do. Which member served a client is read from the members' /metrics (``shield_streams_total`` of
echo counts the clients a member served itself, whichever balancer sent them).

The figures the product promises are measured and printed (run with -s to see them); the asserts
use generous bounds so a busy 2-core machine does not make them flaky.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest
from cluster import Cluster
from harness import Process, Topology, http_get, wait_ready
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

#: Generous bounds for a busy 2-core machine.
WAIT = 30.0
#: Pause between two attempts of a probing client, and between two echoes of a long-lived one.
PACE = 0.02
#: Timeout of one probing client (connect, upgrade, one echo).
PROBE_TIMEOUT = 5.0
#: Product bound: after a member's SIGKILL, the other member serves new clients within this.
TAKEOVER_PRODUCT_BOUND = 1.0
#: What the test asserts for it.
TAKEOVER_TEST_BOUND = 5.0
#: A long-lived client that gets neither an echo nor a close for this long hangs.
HANG = 12.0
#: Grace periods in the rolling restart: short, so four restarts fit in about a minute.
GRACE = 5.0

Address = tuple[str, int]




# -- metrics and logs -------------------------------------------------------------------------------


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus series in ``text`` (labels exactly ``labels``), or None."""
    wanted = ",".join(sorted(f'{key}="{value}"' for key, value in labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and ",".join(sorted(filter(None, (match.group(1) or "").split(",")))) == wanted:
            return float(match.group(2))
    return None


def scrape(cluster: Cluster, name: str) -> str:
    try:
        status, body = http_get(f"{cluster.admin(name)}/metrics", timeout=2.0)
    except OSError:
        return ""
    return body if status == 200 else ""


def served(cluster: Cluster, member: str) -> int:
    """Clients the member served itself (own echo front), from any balancer or directly."""
    return int(metric(scrape(cluster, member), "shield_streams_total", service="echo") or 0)


def active(cluster: Cluster, member: str) -> int:
    return int(metric(scrape(cluster, member), "shield_streams_active", service="echo") or 0)


def alive_peers(cluster: Cluster, member: str) -> float | None:
    return metric(scrape(cluster, member), "shield_cluster_members_alive")


def balanced(cluster: Cluster, balancer: str, member: str, mode: str = "proxy") -> int:
    text = scrape(cluster, balancer)
    return int(metric(text, "shield_balanced_clients_total", service="front", member=member, mode=mode) or 0)


def wait_until(what: str, condition: Callable[[], bool], timeout: float = WAIT, *logs: Process) -> float:
    """Poll ``condition``; return the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.02)
    tails = "\n".join(f"----- {p.name} -----\n{p.log()[-3000:]}" for p in logs)
    raise AssertionError(f"not within {timeout} s: {what}\n{tails}")


def lines(process: Process, *needles: str) -> list[str]:
    return [line for line in process.log().splitlines() if all(needle in line for needle in needles)]


# -- setting a cluster up ---------------------------------------------------------------------------


def cluster_setup(
    topology: Topology,
    connectors: dict[str, list[str] | None] | None = None,
    mode: str = "proxy",
    member_grace: float = 10,
    connector_grace: float = 10,
    backend: bool = True,
    start_connectors: bool = True,
) -> Cluster:
    """Members dmz1 and dmz2 and the connectors (name -> members it dials, None: both), one echo backend.

    Returns once both members see each other alive, every member a connector dials is ready, and
    a few heartbeats have carried the services' state across.
    """
    connectors = {"c1": None} if connectors is None else connectors
    cluster = Cluster(topology, ["dmz1", "dmz2"], list(connectors), mode=mode)
    for member in cluster.members:
        cluster.write_member(member, grace=member_grace)
    if backend:
        _, port = topology.start_backend("echo")
    else:
        port = topology.port("backend")  # nothing listens there: the backend is down
    for name, dials in connectors.items():
        cluster.write_connector(name, f"tcp://127.0.0.1:{port}", members=dials, grace=connector_grace)
    members = {member: cluster.start_member(member, wait=False) for member in cluster.members}
    for member, process in members.items():
        process.wait_for_log("ready for connectors")
    if start_connectors:
        for name in connectors:
            cluster.start_connector(name)
        linked = {m for dials in connectors.values() for m in (cluster.members if dials is None else dials)}
        for member in linked:
            wait_ready(cluster.admin(member), process=members[member])
    for member in cluster.members:
        wait_until(f"{member} sees its peer alive", lambda m=member: alive_peers(cluster, m) == 1, WAIT, *members.values())
    time.sleep(5 * cluster.heartbeat)  # the peers' heartbeats now say which services are live
    return cluster


# -- clients --------------------------------------------------------------------------------------


@dataclass
class Conn:
    """One public client connection: WebSocket or raw TCP."""

    kind: str
    address: Address
    ws: ClientConnection | None = None
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    async def send(self, payload: bytes) -> None:
        if self.ws is not None:
            await self.ws.send(payload)
        else:
            assert self.writer is not None
            self.writer.write(payload)
            await self.writer.drain()

    async def read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            if self.ws is not None:
                message = await self.ws.recv()
                data += message if isinstance(message, bytes) else message.encode()
            else:
                assert self.reader is not None
                chunk = await self.reader.read(1 << 16)
                if not chunk:
                    raise ConnectionError(f"tcp connection closed by the balancer after {data!r}")
                data += chunk
        return data

    async def echo(self, payload: bytes, timeout: float = PROBE_TIMEOUT) -> None:
        await self.send(payload)
        reply = await asyncio.wait_for(self.read(len(payload)), timeout)
        assert reply == payload, (reply, payload)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        elif self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass

    def abort(self) -> None:
        if self.ws is not None:
            self.ws.transport.abort()
        elif self.writer is not None:
            self.writer.transport.abort()


async def open_conn(kind: str, address: Address, timeout: float = PROBE_TIMEOUT, local_host: str | None = None) -> Conn:
    host, port = address
    local = (local_host, 0) if local_host else None
    if kind == "ws":
        ws = await connect(
            f"ws://{host}:{port}/echo", proxy=None, open_timeout=timeout, close_timeout=5, local_addr=local
        )
        return Conn(kind, address, ws=ws)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, local_addr=local), timeout)
    return Conn(kind, address, reader=reader, writer=writer)


async def open_first(kind: str, addresses: list[Address], timeout: float = PROBE_TIMEOUT) -> Conn:
    """Like a client of a DNS name with several addresses: the next one only if this one refuses
    the TCP connection (RFC 8305 clients move on at any failed connect). A refusal is ECONNREFUSED,
    or ECONNRESET from connect() itself: a SYN that reached a listener in the instant it closes is
    reset by the kernel, before any byte was exchanged."""
    for index, address in enumerate(addresses):
        try:
            return await open_conn(kind, address, timeout)
        except (ConnectionRefusedError, ConnectionResetError) as problem:
            refused = isinstance(problem, ConnectionRefusedError) or "Connect call failed" in str(problem)
            if not refused or index == len(addresses) - 1:
                raise
    raise AssertionError("no addresses")


def describe_failure(problem: BaseException) -> str:
    if isinstance(problem, InvalidStatus):
        body = (problem.response.body or b"").decode(errors="replace").strip()
        return f"HTTP {problem.response.status_code} {body[:200]!r}"
    if isinstance(problem, ConnectionClosed):
        frame = problem.rcvd
        return f"ws closed {frame.code if frame else None} {frame.reason if frame else ''!r}"
    if isinstance(problem, asyncio.TimeoutError):
        return "timeout"
    return f"{type(problem).__name__}: {problem}"


CLIENT_ERRORS = (InvalidStatus, ConnectionClosed, OSError, asyncio.TimeoutError, asyncio.IncompleteReadError)


@dataclass
class Attempt:
    started: float  # seconds since the prober's origin
    kind: str
    address: Address | None = None  # where it connected
    failure: str = ""
    phase: str = ""  # where a failure happened: connect or echo
    ended: float = 0.0


@dataclass
class Prober:
    """Opens a new connection every PACE (after the previous one ended), ws and tcp in turn:
    connect (addresses in order, next on refusal only), one line, its echo, close."""

    ws: list[Address]
    tcp: list[Address]
    since: float
    attempts: list[Attempt] = field(default_factory=list)
    stopping: bool = False

    async def one(self) -> Attempt:
        kind = "ws" if len(self.attempts) % 2 == 0 else "tcp"
        attempt = Attempt(time.monotonic() - self.since, kind)
        self.attempts.append(attempt)
        attempt.phase = "connect"
        try:
            conn = await open_first(kind, self.ws if kind == "ws" else self.tcp)
            attempt.address = conn.address
            attempt.phase = "echo"
            try:
                await conn.echo(f"probe {len(self.attempts)} {kind}\n".encode())
            except BaseException:
                conn.abort()
                raise
            attempt.phase = "close"
            await conn.close()
            attempt.phase = ""
        except CLIENT_ERRORS as problem:
            attempt.failure = describe_failure(problem)
        attempt.ended = time.monotonic() - self.since
        return attempt

    async def run(self) -> None:
        while not self.stopping:
            await self.one()
            await asyncio.sleep(PACE)

    @property
    def failures(self) -> list[Attempt]:
        return [attempt for attempt in self.attempts if attempt.failure]

    def summary(self) -> str:
        where = Counter(f"{a.address[0]}" for a in self.attempts if a.address and not a.failure)
        failures = Counter(f"{a.phase}: {a.failure}" for a in self.failures)
        return f"{len(self.attempts)} connections, served via {dict(where)}, {len(self.failures)} failures {dict(failures)}"


# -- 1. membership ----------------------------------------------------------------------------------


def test_members_see_each_other(topology: Topology) -> None:
    """Two members link and each logs the other alive; /metrics counts one live peer on each."""
    cluster = cluster_setup(topology)
    dmz1, dmz2 = (cluster.processes[m] for m in cluster.members)
    assert lines(dmz1, "member dmz2 is alive"), dmz1.log()[-3000:]
    assert lines(dmz2, "member dmz1 is alive"), dmz2.log()[-3000:]
    assert alive_peers(cluster, "dmz1") == 1
    assert alive_peers(cluster, "dmz2") == 1
    # Nobody reported dead meanwhile, and a member never links to itself.
    for process in (dmz1, dmz2):
        assert not lines(process, "is gone"), process.log()[-3000:]
        assert not lines(process, "member dmz1 is alive", "member dmz2 is alive")
    assert not lines(dmz1, "member dmz1 is alive") and not lines(dmz2, "member dmz2 is alive")


# -- 2. proxy mode ----------------------------------------------------------------------------------


def test_proxy_balancer_spreads_clients_over_both_members(topology: Topology) -> None:
    """ws and tcp clients through either member's balancer echo; clients held open are shared
    by the fewest-clients rule; clients one after the other are served (ties go to the member
    whose balancer took the client)."""
    cluster = cluster_setup(topology)

    async def run() -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        before = {m: served(cluster, m) for m in cluster.members}
        # One after the other, through each balancer address, ws and tcp in turn.
        for index in range(20):
            for kind in ("ws", "tcp"):
                address = cluster.balancer_addresses(kind)[index % 2]
                conn = await open_conn(kind, address)
                await conn.echo(f"sequential {index} {kind} via {address[0]}\n".encode())
                await conn.close()
        await asyncio.sleep(0.3)
        sequential = {m: served(cluster, m) - before[m] for m in cluster.members}
        # Opened one after the other through dmz1's balancer only, and held open.
        held = []
        for index in range(20):
            kind = "ws" if index % 2 == 0 else "tcp"
            conn = await open_conn(kind, cluster.balancer_addresses(kind)[0])
            await conn.echo(f"held {index}\n".encode())
            held.append(conn)
        spread = {m: active(cluster, m) for m in cluster.members}
        for conn in held:
            await conn.echo(b"still here\n")
        for conn in held:
            await conn.close()
        counted = {m: balanced(cluster, "dmz1", m) for m in cluster.members}
        return sequential, spread, counted

    sequential, spread, counted = asyncio.run(run())
    print(f"\nproxy: 40 sequential clients (20 per balancer address) served by {sequential}; "
          f"20 clients held open via dmz1's balancer: active per member {spread}; "
          f"dmz1's shield_balanced_clients_total per member {counted}")
    assert sum(sequential.values()) == 40, sequential
    assert all(count > 0 for count in sequential.values()), sequential
    assert sum(spread.values()) == 20, spread
    assert min(spread.values()) >= 7, f"fewest-clients rule not followed: {spread}"
    # Everything dmz1's balancer counted (20 sequential + 20 held) went to one member or the other.
    assert sum(counted.values()) == 40, counted


def test_forwarded_client_keeps_its_address(topology: Topology) -> None:
    """A client dmz1's balancer forwards to dmz2 shows up at dmz2 and at the connector with its own
    address, not the balancer's: seen in the refusal lines when the backend is down.

    The connector dials dmz2 only, so dmz1 cannot serve and forwards everything to dmz2."""
    cluster = cluster_setup(topology, {"c1": ["dmz2"]}, backend=False)
    dmz1, dmz2, c1 = (cluster.processes[name] for name in ("dmz1", "dmz2", "c1"))

    async def run() -> tuple[int, int, str, bytes]:
        ws_sock = socket.socket()
        ws_sock.bind(("127.0.0.77", 0))
        ws_port = ws_sock.getsockname()[1]
        ws_sock.setblocking(False)
        host, port = cluster.balancer_addresses("ws")[0]
        await asyncio.get_running_loop().sock_connect(ws_sock, (host, port))
        try:
            async with connect(f"ws://{host}:{port}/echo", sock=ws_sock, proxy=None, open_timeout=WAIT):
                raise AssertionError("the upgrade was accepted although the backend is down")
        except InvalidStatus as refused:
            status, body = refused.response.status_code, refused.response.body.decode()
        conn = await open_conn("tcp", cluster.balancer_addresses("tcp")[0], WAIT, local_host="127.0.0.78")
        assert conn.writer is not None
        tcp_port = conn.writer.get_extra_info("sockname")[1]
        conn.writer.write(b"hello\n")
        got = await asyncio.wait_for(conn.reader.read(100), WAIT)  # type: ignore[union-attr]
        conn.abort()
        return ws_port, tcp_port, f"{status} {body}", got

    ws_port, tcp_port, ws_refusal, tcp_got = asyncio.run(run())
    ws_client, tcp_client = f"127.0.0.77:{ws_port}", f"127.0.0.78:{tcp_port}"
    wait_until("dmz2 logs both refusals", lambda: bool(lines(dmz2, tcp_client) and lines(dmz2, ws_client)), WAIT, dmz2)
    wait_until("the connector logs both refusals", lambda: bool(lines(c1, tcp_client) and lines(c1, ws_client)), WAIT, c1)
    print(f"\nforwarded clients: ws got {ws_refusal.strip()!r}, tcp got {tcp_got!r}\n"
          f"  dmz2: {lines(dmz2, ws_client)[0].split('] ', 1)[-1]}\n"
          f"  dmz2: {lines(dmz2, tcp_client)[0].split('] ', 1)[-1]}\n"
          f"  c1:   {lines(c1, tcp_client)[0].split('] ', 1)[-1]}")
    assert ws_refusal.startswith("502 "), ws_refusal
    assert tcp_got == b""
    assert len(lines(dmz2, f"ws client {ws_client} -> echo: 502")) == 1, dmz2.log()[-3000:]
    assert len(lines(dmz2, f"tcp client {tcp_client} -> echo: 502")) == 1, dmz2.log()[-3000:]
    assert len(lines(c1, f"(client {ws_client})")) == 1 and len(lines(c1, f"(client {tcp_client})")) == 1
    # dmz1 only forwarded: it took no tunnel itself and refused nothing; dmz2 served both.
    assert not lines(dmz1, ws_client) and not lines(dmz1, tcp_client), dmz1.log()[-3000:]
    assert balanced(cluster, "dmz1", "dmz2") == 2
    assert served(cluster, "dmz1") == 0


# -- 3. redirect mode -------------------------------------------------------------------------------


def raw_upgrade(address: Address, path: str = "/echo") -> tuple[int, dict[str, str], bytes]:
    """Send a WebSocket upgrade request by hand: (status, headers, body) of the answer."""
    with socket.create_connection(address, timeout=WAIT) as sock:
        host = f"{address[0]}:{address[1]}"
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def test_redirect_mode_answers_302_to_a_member(topology: Topology) -> None:
    """mode = "redirect": 302 with Location http://<member ws accept>; a client that reconnects
    there (ws://, same host, port and path) gets its echo."""
    cluster = cluster_setup(topology, mode="redirect")
    members = {cluster.member_ws_url(m).replace("ws://", "http://"): m for m in cluster.members}
    answers = []
    for address in cluster.balancer_addresses("ws"):
        status, headers, body = raw_upgrade(address)
        answers.append((address[0], status, headers.get("location")))
        assert status == 302, (status, headers, body)
        assert headers.get("location") in members, headers
        assert body == b""

    async def follow(location: str) -> bytes:
        async with connect(location.replace("http://", "ws://"), proxy=None, open_timeout=WAIT) as ws:
            await ws.send(b"redirected\n")
            return await asyncio.wait_for(ws.recv(), WAIT)  # type: ignore[return-value]

    echoes = [asyncio.run(follow(location)) for _, _, location in answers]
    print(f"\nredirect: {answers}; following the Location by hand: {echoes}")
    assert echoes == [b"redirected\n"] * len(answers)
    assert sum(balanced(cluster, "dmz1", m, "redirect") for m in cluster.members) == 1
    assert sum(balanced(cluster, "dmz2", m, "redirect") for m in cluster.members) == 1


# -- 4. no member can serve -------------------------------------------------------------------------


def test_no_member_can_serve_is_503_for_ws_and_a_close_for_tcp(topology: Topology) -> None:
    """No connector runs: ws clients of either balancer get 503 and a one-line reason, tcp clients
    are closed; each refusal is one log line at the balancer that took the client."""
    cluster = cluster_setup(topology, start_connectors=False)
    dmz = {m: cluster.processes[m] for m in cluster.members}
    results = []
    for member, address in zip(cluster.members, cluster.balancer_addresses("ws")):
        status, headers, body = raw_upgrade(address)
        results.append((member, "ws", status, body))
    for member, address in zip(cluster.members, cluster.balancer_addresses("tcp")):
        with socket.create_connection(address, timeout=WAIT) as sock:
            sock.sendall(b"hello\n")
            try:
                got: bytes | str = sock.recv(100)
            except ConnectionResetError:
                got = "reset"
        results.append((member, "tcp", None, got))

    async def websockets_client() -> str:
        try:
            async with connect(f"ws://{cluster.host('dmz1')}:{cluster.balancer_ws}/echo", proxy=None, open_timeout=WAIT):
                return "accepted"
        except InvalidStatus as refused:
            return describe_failure(refused)

    with_library = asyncio.run(websockets_client())
    print(f"\nno member can serve: {results}; websockets client: {with_library}")
    for member in cluster.members:
        refusals = lines(dmz[member], "-> front: 503")
        print(f"  {member}: " + "\n  ".join(line.split("] ", 1)[-1] for line in refusals))
    for member, kind, status, body in results:
        if kind == "ws":
            assert status == 503, (member, status, body)
            text = body.decode()
            assert text.endswith("\n") and text.count("\n") == 1 and "no cluster member" in text, text
        else:
            assert body == b"", (member, body)
    assert with_library.startswith("HTTP 503 ") and "no cluster member" in with_library, with_library
    # One line per client at the balancer that took it: dmz1 had ws, tcp and the library's ws.
    assert len(lines(dmz["dmz1"], "ws client", "-> front: 503")) == 2, dmz["dmz1"].log()[-3000:]
    assert len(lines(dmz["dmz1"], "tcp client", "-> front: 503")) == 1, dmz["dmz1"].log()[-3000:]
    assert len(lines(dmz["dmz2"], "ws client", "-> front: 503")) == 1, dmz["dmz2"].log()[-3000:]
    assert len(lines(dmz["dmz2"], "tcp client", "-> front: 503")) == 1, dmz["dmz2"].log()[-3000:]
    for member in cluster.members:
        assert len(lines(dmz[member], "-> front")) == len(lines(dmz[member], "-> front: 503"))


# -- 5. a member's SIGKILL ---------------------------------------------------------------------------


def test_member_sigkill_the_other_member_serves(topology: Topology) -> None:
    """dmz1 is busy, so its balancer sends new clients to dmz2; kill -9 dmz2: new clients through
    dmz1's balancer are served by dmz1 at once."""
    cluster = cluster_setup(topology)
    dmz2 = cluster.processes["dmz2"]
    ws_addr = [cluster.balancer_addresses("ws")[0]]
    tcp_addr = [cluster.balancer_addresses("tcp")[0]]

    async def run() -> tuple[Prober, Attempt | None, int, int, str, float]:
        # Twenty clients straight on dmz1's own accepts: dmz1 has the more clients now.
        busy = []
        for index in range(20):
            if index % 2 == 0:
                conn = Conn("ws", ("127.0.0.1", 0), ws=await connect(cluster.member_ws_url("dmz1"), proxy=None))
            else:
                conn = await open_conn("tcp", cluster.member_tcp("dmz1"))
            await conn.echo(b"busy\n")
            busy.append(conn)
        # A long-lived ws client through dmz1's balancer, served by dmz2.
        before = served(cluster, "dmz2")
        victim = await open_conn("ws", ws_addr[0])
        await victim.echo(b"victim\n")
        assert served(cluster, "dmz2") == before + 1, "the balancer did not send the client to dmz2"
        warm = Prober(ws_addr, tcp_addr, time.monotonic())
        for _ in range(10):
            await warm.one()
        assert not warm.failures, warm.summary()
        to_dmz2 = served(cluster, "dmz2") - before - 1
        killed_at = time.monotonic()
        dmz2.signal(signal.SIGKILL)
        prober = Prober(ws_addr, tcp_addr, killed_at)
        first = None
        while time.monotonic() - killed_at < WAIT:
            attempt = await prober.one()
            if not attempt.failure and first is None:
                first = attempt
            if first is not None and len(prober.attempts) >= prober.attempts.index(first) + 31:
                break
            await asyncio.sleep(PACE)
        try:
            await victim.echo(b"victim again\n", HANG)
            ending = "still echoes"
        except ConnectionClosed as closed:
            ending = describe_failure(closed) + f" (code {closed.rcvd.code if closed.rcvd else None})"
        except CLIENT_ERRORS as problem:
            ending = describe_failure(problem)
        ended_at = time.monotonic() - killed_at
        for conn in busy:
            await conn.echo(b"busy still\n")
            await conn.close()
        return prober, first, to_dmz2, len(warm.attempts), ending, ended_at

    prober, first, to_dmz2, warm, ending, ended_at = asyncio.run(run())
    dmz2.popen.wait(timeout=10)  # type: ignore[union-attr]
    figure = f"{first.ended:.3f} s" if first else "never"
    print(f"\nmember SIGKILL -> served by the other member: {figure} (product bound {TAKEOVER_PRODUCT_BOUND:g} s; "
          f"before the kill {to_dmz2}/{warm} probes went to dmz2; after: {prober.summary()})")
    for attempt in prober.failures:
        print(f"  failed attempt at {attempt.started:.3f} s ({attempt.kind}, {attempt.phase}): {attempt.failure}")
    print(f"  long-lived ws client dmz1's balancer had sent to dmz2: {ending}, {ended_at:.2f} s after the kill")
    assert to_dmz2 >= warm // 2, f"only {to_dmz2} of {warm} probes went to dmz2 before the kill"
    assert first is not None and first.ended < TAKEOVER_TEST_BOUND, prober.summary()
    after_first = [a for a in prober.attempts if a.started > first.started]
    assert len(after_first) >= 30 and not any(a.failure for a in after_first), prober.summary()
    assert "still echoes" not in ending, "a client of a killed member cannot still echo"
    assert alive_peers(cluster, "dmz1") == 0
    assert lines(cluster.processes["dmz1"], "member dmz2 is gone")


# -- 6. the rolling restart ---------------------------------------------------------------------------


@dataclass
class Ending:
    """How a long-lived client ended."""

    kind: str  # "closed by the test", "ws close", "ws dropped", "eof", "reset", "HANG ..."
    at: float
    echoes: int
    address: Address
    code: int | None = None
    reason: str = ""

    def __str__(self) -> str:
        what = f"{self.kind} {self.code} {self.reason!r}" if self.kind.startswith("ws") else self.kind
        return f"{what} at {self.at:.2f} s after {self.echoes} echoes (via {self.address[0]})"


@dataclass
class LongLived:
    """Keeps ``count`` long-lived clients open through the balancer, each echoing every 0.1 s;
    one that ends is recorded and replaced by a new one (a failed open counts as a failure)."""

    kinds: list[str]
    ws: list[Address]
    tcp: list[Address]
    since: float
    endings: list[tuple[str, Ending]] = field(default_factory=list)
    opens: list[Attempt] = field(default_factory=list)
    stopping: bool = False

    async def keep(self, kind: str) -> None:
        while not self.stopping:
            attempt = Attempt(time.monotonic() - self.since, kind)
            self.opens.append(attempt)
            try:
                conn = await open_first(kind, self.ws if kind == "ws" else self.tcp)
                attempt.address = conn.address
                await conn.echo(b"long-lived hello\n")
            except CLIENT_ERRORS as problem:
                attempt.failure = describe_failure(problem)
                attempt.ended = time.monotonic() - self.since
                await asyncio.sleep(PACE)
                continue
            attempt.ended = time.monotonic() - self.since
            self.endings.append((kind, await self.talk(conn)))

    async def talk(self, conn: Conn) -> Ending:
        echoes = 0

        def ending(kind: str, code: int | None = None, reason: str = "") -> Ending:
            return Ending(kind, time.monotonic() - self.since, echoes, conn.address, code, reason)

        try:
            while not self.stopping:
                try:
                    await conn.echo(f"long-lived {echoes:06d}\n".encode(), HANG)
                except asyncio.TimeoutError:
                    conn.abort()
                    return ending(f"HANG: no echo and no close for {HANG:g} s")
                echoes += 1
                await asyncio.sleep(0.1)
            await conn.close()
            return ending("closed by the test")
        except ConnectionClosed as closed:
            frame = closed.rcvd
            if frame is None:
                return ending("ws dropped (no close frame)", 1006)
            return ending("ws close", frame.code, frame.reason)
        except (asyncio.IncompleteReadError, ConnectionError) as problem:
            if isinstance(problem, (ConnectionResetError, BrokenPipeError)):
                return ending("reset")
            return ending("eof")

    async def run(self) -> None:
        """Open the clients one after another (each placed knowing the previous), then keep them."""
        tasks = []
        for kind in self.kinds:
            opened = len([a for a in self.opens if not a.failure])
            tasks.append(asyncio.create_task(self.keep(kind)))
            while len([a for a in self.opens if not a.failure and a.ended]) <= opened and not self.stopping:
                await asyncio.sleep(PACE)
        await asyncio.gather(*tasks)


@dataclass
class Rolling:
    """What the rolling restart measured."""

    folder: Path
    prober: Prober
    long_lived: LongLived
    events: list[tuple[float, str]]
    exits: dict[str, list[int | None]]
    restarts: int
    total: float
    placement: dict[str, int]  # member -> long-lived clients it served at the start (all came via dmz1)

    def event_before(self, at: float) -> str:
        before = [f"{name} (at {t:.2f} s)" for t, name in self.events if t <= at]
        return before[-1] if before else "start"

    def report(self) -> str:
        probes, opens = self.prober.attempts, self.long_lived.opens
        failures = self.prober.failures + [a for a in opens if a.failure]
        text = [
            f"rolling restart of 2 DMZ members and 2 connectors: {self.restarts} restarts in {self.total:.1f} s; "
            f"{len(probes)} new connections ({self.prober.summary()}); {len(opens)} long-lived opens; "
            f"{len(failures)} failed new connections; exit statuses {self.exits}; the 3 long-lived "
            f"clients (all through dmz1's balancer) were first served by {self.placement}",
        ]
        for attempt in sorted(failures, key=lambda a: a.started):
            text.append(
                f"  FAILED {attempt.kind} at {attempt.started:.3f} s ({attempt.phase or 'open'}"
                f"{f' via {attempt.address[0]}' if attempt.address else ''}): {attempt.failure}; "
                f"last event: {self.event_before(attempt.started)}"
            )
        for kind, ending in self.long_lived.endings:
            text.append(f"  long-lived {kind}: {ending}; last event: {self.event_before(ending.at)}")
        text.append("  events: " + "; ".join(f"{t:.2f} {name}" for t, name in self.events))
        text.append(f"  logs in {self.folder}")
        return "\n".join(text)


def _links_up(cluster: Cluster, member: str, connectors: list[str]) -> bool:
    text = scrape(cluster, member)
    return all(metric(text, "shield_links_up", endpoint=name) == 1 for name in connectors)


def run_rolling_restart(topology: Topology) -> Rolling:
    connectors = ["c1", "c2"]
    cluster = cluster_setup(topology, {name: None for name in connectors}, member_grace=GRACE, connector_grace=GRACE)
    for member in cluster.members:
        wait_until(f"both connectors linked to {member}", lambda m=member: _links_up(cluster, m, connectors))
    events: list[tuple[float, str]] = []
    exits: dict[str, list[int | None]] = {name: [] for name in cluster.members + connectors}
    placement: dict[str, int] = {}
    started = time.monotonic()

    def event(name: str) -> None:
        events.append((time.monotonic() - started, name))

    def restart(name: str) -> None:
        """SIGTERM, exit, start again, ready, and seen again by the rest of the cluster."""
        process = cluster.processes[name]
        is_member = name in cluster.members
        peers = [m for m in cluster.members if m != name]
        seen_before = {p: len(lines(cluster.processes[p], f"member {name} is alive")) for p in peers}
        event(f"SIGTERM {name}")
        process.signal(signal.SIGTERM)
        try:
            status: int | None = process.popen.wait(timeout=GRACE + WAIT)  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            status = None
            process.kill()
        exits[name].append(status)
        event(f"{name} exited {status}")
        if is_member:
            cluster.start_member(name, wait=False)
        else:
            cluster.start_connector(name, wait=False)
        event(f"{name} started")
        wait_ready(cluster.admin(name), process=cluster.processes[name])
        event(f"{name} ready")
        if is_member:
            for peer in peers:
                wait_until(
                    f"{peer} sees {name} alive again",
                    lambda p=peer: len(lines(cluster.processes[p], f"member {name} is alive")) > seen_before[p],
                )
            wait_until(f"both connectors linked to {name}", lambda: _links_up(cluster, name, connectors))
        else:
            for member in cluster.members:
                wait_until(f"{name} linked to {member}", lambda m=member: _links_up(cluster, m, connectors))
        event(f"{name} back")
        time.sleep(1.0)  # clients flow through the restarted process before the next one goes

    async def scenario() -> tuple[Prober, LongLived]:
        ws, tcp = cluster.balancer_addresses("ws"), cluster.balancer_addresses("tcp")
        prober = Prober(ws, tcp, started)
        long_lived = LongLived(["ws", "ws", "tcp"], ws, tcp, started)
        keeping = asyncio.create_task(long_lived.run())
        await asyncio.sleep(1.0)
        # All three came in through dmz1's balancer: those dmz2 serves were forwarded to it.
        placement.update({m: active(cluster, m) for m in cluster.members})
        probing = asyncio.create_task(prober.run())
        await asyncio.sleep(1.0)
        for name in cluster.members + connectors:
            await asyncio.to_thread(restart, name)
        prober.stopping = long_lived.stopping = True
        await asyncio.wait_for(asyncio.gather(probing, keeping), WAIT)
        return prober, long_lived

    prober, long_lived = asyncio.run(scenario())
    total = time.monotonic() - started
    return Rolling(topology.folder, prober, long_lived, events, exits, 4, total, placement)


@pytest.fixture(scope="module")
def rolling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rolling]:
    topology = Topology(tmp_path_factory.mktemp("rolling"))
    try:
        result = run_rolling_restart(topology)
        print("\n" + result.report())
        yield result
    finally:
        topology.close()


def test_rolling_restart_no_new_connection_fails(rolling: Rolling) -> None:
    """Every member and every connector restarted in turn under a new connection every 20 ms:
    not one new connection fails (clients move to the next address only on a refusal).

    Meaningful only with a balancer that forwards: dmz1's must have sent a long-lived client to
    dmz2. (Without forwarding, a restarted member whose connectors have not linked yet refuses
    clients with 503 "0 peers alive", having just killed its member link by forwarding.)"""
    failures = rolling.prober.failures + [a for a in rolling.long_lived.opens if a.failure]
    assert len(rolling.prober.attempts) >= 200, rolling.report()
    assert rolling.placement.get("dmz2", 0) >= 1, f"no long-lived client was forwarded to dmz2\n{rolling.report()}"
    assert not failures, rolling.report()


def test_rolling_restart_long_lived_clients_never_hang(rolling: Rolling) -> None:
    """Long-lived clients keep echoing until their member or connector has drained (grace period),
    then their connection is closed: never left hanging."""
    endings = rolling.long_lived.endings
    assert len(endings) >= 3, rolling.report()
    for kind, ending in endings:
        assert not ending.kind.startswith("HANG"), rolling.report()
        if ending.kind == "closed by the test":
            continue
        sigterms = [t for t, name in rolling.events if name.startswith("SIGTERM") and t <= ending.at]
        assert sigterms and ending.at - sigterms[-1] >= GRACE - 0.5, (
            f"a long-lived client ended before the grace period was over: {ending}\n{rolling.report()}"
        )


def test_rolling_restart_long_lived_clients_end_with_a_reason(rolling: Rolling) -> None:
    """Long-lived clients keep echoing, or are closed with a reason (ws: 1001 and a reason; tcp: a
    close), never left hanging."""
    endings = rolling.long_lived.endings
    assert len(endings) >= 3, rolling.report()
    assert rolling.placement.get("dmz2", 0) >= 1, f"no long-lived client was forwarded to dmz2\n{rolling.report()}"
    for kind, ending in endings:
        assert not ending.kind.startswith("HANG"), rolling.report()
        if ending.kind == "closed by the test":
            continue
        if kind == "ws":
            assert ending.kind == "ws close" and ending.code == 1001 and ending.reason, rolling.report()
        else:
            assert ending.kind in ("eof", "reset"), rolling.report()


def test_rolling_restart_every_process_exits_0_on_sigterm(rolling: Rolling) -> None:
    assert all(statuses == [0] for statuses in rolling.exits.values()), rolling.report()


# -- 7. a drain and the clients a balancer forwarded ------------------------------------------------


@pytest.mark.parametrize(
    "draining",
    [
        pytest.param("dmz1", id="balancer-member-drains"),
        pytest.param("dmz2", id="serving-member-drains"),
        pytest.param("c1", id="connector-drains"),
    ],
)
def test_drain_closes_forwarded_clients_with_a_reason(topology: Topology, draining: str) -> None:
    """The connector dials dmz2 only, so dmz1's balancer forwards its clients to dmz2. SIGTERM on
    a member or the connector: the clients keep echoing through the grace period (3 s), then the
    ws client gets 1001 and a reason (tcp: closed); the process exits 0."""
    cluster = cluster_setup(topology, {"c1": ["dmz2"]}, member_grace=3, connector_grace=3)
    process = cluster.processes[draining]

    async def run() -> tuple[list[tuple[str, Ending]], float, int | None]:
        since = time.monotonic()
        long_lived = LongLived([], [cluster.balancer_addresses("ws")[0]], [cluster.balancer_addresses("tcp")[0]], since)
        conns = []
        for kind in ("ws", "tcp"):
            conn = await open_conn(kind, cluster.balancer_addresses(kind)[0])
            await conn.echo(b"hello\n")
            conns.append((kind, conn))
        assert served(cluster, "dmz2") == 2 and balanced(cluster, "dmz1", "dmz2") == 2
        talking = [asyncio.create_task(long_lived.talk(conn)) for _, conn in conns]
        await asyncio.sleep(0.5)
        term_at = time.monotonic() - since
        process.signal(signal.SIGTERM)
        endings = [(kind, await asyncio.wait_for(task, WAIT)) for (kind, _), task in zip(conns, talking)]
        status = await asyncio.to_thread(process.popen.wait, WAIT)  # type: ignore[union-attr]
        return endings, term_at, status

    endings, term_at, status = asyncio.run(run())
    print(f"\n{draining} drains (SIGTERM at {term_at:.2f} s): " + "; ".join(f"{kind} {ending}" for kind, ending in endings))
    assert status == 0
    for kind, ending in endings:
        assert ending.at - term_at >= 2.0, f"closed before the grace period was over: {ending}"
        if kind == "ws":
            assert ending.kind == "ws close" and ending.code == 1001 and ending.reason, ending
        else:
            assert ending.kind in ("eof", "reset"), ending
