"""The DMZ gateway assembled, on a memory reactor: its ``MultiService`` starts the parts in order
and stops them in reverse after the drain; a reload hands each part its piece.

The configuration is a real file with real development certificates (the gateway loads them as at
start); the reactor records every port that listens or stops. Connector links are the in-memory
ones of ``dmz_world_inprocess``, made on the gateway's own backplane factory.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Iterator, cast

import pytest
from twisted.internet.address import IPv4Address

from dmz_world_inprocess import Connector, LogLines, Pipe, RecordingReactor, World, capture_log
from shield.config.loader import load_dmz_config
from shield.dmz.cluster_member import ClusterMember
from shield.dmz.gateway import DmzGateway
from shield.dmz.listeners import PublicPorts
from shield.ops.port import PortService
from shield.tls.devcerts import generate_dev_certs

BACKPLANE, ADMIN, CLUSTER_PORT = 5941, 9100, 7000


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    generate_dev_certs(folder, ["dmz1"], ["internal1"])
    return folder


@pytest.fixture(autouse=True)
def sighup() -> Iterator[None]:
    """The gateway's start installs a SIGHUP handler (for its reload): put the test runner's back."""
    before = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, before)


@pytest.fixture
def log() -> Iterator[LogLines]:
    yield from capture_log()


def write(path: Path, certs: Path, services: dict[str, int], connectors: tuple[str, ...], grace: float = 5,
          cluster: bool = False, limits: str = "") -> Path:  # fmt: skip
    """A dmz.toml: each service a tcp:// accept on its port; internal1 may serve ``connectors``."""
    lines = [
        "[dmz]", 'name = "dmz1"', f'admin = "http://127.0.0.1:{ADMIN}"', f"grace-period = {grace:g}",
        "[dmz.backplane]", f'accept = "tls://127.0.0.1:{BACKPLANE}"',
        f'cert = "{certs / "dmz1.pem"}"', f'ca = "{certs / "ca.pem"}"',
        "[dmz.backplane.connectors]", "internal1 = [" + ", ".join(f'"{c}"' for c in connectors) + "]",
    ]  # fmt: skip
    if cluster:
        lines += ["[dmz.cluster]", 'name = "c1"', f'accept = "tls://127.0.0.1:{CLUSTER_PORT}"',
                  f'members = ["tls://127.0.0.1:{CLUSTER_PORT}"]']  # fmt: skip
    for name, port in services.items():
        lines += ["[[dmz.service]]", f'name = "{name}"', f'accept = "tcp://127.0.0.1:{port}"']
        if name == "echo" and limits:
            lines.append(limits)
    path.write_text("\n".join(lines) + "\n")
    return path


