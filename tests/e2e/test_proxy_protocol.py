"""The PROXY protocol both ways, with Debian's HAProxy as the real thing on each side (issue 14).

HAProxy is (a) a TCP load balancer in front of the DMZ (``send-proxy-v2`` and ``send-proxy``) and
(b) the backend, an HTTP server that requires the header (``accept-proxy``) and answers with the
client address it was given. The client connects from 127.0.0.5 (its own source address), the
load balancer listens on 127.0.0.1 and reaches the DMZ from 127.0.0.1, the only address in the
DMZ's ``proxy-protocol-from``: so the backend answering ``127.0.0.5:<the client's port>`` means
the address crossed the load balancer, the DMZ, the backplane and the connector.

Then the refusals, straight at the DMZ: no header, a bad one, a slow one from the load balancer's
address; a header from an address outside the list. Each is one log line and a metric.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import ssl
import time
from pathlib import Path

from harness import Topology, echo, http_get
from haproxy import (
    CLIENT_HOST, REQUEST, answer_length, answered_client, backend_sections, balancer_section, client_socket,
    closed_unanswered, read_answer, start_haproxy, wait_listening,
)  # fmt: skip
from websockets.asyncio.client import connect

from shield.proxy_protocol.build import build_v1, build_v2
from shield.proxy_protocol.header import Endpoint, ProxyHeader

def connector_config(topology: Topology, services: dict[str, tuple[str, str]]) -> Path:
    """``services``: name -> (backend port name, proxy-protocol); health checks on (a LOCAL or
    UNKNOWN header each), so HAProxy's accept-proxy must take them."""
    lines = [
        "[internal]",
        'name = "internal1"',
        f'admin = "{topology.url("admin-internal1")}"',
        "grace-period = 5",
        "[internal.backplane]",
        f'connect = ["tls://127.0.0.1:{topology.port("backplane")}"]',
        'server-name = "dmz1"',
        "links = 1",
        'cert = "certs/internal1.pem"',
        'ca = "certs/ca.pem"',
    ]
    for service, (backend, version) in services.items():
        lines += [
            "[[internal.service]]",
            f'name = "{service}"',
            f'connect = "tcp://127.0.0.1:{topology.port(backend)}"',
            f'proxy-protocol = "{version}"',
            "health-interval = 0.5",
        ]
    return topology.write("internal1.toml", "\n".join(lines) + "\n")


def test_the_client_address_crosses_haproxy_the_dmz_and_the_connector_to_an_haproxy_backend(topology: Topology) -> None:
    certs = topology.certs(["internal1"], dmz_names=["dmz1", "public"])
    lb = ["127.0.0.1/32"]
    topology.dmz_config(
        {
            "tcp-v2": {"accept": [f"tcp://127.0.0.1:{topology.port('dmz-tcp-v2')}"], "proxy-protocol-from": lb},
            "tcp-v1": {"accept": [f"tcp://127.0.0.1:{topology.port('dmz-tcp-v1')}"], "proxy-protocol-from": lb},
            "tls": {
                "accept": [f"tls://127.0.0.1:{topology.port('dmz-tls')}"],
                "cert": "certs/public.pem",
                "proxy-protocol-from": lb,
            },
            "ws": {"accept": [topology.url("dmz-ws", "ws", "/app")], "proxy-protocol-from": lb},
        },
        {"internal1": ["tcp-v2", "tcp-v1", "tls", "ws"]},
    )
    connector_config(
        topology,
        {
            "tcp-v2": ("backend-v1", "v1"),
            "tcp-v1": ("backend-v2", "v2"),
            "tls": ("backend-v2", "v2"),
            "ws": ("backend-v1", "v1"),
        },
    )
    haproxy = start_haproxy(
        topology,
        backend_sections(topology)
        + balancer_section("lb-tcp-v2", "lb-tcp-v2", "dmz-tcp-v2", "send-proxy-v2", topology)
        + balancer_section("lb-tcp-v1", "lb-tcp-v1", "dmz-tcp-v1", "send-proxy", topology)
        + balancer_section("lb-tls", "lb-tls", "dmz-tls", "send-proxy-v2", topology)
        + balancer_section("lb-ws", "lb-ws", "dmz-ws", "send-proxy", topology),
    )
    wait_listening(topology.port("backend-v2"), haproxy)
    dmz = topology.start_dmz()
    connector = topology.start_connector("internal1")
    topology.dmz_ready()

    # tcp: HAProxy sends v2 to the DMZ, the connector v1 to the backend; and v1, then v2
    for lb_port in ("lb-tcp-v2", "lb-tcp-v1"):
        with client_socket(topology.port(lb_port)) as sock:
            own_port = sock.getsockname()[1]
            sock.sendall(REQUEST)
            seen = answered_client(read_answer(sock))
        assert seen.startswith(f"{CLIENT_HOST}:{own_port} via "), (lb_port, seen)

    # tls: HAProxy passes TLS through; the header comes before the handshake
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with client_socket(topology.port("lb-tls")) as raw:
        own_port = raw.getsockname()[1]
        with context.wrap_socket(raw, server_hostname="public") as sock:
            sock.sendall(REQUEST)
            seen = answered_client(read_answer(sock))
    assert seen.startswith(f"{CLIENT_HOST}:{own_port} via "), seen

    # ws: the header comes before the HTTP upgrade request
    async def websocket() -> tuple[int, str]:
        url = f"ws://127.0.0.1:{topology.port('lb-ws')}/app"
        async with connect(url, local_addr=(CLIENT_HOST, 0)) as ws:
            port = ws.local_address[1]
            await ws.send(REQUEST)
            data = b""
            while b"\r\n\r\n" not in data or len(data) < answer_length(data):
                message = await ws.recv()
                data += message if isinstance(message, bytes) else message.encode()
        return port, answered_client(data)

    own_port, seen = asyncio.run(websocket())
    assert seen.startswith(f"{CLIENT_HOST}:{own_port} via "), seen

    # the connector's health checks (UNKNOWN / LOCAL headers) keep the services up, and nothing
    # above was refused anywhere
    status, body = http_get(f"{topology.url('admin-internal1')}/readyz")
    assert status == 200, body
    assert "PROXY" not in "".join(line for line in dmz.log().splitlines() if "refused" in line or "closed" in line)
    assert "without addresses" not in connector.log()


