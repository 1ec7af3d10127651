"""Discovery on real networks: DMZ members found by DNS (connector side) and by multicast (cluster).

DNS: a connector dials ``tls://dmz.test:5941``; ``dmz.test`` is in the /etc/hosts of the trusted
namespace (``/etc/netns/<ns>/hosts``, bind-mounted by ``ip netns exec``), which the test rewrites
in place while the connector runs. Two DMZ gateways, each in a namespace of its own, carry
certificates for ``dmz.test``. The name first names dmz1 only, then dmz1 and dmz2, then dmz2
only: the connector links to each address it resolves to, adds dmz2 within a few seconds, and
drains dmz1's links (GoAway: an open tunnel carries on, no new ones) once its address is gone::

    dmz1 10.231.4.1 --d1-trust------t-dmz1-- 10.231.4.2  trusted (connector, backend)
    dmz2 10.231.5.1 --d2-trust------t-dmz2-- 10.231.5.2

Multicast: three DMZ gateways on one switch (a bridge in a namespace of its own), each with only
``connect = "udp://224.2.2.44:PORT"`` in ``[dmz.cluster]`` and no ``members``. dmz-a and dmz-b
(cluster c1) find each other; dmz-c (cluster c2) announces on the same group and is not joined.
A watcher host on the switch (the test process) hears every announcement and sends forged ones::

    dmz-a 10.231.6.1 --lan0---pa--+
    dmz-b 10.231.6.2 --lan0---pb--+ br0 (namespace lan, IGMP snooping off)
    dmz-c 10.231.6.3 --lan0---pc--+
    watch 10.231.6.10 -lan0---pw--+

Figures are printed (run with -s to see them).
"""

from __future__ import annotations

import json
import random
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from harness import HERE, Process, echo, twistd
from nstopology import Lab, Namespaces, Veth
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import connect as ws_connect

#: Generous bounds: a busy 2-core machine must not make these tests flake.
WAIT = 30.0


