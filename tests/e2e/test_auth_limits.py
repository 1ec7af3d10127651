"""Public-client authentication and client limits, end to end (issue 6, items 2 and 3).

Real ``twistd`` gateways and real clients (websockets, raw sockets, ssl) on loopback:

- ``auth = "token"`` (ws): no token or a wrong one is 401 with ``WWW-Authenticate`` and a
  one-line body; a right token in ``Authorization: Bearer`` or ``?access_token=`` passes. One
  log line per refusal with the client address, and no token anywhere in any log.
- ``auth = "mtls"`` (wss and tls): no client certificate is 401, one from another CA or an
  expired one 403 with the reason (wss) or a close with one log line (tls); a good one passes.
- Limits: ``max-connections`` (service and gateway), ``max-connections-per-source`` (clients
  bound to 127.0.0.2, .3 and .4 to be different sources), ``handshake-timeout``,
  ``idle-timeout`` and ``bytes-per-second``; each refusal counts in
  ``shield_refusals_total{service,limit}`` and is logged: the first of a kind at once, then
  under a flood one line a second with the number refused (shield/dmz/admission.py).
- No leaked tickets: after refused, denied and timed-out clients are gone, the full quota is
  admitted again; 300 clients one after the other through a service capped at 5 all pass.

Timing bounds are generous (a busy 2-core machine); the measured figures are printed.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import re
import secrets
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import pytest
from backend import BLOCK, pattern_block, pattern_digest
from harness import SHIELD, Process, Topology, http_get
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shield.tls.devcerts import issue_certificate, leaf_pem, new_authority

pytestmark = pytest.mark.timeout(300)

WAIT = 30.0
MIB = 1024 * 1024
SUMMARY = "more refused by"


# -- set-up ----------------------------------------------------------------------------------------


def ws_url(topology: Topology, service: str) -> str:
    return topology.url(f"ws-{service}", "ws", f"/{service}")


def wss_url(topology: Topology, service: str) -> str:
    return topology.url(f"wss-{service}", "wss", f"/{service}")


def tcp_uri(topology: Topology, service: str) -> str:
    return f"tcp://127.0.0.1:{topology.port(f'tcp-{service}')}"


def tls_uri(topology: Topology, service: str) -> str:
    return f"tls://127.0.0.1:{topology.port(f'tls-{service}')}"


def port_of(uri: str) -> int:
    port = urlsplit(uri).port
    assert port is not None
    return port


def make_certs(topology: Topology) -> Path:
    """The backplane CA, dmz1 and internal1, and ``public`` (the public listeners' certificate)."""
    certs = topology.folder / "certs"
    if not (certs / "ca.pem").exists():
        topology.certs(["internal1"], dmz_names=["dmz1", "public"])
    return certs


def start(
    topology: Topology,
    services: dict[str, dict[str, Any]],
    extra_dmz: str = "",
    mode: str = "echo",
    backend: int | None = None,
) -> Process:
    """One backend in ``mode`` (or the one on port ``backend``), one connector offering every
    service, the DMZ: all ready."""
    make_certs(topology)
    if backend is None:
        _, backend = topology.start_backend(mode)
    topology.dmz_config(services, {"internal1": list(services)}, extra_dmz)
    topology.internal_config("internal1", {name: f"tcp://127.0.0.1:{backend}" for name in services})
    dmz = topology.start_dmz()
    topology.start_connector("internal1")
    topology.dmz_ready()
    return dmz


def client_context(certs: Path, chain: Path | None = None) -> ssl.SSLContext:
    """Trusts the development CA (the public certificate's); presents ``chain`` if given."""
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if chain is not None:
        context.load_cert_chain(str(chain))
    return context


# -- clients ---------------------------------------------------------------------------------------


async def dial(port: int, source: str = "127.0.0.1") -> tuple[socket.socket, str]:
    """A TCP connection from ``source`` (any 127.0.0.x is local on Linux): (socket, "host:port")."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock, f"{source}:{sock.getsockname()[1]}"


async def ws_open(url: str, source: str = "127.0.0.1", **kwargs: Any) -> tuple[ClientConnection, str]:
    sock, client = await dial(port_of(url), source)
    ws = await connect(url, sock=sock, proxy=None, max_size=None, open_timeout=WAIT, **kwargs)
    return ws, client


async def ws_refused(url: str, source: str = "127.0.0.1", **kwargs: Any) -> tuple[str, int, dict[str, str], str]:
    """An upgrade that must be refused: (client address, status, headers, body)."""
    sock, client = await dial(port_of(url), source)
    try:
        ws = await connect(url, sock=sock, proxy=None, open_timeout=WAIT, **kwargs)
    except InvalidStatus as refused:
        response = refused.response
        headers = {name.lower(): value for name, value in response.headers.raw_items()}
        return client, response.status_code, headers, response.body.decode("utf-8", "replace")
    await ws.close()
    raise AssertionError(f"the upgrade to {url} from {client} was accepted; expected a refusal")


async def ws_echo(ws: ClientConnection, payload: bytes, timeout: float = WAIT) -> None:
    await ws.send(payload)
    echoed = b""
    while len(echoed) < len(payload):
        echoed += await asyncio.wait_for(ws.recv(), timeout)  # type: ignore[operator]
    assert echoed == payload


async def tcp_open(
    port: int, source: str = "127.0.0.1", **tls: Any
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    sock, client = await dial(port, source)
    reader, writer = await asyncio.open_connection(sock=sock, **tls)
    return reader, writer, client


async def tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(payload)
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(len(payload)), WAIT) == payload


async def tcp_finish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close and read to EOF: the echo backend ends, so the DMZ closes the client."""
    if writer.can_write_eof():
        writer.write_eof()
    else:
        writer.close()  # TLS: no half-close
    try:
        await asyncio.wait_for(reader.read(), WAIT)
    except (ConnectionError, ssl.SSLError):
        pass
    writer.close()


async def until_closed(reader: asyncio.StreamReader, timeout: float = WAIT) -> tuple[float, bytes | str]:
    """Read until the gateway ends the connection: (seconds it took, bytes read, or the error)."""
    began = time.monotonic()
    got = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            got += chunk
    except (ConnectionError, ssl.SSLError) as problem:
        return time.monotonic() - began, f"{got!r} then {problem!r}"
    return time.monotonic() - began, got


async def tcp_refused(port: int, source: str = "127.0.0.1", **tls: Any) -> tuple[str, bytes | str]:
    """A client the DMZ must close without a tunnel: (client address, what it read, or the error)."""
    try:
        sock, client = await dial(port, source)
    except ConnectionResetError as reset:  # aborted before the client saw its connect complete
        return source, repr(reset)
    try:
        reader, writer = await asyncio.open_connection(sock=sock, **tls)
    except (ConnectionError, ssl.SSLError) as problem:
        return client, repr(problem)  # closed during the handshake
    try:
        writer.write(b"anyone there?")
        _, got = await until_closed(reader)
    finally:
        writer.close()
    return client, got


def assert_closed(got: bytes | str) -> None:
    assert got == b"" or "Reset" in str(got) or "EOF" in str(got) or "Broken" in str(got), (
        f"expected the gateway to close the connection, the client read {got!r}"
    )


# -- logs and metrics ------------------------------------------------------------------------------


def lines_naming(process: Process, client: str) -> list[str]:
    """Log lines that name ``client`` ("host:port", or a host with any port), summaries left out."""
    port = r"" if re.search(r":\d+$", client) else r"(?::\d+)?"
    needle = re.compile(re.escape(f"client {client}") + port + r"(?![\d.]|:\d)")
    return [line for line in process.log().splitlines() if needle.search(line) and SUMMARY not in line]


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def one_line(process: Process, client: str, *fragments: str) -> str:
    """Exactly one log line names ``client``, from shield, and it says every one of ``fragments``."""
    wait_for(f"a log line naming client {client}", lambda: lines_naming(process, client))
    time.sleep(0.2)  # a second line would come right after the first
    lines = lines_naming(process, client)
    assert len(lines) == 1, f"expected one line naming {client}, got:\n" + "\n".join(lines)
    line = lines[0]
    assert "[shield." in line, line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def refusals_logged(process: Process, single: str, limit: str, service: str) -> tuple[int, int]:
    """(lines of their own, refusals counted in per-second summaries) for one service and limit."""
    summary = re.compile(rf"(\d+) {SUMMARY} {limit} for '{re.escape(service)}' in the last second")
    singles = more = 0
    for line in process.log().splitlines():
        found = summary.search(line)
        if found:
            more += int(found.group(1))
        elif single in line:
            singles += 1
    return singles, more


def metric(topology: Topology, name: str, **labels: str) -> float:
    """One sample of the DMZ's /metrics (0 while the series does not exist)."""
    status, body = http_get(topology.url("dmz-admin", path="/metrics"))
    assert status == 200, body
    for line in body.splitlines():
        if line.startswith(name + "{"):
            series, value = line.rsplit(" ", 1)
            if dict(re.findall(r'(\w+)="([^"]*)"', series)) == labels:
                return float(value)
    return 0.0


def refusals(topology: Topology, service: str, limit: str) -> float:
    return metric(topology, "shield_refusals_total", service=service, limit=limit)


def backend_connections(topology: Topology) -> int:
    backend = next(process for process in topology.processes if process.name == "backend")
    return backend.log().count("connection from")


# -- authentication: tokens ------------------------------------------------------------------------


def sha256_entry(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def test_token_auth_on_ws(topology: Topology) -> None:
    good, second, wrong, wrong_query, basic = (secrets.token_urlsafe(24) for _ in range(5))
    hashed = subprocess.run(
        [SHIELD, "hash-token"], input=good + "\n", capture_output=True, text=True, check=True, timeout=WAIT
    ).stdout.strip()
    assert hashed == sha256_entry(good), hashed
    # max-connections 2: the four denied clients must leave nothing counted behind.
    url = ws_url(topology, "tok")
    dmz = start(topology, {"tok": {
        "accept": [url], "auth": "token", "tokens": [hashed, sha256_entry(second)], "max-connections": 2,
    }})  # fmt: skip

    async def run() -> dict[str, tuple[str, int, dict[str, str], str]]:
        refused = {
            "no token": await ws_refused(url),
            "wrong bearer": await ws_refused(url, additional_headers={"Authorization": f"Bearer {wrong}"}),
            "wrong access_token": await ws_refused(f"{url}?access_token={wrong_query}"),
            "not a bearer token": await ws_refused(url, additional_headers={"Authorization": f"Basic {basic}"}),
        }
        by_header, _ = await ws_open(url, additional_headers={"Authorization": f"Bearer {good}"})
        by_query, _ = await ws_open(f"{url}?access_token={second}&other=1")
        await ws_echo(by_header, b"bearer works")
        await ws_echo(by_query, b"access_token works")
        await by_header.close()
        await by_query.close()
        return refused

    refused = asyncio.run(run())
    for case, (client, status, headers, body) in refused.items():
        print(f"{case}: {client} -> {status} {body!r} (WWW-Authenticate: {headers.get('www-authenticate')})")
        assert status == 401, (case, status, body)
        assert headers.get("www-authenticate", "").startswith("Bearer"), (case, headers)
        assert body.endswith("\n") and body.count("\n") == 1, f"{case}: the reason is one line: {body!r}"
        expected = "needs a token" if case == "no token" else "token refused"
        line = one_line(dmz, client, "ws client", "-> tok", "401", expected)
        print(f"  log: {line}")
    assert "'tok'" in refused["no token"][3]

    # No token, right or wrong, anywhere: not in any log, not in any answer.
    for process in topology.processes:
        text = process.log()
        for token in (good, second, wrong, wrong_query, basic):
            assert token not in text, f"a token is in the {process.name} log"
    for _, _, headers, body in refused.values():
        for token in (wrong, wrong_query, basic):
            assert token not in body and all(token not in value for value in headers.values())

    assert metric(topology, "shield_open_failures_total", service="tok", reason="unauthorized") == 1
    assert metric(topology, "shield_open_failures_total", service="tok", reason="bad_token") == 3
    assert backend_connections(topology) == 2, "only the two clients with a right token reach the backend"


# -- authentication: client certificates -----------------------------------------------------------


def client_certificates(certs: Path) -> dict[str, Path]:
    """``clients-ca.pem`` (the service's client-ca) and client certificates, one file each."""
    clients = new_authority("shield test clients CA")
    (certs / "clients-ca.pem").write_bytes(clients.pem())
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
    made = {}
    for case, name, authority, kwargs in (
        ("good", "alice", clients, {}),
        ("other CA", "mallory", new_authority("some other CA"), {}),
        ("expired", "old-alice", clients, {"not_before": past, "not_after": past + datetime.timedelta(days=1)}),
    ):
        cert, key = issue_certificate(authority, name, "client", **kwargs)
        path = certs / f"client-{name}.pem"
        path.write_bytes(leaf_pem(cert, key))
        made[case] = path
    return made


def test_mtls_on_wss_and_tls(topology: Topology) -> None:
    certs = make_certs(topology)
    clients = client_certificates(certs)
    wss, tls = wss_url(topology, "m"), tls_uri(topology, "m")
    dmz = start(topology, {"m": {
        "accept": [wss, tls], "cert": "certs/public.pem", "auth": "mtls", "client-ca": "certs/clients-ca.pem",
        "max-connections": 2,
    }})  # fmt: skip
    contexts = {case: client_context(certs, path) for case, path in clients.items()}
    contexts["no certificate"] = client_context(certs)
    tls_port = port_of(tls)

    async def run() -> tuple[dict[str, tuple[str, int, dict[str, str], str]], dict[str, tuple[str, bytes | str]]]:
        ws_refusals = {
            case: await ws_refused(wss, ssl=contexts[case], server_hostname="public")
            for case in ("no certificate", "other CA", "expired")
        }
        tls_refusals = {
            case: await tcp_refused(tls_port, ssl=contexts[case], server_hostname="public")
            for case in ("no certificate", "other CA", "expired")
        }
        ws, _ = await ws_open(wss, ssl=contexts["good"], server_hostname="public")
        await ws_echo(ws, b"over wss with a good certificate")
        reader, writer, _ = await tcp_open(tls_port, ssl=contexts["good"], server_hostname="public")
        await tcp_echo(reader, writer, b"over tls with a good certificate")
        await ws.close()
        await tcp_finish(reader, writer)
        return ws_refusals, tls_refusals

    ws_refusals, tls_refusals = asyncio.run(run())
    expected = {
        "no certificate": (401, "needs a client certificate"),
        "other CA": (403, "unable to get local issuer certificate"),
        "expired": (403, "certificate has expired"),
    }
    for case, (client, status, headers, body) in ws_refusals.items():
        print(f"wss {case}: {client} -> {status} {body!r}")
        assert (status, expected[case][1] in body) == (expected[case][0], True), (case, status, body)
        assert body.endswith("\n") and body.count("\n") == 1, body
        if status == 401:
            assert "www-authenticate" in headers, headers
        else:
            assert "client certificate refused" in body, body
        one_line(dmz, client, "ws client", "-> m", str(expected[case][0]), expected[case][1])
    for case, (client, got) in tls_refusals.items():
        print(f"tls {case}: {client} -> closed ({got!r})")
        assert_closed(got)
        line = one_line(dmz, client, "tls client", "-> m", str(expected[case][0]), expected[case][1])
        print(f"  log: {line}")

    assert metric(topology, "shield_open_failures_total", service="m", reason="no_client_certificate") == 2
    assert metric(topology, "shield_open_failures_total", service="m", reason="bad_client_certificate") == 4
    assert backend_connections(topology) == 2, "refused clients must cost no tunnel"

    async def both_at_once() -> None:  # max-connections 2: the refused clients left nothing counted
        ws, _ = await ws_open(wss, ssl=contexts["good"], server_hostname="public")
        reader, writer, _ = await tcp_open(tls_port, ssl=contexts["good"], server_hostname="public")
        await ws_echo(ws, b"again")
        await tcp_echo(reader, writer, b"again")
        await ws.close()
        await tcp_finish(reader, writer)

    asyncio.run(both_at_once())


# -- max-connections -------------------------------------------------------------------------------


def test_service_max_connections(topology: Topology) -> None:
    """3: the 4th client (tcp) is closed; another service is unaffected; a place frees when a client
    leaves."""
    dmz = start(topology, {"cap": {"max-connections": 3}, "free": {}})
    url, tcp_port = ws_url(topology, "cap"), port_of(tcp_uri(topology, "cap"))
    single = "-> cap: refused (503): too many connections: service 'cap' has 3 open"

    async def run() -> None:
        held = [(await ws_open(url))[0] for _ in range(3)]
        for ws in held:
            await ws_echo(ws, b"one of three")
        _, got = await tcp_refused(tcp_port)
        print(f"4th client (tcp): closed ({got!r})")
        assert_closed(got)
        one_line(dmz, "127.0.0.1", "[shield.dmz.admission", single)
        await asyncio.sleep(1.2)  # past the one-line-a-second window: the next refusal has its own line
        _, got = await tcp_refused(tcp_port)
        print(f"5th client (tcp), 1.2 s later: closed ({got!r})")
        assert_closed(got)
        wait_for("the second refusal logged", lambda: refusals_logged(dmz, single, "max_connections", "cap")[0] == 2)

        # Another service is not affected by this one's limit.
        other, _ = await ws_open(ws_url(topology, "free"))
        await ws_echo(other, b"other service")
        await other.close()

        # One leaves: one more is admitted (tcp), and then it is full again.
        await held.pop().close()
        reader, writer = await wait_admitted_tcp(tcp_port)
        await tcp_echo(reader, writer, b"a place was free")
        _, got = await tcp_refused(tcp_port)
        assert_closed(got)
        await tcp_finish(reader, writer)
        for ws in held:
            await ws.close()
        await asyncio.sleep(0.3)  # the gateway sees them go
        again = [(await ws_open(url))[0] for _ in range(3)]
        for ws in again:
            await ws_echo(ws, b"all three again")
            await ws.close()

    asyncio.run(run())
    assert refusals(topology, "cap", "max_connections") == 3
    wait_for("3 refusals logged", lambda: sum(refusals_logged(dmz, single, "max_connections", "cap")) == 3, 10)
    singles, more = refusals_logged(dmz, single, "max_connections", "cap")
    print(f"refusals: metric 3, log: {singles} line(s) + {more} in summaries")
    assert singles + more == 3 and singles >= 2
    assert refusals(topology, "free", "max_connections") == 0
    assert refusals(topology, "", "max_connections") == 0


def test_ws_client_over_a_service_limit_gets_503(topology: Topology) -> None:
    dmz = start(topology, {"cap": {"max-connections": 1}})
    url = ws_url(topology, "cap")

    async def run() -> tuple[int, str, int, str]:
        held, _ = await ws_open(url)
        await ws_echo(held, b"the one")
        try:
            _, status, _, body = await ws_refused(url)
        except Exception as problem:  # what the bug does: no HTTP answer at all
            return 0, repr(problem), 0, ""
        await asyncio.sleep(1.2)
        _, other_status, _, other_body = await ws_refused(url, "127.0.0.2")
        await held.close()
        return status, body, other_status, other_body

    status, body, other_status, other_body = asyncio.run(run())
    print(f"2nd ws client: {status} {body!r}; from 127.0.0.2: {other_status} {other_body!r}")
    assert status == 503 and body == "too many connections: service 'cap' has 1 open\n", (status, body)
    assert other_status == 503, (other_status, other_body)
    assert "Traceback" not in dmz.log() and "Unhandled Error" not in dmz.log()
    assert refusals(topology, "cap", "max_connections") == 2


async def wait_admitted_tcp(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A tcp client admitted once the gateway has seen the last one go (that takes a moment)."""
    deadline = time.monotonic() + WAIT
    while True:
        reader, writer, _ = await tcp_open(port)
        try:
            await tcp_echo(reader, writer, b"?")
            return reader, writer
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def test_gateway_max_connections(topology: Topology) -> None:
    dmz = start(topology, {"a": {}, "b": {}}, extra_dmz="[dmz.limits]\nmax-connections = 4")
    single = ": refused (503): too many connections: the gateway has 4 open"

    async def run() -> None:
        ws_a = [(await ws_open(ws_url(topology, "a")))[0] for _ in range(2)]
        tcp_b = [await tcp_open(port_of(tcp_uri(topology, "b"))) for _ in range(2)]
        for ws in ws_a:
            await ws_echo(ws, b"a")
        for reader, writer, _ in tcp_b:
            await tcp_echo(reader, writer, b"b")
        client, status, _, body = await ws_refused(ws_url(topology, "b"))
        print(f"5th client of the gateway (ws, service b): {status} {body!r}")
        assert status == 503 and body == "too many connections: the gateway has 4 open\n", (status, body)
        await asyncio.sleep(1.2)
        _, got = await tcp_refused(port_of(tcp_uri(topology, "a")))
        print(f"6th (tcp, service a): closed ({got!r})")
        assert_closed(got)
        wait_for("both refusals logged", lambda: refusals_logged(dmz, single, "max_connections", "")[0] == 2)

        reader, writer, _ = tcp_b.pop()
        await tcp_finish(reader, writer)
        deadline = time.monotonic() + WAIT
        while True:  # the gateway sees the client go a moment after the client sees its EOF
            try:
                ws, _ = await ws_open(ws_url(topology, "b"))
                break
            except InvalidStatus:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        await ws_echo(ws, b"admitted once one left")
        await ws.close()
        for ws in ws_a:
            await ws.close()
        for reader, writer, _ in tcp_b:
            await tcp_finish(reader, writer)

    asyncio.run(run())
    assert refusals(topology, "", "max_connections") == 2
    assert refusals(topology, "a", "max_connections") == refusals(topology, "b", "max_connections") == 0
    assert len([line for line in dmz.log().splitlines() if single in line and SUMMARY not in line]) == 2


# -- max-connections-per-source --------------------------------------------------------------------


def test_max_connections_per_source(topology: Topology) -> None:
    """Per service (its own value) and gateway-wide ([dmz.limits]); each source address on its own."""
    dmz = start(
        topology,
        {"ps": {"max-connections-per-source": 2}, "other": {}},
        extra_dmz="[dmz.limits]\nmax-connections-per-source = 3",
    )
    ps_ws, ps_tcp = ws_url(topology, "ps"), port_of(tcp_uri(topology, "ps"))
    other_ws = ws_url(topology, "other")
    service_line = "-> ps: refused (503): too many connections from"
    gateway_line = "3 open to this gateway"

    async def run() -> None:
        # 127.0.0.2 takes its 2 of "ps".
        ws2, _ = await ws_open(ps_ws, "127.0.0.2")
        reader2, writer2, _ = await tcp_open(ps_tcp, "127.0.0.2")
        await ws_echo(ws2, b".2")
        await tcp_echo(reader2, writer2, b".2")
        _, got = await tcp_refused(ps_tcp, "127.0.0.2")
        print(f"3rd from 127.0.0.2 (tcp): closed ({got!r})")
        assert_closed(got)
        one_line(dmz, "127.0.0.2", service_line, "from 127.0.0.2: 2 open to 'ps'")

        # 127.0.0.3 is another source: it gets its own 2 while 127.0.0.2 is full.
        ws3, _ = await ws_open(ps_ws, "127.0.0.3")
        reader3, writer3, _ = await tcp_open(ps_tcp, "127.0.0.3")
        await ws_echo(ws3, b".3")
        await tcp_echo(reader3, writer3, b".3")
        await asyncio.sleep(1.2)  # its own log line, not a summary
        _, got = await tcp_refused(ps_tcp, "127.0.0.3")
        print(f"3rd from 127.0.0.3 (tcp): closed ({got!r})")
        assert_closed(got)
        one_line(dmz, "127.0.0.3", service_line, "from 127.0.0.3: 2 open to 'ps'")

        # Gateway-wide (docs/security.md: "gateway-wide, and per service"): 127.0.0.2 has 2
        # open; one more to another service is its 3rd, a 4th is refused at the door.
        ws2b, _ = await ws_open(other_ws, "127.0.0.2")
        await ws_echo(ws2b, b"third of .2")
        client, status, _, body = await ws_refused(other_ws, "127.0.0.2")
        print(f"4th from 127.0.0.2 to the gateway: {status} {body!r}")
        assert status == 503 and body == f"too many connections from 127.0.0.2: {gateway_line}\n", body
        ws4, _ = await ws_open(other_ws, "127.0.0.4")  # another source, meanwhile
        await ws_echo(ws4, b".4")
        wait_for("the gateway-wide refusal logged", lambda: [
            line for line in lines_naming(dmz, "127.0.0.2") if gateway_line in line
        ])  # fmt: skip

        # 127.0.0.2's clients go: it is admitted again, up to its 2 of "ps".
        await ws2.close()
        await ws2b.close()
        await tcp_finish(reader2, writer2)
        await asyncio.sleep(0.5)  # the gateway sees them go
        again = [(await ws_open(ps_ws, "127.0.0.2"))[0] for _ in range(2)]
        for ws in again + [ws3, ws4]:
            await ws_echo(ws, b"again")
            await ws.close()
        await tcp_finish(reader3, writer3)

    asyncio.run(run())
    assert refusals(topology, "ps", "max_connections_per_source") == 2
    assert refusals(topology, "", "max_connections_per_source") == 1
    assert refusals(topology, "other", "max_connections_per_source") == 0
    lines = lines_naming(dmz, "127.0.0.2") + lines_naming(dmz, "127.0.0.3")
    print("\n".join(lines))
    assert len(lines) == 3, lines


# -- handshake-timeout -----------------------------------------------------------------------------


def test_handshake_timeout_ends_slow_clients_and_serves_others(topology: Topology) -> None:
    """1 s: a ws client with half a request head, or none, gets 408; a tls:// client that never
    starts or never finishes its handshake is closed; everybody else is served meanwhile."""
    ws, tls = ws_url(topology, "hs"), tls_uri(topology, "hs")
    dmz = start(
        topology,
        {"hs": {"accept": [ws, tls], "cert": "certs/public.pem"}},
        extra_dmz="[dmz.limits]\nhandshake-timeout = 1\nmax-connections = 8",
    )
    context = client_context(make_certs(topology))

    async def slow(port: int, send: bytes) -> tuple[float, bytes | str]:
        reader, writer, _ = await tcp_open(port)
        if send:
            writer.write(send)
            await writer.drain()
        try:
            return await until_closed(reader, timeout=WAIT)
        finally:
            writer.close()

    async def active(seconds: float) -> list[float]:
        client, _ = await ws_open(ws)
        latencies = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            began = time.monotonic()
            await ws_echo(client, b"still served", timeout=5)
            latencies.append(time.monotonic() - began)
            await asyncio.sleep(0.2)
        await client.close()
        return latencies

    async def newcomers() -> None:
        await asyncio.sleep(0.5)
        client, _ = await ws_open(ws)
        await ws_echo(client, b"new ws client during the stall", timeout=5)
        reader, writer, _ = await tcp_open(port_of(tls), ssl=context, server_hostname="public")
        await tcp_echo(reader, writer, b"new tls client during the stall")
        await client.close()
        await tcp_finish(reader, writer)

    async def run() -> dict[str, Any]:
        ws_port, tls_port = port_of(ws), port_of(tls)
        results = await asyncio.gather(
            slow(ws_port, b"GET /hs HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"),
            slow(ws_port, b""),
            slow(tls_port, b""),
            slow(tls_port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),  # a ClientHello that stops
            active(3.0),
            newcomers(),
        )
        return dict(zip(["ws half head", "ws silent", "tls silent", "tls half hello", "active", "new"], results))

    results = asyncio.run(run())
    latencies = results.pop("active")
    results.pop("new")
    print(f"active client: {len(latencies)} echoes, slowest {max(latencies):.3f} s")
    assert len(latencies) >= 8 and max(latencies) < 2.0
    for case, (seconds, got) in results.items():
        print(f"{case}: closed after {seconds:.2f} s, read {got!r}")
        assert 0.7 <= seconds <= 5.0, (case, seconds)
        if case.startswith("ws"):
            assert isinstance(got, bytes) and got.startswith(b"HTTP/1.1 408 "), (case, got)
            assert got.endswith(b"\r\n\r\nrequest not completed within 1 s\n"), got
        else:
            assert_closed(got)

    assert refusals(topology, "", "handshake_timeout") == 2  # ws: the listener's, before the path
    assert refusals(topology, "hs", "handshake_timeout") == 2  # tls: the service's
    ws_singles, ws_more = refusals_logged(dmz, "no complete request within 1 s; closed (408)", "handshake_timeout", "")
    tls_singles, tls_more = refusals_logged(
        dmz, "-> hs: no TLS handshake within 1 s; closed", "handshake_timeout", "hs"
    )
    print(f"log: ws {ws_singles} lines + {ws_more} in summaries, tls {tls_singles} + {tls_more}")
    assert (ws_singles + ws_more, tls_singles + tls_more) == (2, 2)
    assert ws_singles >= 1 and tls_singles >= 1
    assert backend_connections(topology) == 3, "slow clients cost no tunnel"

    async def full_quota() -> None:  # max-connections 8: the timed-out clients left nothing counted
        clients = [(await ws_open(ws))[0] for _ in range(8)]
        for client in clients:
            await ws_echo(client, b"quota")
        for client in clients:
            await client.close()

    asyncio.run(full_quota())


def test_handshake_timeout_closes_a_wss_client_that_never_starts_tls(topology: Topology) -> None:
    wss = wss_url(topology, "hs")
    dmz = start(
        topology,
        {"hs": {"accept": [wss], "cert": "certs/public.pem"}},
        extra_dmz="[dmz.limits]\nhandshake-timeout = 1",
    )

    async def silent() -> tuple[float, bytes | str]:
        reader, writer, _ = await tcp_open(port_of(wss))
        try:
            return await until_closed(reader, timeout=8.0)
        except asyncio.TimeoutError:
            return 8.0, "still open after 8 s"
        finally:
            writer.close()

    seconds, got = asyncio.run(silent())
    print(f"silent wss client: after {seconds:.2f} s: {got!r}; refusals {refusals(topology, '', 'handshake_timeout')}")
    print("\n".join(line for line in dmz.log().splitlines() if "408" in line))
    assert seconds <= 5.0, f"a wss client that never starts TLS is still open after {seconds:.1f} s"
    assert_closed(got)


# -- idle-timeout ----------------------------------------------------------------------------------


def test_idle_timeout(topology: Topology) -> None:
    """1 s: idle ws client closed with 1001 "idle ...", idle tcp client closed; pings are no payload;
    a client that echoes every 0.3 s stays up; the closed ones free their places."""
    dmz = start(topology, {"idle": {"idle-timeout": 1, "ws-ping-interval": 0.4, "max-connections": 3}})
    url, tcp_port = ws_url(topology, "idle"), port_of(tcp_uri(topology, "idle"))

    async def idle_ws() -> tuple[str, float, int | None, str | None]:
        ws, client = await ws_open(url)
        await ws_echo(ws, b"once")
        began = time.monotonic()
        try:
            await asyncio.wait_for(ws.recv(), WAIT)
        except ConnectionClosed as closed:
            seconds, received = time.monotonic() - began, closed.rcvd
            return client, seconds, received.code if received else None, received.reason if received else None
        raise AssertionError("the idle ws client received a message instead of a close")

    async def idle_tcp() -> tuple[str, float, bytes | str]:
        await asyncio.sleep(1.5)  # a second after the ws one: a log line of its own
        reader, writer, client = await tcp_open(tcp_port)
        await tcp_echo(reader, writer, b"once")
        seconds, got = await until_closed(reader)
        writer.close()
        return client, seconds, got

    async def active() -> tuple[float, int]:
        ws, _ = await ws_open(url)
        began = time.monotonic()
        echoes = 0
        while time.monotonic() - began < 3.5:
            await ws_echo(ws, b"busy", timeout=5)
            echoes += 1
            await asyncio.sleep(0.3)
        up = time.monotonic() - began
        await ws_echo(ws, b"still up", timeout=5)
        await ws.close()
        return up, echoes

    async def run() -> tuple[Any, ...]:
        results = await asyncio.gather(idle_ws(), idle_tcp(), active())
        # The idle ones are gone: with the active one closed too, all 3 places are free again.
        again = [(await ws_open(url))[0] for _ in range(2)]
        reader, writer, _ = await tcp_open(tcp_port)
        await tcp_echo(reader, writer, b"free again")
        for ws in again:
            await ws_echo(ws, b"free again")
            await ws.close()
        await tcp_finish(reader, writer)
        return results

    (ws_client, ws_seconds, code, reason), (tcp_client, tcp_seconds, got), (up, echoes) = asyncio.run(run())
    print(f"idle ws client: closed after {ws_seconds:.2f} s with {code} {reason!r}")
    print(f"idle tcp client: closed after {tcp_seconds:.2f} s ({got!r})")
    print(f"active client: up {up:.2f} s, {echoes} echoes")
    assert code == 1001 and reason is not None and "idle" in reason, (code, reason)
    assert 0.7 <= ws_seconds <= 5.0
    assert 0.7 <= tcp_seconds <= 5.0
    assert_closed(got)
    assert up >= 3.0 and echoes >= 8
    one_line(dmz, ws_client, "ws client", "-> idle: closed, idle for 1 s")
    one_line(dmz, tcp_client, "tcp client", "-> idle: closed, idle for 1 s")
    assert refusals(topology, "idle", "idle_timeout") == 2


# -- bytes-per-second ------------------------------------------------------------------------------


class PushBackend:
    """A backend that sends ``total`` bytes of the source pattern as soon as a connection comes,
    then EOF, and reads until the peer closes: unlike ``backend.py source`` it needs no request
    from the client (see test_client_bytes_reach_the_backend_with_bytes_per_second_set)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._push, args=(conn,), daemon=True).start()

    def _push(self, conn: socket.socket) -> None:
        with conn:
            try:
                for index in range((self.total + BLOCK - 1) // BLOCK):
                    conn.sendall(pattern_block(index, min(BLOCK, self.total - index * BLOCK)))
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(65536):
                    pass
            except OSError:
                pass

    def close(self) -> None:
        self.server.close()


def steady_rate(marks: list[tuple[float, int]], burst: int) -> float:
    """Bytes per second after the first ``burst`` bytes (the token bucket starts full)."""
    total_time, total = marks[-1]
    start = next((mark for mark in marks if mark[1] >= burst), marks[0])
    if total_time - start[0] <= 0:
        return float("inf")
    return (total - start[1]) / (total_time - start[0])


def test_bytes_per_second_paces_each_client(topology: Topology) -> None:
    """300 kB/s: a tcp and a ws client of the capped service each get 2 MiB at about that rate,
    intact, while clients of an uncapped service get theirs at once."""
    cap = 300_000
    total = 2 * MIB
    backend = PushBackend(total)
    try:
        start(topology, {"slow": {"bytes-per-second": cap}, "fast": {}}, backend=backend.port)

        async def over_tcp(service: str) -> tuple[list[tuple[float, int]], str]:
            reader, writer, _ = await tcp_open(port_of(tcp_uri(topology, service)))
            began = time.monotonic()
            digest, got, marks = hashlib.sha256(), 0, []
            while got < total and (chunk := await asyncio.wait_for(reader.read(65536), WAIT)):
                digest.update(chunk)
                got += len(chunk)
                marks.append((time.monotonic() - began, got))
            writer.close()
            return marks, digest.hexdigest()

        async def over_ws(service: str) -> tuple[list[tuple[float, int]], str]:
            ws, _ = await ws_open(ws_url(topology, service))
            began = time.monotonic()
            digest, got, marks = hashlib.sha256(), 0, []
            try:
                while got < total:
                    chunk = await asyncio.wait_for(ws.recv(), WAIT)
                    assert isinstance(chunk, bytes)
                    digest.update(chunk)
                    got += len(chunk)
                    marks.append((time.monotonic() - began, got))
            finally:
                await ws.close()
            return marks, digest.hexdigest()

        async def run() -> list[tuple[list[tuple[float, int]], str]]:
            return await asyncio.gather(over_tcp("slow"), over_ws("slow"), over_tcp("fast"), over_ws("fast"))

        results = asyncio.run(run())
    finally:
        backend.close()
    expected = pattern_digest(total)
    rates = {}
    for name, (marks, digest) in zip(["slow tcp", "slow ws", "fast tcp", "fast ws"], results):
        assert marks[-1][1] == total and digest == expected, f"{name}: all {total} bytes, intact"
        rates[name] = steady_rate(marks, cap)
        print(f"{name}: {total} bytes in {marks[-1][0]:.2f} s; steady {rates[name] / 1000:.0f} kB/s"
              f" (overall {total / marks[-1][0] / 1000:.0f} kB/s; cap {cap / 1000:.0f} kB/s)")  # fmt: skip
    for name in ("slow tcp", "slow ws"):
        assert 0.5 * cap <= rates[name] <= 1.5 * cap, f"{name}: {rates[name]:.0f} B/s for a cap of {cap}"
    for name in ("fast tcp", "fast ws"):
        assert rates[name] > 4 * cap, f"{name}: {rates[name]:.0f} B/s: the uncapped service must be much faster"
    assert backend.connections == 4


def test_client_bytes_reach_the_backend_with_bytes_per_second_set(topology: Topology) -> None:
    start(topology, {"paced": {"bytes-per-second": 1_000_000}}, mode="count")
    payload = secrets.token_bytes(5000)

    async def run() -> tuple[bytes | str, bytes]:
        reader, writer, _ = await tcp_open(port_of(tcp_uri(topology, "paced")))
        writer.write(payload)
        writer.write_eof()
        try:
            answer: bytes | str = await asyncio.wait_for(reader.read(), 10)
        except (asyncio.TimeoutError, ConnectionError) as problem:
            answer = repr(problem)
        writer.close()
        ws, _ = await ws_open(ws_url(topology, "paced"))
        await ws.send(b"over ws")
        try:
            reflected = await asyncio.wait_for(ws.recv(), 2)
        except (asyncio.TimeoutError, ConnectionClosed):
            reflected = b""
        await ws.close()
        return answer, reflected  # type: ignore[return-value]

    answer, reflected = asyncio.run(run())
    print(f"tcp client got {answer[:80]!r}...; ws client got {reflected!r}")
    assert answer == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode(), "the backend got it all"
    assert reflected == b"", "the count backend answers only after EOF: a ws client must get nothing back"


# -- one log line a second under a flood -----------------------------------------------------------


def test_a_flood_of_refusals_is_logged_once_a_second_with_a_count(topology: Topology) -> None:
    """The gateway's max-connections (1) refuses 40 clients (tcp and ws) at once: the first refusal
    is logged at once, the rest in one line a second with the count; the metric counts all 40."""
    dmz = start(topology, {"one": {}}, extra_dmz="[dmz.limits]\nmax-connections = 1")
    url, tcp_port = ws_url(topology, "one"), port_of(tcp_uri(topology, "one"))
    single = ": refused (503): too many connections: the gateway has 1 open"
    flood_tcp, flood_ws = 30, 10

    async def run() -> float:
        held, _ = await ws_open(url)
        await ws_echo(held, b"the one")
        began = time.monotonic()
        results = await asyncio.gather(
            *(tcp_refused(tcp_port) for _ in range(flood_tcp)), *(ws_refused(url) for _ in range(flood_ws))
        )
        took = time.monotonic() - began
        for result in results[:flood_tcp]:
            assert_closed(result[1])  # type: ignore[arg-type]
        for result in results[flood_tcp:]:
            answer = (result[1], result[3])  # type: ignore[misc]
            assert answer == (503, "too many connections: the gateway has 1 open\n"), result
        await ws_echo(held, b"the one is still served")
        await held.close()
        reader, writer = await wait_admitted_tcp(tcp_port)  # the place is free again
        await tcp_finish(reader, writer)
        return took

    took = asyncio.run(run())
    flood = flood_tcp + flood_ws
    wait_for("the refusals summarised", lambda: sum(refusals_logged(dmz, single, "max_connections", "")) == flood, 10)
    time.sleep(1.5)  # nothing more comes
    singles, more = refusals_logged(dmz, single, "max_connections", "")
    summaries = [line for line in dmz.log().splitlines() if SUMMARY in line]
    print(f"{flood} refused in {took:.2f} s: {singles} line(s) + {len(summaries)} summary line(s) counting {more}")
    print("\n".join(summaries))
    assert refusals(topology, "", "max_connections") == flood
    assert singles + more == flood
    assert singles == 1, "the first refusal at once, the rest in summaries"
    assert 1 <= len(summaries) <= took + 2
    assert all(re.search(r"\(last: client 127\.0\.0\.1:\d+: refused \(503\)", line) for line in summaries), summaries


# -- no leaked tickets ----------------------------------------------------------------------------


def test_three_hundred_clients_in_turn_through_a_cap_of_five(topology: Topology) -> None:
    dmz = start(
        topology,
        {"five": {"max-connections": 5, "max-connections-per-source": 5}},
        extra_dmz="[dmz.limits]\nmax-connections = 5\nmax-connections-per-source = 5",
    )
    url, tcp_port = ws_url(topology, "five"), port_of(tcp_uri(topology, "five"))

    async def run() -> float:
        began = time.monotonic()
        for index in range(300):
            payload = f"client {index}".encode()
            if index % 2:
                ws, _ = await ws_open(url)
                await ws_echo(ws, payload)
                await ws.close()
            else:
                reader, writer, _ = await tcp_open(tcp_port)
                await tcp_echo(reader, writer, payload)
                await tcp_finish(reader, writer)
        took = time.monotonic() - began
        # Exactly 5 places left: 5 at once pass, a 6th is refused, then 5 again.
        for _ in range(2):
            await asyncio.sleep(0.3)  # the gateway sees the last ones go
            held = [(await ws_open(url))[0] for _ in range(3)] + [await tcp_open(tcp_port) for _ in range(2)]
            _, status, _, body = await ws_refused(url)
            assert status == 503 and "has 5 open" in body, body
            for client in held:
                if isinstance(client, tuple):
                    await tcp_echo(client[0], client[1], b"held")
                    await tcp_finish(client[0], client[1])
                else:
                    await ws_echo(client, b"held")
                    await client.close()
        return took

    took = asyncio.run(run())
    print(f"300 clients (150 tcp, 150 ws) one after the other in {took:.2f} s, none refused")
    # The gateway's limit is checked first, at accept: the two 6th clients are its refusals.
    assert refusals(topology, "", "max_connections") == 2
    assert refusals(topology, "five", "max_connections") == 0
    assert refusals(topology, "five", "max_connections_per_source") == 0
    assert "refused" not in "".join(line for line in dmz.log().splitlines() if "has 5 open" not in line)
