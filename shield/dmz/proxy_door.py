"""The PROXY protocol at a public port: whose connection this is, when a load balancer says so.

A service with ``proxy-protocol-from`` gets a ``ProxyHeaderFactory`` around its port's own
factory (the TLS one for tls:// and wss://, the site for ws://), so the header is read before
anything else: before TLS, before the HTTP request. Each accepted connection gets a
``ProxyDoor``:

- from a peer in the list (a load balancer), the connection must begin with a v1 or v2 header,
  complete within the service's ``handshake-timeout``. The port's factory then builds the
  protocol with the header's source as the peer, and that protocol runs on a ``RelayedTransport``
  whose ``getPeer``/``getHost`` are the header's source and destination: admission (limits per
  source), logs, authentication, OPEN, balancers and cluster forwards all see the client, never
  the load balancer. A LOCAL or UNKNOWN header (a health check) keeps the socket's addresses.
- from any other peer, the port's protocol takes the connection at once (a server that speaks
  first is not delayed), and the door only looks at the first bytes: those that could still be
  a header (at most 11) are held until they cannot; a v1 prefix or a v2 signature is refused.

A bad, truncated or late header, or a header from a peer not in the list, is refused: the
connection is cut, with one log line (rate-limited, as every refusal) and
``shield_refusals_total{limit="proxy_protocol_..."}``. A connection that closes before sending
a byte is not a refusal (a load balancer's plain TCP health check does that).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum, auto
from ipaddress import IPv4Network, IPv6Network, IPv6Address as IPv6, ip_address
from typing import Any, ClassVar
from typing import Protocol as TypingProtocol

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IProducer, IProtocol, IProtocolFactory
from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from shield.addresses import describe_address, host_of
from shield.deadline import Deadline
from shield.dmz.admission import ClientGate
from shield.handover import Handover
from shield.lifecycle import Lifecycle, Transitions
from shield.proxy_protocol.header import Endpoint, ProxyHeader
from shield.proxy_protocol.parse import HeaderReader, HeaderStart, ProxyProtocolError, header_start
from shield.transports import IStreamTransport

Networks = Sequence[IPv4Network | IPv6Network]

#: ``limit`` labels of ``shield_refusals_total`` for the four ways a door refuses.
MALFORMED = "proxy_protocol_malformed"
TRUNCATED = "proxy_protocol_truncated"
TIMEOUT = "proxy_protocol_timeout"
UNEXPECTED = "proxy_protocol_unexpected"


def trusted(peer: IAddress | None, networks: Networks) -> bool:
    """Whether the socket's peer is in ``networks`` (an IPv4-mapped IPv6 peer counts as IPv4)."""
    try:
        address = ip_address(host_of(peer))
    except ValueError:
        return False
    if isinstance(address, IPv6) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def twisted_address(end: Endpoint) -> IPv4Address | IPv6Address:
    if end.address.version == 4:
        return IPv4Address("TCP", end.host, end.port)
    return IPv6Address("TCP", end.host, end.port)


class Delivery(TypingProtocol):
    """Where a connection's events go: the protocol that has it (a ``Handover``'s ``inner``)."""

    inner: IProtocol | None


@implementer(IStreamTransport)
class RelayedTransport:
    """The socket's transport, seen from the header's ends: ``getPeer`` is the client (the
    header's source), ``getHost`` the address the load balancer accepted it on; the rest is the
    socket's. ``transport`` is the socket's own, for what looks under wrappers (the OS socket,
    TCP_NODELAY, TLS). ``protocol`` is the protocol its events go to, as on a socket: setting it
    hands the connection to another (Autobahn does, from twisted.web's channel to WebSocket)."""

    def __init__(
        self,
        transport: IStreamTransport,
        peer: IPv4Address | IPv6Address,
        host: IPv4Address | IPv6Address,
        delivery: Delivery,
    ) -> None:
        self.transport = transport
        self._peer = peer
        self._host = host
        self._delivery = delivery

    @property
    def protocol(self) -> IProtocol | None:
        return self._delivery.inner

    @protocol.setter
    def protocol(self, protocol: IProtocol) -> None:
        self._delivery.inner = protocol

    def getPeer(self) -> IPv4Address | IPv6Address:
        return self._peer

    def getHost(self) -> IPv4Address | IPv6Address:
        return self._host

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def writeSequence(self, data: Any) -> None:
        self.transport.writeSequence(data)

    def loseConnection(self) -> None:
        self.transport.loseConnection()

    def abortConnection(self) -> None:
        self.transport.abortConnection()

    def loseWriteConnection(self) -> None:
        self.transport.loseWriteConnection()

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    # TCP options: the socket's, when the transport under it has them (a test double may not)
    def getTcpNoDelay(self) -> bool:
        return bool(getattr(self.transport, "getTcpNoDelay", lambda: False)())

    def setTcpNoDelay(self, enabled: bool) -> None:
        getattr(self.transport, "setTcpNoDelay", lambda enabled: None)(enabled)

    def getTcpKeepAlive(self) -> bool:
        return bool(getattr(self.transport, "getTcpKeepAlive", lambda: False)())

    def setTcpKeepAlive(self, enabled: bool) -> None:
        getattr(self.transport, "setTcpKeepAlive", lambda enabled: None)(enabled)

    def getHandle(self) -> Any:
        return getattr(self.transport, "getHandle")()

    @property
    def producer(self) -> IProducer | None:
        return getattr(self.transport, "producer", None)

    @property
    def disconnecting(self) -> bool:
        return bool(getattr(self.transport, "disconnecting", False))

    @property
    def connected(self) -> bool:
        return bool(getattr(self.transport, "connected", True))

    @property
    def bufferSize(self) -> int:  # what shield.net.set_no_delay sets on a socket transport
        return int(getattr(self.transport, "bufferSize"))

    @bufferSize.setter
    def bufferSize(self, size: int) -> None:
        setattr(self.transport, "bufferSize", size)


