"""SIGHUP: both gateways read their file again and apply it, dropping nothing; a bad file is
refused whole and the running configuration stays."""

from __future__ import annotations

import re
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Callable

import pytest
from harness import Process, Topology, echo, http_get, iter_log_lines

WAIT = 20.0


def until(what: str, condition: Callable[[], bool], *logs: Process, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    tails = "\n".join(f"----- {p.name} -----\n{p.log()[-3000:]}" for p in logs)
    raise AssertionError(f"not within {timeout} s: {what}\n{tails}")


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def served(port: int) -> bool:
    try:
        with connect(port) as sock:
            return echo(sock, b"probe\n") == "echoed"
    except OSError:
        return False


@pytest.fixture
def running(topology: Topology):  # type: ignore[no-untyped-def]
    topology.certs(["c1"])
    _, port = topology.start_backend("echo")
    topology.dmz_config({"echo": {}}, {"c1": ["echo"]})
    topology.internal_config("c1", {"echo": f"tcp://127.0.0.1:{port}"})
    dmz = topology.start_dmz()
    connector = topology.start_connector("c1")
    topology.dmz_ready()
    return topology, dmz, connector, port


def test_dmz_reload_adds_and_removes_services_without_dropping_clients(running) -> None:  # type: ignore[no-untyped-def]
    topology, dmz, connector, backend = running
    old_client = connect(topology.port("tcp-echo"))
    assert echo(old_client, b"before\n") == "echoed"
    # The connector offers "extra" too (a reload of its own), the DMZ adds the service.
    topology.internal_config("c1", {"echo": f"tcp://127.0.0.1:{backend}", "extra": f"tcp://127.0.0.1:{backend}"})
    connector.signal(signal.SIGHUP)
    until("connector reloaded", lambda: any(iter_log_lines(connector, "reloaded")), connector)
    topology.dmz_config({"echo": {}, "extra": {}}, {"c1": ["echo", "extra"]})
    dmz.signal(signal.SIGHUP)
    until("the DMZ serves the added service", lambda: served(topology.port("tcp-extra")), dmz, connector)
    assert echo(old_client, b"still\n") == "echoed"
    [line] = iter_log_lines(dmz, "reloaded")
    assert "services added: extra" in line
    # Remove "echo": its port closes for new clients; the open client keeps working.
    topology.dmz_config({"extra": {}}, {"c1": ["extra"]})
    dmz.signal(signal.SIGHUP)
    until("echo's port is closed", lambda: not served(topology.port("tcp-echo")), dmz)
    assert echo(old_client, b"after removal\n") == "echoed"
    assert served(topology.port("tcp-extra"))
    old_client.close()
    # An empty list cuts the connector off: its link stays, it serves nothing new (docs/security.md).
    links = dmz.log().count("connector 'c1' (priority")
    topology.dmz_config({"extra": {}}, {"c1": []})
    dmz.signal(signal.SIGHUP)
    until("c1 is cut off", lambda: not served(topology.port("tcp-extra")), dmz)
    assert "reload refused" not in dmz.log(), dmz.log()[-2000:]
    topology.dmz_config({"extra": {}}, {"c1": ["extra"]})
    dmz.signal(signal.SIGHUP)
    until("c1 serves again, on the link it kept", lambda: served(topology.port("tcp-extra")), dmz)
    assert dmz.log().count("connector 'c1' (priority") == links, "c1 was let back in by a new link"


def test_dmz_refuses_a_bad_file_whole_and_keeps_serving(running) -> None:  # type: ignore[no-untyped-def]
    topology, dmz, _, _ = running
    path = topology.folder / "dmz.toml"
    good = path.read_text()
    path.write_text(good.replace('name = "echo"', 'name = "echo"\nmax-connections = -1'))
    dmz.signal(signal.SIGHUP)
    until("refusal logged", lambda: any(iter_log_lines(dmz, "reload refused")), dmz)
    [line] = iter_log_lines(dmz, "reload refused")
    assert "dmz.service[0].max-connections" in line and "the running configuration stays" in line
    assert served(topology.port("tcp-echo"))
    # A change only a restart can make is refused the same way.
    path.write_text(good.replace('name = "dmz1"', 'name = "dmz9"'))
    dmz.signal(signal.SIGHUP)
    until("second refusal", lambda: len(list(iter_log_lines(dmz, "reload refused"))) == 2, dmz)
    assert "dmz.name changed" in list(iter_log_lines(dmz, "reload refused"))[1]
    assert served(topology.port("tcp-echo"))
    assert dmz.alive()


def test_dmz_reload_applies_new_limits_to_new_clients(running) -> None:  # type: ignore[no-untyped-def]
    topology, dmz, _, _ = running
    first = connect(topology.port("tcp-echo"))
    assert echo(first, b"one\n") == "echoed"
    topology.dmz_config({"echo": {"max-connections": 1}}, {"c1": ["echo"]})
    dmz.signal(signal.SIGHUP)
    until("reloaded", lambda: any(iter_log_lines(dmz, "reloaded")), dmz)
    assert not served(topology.port("tcp-echo"))  # the limit holds for new clients
    assert echo(first, b"two\n") == "echoed"  # the open one is untouched
    first.close()
    until("a new client once the first is gone", lambda: served(topology.port("tcp-echo")), dmz)


def _served_certificate(port: int, ca: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            return tls.getpeercert(binary_form=True) or b""


def test_dmz_reload_uses_new_certificates_for_new_handshakes(topology: Topology) -> None:
    from shield.tls.devcerts import generate_dev_certs

    certs = topology.certs(["c1"])
    _, backend = topology.start_backend("echo")
    tls_port = topology.port("tls-echo")
    topology.dmz_config(
        {"echo": {"accept": [f"tls://127.0.0.1:{tls_port}"], "cert": "certs/dmz1.pem"}}, {"c1": ["echo"]}
    )
    topology.internal_config("c1", {"echo": f"tcp://127.0.0.1:{backend}"})
    dmz = topology.start_dmz()
    topology.start_connector("c1")
    topology.dmz_ready()
    before = _served_certificate(tls_port, certs / "ca.pem")
    generate_dev_certs(certs, ["dmz1"], ["c1"])  # same CA, new dmz1 certificate and key
    dmz.signal(signal.SIGHUP)
    until("reloaded", lambda: any(iter_log_lines(dmz, "reloaded")), dmz)
    after = _served_certificate(tls_port, certs / "ca.pem")
    assert before and after and before != after


def test_connector_reload_changes_backend_and_refuses_bad_files(running) -> None:  # type: ignore[no-untyped-def]
    topology, dmz, connector, _ = running
    _, other = topology.start_backend("ident:second", name="second")
    topology.internal_config("c1", {"echo": f"tcp://127.0.0.1:{other}"})
    connector.signal(signal.SIGHUP)
    until("connector reloaded", lambda: any(iter_log_lines(connector, "reloaded")), connector)

    def reaches_second() -> bool:
        try:
            with connect(topology.port("tcp-echo")) as sock:
                return sock.recv(100).startswith(b"second")
        except OSError:
            return False

    until("new tunnels use the new backend", reaches_second, connector)
    path = topology.folder / "c1.toml"
    path.write_text(path.read_text().replace("links = 2", "links = 0"))
    connector.signal(signal.SIGHUP)
    until("refusal", lambda: any(iter_log_lines(connector, "reload refused")), connector)
    [line] = iter_log_lines(connector, "reload refused")
    assert "internal.backplane.links" in line
    assert reaches_second()
    status, _ = http_get(f"{topology.url('admin-c1')}/readyz")
    assert status == 200


def test_dmz_reload_removing_a_connector_removes_its_links_series(running) -> None:  # type: ignore[no-untyped-def]
    topology, dmz, _, _ = running

    def links_series() -> dict[str, str]:
        _, body = http_get(f"{topology.url('dmz-admin')}/metrics")
        return dict(re.findall(r'^shield_links_up\{endpoint="([^"]+)"\} (\S+)$', body, re.M))

    topology.dmz_config({"echo": {}}, {"c1": ["echo"], "c2": ["echo"]})
    dmz.signal(signal.SIGHUP)
    until("c2 is listed, at 0", lambda: links_series().get("c2") == "0.0", dmz)
    topology.dmz_config({"echo": {}}, {"c1": ["echo"]})
    dmz.signal(signal.SIGHUP)
    until("c2's series is gone", lambda: "c2" not in links_series(), dmz)
    assert float(links_series()["c1"]) >= 1, links_series()
