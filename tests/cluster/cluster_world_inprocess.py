"""DMZ cluster members in memory, shared by the ``test_*_inprocess.py`` files of tests/cluster.

Each member is a real ``ClusterNode`` on one ``MemoryReactorClock`` (``start`` listens on the
memory reactor and beats with the clock). A member link is a pair of real ``MemberLink``
joined by ``twisted.test.iosim``; TLS is left out: each transport presents the certificate the
peer would show, and the test calls ``handshakeCompleted`` as the TLS layer would. A link can be
*partitioned*: its bytes wait in the transports, as on a network that went silent.

The gateway behind each node is ``Local``, a small ``LocalMember`` (shield/cluster/node.py).
"""

from __future__ import annotations

from typing import Any, cast

from OpenSSL import SSL
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dmz"))
import dmz_world_inprocess  # noqa: E402

LogLines = dmz_world_inprocess.LogLines  # one log capture for both worlds
capture_log = dmz_world_inprocess.capture_log
# The transport of both worlds: the peer's certificate, and TCP's close (writes made before the
# close is carried out still go out; an abort drops them). A partition holds the pump, not this.
CertifiedTransport = dmz_world_inprocess.CertifiedTransport

from shield.cluster.link import MemberLink
from shield.cluster.messages import ForwardReply, ForwardRequest, ServiceState
from shield.cluster.node import ClusterNode
from shield.config.model import DmzCluster, Uri
from shield.mux.config import MuxConfig

CLUSTER = "c1"
BALANCE = "tcp://lb.example:8000"  # the balancer accept the members' echo service lists
BALANCER = Uri("tcp", "0.0.0.0", 8000)


class Recorder(Protocol):
    """What serves a client here (a member's own front door, in memory): keeps what arrives."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost = reason


class Local:
    """The gateway behind a node (``LocalMember``): its echo service, clients, drain, forwards."""

    def __init__(self, name: str, clients: int = 0, live: bool = True, balance: tuple[str, ...] = (BALANCE,)) -> None:
        self.name = name
        self.draining = False
        self.clients = clients
        self.live = live
        self.balance = balance
        self.refuse: ForwardReply | None = None  # the answer to forwarded clients, if not OK
        self.forwarded: list[tuple[ForwardRequest, str, Recorder]] = []

    def cluster_services(self) -> list[ServiceState]:
        return [ServiceState("echo", self.live, self.clients, (f"tcp://{self.name}.example:9000",), self.balance)]

    def cluster_clients(self) -> int:
        return self.clients

    def serve_forward(self, request: ForwardRequest, balancer: str) -> tuple[ForwardReply, IProtocol | None]:
        if self.refuse is not None:
            return self.refuse, None
        inner = Recorder()
        self.forwarded.append((request, balancer, inner))
        return ForwardReply(0), inner


@implementer(IOpenSSLServerConnectionCreator)
class NoTLS:
    """For ``ClusterNode.start``'s listening port: nobody connects to it in these tests."""

    def serverConnectionForTLS(self, protocol: object) -> SSL.Connection:
        raise AssertionError("no connection is accepted through the listening port here")


def local(node: ClusterNode) -> Local:
    """The ``Local`` behind a node of this harness (to change what its heartbeats say)."""
    assert isinstance(node.local, Local)
    return node.local


class MemberPair:
    """One member link: the dialling side and the accepting side, and the pump between them."""

    def __init__(self, dialled: MemberLink, accepted: MemberLink, pump: iosim.IOPump) -> None:
        self.dialled = dialled
        self.accepted = accepted
        self.pump = pump
        self.partitioned = False

    def end_of(self, node: ClusterNode) -> MemberLink:
        return self.dialled if self.dialled.host is node else self.accepted


