"""Finding peers by UDP multicast (``[dmz.cluster] connect = "udp://GROUP:PORT"``).

Each member says "cluster C, member N, links at tls://IP:PORT" to the group every heartbeat
interval; a member that hears an unknown peer of its own cluster dials it. Discovery only finds
peers: the link is then mutual TLS like any other, so a forged datagram can at most make this
member attempt a handshake, and only to the address the datagram came from.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IMulticastTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from shield.config.errors import ConfigError
from shield.config.model import Uri
from shield.config.uris import parse_uri
from shield.transports import IGatewayReactor

if TYPE_CHECKING:
    from shield.cluster.node import ClusterNode

log = Logger(namespace="shield.cluster.discovery")

MAX_DATAGRAM = 1024


class MulticastDiscovery(DatagramProtocol):
    transport: IMulticastTransport  # listenMulticast's port, there before startProtocol

    def __init__(self, node: "ClusterNode", group: Uri, accept: Uri, reactor: IGatewayReactor) -> None:
        self.node = node
        self.group = group
        self.accept = accept
        self.reactor = reactor
        self._announce: LoopingCall | None = None
        self._port = None
        self._heard: set[str] = set()
        self._complained = False

    def start(self) -> None:
        self._port = self.reactor.listenMulticast(self.group.port, self, listenMultiple=True)  # type: ignore[attr-defined]  # IReactorMulticast; every reactor shield installs has it

    def startProtocol(self) -> None:
        interface = self.accept.host
        self.transport.setOutgoingInterface(interface)
        self.transport.setLoopbackMode(True)  # members on one host hear each other
        self.transport.setTTL(1)  # discovery stays on the local network
        self.transport.joinGroup(self.group.host, interface).addErrback(self._join_failed)
        self._announce = LoopingCall(self.announce)
        self._announce.clock = self.reactor
        self._announce.start(self.node.config.heartbeat_interval, now=True)
        log.info("cluster discovery on {group} via {interface}", group=str(self.group), interface=interface)

    def _join_failed(self, failure: object) -> None:
        log.error("cluster discovery: cannot join {group}: {why}", group=str(self.group), why=getattr(failure, "getErrorMessage", lambda: failure)())

    def announce(self) -> None:
        message = {"type": "shield-member", "cluster": self.node.cluster_name, "name": self.node.own_name, "accept": str(self.accept)}
        try:
            self.transport.write(json.dumps(message).encode(), (self.group.host, self.group.port))
        except OSError as problem:
            if not self._complained:
                self._complained = True
                log.warn("cluster discovery: cannot send to {group}: {p}", group=str(self.group), p=problem)

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) > MAX_DATAGRAM:
            return
        try:
            message = json.loads(data.decode("utf-8"))
            if not isinstance(message, dict) or message.get("type") != "shield-member":
                return
            if message.get("cluster") != self.node.cluster_name or message.get("name") == self.node.own_name:
                return
            accept = parse_uri(str(message.get("accept")), ("tls",), "accept")
        except (UnicodeDecodeError, ValueError, ConfigError):
            return
        if accept.host != addr[0]:
            return  # a member announces only its own address
        key = str(accept)
        if key not in self._heard:
            self._heard.add(key)
            log.info("cluster discovery: found member {name} at {uri}", name=str(message.get("name"))[:64], uri=key)
        self.node.dial(accept)

    def stop(self) -> None:
        if self._announce is not None and self._announce.running:
            self._announce.stop()
        if self._port is not None:
            self._port.stopListening()
