"""HAProxy (Debian's, /usr/sbin/haproxy) for end-to-end tests: a real load balancer that sends the
PROXY protocol to the DMZ, and a real HTTP backend that requires it from the connector and answers
with the client address it was given; and the client that talks to them."""

from __future__ import annotations

import os
import re
import socket
import time

import pytest
from harness import Process, Topology

HAPROXY = "/usr/sbin/haproxy"
CLIENT_HOST = "127.0.0.5"
# Keep-alive: the client reads one answer, by its length, and hangs up itself.

REQUEST = b"GET / HTTP/1.1\r\nHost: app\r\n\r\n"


def start_haproxy(topology: Topology, sections: list[str]) -> Process:
    """HAProxy in the foreground (``-db``) with ``sections``, from the test's folder."""
    if not os.access(HAPROXY, os.X_OK):
        pytest.fail(f"{HAPROXY} is missing: `make test` installs Debian's haproxy (DEBIAN_TEST_PACKAGES)", pytrace=False)
    config = topology.write(
        "haproxy.cfg",
        "\n".join(
            [
                "global",
                "    maxconn 200",
                "defaults",
                "    timeout connect 5s",
                "    timeout client 30s",
                "    timeout server 30s",
                *sections,
            ]
        )
        + "\n",
    )
    process = Process("haproxy", [HAPROXY, "-db", "-f", str(config)], topology.folder / "haproxy.log", topology.folder)
    topology.processes.append(process.start())
    return process


def wait_listening(port: int, process: Process, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            assert process.alive(), f"{process.name} exited:\n{process.log()}"
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}:\n{process.log()}")


def backend_sections(topology: Topology) -> list[str]:
    """The backend: HTTP on two ports that require the header, answering the client it names."""
    sections = []
    for name in ("backend-v1", "backend-v2"):
        sections += [
            f"frontend {name}",
            "    mode http",
            f"    bind 127.0.0.1:{topology.port(name)} accept-proxy",
            '    http-request return status 200 content-type text/plain lf-string "%[src]:%[src_port] via %[dst]:%[dst_port]"',
        ]
    return sections


def balancer_section(name: str, port_name: str, dmz_port_name: str, send: str, topology: Topology) -> list[str]:
    return [
        f"listen {name}",
        "    mode tcp",
        f"    bind 127.0.0.1:{topology.port(port_name)}",
        f"    server dmz 127.0.0.1:{topology.port(dmz_port_name)} {send}",
    ]


def client_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(10.0)
    sock.bind((CLIENT_HOST, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def closed_unanswered(sock: socket.socket) -> bool:
    """The DMZ closed (or cut) the connection without sending a byte."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def read_answer(sock: socket.socket) -> bytes:
    """One HTTP answer, by its content-length."""
    data = b""
    while b"\r\n\r\n" not in data or len(data) < answer_length(data):
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def answer_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    found = re.search(rb"(?i)content-length: *(\d+)", head)
    assert found, head
    return len(head) + 4 + int(found.group(1))


def answered_client(response: bytes) -> str:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), response
    return body.decode()