def until(what: str, condition: Callable[[], object], timeout: float = WAIT, lab: Lab | None = None) -> float:
    """Poll ``condition`` until true; seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout:g} s: {what}" + (f"\n{lab.tails()}" if lab else ""))
        time.sleep(0.05)
    return time.monotonic() - started


def write_config(folder: Path, name: str, lines: list[str]) -> Path:
    path = folder / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


# -- DNS discovery ------------------------------------------------------------------------------

HOST = "dmz.test"
BACKPLANE_PORT = 5941
WS_PORT = 8080
TCP_PORT = 9000
DMZ_ADMIN = 9100
CONNECTOR_ADMIN = 9101
BACKEND_PORT = 7001
RESOLVE_INTERVAL = 1.0
LINKS = 2
DMZ_IPS = {"dmz1": "10.231.4.1", "dmz2": "10.231.5.1"}
DNS_VETHS = [
    Veth("dmz1", "d1-trust", DMZ_IPS["dmz1"], "trusted", "t-dmz1", "10.231.4.2"),
    Veth("dmz2", "d2-trust", DMZ_IPS["dmz2"], "trusted", "t-dmz2", "10.231.5.2"),
]
#: Product expectation: a new address is looked up within one resolve interval and linked at once;
#: "within a few seconds". The test allows much more on a busy machine; the figures are printed.
ADD_BOUND = 15.0
REMOVE_BOUND = 15.0


def endpoint(dmz: str) -> str:
    return f"{DMZ_IPS[dmz]}:{BACKPLANE_PORT}"


def hosts(*dmzs: str) -> str:
    return "127.0.0.1 localhost\n" + "".join(f"{DMZ_IPS[d]} {HOST}\n" for d in dmzs)


def links_up(metrics: dict[str, float]) -> dict[str, float]:
    """shield_links_up per endpoint label."""
    found = {}
    for series, value in metrics.items():
        match = re.fullmatch(r'shield_links_up\{endpoint="([^"]*)"\}', series)
        if match:
            found[match.group(1)] = value
    return found


def dns_certs(folder: Path) -> None:
    """A CA; dmz1 and dmz2 each with a key of their own and a certificate for dmz.test; internal1."""
    from shield.tls.devcerts import issue_certificate, leaf_pem, load_or_create_authority

    folder.mkdir(parents=True, exist_ok=True)
    authority, _ = load_or_create_authority(folder)
    for file, name, role in (("dmz1", HOST, "server"), ("dmz2", HOST, "server"), ("internal1", "internal1", "client")):
        cert, key = issue_certificate(authority, name, role)  # type: ignore[arg-type]
        path = folder / f"{file}.pem"
        path.touch(mode=0o600)
        path.write_bytes(leaf_pem(cert, key, [authority.certificate]))


def dmz_config(folder: Path, name: str) -> Path:
    return write_config(folder, name, [
        "[dmz]",
        f'name = "{name}"',
        f'admin = "http://127.0.0.1:{DMZ_ADMIN}"',
        "grace-period = 5",
        "[dmz.backplane]",
        f'accept = "tls://0.0.0.0:{BACKPLANE_PORT}"',
        f'cert = "certs/{name}.pem"',
        'ca = "certs/ca.pem"',
        "keepalive-interval = 1",
        "[dmz.backplane.connectors]",
        'internal1 = ["echo"]',
        "[[dmz.service]]",
        'name = "echo"',
        f'accept = ["ws://127.0.0.1:{WS_PORT}/echo", "tcp://127.0.0.1:{TCP_PORT}"]',
    ])


def connector_config(folder: Path) -> Path:
    return write_config(folder, "internal1", [
        "[internal]",
        'name = "internal1"',
        f'admin = "http://127.0.0.1:{CONNECTOR_ADMIN}"',
        "priority = 100",
        "grace-period = 5",
        "[internal.backplane]",
        f'connect = ["tls://{HOST}:{BACKPLANE_PORT}"]',
        f'server-name = "{HOST}"',
        f"links = {LINKS}",
        f"resolve-interval = {RESOLVE_INTERVAL:g}",
        'cert = "certs/internal1.pem"',
        'ca = "certs/ca.pem"',
        "keepalive-interval = 1",
        "[[internal.service]]",
        'name = "echo"',
        f'connect = "tcp://127.0.0.1:{BACKEND_PORT}"',
        "connect-timeout = 3",
        'health-check = "off"',  # the tests count the backend's connections
    ])


@dataclass
class DnsNet:
    lab: Lab

    def announced(self, dmz: str) -> int:
        """Links of internal1 the DMZ ``dmz`` accepted so far (from its log)."""
        return self.lab.process(dmz).log().count("connector 'internal1' (priority")

    def links_down(self, dmz: str) -> list[str]:
        return [line for line in self.lab.process(dmz).log().splitlines() if "connector 'internal1' link down" in line]

    def connector_links(self) -> dict[str, float]:
        return links_up(self.lab.metrics("trusted", CONNECTOR_ADMIN))

    def dmz_links(self, dmz: str) -> float | None:
        return links_up(self.lab.metrics(dmz, DMZ_ADMIN)).get("internal1")

    def streams_total(self, dmz: str) -> float:
        return self.lab.metrics(dmz, DMZ_ADMIN)['shield_streams_total{service="echo"}']

    def backend_connections(self) -> int:
        return self.lab.process("backend").log().count("connection from")

    def tcp_client(self, dmz: str) -> socket.socket:
        """A TCP client of ``dmz``'s frontplane (from the DMZ host itself)."""
        return self.lab.ns.connect(dmz, "127.0.0.1", TCP_PORT, timeout=10.0)

    def tcp_once(self, dmz: str, payload: bytes) -> str:
        """One new tcp:// client of ``dmz``: "echoed" or what happened."""
        try:
            with self.tcp_client(dmz) as sock:
                return echo(sock, payload)
        except OSError as problem:
            return f"failed: {problem!r}"

    def ws_once(self, dmz: str, payload: bytes) -> str:
        """One new ws:// client of ``dmz``: "echoed", or "refused 503: <body>", or what happened."""
        sock = self.lab.ns.connect(dmz, "127.0.0.1", WS_PORT, timeout=10.0)
        try:
            with ws_connect(f"ws://127.0.0.1:{WS_PORT}/echo", sock=sock, open_timeout=10, close_timeout=5) as ws:
                ws.send(payload)
                reply = ws.recv(timeout=10)
                return "echoed" if reply == payload else f"wrong echo {reply!r}"
        except InvalidStatus as refused:
            body = (refused.response.body or b"").decode(errors="replace").strip()
            return f"refused {refused.response.status_code}: {body}"
        except (WebSocketException, OSError, TimeoutError) as problem:
            return f"failed: {problem!r}"
        finally:
            sock.close()