class DoorState(Enum):
    READING = auto()  # a load balancer's connection: its header is read, within the deadline
    SNIFFING = auto()  # anyone else's: served already; first bytes held while they could be a header
    SERVING = auto()  # the port's protocol has the connection and every byte
    REFUSED = auto()  # cut, with one line
    GONE = auto()  # closed


class DoorEvent(Enum):
    HEADER = auto()  # a complete header arrived
    MALFORMED = auto()  # bytes that are not a valid header
    LATE = auto()  # the deadline passed
    PLAIN = auto()  # the first bytes cannot be a header
    UNEXPECTED = auto()  # a header from a peer not in proxy-protocol-from
    LOST = auto()  # connectionLost


class ProxyDoor(Handover):
    """One accepted connection on a port with ``proxy-protocol-from``.

    Its lifecycle (``LIFECYCLE``; any other event is a ``StateError``):

    ========  ==========  =======  ===================================================
    state     event       next     what happens
    ========  ==========  =======  ===================================================
    READING   HEADER      SERVING  the port's protocol, built for the header's source
    READING   MALFORMED   REFUSED  cut, one line (proxy_protocol_malformed)
    READING   LATE        REFUSED  cut, one line (proxy_protocol_timeout)
    READING   LOST        GONE     one line if part of a header came (truncated)
    SNIFFING  PLAIN       SERVING  the held bytes go to the port's protocol
    SNIFFING  LATE        SERVING  undecided for the whole deadline: the held bytes go on
    SNIFFING  UNEXPECTED  REFUSED  cut, one line (proxy_protocol_unexpected)
    SNIFFING  LOST        GONE     the port's protocol sees the end
    SERVING   LOST        GONE     the port's protocol sees the end
    REFUSED   LOST        GONE
    ========  ==========  =======  ===================================================

    Leaving READING or SNIFFING stops the deadline, whichever way it is left.
    """

    LIFECYCLE: ClassVar[Transitions[DoorState, DoorEvent]] = {
        (DoorState.READING, DoorEvent.HEADER): DoorState.SERVING,
        (DoorState.READING, DoorEvent.MALFORMED): DoorState.REFUSED,
        (DoorState.READING, DoorEvent.LATE): DoorState.REFUSED,
        (DoorState.READING, DoorEvent.LOST): DoorState.GONE,
        (DoorState.SNIFFING, DoorEvent.PLAIN): DoorState.SERVING,
        (DoorState.SNIFFING, DoorEvent.LATE): DoorState.SERVING,
        (DoorState.SNIFFING, DoorEvent.UNEXPECTED): DoorState.REFUSED,
        (DoorState.SNIFFING, DoorEvent.LOST): DoorState.GONE,
        (DoorState.SERVING, DoorEvent.LOST): DoorState.GONE,
        (DoorState.REFUSED, DoorEvent.LOST): DoorState.GONE,
    }

    def __init__(self, factory: "ProxyHeaderFactory", peer: IAddress, served: IProtocol | None) -> None:
        self.door = factory
        self.peer = peer
        self._served = served  # SNIFFING: the port's protocol, built already for the socket's peer
        self._reader = HeaderReader()
        self._held = b""
        self._deadline = Deadline(factory.gate.clock)
        initial = DoorState.READING if served is None else DoorState.SNIFFING
        self._life = Lifecycle(
            "ProxyDoor", self.LIFECYCLE, initial,
            {DoorState.READING: self._deadline.cancel, DoorState.SNIFFING: self._deadline.cancel},
        )  # fmt: skip

    @property
    def state(self) -> DoorState:
        return self._life.state

    def connectionMade(self) -> None:
        self._deadline.start(self.door.timeout, self._late)
        if self._served is not None:
            self.hand_to(self._served)

    def dataReceived(self, data: bytes) -> None:
        state = self._life.state
        if state is DoorState.SERVING:
            assert self.inner is not None
            self.inner.dataReceived(data)
        elif state is DoorState.READING:
            self._read(data)
        elif state is DoorState.SNIFFING:
            self._sniff(data)
        # REFUSED, GONE: dropped

    def _read(self, data: bytes) -> None:
        try:
            result = self._reader.feed(data)
        except ProxyProtocolError as problem:
            self._life.fire(DoorEvent.MALFORMED)
            self._refuse(MALFORMED, f"bad PROXY protocol header: {problem}")
            return
        if result is None:
            return
        header, rest = result
        self._life.fire(DoorEvent.HEADER)
        self._serve(header, rest)

    def _serve(self, header: ProxyHeader, rest: bytes) -> None:
        transport: IStreamTransport | None = None
        peer = self.peer
        if header.source is not None and header.destination is not None:
            source = twisted_address(header.source)
            transport = RelayedTransport(self.transport, source, twisted_address(header.destination), self)
            peer = source
        inner = self.door.wrapped.buildProtocol(peer)
        if inner is None:
            self.transport.abortConnection()
            return
        self.hand_to(inner, rest, transport)

    def _sniff(self, data: bytes) -> None:
        self._held += data
        start = header_start(self._held)
        if start is HeaderStart.UNDECIDED:
            return
        if start is HeaderStart.HEADER:
            self._life.fire(DoorEvent.UNEXPECTED)
            self._refuse(UNEXPECTED, "sent a PROXY protocol header, but is not in proxy-protocol-from")
            return
        self._pass(DoorEvent.PLAIN)

    def _pass(self, event: DoorEvent) -> None:
        self._life.fire(event)
        held, self._held = self._held, b""
        if held:
            assert self.inner is not None
            self.inner.dataReceived(held)

    def _late(self) -> None:
        if self._life.state is DoorState.SNIFFING:
            self._pass(DoorEvent.LATE)
            return
        self._life.fire(DoorEvent.LATE)
        self._refuse(TIMEOUT, f"no complete PROXY protocol header within {self.door.timeout:g} s")

    def _refuse(self, label: str, why: str) -> None:
        self.door.refused(label, f"connection from {describe_address(self.peer)} to {self.door.where}: {why}; closed")
        self.transport.abortConnection()

    def readConnectionLost(self) -> None:
        if self._life.state is DoorState.SNIFFING:
            self._pass(DoorEvent.PLAIN)  # what was held was not a header: the input ended
        super().readConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        before = self._life.state
        self._life.fire(DoorEvent.LOST)
        if before is DoorState.READING and self._reader.buffered:
            self.door.refused(
                TRUNCATED,
                f"connection from {describe_address(self.peer)} to {self.door.where}: closed after "
                f"{self._reader.buffered} bytes of a PROXY protocol header",
            )
        super().connectionLost(reason)