class Gateway:
    """A ``DmzGateway`` on a recording memory reactor, and a world to link connectors to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reactor = RecordingReactor()
        self.gateway = DmzGateway(load_dmz_config(path), cast(Any, self.reactor))
        self.world = World(self.gateway.config)
        self.world.clock = self.reactor
        self.world.backplane = self.gateway.backplane
        self.world.registry = self.gateway.registry.links
        self.world.opener = self.gateway.registry.opener
        self._ports = iter(range(50000, 60000))

    def link(self, offers: tuple[str, ...] = ("echo",)) -> Connector:
        connector = self.world.connector("internal1", offers)
        self.world.link(connector)
        return connector

    def client(self, port: int) -> Pipe:
        """A client connects to public port ``port``: what the listening socket would do."""
        factory = self.gateway.public.factories[("tcp", "127.0.0.1", port)]
        address = IPv4Address("TCP", "198.51.100.7", next(self._ports))
        pipe = self.world.client(address.host, address.port)
        protocol = factory.buildProtocol(address)
        assert protocol is not None
        pipe.connect(protocol)
        self.world.run()
        return pipe


def outcome(deferred: Any) -> list[object]:
    seen: list[object] = []
    deferred.addBoth(seen.append)
    return seen


# -- start ---------------------------------------------------------------------------------------


def test_the_parts_are_children_that_listen_in_order_and_the_admin_answers_last(tmp_path: Path, certs: Path, log: LogLines) -> None:
    g = Gateway(write(tmp_path / "dmz.toml", certs, {"echo": 9001, "web": 9002}, ("echo", "web")))
    parts = list(g.gateway)
    assert [type(part) for part in parts] == [PortService, PortService, PublicPorts]
    assert parts[0] is g.gateway.admin and parts[1] is g.gateway.backplane_port
    assert g.gateway.readiness() == (False, [
        "listeners not up yet",
        "service 'echo': no connector offers it now (no live connector link)",
        "service 'web': no connector offers it now (no live connector link)",
    ])  # fmt: skip

    g.gateway.startService()
    assert g.reactor.events == [f"listen {BACKPLANE}", "listen 9001", "listen 9002", f"listen {ADMIN}"]
    assert all(part.running for part in parts)
    assert log.having("dmz dmz1: backplane listening on tls://127.0.0.1:5941")
    assert log.having("dmz dmz1: service echo (tcp) listening on tcp://127.0.0.1:9001")
    assert log.having("dmz dmz1: admin on http://127.0.0.1:9100")
    (ready,) = log.having("ready for connectors")
    assert "dmz dmz1: ready for connectors (2 services; WebSocket NVX acceleration" in ready
    assert not g.reactor.triggers, "no exit scheduled"

    g.link(("echo", "web"))
    assert g.gateway.readiness() == (True, [])


def test_a_public_port_that_cannot_listen_is_a_fatal_start_and_the_admin_never_listens(tmp_path: Path, certs: Path, log: LogLines) -> None:
    g = Gateway(write(tmp_path / "dmz.toml", certs, {"echo": 9001}, ("echo",)))
    g.reactor.refuse.add(9001)
    g.gateway.startService()
    assert g.reactor.events == [f"listen {BACKPLANE}"]
    (line,) = log.having("shield-dmz could not start")
    assert "Address already in use" in line
    assert "after" in g.reactor.triggers and "shutdown" in g.reactor.triggers["after"], "exit 1 once the reactor stops"
    assert not log.having("ready for connectors")
    assert g.gateway.readiness()[1][0] == "listeners not up yet"


def test_a_cluster_member_listens_first_and_opens_its_public_ports_once_its_peers_are_known(tmp_path: Path, certs: Path, log: LogLines) -> None:
    g = Gateway(write(tmp_path / "dmz.toml", certs, {"echo": 9001}, ("echo",), cluster=True))
    assert [type(part) for part in g.gateway] == [PortService, ClusterMember, PortService, PublicPorts]
    g.gateway.startService()
    assert g.reactor.events == [f"listen {CLUSTER_PORT}", f"listen {BACKPLANE}"]
    g.reactor.advance(2.9)  # no peer to hear from: the member waits three heartbeat intervals
    assert g.reactor.events == [f"listen {CLUSTER_PORT}", f"listen {BACKPLANE}"]
    g.reactor.advance(0.1)
    assert g.reactor.events[2:] == ["listen 9001", f"listen {ADMIN}"]
    assert log.having("cluster c1: 0 peers alive at start: none")
    assert log.having("ready for connectors")


# -- stop ----------------------------------------------------------------------------------------


def test_sigterm_drains_then_stops_the_children_in_reverse_the_admin_last(tmp_path: Path, certs: Path, log: LogLines) -> None:
    g = Gateway(write(tmp_path / "dmz.toml", certs, {"echo": 9001}, ("echo",)))
    g.gateway.startService()
    connector = g.link()
    client = g.client(9001)
    client.feed(b"hello")
    g.world.run()
    (backend,) = connector.dialer.backends
    assert backend.read() == b"hello"
    (link,) = g.gateway.registry.links.links
    g.reactor.events.clear()
    g.reactor._exitSignal = signal.SIGTERM  # type: ignore[attr-defined]  # what twistd would re-raise

    stopped = outcome(g.gateway.stopService())
    g.world.run()
    assert g.gateway.readiness()[1][0] == "draining: no new clients"
    assert g.reactor.events == ["stop 9001", f"stop {BACKPLANE}"], "the doors close; the admin still answers"
    assert link.mux.going_away and not link.usable, "GoAway on the link: no new tunnel, the open one finishes"
    assert stopped == []
    assert log.having("dmz dmz1: draining: no new clients, 1 tunnels open")

    client.feed(b"still served")  # the open tunnel carries on during the grace period
    g.world.run()
    assert backend.read() == b"still served"

    g.world.advance(5.0)  # grace period: the tunnel is cut, the link closes, the rest stops
    assert log.having("grace period of 5 s over: closing 1 tunnels still open")
    assert stopped == [None]
    assert g.reactor.events == ["stop 9001", f"stop {BACKPLANE}", f"stop {ADMIN}"]
    assert not any(part.running for part in g.gateway)
    assert g.reactor._exitSignal is None  # type: ignore[attr-defined]  # exit 0


def test_sigterm_with_nothing_open_is_over_at_once(tmp_path: Path, certs: Path) -> None:
    g = Gateway(write(tmp_path / "dmz.toml", certs, {"echo": 9001}, ("echo",), cluster=True))
    g.gateway.startService()
    g.reactor.advance(3.0)
    g.reactor.events.clear()
    stopped = outcome(g.gateway.stopService())
    assert stopped == [None]
    assert g.reactor.events == ["stop 9001", f"stop {BACKPLANE}", f"stop {CLUSTER_PORT}", f"stop {ADMIN}"]


# -- reload --------------------------------------------------------------------------------------


def test_a_reload_hands_each_part_its_piece(tmp_path: Path, certs: Path, log: LogLines) -> None:
    path = write(tmp_path / "dmz.toml", certs, {"echo": 9001, "gone": 9002}, ("echo", "gone"))
    g = Gateway(path)
    g.gateway.startService()
    connector = g.link(("echo", "gone", "extra"))
    link = g.gateway.registry.links.links[0]
    assert link.services == {"echo", "gone"}
    kept_port = g.gateway.public.ports[("tcp", "127.0.0.1", 9001)]
    kept_factory = g.gateway.public.factories[("tcp", "127.0.0.1", 9001)]
    before = kept_factory.current
    echo_front = g.gateway.registry.fronts["echo"]
    old_client = g.client(9002)
    (backend,) = connector.dialer.backends
    g.reactor.events.clear()

    write(path, certs, {"echo": 9001, "extra": 9003}, ("echo", "extra"), grace=7,
          limits="max-connections = 3")  # fmt: skip
    g.gateway.reload()

    (line,) = log.having("reloaded")
    assert "services added: extra; removed: gone; changed: echo; 1 connectors listed" in line
    # The listener that stays keeps its socket and its PortFactory; only the delegate changed.
    assert g.gateway.public.ports[("tcp", "127.0.0.1", 9001)] is kept_port
    assert g.gateway.public.factories[("tcp", "127.0.0.1", 9001)] is kept_factory
    assert kept_factory.current is not before
    assert g.reactor.events == ["stop 9002", "listen 9003"]
    # The front that stays keeps its clients and counters, with its new settings.
    assert g.gateway.registry.fronts["echo"] is echo_front and echo_front.config.limits.max_connections == 3
    assert set(g.gateway.registry.fronts) == {"echo", "extra"}
    # The link is judged again: it may serve extra now, not gone.
    assert link.services == {"echo", "extra"}
    assert g.gateway.drain.grace_period == 7
    assert g.gateway.config.grace_period == 7
    # The client of the removed service stays, and is still served.
    old_client.feed(b"after the reload")
    g.world.run()
    assert backend.read() == b"after the reload"
    assert not old_client.lost


def test_a_reload_that_changes_what_needs_a_restart_is_refused_whole(tmp_path: Path, certs: Path, log: LogLines) -> None:
    path = write(tmp_path / "dmz.toml", certs, {"echo": 9001}, ("echo",))
    g = Gateway(path)
    g.gateway.startService()
    g.reactor.events.clear()
    text = path.read_text().replace(f"tls://127.0.0.1:{BACKPLANE}", "tls://127.0.0.1:5942").replace("9001", "9009")
    path.write_text(text)
    g.gateway.reload()
    (line,) = log.having("reload refused")
    assert "dmz.backplane.accept changed (restart the gateway for that)" in line
    assert g.reactor.events == [] and g.gateway.config.backplane.accept[0].port == BACKPLANE


def test_a_reload_before_the_public_ports_are_open_changes_what_they_open(tmp_path: Path, certs: Path) -> None:
    path = write(tmp_path / "dmz.toml", certs, {"echo": 9001}, ("echo",), cluster=True)
    g = Gateway(path)
    g.gateway.startService()
    write(path, certs, {"echo": 9005}, ("echo",), cluster=True)
    g.gateway.reload()  # the member still waits for its peers
    g.reactor.advance(3.0)
    assert g.reactor.events == [f"listen {CLUSTER_PORT}", f"listen {BACKPLANE}", "listen 9005", f"listen {ADMIN}"]


def test_no_reload_while_draining(tmp_path: Path, certs: Path, log: LogLines) -> None:
    path = write(tmp_path / "dmz.toml", certs, {"echo": 9001}, ("echo",))
    g = Gateway(path)
    g.gateway.startService()
    g.link()
    g.client(9001)
    g.gateway.stopService()
    write(path, certs, {"echo": 9001, "extra": 9003}, ("echo", "extra"))
    g.gateway.reload()
    assert not log.having("reloaded") and "extra" not in g.gateway.registry.fronts