def start_dns_net(lab: Lab, *named: str) -> tuple[DnsNet, Process, Path]:
    """Namespaces, the echo backend, dmz1 and dmz2, and the connector, with dmz.test naming ``named``.

    Returns once the connector has its links to the DMZs it was given; and the connector, and
    the hosts file of the trusted namespace.
    """
    ns = lab.ns
    for role in ("dmz1", "dmz2", "trusted"):
        ns.add(role)
    for veth in DNS_VETHS:
        ns.add_veth(veth)
    hosts_path = ns.hosts_file("trusted", hosts(*named))  # before anything starts in trusted
    folder = lab.folder
    dns_certs(folder / "certs")
    net = DnsNet(lab)
    argv = [sys.executable, str(HERE / "backend.py"), "echo", str(BACKEND_PORT)]
    backend = lab.start("trusted", Process("backend", argv, folder / "backend.log", folder))
    backend.wait_for_log("listening", WAIT)
    for dmz in ("dmz1", "dmz2"):
        lab.start(dmz, twistd(dmz, "shield-dmz", dmz_config(folder, dmz), folder))
    for dmz in ("dmz1", "dmz2"):
        lab.process(dmz).wait_for_log("ready for connectors", WAIT)
    connector = lab.start("trusted", twistd("internal1", "shield-internal", connector_config(folder), folder))
    for dmz in named:
        until(f"{dmz} accepted both links of internal1", lambda dmz=dmz: net.announced(dmz) >= LINKS, lab=lab)
    until("the connector counts its links",
          lambda: net.connector_links() == {endpoint(d): LINKS for d in named}, lab=lab)
    return net, connector, hosts_path