class ProxyHeaderFactory(Factory):
    """What a port with ``proxy-protocol-from`` listens with: a ``ProxyDoor`` per connection,
    in front of the port's own factory (``wrapped``)."""

    noisy = False

    def __init__(
        self, wrapped: IProtocolFactory, networks: Networks, timeout: float, gate: ClientGate, service: str, where: str
    ) -> None:
        self.wrapped = wrapped
        self.networks = tuple(networks)
        self.timeout = timeout
        self.gate = gate
        self.service = service  # the metric's service label: "" for a port several services share
        self.where = where  # the port, for the log: "tcp://127.0.0.1:9000"

    def buildProtocol(self, addr: IAddress | None) -> IProtocol | None:  # type: ignore[override]  # whatever the port's factory makes
        assert addr is not None, "a listening port names the peer"
        if trusted(addr, self.networks):
            return ProxyDoor(self, addr, None)
        served = self.wrapped.buildProtocol(addr)
        if served is None:
            return None
        return ProxyDoor(self, addr, served)

    def refused(self, label: str, line: str) -> None:
        self.gate.metrics.refusals.labels(service=self.service, limit=label).inc()
        self.gate.note(self.service, label, line)

    def startFactory(self) -> None:
        self.wrapped.doStart()

    def stopFactory(self) -> None:
        self.wrapped.doStop()
