"""Links over a WebSocket (``wss://`` backplane, issue 14), with real processes.

The DMZ accepts links on ``tls://`` and ``wss://`` at once; connectors link over either, through
an authenticating CONNECT proxy too, through a middlebox that cuts idle connections, and come
back after either side is killed and restarted.
"""

from __future__ import annotations

import hashlib
import re
import signal
import socket
import sys
import time

from harness import HERE, Process, Topology, echo, http_get, iter_log_lines, wait_ready

USER, PASSWORD = "connector", "Corr3ct-h0rse"


def links_up(topology: Topology, connector: str, endpoint: str) -> float:
    _, metrics = http_get(topology.url(f"admin-{connector}", path="/metrics"))
    match = re.search(rf'^shield_links_up{{endpoint="{re.escape(endpoint)}"}} (\S+)$', metrics, re.MULTILINE)
    assert match is not None, metrics
    return float(match.group(1))


def dmz_links(topology: Topology, connector: str) -> float:
    _, metrics = http_get(topology.url("dmz-admin", path="/metrics"))
    match = re.search(rf'^shield_links_up{{endpoint="{connector}"}} (\S+)$', metrics, re.MULTILINE)
    assert match is not None, metrics
    return float(match.group(1))


def both_backplanes(topology: Topology, connectors: list[str]) -> None:
    topology.certs(connectors)
    topology.start_backend()
    topology.dmz_config(
        {"echo": {}}, {name: ["echo"] for name in connectors},
        backplane=[topology.backplane_uri("tls"), topology.backplane_uri("wss")],
    )  # fmt: skip
    topology.start_dmz()


def connector_over(topology: Topology, name: str, connect: str, extra_backplane: str = "") -> None:
    config = topology.internal_config(name, {"echo": f"tcp://127.0.0.1:{topology.port('backend')}"}, connect=[connect])
    if extra_backplane:
        config.write_text(config.read_text().replace("[internal.backplane]\n", f"[internal.backplane]\n{extra_backplane}\n"))