@pytest.mark.timeout(300)
def test_connector_follows_dns_of_backplane_host(lab: Lab) -> None:
    """dmz.test -> dmz1; then dmz1 + dmz2 (dmz2 gets links, serves); then dmz2 only (dmz1 drained)."""
    net, connector, hosts_path = start_dns_net(lab, "dmz1")
    ns = lab.ns
    inode = hosts_path.stat().st_ino

    # -- 1. dmz.test names dmz1 only: links to dmz1, none to dmz2 ---------------------------------
    assert net.dmz_links("dmz1") == LINKS
    time.sleep(3 * RESOLVE_INTERVAL)  # a few look-ups more: nothing else turns up
    assert net.connector_links() == {endpoint("dmz1"): LINKS}, net.connector_links()
    # No link ever came: the DMZ has no series for internal1 yet (it writes them on link changes).
    assert not net.dmz_links("dmz2"), f"dmz2 has links before dmz.test names it: {net.dmz_links('dmz2')}"
    assert "connector 'internal1'" not in lab.process("dmz2").log(), lab.tails(["dmz2"])
    # dmz2 is reachable from the trusted host all along: only the name keeps the connector away.
    assert ns.try_connect("trusted", DMZ_IPS["dmz2"], BACKPLANE_PORT) == "connected"
    assert net.tcp_once("dmz1", b"through dmz1\n") == "echoed"
    refused = net.ws_once("dmz2", b"through dmz2?")
    assert refused.startswith("refused 503"), f"dmz2 without links: {refused}"
    # The client that will be open on dmz1 while dmz1's address goes away.
    long_client = net.tcp_client("dmz1")
    assert echo(long_client, b"long-lived 0\n") == "echoed"

    # -- 2. dmz.test names dmz1 and dmz2: dmz2 gets links and serves ------------------------------
    ns.hosts_file("trusted", hosts("dmz1", "dmz2"))
    assert hosts_path.stat().st_ino == inode, "the hosts file must be rewritten in place"
    added_at = time.monotonic()
    added_line = (f"connector internal1: endpoint {endpoint('dmz2')} added "
                  f"(host {HOST} now resolves to {DMZ_IPS['dmz1']}, {DMZ_IPS['dmz2']})")
    # Each figure: seconds from the rewrite of the hosts file.
    until("the connector logs dmz2's endpoint added", lambda: added_line in connector.log(), ADD_BOUND, lab)
    add_logged = time.monotonic() - added_at
    until("dmz2 accepted both links of internal1", lambda: net.announced("dmz2") >= LINKS, ADD_BOUND, lab)
    add_linked = time.monotonic() - added_at
    until("the connector counts both links of both endpoints",
          lambda: net.connector_links() == {endpoint("dmz1"): LINKS, endpoint("dmz2"): LINKS}, ADD_BOUND, lab)
    add_metrics = time.monotonic() - added_at
    attempts: list[str] = []

    def dmz2_serves() -> bool:
        attempts.append(net.tcp_once("dmz2", f"through dmz2 {len(attempts)}\n".encode()))
        return attempts[-1] == "echoed"

    until("a new client of dmz2 is served", dmz2_serves, ADD_BOUND, lab)
    add_served = time.monotonic() - added_at
    assert add_served < ADD_BOUND, f"dmz2 served its first client {add_served:.2f} s after the hosts file named it"
    assert net.dmz_links("dmz2") == LINKS
    assert net.dmz_links("dmz1") == LINKS
    assert net.announced("dmz1") == LINKS, "dmz1's links were redialled when dmz2 was added"
    print(f"\nDNS added dmz2 (resolve-interval {RESOLVE_INTERVAL:g} s): connector logged it after {add_logged:.2f} s, "
          f"dmz2 had {LINKS} links after {add_linked:.2f} s, connector metrics after {add_metrics:.2f} s, "
          f"first client served by dmz2 after {add_served:.2f} s (attempts: {attempts})")

    # -- 3. dmz.test names dmz2 only: dmz1's links drain ------------------------------------------
    ns.hosts_file("trusted", hosts("dmz2"))
    assert hosts_path.stat().st_ino == inode
    removed_at = time.monotonic()
    removed_line = (f"connector internal1: endpoint {endpoint('dmz1')} removed "
                    f"(host {HOST} now resolves to {DMZ_IPS['dmz2']}); draining its {LINKS} links")
    until("the connector logs dmz1's endpoint removed", lambda: removed_line in connector.log(), REMOVE_BOUND, lab)
    remove_logged = time.monotonic() - removed_at
    until("the connector's metrics drop dmz1's endpoint",
          lambda: net.connector_links() == {endpoint("dmz2"): LINKS}, REMOVE_BOUND, lab)
    remove_metrics = time.monotonic() - removed_at
    # GoAway reaches dmz1: new clients there are refused (no usable link), none reaches the backend.
    refusals: list[str] = []

    def dmz1_refuses() -> bool:
        refusals.append(net.ws_once("dmz1", b"through dmz1 after removal?"))
        return refusals[-1].startswith("refused 503")

    until("dmz1 refuses new clients", dmz1_refuses, REMOVE_BOUND, lab)
    remove_refused = time.monotonic() - removed_at
    assert remove_refused < REMOVE_BOUND
    # From now on (GoAway has arrived) dmz1 opens no stream, the backend sees no client of dmz1.
    dmz1_streams = net.streams_total("dmz1")
    backend_before = net.backend_connections()
    going_away = [line for line in connector.log().splitlines() if f"mux {endpoint('dmz1')}: going away" in line]
    assert len(going_away) == LINKS, f"GoAway on dmz1's links: {going_away}"
    # The open client on dmz1 carries on: echo for a few seconds (several resolve intervals).
    echoes = 0
    carry_on_until = time.monotonic() + 3 * RESOLVE_INTERVAL
    while time.monotonic() < carry_on_until:
        outcome = echo(long_client, f"long-lived {echoes + 1}\n".encode())
        assert outcome == "echoed", f"the open client on dmz1 after {echoes} echoes since the removal: {outcome}"
        echoes += 1
        time.sleep(0.05)
    for _ in range(3):
        outcome = net.ws_once("dmz1", b"through dmz1 after removal?")
        assert outcome.startswith("refused 503") and "no live link" in outcome, outcome
    dmz1_down_before_close = len(net.links_down("dmz1"))
    dmz1_metric_draining = net.dmz_links("dmz1")
    assert net.backend_connections() == backend_before, "a new client of dmz1 reached the backend after the removal"
    assert net.streams_total("dmz1") == dmz1_streams, "dmz1 opened a stream after the removal"
    # New clients go to dmz2 meanwhile.
    assert net.tcp_once("dmz2", b"through dmz2 after removal\n") == "echoed"
    # The open client ends: dmz1's last link closes; no link to dmz1 is dialled again.
    long_client.close()
    drained = until(f"dmz1 logs 'link down' for all {LINKS} links of internal1",
                    lambda: len(net.links_down("dmz1")) >= LINKS, WAIT, lab)
    until("dmz1's metrics count no link of internal1", lambda: net.dmz_links("dmz1") == 0, WAIT, lab)
    time.sleep(3 * RESOLVE_INTERVAL)
    assert net.announced("dmz1") == LINKS, "the connector dialled dmz1 again after its address was removed"
    assert net.connector_links() == {endpoint("dmz2"): LINKS}, net.connector_links()
    assert net.dmz_links("dmz2") == LINKS
    status, body = ns.http_get("trusted", f"http://127.0.0.1:{CONNECTOR_ADMIN}/readyz")
    assert status == 200, body
    assert not [line for line in connector.log().splitlines() if f"link to {endpoint('dmz1')}: lost" in line], \
        "a drained link is reported as lost"
    print(f"DNS removed dmz1: connector logged it after {remove_logged:.2f} s, its metrics dropped the endpoint "
          f"after {remove_metrics:.2f} s, dmz1 refused new clients after {remove_refused:.2f} s "
          f"(attempts: {refusals[:-1] or 'none'} then {refusals[-1]!r})")
    print(f"  the open client on dmz1 echoed {echoes} times in the {3 * RESOLVE_INTERVAL:g} s after the removal; "
          f"dmz1 links down before it closed: {dmz1_down_before_close} of {LINKS}; "
          f"dmz1 shield_links_up{{endpoint=\"internal1\"}} while draining: {dmz1_metric_draining}")
    for line in going_away:
        print(f"    connector: {line.strip()}")
    print(f"  dmz1's last link closed {drained:.2f} s after the open client closed:")
    for line in net.links_down("dmz1"):
        print(f"    dmz1: {line.strip()}")