def test_refused_headers_are_one_line_each(topology: Topology) -> None:
    topology.certs(["internal1"])
    _, backend = topology.start_backend("echo")
    topology.dmz_config(
        {
            "app": {
                "accept": [f"tcp://127.0.0.1:{topology.port('dmz-tcp')}"],
                "proxy-protocol-from": ["127.0.0.1/32"],
                "handshake-timeout": 1,
            }
        },
        {"internal1": ["app"]},
    )
    topology.internal_config("internal1", {"app": f"tcp://127.0.0.1:{backend}"})
    dmz = topology.start_dmz()
    topology.start_connector("internal1")
    topology.dmz_ready()
    port = topology.port("dmz-tcp")

    def refused_from(host: str, data: bytes) -> float:
        sock = socket.socket()
        sock.settimeout(5.0)
        sock.bind((host, 0))
        sock.connect(("127.0.0.1", port))
        started = time.monotonic()
        with sock:
            sock.sendall(data)
            assert closed_unanswered(sock)
        return time.monotonic() - started

    refused_from("127.0.0.1", b"hello, no header\r\n")
    dmz.wait_for_log("bad PROXY protocol header: not a PROXY protocol header")
    time.sleep(1.1)  # the next line is not folded into the rate limit's count
    refused_from("127.0.0.1", b"PROXY TCP4 203.0.113.1 192.0.2.1 01 80\r\n")
    dmz.wait_for_log("bad PROXY protocol header: v1 header: port '01'")
    waited = refused_from("127.0.0.1", b"PROXY TCP4 ")
    assert 0.8 < waited < 5.0, waited
    dmz.wait_for_log("no complete PROXY protocol header within 1 s")
    # from outside the list: served at once as itself (its tunnel opens), then cut at the header
    refused_from(CLIENT_HOST, build_v2(ProxyHeader(Endpoint.of("203.0.113.1", 1), Endpoint.of("192.0.2.1", 2))))
    dmz.wait_for_log("is not in proxy-protocol-from")
    # a plain client from outside the list is served as itself, its bytes untouched
    with client_socket(port) as sock:
        assert echo(sock, b"PROXY-like but plain\n") == "echoed"
    time.sleep(1.2)  # past the rate limit's second: the lines above are all there were

    lines = [line for line in dmz.log().splitlines() if "PROXY protocol header" in line]
    assert len(lines) == 4, "\n".join(lines)
    assert sum("from 127.0.0.1:" in line for line in lines) == 3
    assert sum(f"from {CLIENT_HOST}:" in line for line in lines) == 1
    status, metrics = http_get(f"{topology.url('dmz-admin')}/metrics")
    assert status == 200
    counts = {
        label: value
        for name, value in re.findall(r"shield_refusals_total\{([^}]*)\} (\S+)", metrics)
        for label in re.findall(r'limit="(proxy_protocol_\w+)"', name)
        if 'service="app"' in name
    }
    assert counts == {
        "proxy_protocol_malformed": "2.0",
        "proxy_protocol_timeout": "1.0",
        "proxy_protocol_unexpected": "1.0",
    }, metrics


def test_a_reload_applies_a_changed_list_to_new_connections(topology: Topology) -> None:
    topology.certs(["internal1"])
    _, backend = topology.start_backend("echo")

    def dmz_config(networks: list[str]) -> None:
        topology.dmz_config(
            {"app": {"accept": [f"tcp://127.0.0.1:{topology.port('dmz-tcp')}"], "proxy-protocol-from": networks}},
            {"internal1": ["app"]},
        )

    dmz_config(["192.0.2.0/24"])  # not the clients' address: plain clients are served as they are
    topology.internal_config("internal1", {"app": f"tcp://127.0.0.1:{backend}"})
    dmz = topology.start_dmz()
    topology.start_connector("internal1")
    topology.dmz_ready()
    port = topology.port("dmz-tcp")
    kept = socket.create_connection(("127.0.0.1", port), timeout=5.0)
    assert echo(kept, b"before\n") == "echoed"

    dmz_config(["127.0.0.0/8"])
    dmz.signal(signal.SIGHUP)
    dmz.wait_for_log("reloaded")
    header = build_v1(ProxyHeader(Endpoint.of("203.0.113.7", 4242), Endpoint.of("192.0.2.1", 443)))
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        sock.sendall(header)
        assert echo(sock, b"after, behind a load balancer\n") == "echoed"
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        sock.sendall(b"plain\n")
        assert closed_unanswered(sock)
    dmz.wait_for_log("bad PROXY protocol header")
    assert echo(kept, b"the connection from before keeps its way\n") == "echoed"
    kept.close()
