"""Every edge of issue 14 at once, with real processes: a connector whose only way out is an
authenticating CONNECT proxy links over ``wss://``; clients arrive through an L4 load balancer
that speaks the PROXY protocol (Debian's HAProxy, ``send-proxy-v2``); the backend (HAProxy again,
``accept-proxy``) requires the header and answers with the client address it was given.

The client connects from 127.0.0.9; the load balancer reaches the DMZ from 127.0.0.1, the only
address in ``proxy-protocol-from``; the connector is given the DMZ by a name only the proxy can
resolve. The backend answering ``127.0.0.9:<the client's port>`` means the address crossed the
load balancer, the DMZ, a WebSocket link through the proxy, and the connector.
"""

from __future__ import annotations

import re
import sys

import socket

from harness import HERE, Process, Topology, http_get, iter_log_lines
from haproxy import REQUEST, answered_client, backend_sections, read_answer, start_haproxy, wait_listening

CLIENT_HOST = "127.0.0.9"
USER, PASSWORD = "connector", "Corr3ct-h0rse"
DMZ_NAME = "dmz.shield.test"


def test_a_proxied_wss_connector_serves_load_balanced_clients_with_their_real_addresses(topology: Topology) -> None:
    topology.certs(["internal1"])
    wss = topology.backplane_uri("wss")
    topology.dmz_config(
        {"app": {"accept": [f"tcp://127.0.0.1:{topology.port('dmz-app')}"], "proxy-protocol-from": ["127.0.0.1/32"]}},
        {"internal1": ["app"]},
        backplane=[wss],
    )  # fmt: skip
    proxy = Process(
        "proxy",
        [sys.executable, str(HERE / "fakes" / "connect_proxy.py"), str(topology.port("proxy")),
         "--auth", f"{USER}:{PASSWORD}", "--map", f"{DMZ_NAME}=127.0.0.1"],
        topology.folder / "proxy.log", topology.folder,
    ).start()  # fmt: skip
    topology.processes.append(proxy)
    proxy.wait_for_log("listening")
    (topology.folder / "proxy-auth").write_text(f"{USER}:{PASSWORD}\n")
    via_proxy = wss.replace("127.0.0.1", DMZ_NAME)
    config = topology.internal_config("internal1", {"app": f"tcp://127.0.0.1:{topology.port('backend-v2')}"}, connect=[via_proxy])
    config.write_text(
        config.read_text()
        .replace("[internal.backplane]\n", f'[internal.backplane]\nproxy = "http://127.0.0.1:{topology.port("proxy")}"\nproxy-auth-file = "proxy-auth"\n')
        .replace('health-check = "off"', 'health-check = "off"\nproxy-protocol = "v2"')
    )
    haproxy = start_haproxy(
        topology,
        backend_sections(topology)
        + [
            "listen lb",
            "    mode tcp",
            f"    bind 127.0.0.1:{topology.port('lb')}",
            f"    server dmz 127.0.0.1:{topology.port('dmz-app')} send-proxy-v2",
        ],
    )
    wait_listening(topology.port("backend-v2"), haproxy)
    dmz = topology.start_dmz()
    connector = topology.start_connector("internal1")
    topology.dmz_ready()

    for _ in range(3):
        with socket.socket() as sock:
            sock.settimeout(10)
            sock.bind((CLIENT_HOST, 0))
            sock.connect(("127.0.0.1", topology.port("lb")))
            own_port = sock.getsockname()[1]
            sock.sendall(REQUEST)
            seen = answered_client(read_answer(sock))
        # (the destination is where the load balancer accepted the client, from its header)
        assert seen == f"{CLIENT_HOST}:{own_port} via 127.0.0.1:{topology.port('lb')}", seen

    # Every link went through the proxy, with credentials, over the WebSocket backplane.
    connects = list(iter_log_lines(proxy, "CONNECT"))
    assert connects == [f"CONNECT {DMZ_NAME}:{topology.port('backplane-wss')} auth=yes -> 200"] * 2, connects
    _, metrics = http_get(topology.url("admin-internal1", path="/metrics"))
    assert re.search(rf'^shield_links_up{{endpoint="{re.escape(via_proxy)}"}} 2\.0$', metrics, re.MULTILINE), metrics
    assert "Traceback" not in dmz.log() + connector.log()
    assert PASSWORD not in connector.log()
    assert connector.stop() == 0