@pytest.mark.timeout(300)
def test_dmz_does_not_count_links_going_away(lab: Lab) -> None:
    """dmz1's address is removed while both its links carry a tunnel: dmz1 counts 0 usable links."""
    net, connector, _ = start_dns_net(lab, "dmz1", "dmz2")
    # Two clients on dmz1: the DMZ spreads them over its two links (fewest tunnels first).
    clients = [net.tcp_client("dmz1") for _ in range(LINKS)]
    try:
        for index, client in enumerate(clients):
            assert echo(client, f"client {index}\n".encode()) == "echoed"
        assert net.dmz_links("dmz1") == LINKS
        lab.ns.hosts_file("trusted", hosts("dmz2"))
        until("GoAway on both of dmz1's links",
              lambda: connector.log().count(f"mux {endpoint('dmz1')}: going away, open streams: 2") == LINKS,
              REMOVE_BOUND, lab)
        until("dmz1 refuses new clients (no usable link)",
              lambda: net.ws_once("dmz1", b"after removal?").startswith("refused 503"), REMOVE_BOUND, lab)
        for index, client in enumerate(clients):  # both tunnels still work: the links are open
            assert echo(client, f"client {index} again\n".encode()) == "echoed"
        assert not net.links_down("dmz1")
        value = net.dmz_links("dmz1")
        print(f"\ndmz1 shield_links_up{{endpoint=\"internal1\"}} with both links going away: {value}")
        assert value == 0, f"dmz1 counts {value} links of internal1 up, though none takes new clients"
    finally:
        for client in clients:
            client.close()


# -- multicast discovery ------------------------------------------------------------------------

GROUP = "224.2.2.44"
LAN = {"dmz-a": "10.231.6.1", "dmz-b": "10.231.6.2", "dmz-c": "10.231.6.3", "watch": "10.231.6.10"}
CLUSTER_OF = {"dmz-a": "c1", "dmz-b": "c1", "dmz-c": "c2"}
CLUSTER_PORT = 5942
HEARTBEAT = 1.0
#: Forged: a c1 announcement from the watcher naming an address that is not its own.
GHOST_IP = "10.231.6.9"