def bulk_echo(topology: Topology, size: int = 4 << 20) -> None:
    """``size`` bytes through the echo service and back, compared by digest."""
    payload = hashlib.sha256(b"seed").digest() * (size // 32)
    with socket.create_connection(("127.0.0.1", topology.port("tcp-echo")), timeout=20) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := client.recv(1 << 16):
            received += chunk
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(payload).hexdigest()


def test_links_over_wss_and_tls_side_by_side_serve_clients(topology: Topology) -> None:
    both_backplanes(topology, ["internal1", "internal2"])
    wss = topology.backplane_uri("wss")
    connector_over(topology, "internal1", wss)
    connector_over(topology, "internal2", topology.backplane_uri("tls"))
    over_wss = topology.start_connector("internal1")
    topology.start_connector("internal2")
    dmz = topology.processes[1]

    assert links_up(topology, "internal1", wss) == 2
    assert dmz_links(topology, "internal1") == 2 and dmz_links(topology, "internal2") == 2
    assert "backplane listening on " + ", ".join([topology.backplane_uri("tls"), wss]) in dmz.log()
    over_wss.wait_for_log(f"link to {wss}: up; DMZ 'dmz1' accepted echo")
    # Only the wss:// connector is left: every byte crosses a WebSocket link.
    topology.processes[-1].stop()
    with socket.create_connection(("127.0.0.1", topology.port("tcp-echo")), timeout=10) as client:
        assert echo(client, b"over a websocket link\n" * 1000) == "echoed"
    bulk_echo(topology)

    # A drain over a wss:// link: GoAway, the open tunnel carries on, then the connector exits.
    with socket.create_connection(("127.0.0.1", topology.port("tcp-echo")), timeout=10) as client:
        assert echo(client, b"before the drain\n") == "echoed"
        over_wss.signal(signal.SIGTERM)
        over_wss.wait_for_log("draining: GoAway on 2 links")
        time.sleep(0.5)
        assert echo(client, b"during the drain\n" * 100) == "echoed"
        assert over_wss.alive()
    assert over_wss.popen is not None and over_wss.popen.wait(timeout=10) == 0
    assert "Traceback" not in dmz.log() and "Traceback" not in over_wss.log()


def test_a_wrong_path_is_refused_with_one_line_each_side_and_retried(topology: Topology) -> None:
    both_backplanes(topology, ["internal1"])
    wrong = topology.backplane_uri("wss", "/not-here")
    connector_over(topology, "internal1", wrong)
    connector = topology.start_connector("internal1", wait=False)
    dmz = topology.processes[1]
    connector.wait_for_log(f"link to {wrong}: WebSocket connection upgrade failed [404]: Not Found; retrying in")
    dmz.wait_for_log("WebSocket upgrade refused: 404 no backplane at /not-here (it is at /shield)")
    time.sleep(2.0)
    # Each slot says it once, however often it retries; the DMZ's line is rate-limited per host
    # (one a second, and a count of the others).
    assert len(list(iter_log_lines(connector, "WebSocket connection upgrade failed"))) == 2
    refusals = [line for line in iter_log_lines(dmz, "WebSocket upgrade refused") if "more like this" not in line]
    assert 1 <= len(refusals) <= 4, refusals
    status, body = http_get(topology.url("admin-internal1", path="/readyz"))
    assert status == 503, body
    assert connector.stop() == 0


def test_links_over_wss_through_an_authenticating_proxy_come_back_after_kills(topology: Topology) -> None:
    both_backplanes(topology, ["internal1"])
    proxy_port = topology.port("proxy")
    proxy = Process(
        "proxy",
        [sys.executable, str(HERE / "fakes" / "connect_proxy.py"), str(proxy_port), "--auth", f"{USER}:{PASSWORD}",
         "--map", "dmz.shield.test=127.0.0.1"],
        topology.folder / "proxy.log", topology.folder,
    ).start()  # fmt: skip
    topology.processes.append(proxy)
    proxy.wait_for_log("listening")
    (topology.folder / "proxy-auth").write_text(f"{USER}:{PASSWORD}\n")
    wss = f"wss://dmz.shield.test:{topology.port('backplane-wss')}/shield"
    connector_over(topology, "internal1", wss, f'proxy = "http://127.0.0.1:{proxy_port}"\nproxy-auth-file = "proxy-auth"')
    connector = topology.start_connector("internal1")
    assert links_up(topology, "internal1", wss) == 2
    assert list(iter_log_lines(proxy, "CONNECT")) == [f"CONNECT dmz.shield.test:{topology.port('backplane-wss')} auth=yes -> 200"] * 2
    bulk_echo(topology, 1 << 20)

    # The DMZ is killed and restarted: the links come back over the proxy and the WebSocket.
    dmz = topology.processes[1]
    dmz.kill()
    connector.wait_for_log(f"link to {wss}: lost after")
    topology.start_dmz()
    wait_ready(topology.url("admin-internal1"), process=connector)
    bulk_echo(topology, 1 << 20)

    # The connector is killed and restarted: the DMZ drops its links and takes the new ones.
    connector.kill()
    topology.processes[-1].wait_for_log("connector 'internal1' link down")
    connector = topology.start_connector("internal1")
    bulk_echo(topology, 1 << 20)
    assert PASSWORD not in connector.log()
    assert connector.stop() == 0


def test_links_survive_a_middlebox_that_cuts_idle_connections(topology: Topology) -> None:
    """A relay that closes any connection idle for 3 s: the links' pings (every second here) keep
    both kinds of link alive through it, and nothing is redialled."""
    both_backplanes(topology, ["internal1", "internal2"])
    relay_tls, relay_wss = topology.port("relay-tls"), topology.port("relay-wss")
    for name, listen, target in (("relay-tls", relay_tls, topology.port("backplane")), ("relay-wss", relay_wss, topology.port("backplane-wss"))):
        relay = Process(
            name, [sys.executable, str(HERE / "fakes" / "idle_cutter.py"), str(listen), str(target), "3"],
            topology.folder / f"{name}.log", topology.folder,
        ).start()  # fmt: skip
        topology.processes.append(relay)
        relay.wait_for_log("listening")
    wss = f"wss://127.0.0.1:{relay_wss}/shield"
    connector_over(topology, "internal1", wss)
    connector_over(topology, "internal2", f"tls://127.0.0.1:{relay_tls}")
    one = topology.start_connector("internal1")
    two = topology.start_connector("internal2")
    control = socket.create_connection(("127.0.0.1", relay_tls), timeout=10)  # says nothing: is cut
    time.sleep(8.0)  # well past the relay's idle limit, with no client traffic
    try:
        assert control.recv(1) == b""
    except ConnectionResetError:
        pass  # cut with a reset: as good
    control.close()
    with socket.create_connection(("127.0.0.1", topology.port("tcp-echo")), timeout=10) as client:
        assert echo(client, b"still linked\n") == "echoed"
    for connector in (one, two):
        assert "lost after" not in connector.log()
    cuts = list(iter_log_lines(topology.processes[2], "cut idle")) + list(iter_log_lines(topology.processes[3], "cut idle"))
    assert len(cuts) == 1, cuts  # the silent control connection, and no link
    assert one.stop() == 0 and two.stop() == 0
