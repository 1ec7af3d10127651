"""One connector link: TLS to a DMZ endpoint, yamux client, and the announcement.

Once TLS is up the connector opens its control stream and announces its name, services and
priority. The link counts as up only when the DMZ accepted; services the DMZ refused are logged.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from twisted.internet import error
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from shield import __version__
from shield.internal.backend import BackendStreamFactory
from shield.link.wire import Announce, AnnounceReply, MessageReader, WireError, encode
from shield.mux import MuxConfig
from shield.mux.protocol import MuxProtocol
from shield.mux.stream import MuxStream
from shield.net import set_no_delay

if TYPE_CHECKING:
    from shield.internal.pool import LinkSlot

log = Logger(namespace="shield.internal.link")


@implementer(IHandshakeListener)
class ConnectorLinkProtocol(MuxProtocol):
    """The connector's side of one link (yamux client: it dialled)."""

    def __init__(self, slot: "LinkSlot", mux_config: MuxConfig) -> None:
        super().__init__(
            client=True,
            config=mux_config,
            stream_factory=BackendStreamFactory(slot.gateway.dialer, lambda: slot.endpoint),
            clock=slot.clock,
        )
        self.slot = slot
        self.accepted = False
        self.services: tuple[str, ...] = ()
        self.dmz_name = ""
        self.connected_at = time.monotonic()
        self.control: MuxStream | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        set_no_delay(self.transport)

    def handshakeCompleted(self) -> None:
        gateway = self.slot.gateway.config
        announce = Announce(
            name=gateway.name,
            priority=gateway.priority,
            version=__version__,
            services=tuple(service.name for service in gateway.services),
        )
        self.control = self.open_stream(ControlClient(self, announce))

    def reply_received(self, reply: AnnounceReply) -> None:
        self.dmz_name = reply.dmz_name
        for service, reason in reply.refused:
            log.warn(
                "link to {endpoint}: DMZ {dmz!r} refused service {service!r}: {reason}",
                endpoint=self.slot.endpoint, dmz=reply.dmz_name, service=service, reason=reason,
            )
        if not reply.accepted:
            log.error(
                "link to {endpoint}: DMZ {dmz!r} refused this connector: {message}",
                endpoint=self.slot.endpoint, dmz=reply.dmz_name, message=reply.message,
            )
            self.transport.loseConnection()
            return
        self.accepted = True
        self.services = reply.services
        log.info(
            "link to {endpoint}: up; DMZ {dmz!r} accepted {services}",
            endpoint=self.slot.endpoint, dmz=reply.dmz_name, services=", ".join(reply.services) or "no services",
        )
        self.slot.link_up(self)

    def go_away(self):  # type: ignore[no-untyped-def]
        """Drain: close the control stream too, so the link closes when the last tunnel ends."""
        closed = super().go_away()
        if self.control is not None:
            self.control.loseConnection()
        return closed

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        terminated = self.session.terminated
        super().connectionLost(reason)
        from shield.tls.contexts import describe_tls_failure

        why = terminated.reason if terminated is not None else describe_tls_failure(reason)
        self.slot.link_lost(self, time.monotonic() - self.connected_at, why)


class ControlClient(Protocol):
    """The connector end of the control stream: sends ANNOUNCE, reads ANNOUNCE_REPLY."""

    def __init__(self, link: ConnectorLinkProtocol, announce: Announce) -> None:
        self.link = link
        self.announce = announce
        self._reader = MessageReader((AnnounceReply,))
        self._done = False

    def connectionMade(self) -> None:
        self.transport.write(encode(self.announce))

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        try:
            reply, _ = self._reader.feed(data)
        except WireError as problem:
            self._done = True
            log.error("link to {endpoint}: bad announce reply: {problem}", endpoint=self.link.slot.endpoint, problem=problem)
            self.link.transport.loseConnection()
            return
        if reply is None:
            return
        self._done = True
        assert isinstance(reply, AnnounceReply)
        self.link.reply_received(reply)