def member_config(folder: Path, name: str, port: int) -> Path:
    return write_config(folder, name, [
        "[dmz]",
        f'name = "{name}"',
        f'admin = "http://127.0.0.1:{DMZ_ADMIN}"',
        "grace-period = 2",
        "[dmz.backplane]",
        f'accept = "tls://127.0.0.1:{BACKPLANE_PORT}"',
        f'cert = "certs/{name}.pem"',
        'ca = "certs/ca.pem"',
        "[dmz.backplane.connectors]",
        'internal1 = ["echo"]',
        "[dmz.cluster]",
        f'name = "{CLUSTER_OF[name]}"',
        f'accept = "tls://{LAN[name]}:{CLUSTER_PORT}"',
        f'connect = "udp://{GROUP}:{port}"',
        f"heartbeat-interval = {HEARTBEAT:g}",
        "[[dmz.service]]",
        'name = "echo"',
        f'accept = ["tcp://127.0.0.1:{TCP_PORT}"]',
    ])


@dataclass
class Watcher:
    """The test process as a host on the switch: hears the group, sends to it."""

    ns: Namespaces
    port: int
    heard: list[tuple[str, dict[str, object]]] = field(default_factory=list)  # (source address, message)

    def __post_init__(self) -> None:
        me = socket.inet_aton(LAN["watch"])
        self.rx = self.ns.socket("watch", socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.rx.bind((GROUP, self.port))
        self.rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(GROUP) + me)
        self.rx.settimeout(0.2)
        self.tx = self.ns.socket("watch", socket.AF_INET, socket.SOCK_DGRAM)
        self.tx.bind((LAN["watch"], 0))
        self.tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, me)
        self.tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="watcher", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data, (source, _) = self.rx.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                message = json.loads(data)
            except ValueError:
                continue
            self.heard.append((source, message))

    def announcers(self) -> set[tuple[str, str, str]]:
        """(source address, cluster, name) of every announcement heard from another host."""
        return {(source, str(m.get("cluster")), str(m.get("name"))) for source, m in list(self.heard)
                if source != LAN["watch"]}

    def send(self, message: dict[str, object]) -> None:
        self.tx.sendto(json.dumps(message).encode(), (GROUP, self.port))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.rx.close()
        self.tx.close()


def count_packets_to(ns: Namespaces, role: str, address: str) -> int:
    """Packets ``role`` sent to ``address`` so far (the counting OUTPUT rule ``watch_output`` added)."""
    out = ns.iptables(role, "-L", "OUTPUT", "-v", "-x", "-n")
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 9 and fields[-1] == address and fields[2] == "ACCEPT":
            return int(fields[0])
    raise AssertionError(f"no counting rule for {address} in {role}:\n{out}")


def watch_output(ns: Namespaces, role: str, addresses: list[str]) -> None:
    for address in addresses:
        ns.iptables(role, "-A", "OUTPUT", "-d", address, "-j", "ACCEPT")