class Cluster:
    def __init__(self) -> None:
        self.clock = MemoryReactorClock()
        self.nodes: dict[str, ClusterNode] = {}
        self.pairs: list[MemberPair] = []
        self.pipes: list[Pipe] = []

    def node(self, name: str, local: Local | None = None, cluster: str = CLUSTER, interval: float = 1.0) -> ClusterNode:
        index = len(self.nodes) + 1
        config = DmzCluster(name=cluster, accept=Uri("tls", f"192.0.2.{index}", 7000), heartbeat_interval=interval)
        node = ClusterNode(
            name, config, local or Local(name), cast(Any, self.clock), NoTLS(), cast(Any, None), MuxConfig(keepalive_interval=0)
        )
        self.nodes[name] = node
        return node

    def link(self, a: ClusterNode, b: ClusterNode, a_shows: str | None = "", b_shows: str | None = "", handshake: bool = True) -> MemberPair:
        """``a`` dials ``b``; each presents a certificate naming itself (or ``*_shows``)."""
        a_address = IPv4Address("TCP", a.config.accept.host, 40000 + len(self.pairs))
        b_address = IPv4Address("TCP", b.config.accept.host, b.config.accept.port)
        dialled = MemberLink(a, True, str(b.config.accept), a.mux_config, self.clock)
        accepted = MemberLink(b, False, f"{a_address.host}:{a_address.port}", b.mux_config, self.clock)
        pump = iosim.connect(
            accepted.mux, CertifiedTransport(accepted.mux, True, a.own_name if a_shows == "" else a_shows, b_address, a_address),
            dialled.mux, CertifiedTransport(dialled.mux, False, b.own_name if b_shows == "" else b_shows, a_address, b_address),
            greet=False, clock=self.clock,
        )  # fmt: skip
        pair = MemberPair(dialled, accepted, pump)
        self.pairs.append(pair)
        if handshake:
            dialled.mux.handshakeCompleted()
            accepted.mux.handshakeCompleted()
        self.run()
        return pair

    def mesh(self, *nodes: ClusterNode) -> None:
        for i, a in enumerate(nodes):
            for b in nodes[i + 1 :]:
                self.link(a, b)

    def run(self) -> None:
        quiet = 0
        for _ in range(10_000):
            moved = False
            for pair in self.pairs:
                if not pair.partitioned:
                    moved |= pair.pump.pump()
            self.clock.advance(0)
            for pipe in self.pipes:
                moved |= pipe.settle()
            quiet = 0 if moved else quiet + 1
            if quiet >= 2:
                return
        raise AssertionError("the cluster never went quiet")

    def advance(self, seconds: float, step: float = 0.25) -> None:
        left = seconds
        while left > 1e-9:
            now = min(step, left)
            self.clock.advance(now)
            left -= now
            self.run()

    def client(self, host: str = "198.51.100.7", port: int = 50000, limit: int | None = None) -> "Pipe":
        pipe = Pipe(IPv4Address("TCP", host, port), limit)
        self.pipes.append(pipe)
        return pipe


class Pipe(StringTransport):
    """A public client's socket in memory (see tests/dmz/dmz_world_inprocess.py for the full one)."""

    def __init__(self, peer: IPv4Address | None = None, limit: int | None = None) -> None:
        super().__init__(peerAddress=peer, lenient=True)
        self.protocol: IProtocol | None = None
        self.aborted = False
        self.lost = False
        self._read = 0

    def connect(self, protocol: IProtocol) -> IProtocol:
        self.protocol = protocol
        protocol.makeConnection(self)
        return protocol

    def write(self, data: bytes) -> None:
        if not self.disconnecting:
            super().write(data)

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnecting = True

    def loseWriteConnection(self) -> None:
        pass

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None

    def pauseProducing(self) -> None:
        if self.producerState != "stopped":
            self.producerState = "paused"

    def resumeProducing(self) -> None:
        if self.producerState != "stopped":
            self.producerState = "producing"

    def read(self) -> bytes:
        data = self.value()[self._read :]
        self._read += len(data)
        return data

    def feed(self, data: bytes) -> None:
        assert self.producerState == "producing", "paused: the reactor would not read it"
        assert self.protocol is not None
        self.protocol.dataReceived(data)

    def settle(self) -> bool:
        if self.disconnecting and not self.lost and self.protocol is not None:
            self.lost = True
            reason = error.ConnectionAborted() if self.aborted else error.ConnectionDone()
            self.protocol.connectionLost(Failure(reason))
            return True
        return False

    def drop(self, clean: bool = True) -> None:
        """The remote end went away (FIN and close, or a reset)."""
        self.aborted = not clean
        self.disconnecting = True