@pytest.mark.timeout(300)
def test_multicast_discovery_finds_members_of_its_cluster_only(lab: Lab) -> None:
    """dmz-a and dmz-b (c1) find each other by multicast; dmz-c (c2) and forged announcements are ignored."""
    ns = lab.ns
    folder = lab.folder
    port = random.randint(20000, 60000)
    ns.add("lan")
    members = ["dmz-a", "dmz-b", "dmz-c"]
    for role in [*members, "watch"]:
        ns.add(role)
        ns.add_veth(Veth(role, "lan0", LAN[role], "lan", f"p{role[-1]}", None))
        ns.ip(role, "route", "add", "224.0.0.0/4", "dev", "lan0")
    ns.add_bridge("lan", "br0", [f"p{role[-1]}" for role in [*members, "watch"]])
    from shield.tls.devcerts import generate_dev_certs

    generate_dev_certs(folder / "certs", members, ["internal1"])
    for member in ("dmz-a", "dmz-b"):
        watch_output(ns, member, [GHOST_IP, LAN["watch"], LAN["dmz-c"]])
    watcher = Watcher(ns, port)
    try:
        started = time.monotonic()
        for member in members:
            lab.start(member, twistd(member, "shield-dmz", member_config(folder, member, port), folder))
        for member in members:
            lab.process(member).wait_for_log("ready for connectors", WAIT)

        # dmz-a and dmz-b: each finds the other and has it alive.
        alive = {}
        for me, other in (("dmz-a", "dmz-b"), ("dmz-b", "dmz-a")):
            line = f"cluster c1: member {other} is alive"
            until(f"{me} logs {line!r}", lambda me=me, line=line: line in lab.process(me).log(), WAIT, lab)
            alive[me] = time.monotonic() - started
            found = f"cluster discovery: found member {other} at tls://{LAN[other]}:{CLUSTER_PORT}"
            assert found in lab.process(me).log(), lab.tails([me])
        for member in ("dmz-a", "dmz-b"):
            until(f"{member} /metrics shield_cluster_members_alive 1",
                  lambda member=member: lab.metrics(member, DMZ_ADMIN).get("shield_cluster_members_alive") == 1.0,
                  WAIT, lab)

        # dmz-c announces on the same group (the watcher hears it, as dmz-a and dmz-b must)...
        until("the watcher hears all three members announce",
              lambda: {(LAN[m], CLUSTER_OF[m], m) for m in members} <= watcher.announcers(), WAIT, lab)
        heard_c = sum(1 for source, _ in list(watcher.heard) if source == LAN["dmz-c"])

        # ...and forged c1 announcements: one naming an address that is not its sender's (ignored),
        # then one naming the sender's own address (heard: proof the forged ones got there too).
        forged = {"type": "shield-member", "cluster": "c1", "name": "ghost",
                  "accept": f"tls://{GHOST_IP}:{CLUSTER_PORT}"}
        honest = {"type": "shield-member", "cluster": "c1", "name": "probe",
                  "accept": f"tls://{LAN['watch']}:{CLUSTER_PORT}"}
        probe_line = f"cluster discovery: found member probe at tls://{LAN['watch']}:{CLUSTER_PORT}"
        sent = 0

        def probes_found() -> bool:
            nonlocal sent
            watcher.send(forged)
            watcher.send(honest)
            sent += 1
            return all(probe_line in lab.process(m).log() for m in ("dmz-a", "dmz-b"))

        until("dmz-a and dmz-b hear the watcher's own-address announcement", probes_found, WAIT, lab)
        for _ in range(5):  # a few more forged ones, a heartbeat apart
            watcher.send(forged)
            time.sleep(HEARTBEAT / 2)
        time.sleep(3 * HEARTBEAT)  # several announcements of dmz-c more, and time to dial anything heard
        heard_c = sum(1 for source, _ in list(watcher.heard) if source == LAN["dmz-c"]) - heard_c

        for me in ("dmz-a", "dmz-b"):
            log = lab.process(me).log()
            assert "dmz-c" not in log, f"{me} took notice of dmz-c of cluster c2:\n{lab.tails([me])}"
            assert "ghost" not in log and GHOST_IP not in log, \
                f"{me} believed a forged announcement:\n{lab.tails([me])}"
            assert log.count(" is alive") == 1, f"{me}: {[l for l in log.splitlines() if ' is alive' in l]}"
            assert lab.metrics(me, DMZ_ADMIN).get("shield_cluster_members_alive") == 1.0
            # It never even dialled the forged address (it did dial the honest one: the rule counts).
            assert count_packets_to(ns, me, GHOST_IP) == 0, ns.iptables(me, "-L", "OUTPUT", "-v", "-x", "-n")
            assert count_packets_to(ns, me, LAN["watch"]) > 0, ns.iptables(me, "-L", "OUTPUT", "-v", "-x", "-n")
            # Nor the member of the other cluster.
            assert count_packets_to(ns, me, LAN["dmz-c"]) == 0, ns.iptables(me, "-L", "OUTPUT", "-v", "-x", "-n")
        c_log = lab.process("dmz-c").log()
        assert " is alive" not in c_log and "found member" not in c_log, lab.tails(["dmz-c"])
        assert lab.metrics("dmz-c", DMZ_ADMIN).get("shield_cluster_members_alive") == 0.0
        print(f"\nmulticast discovery on {GROUP}:{port}: dmz-a had dmz-b alive {alive['dmz-a']:.2f} s and dmz-b had "
              f"dmz-a alive {alive['dmz-b']:.2f} s after the members were started (process start-up included; "
              f"heartbeat {HEARTBEAT:g} s)")
        print(f"  dmz-c (cluster c2) announced {heard_c} more times meanwhile, not joined; "
              f"forged announcements sent: {sent + 5}, none believed; "
              f"own-address probes heard by both after {sent} rounds")
    finally:
        watcher.close()
