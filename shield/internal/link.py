"""One connector link: TLS to a DMZ endpoint, yamux client, and the announcement.

Once TLS is up the connector opens its control stream and announces its name, services and
priority. The link counts as up only when the DMZ accepted; services the DMZ refused are logged.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from shield import __version__
from shield.internal.backend import BackendStreamFactory
from shield.link.wire import Announce, AnnounceReply, MessageReader, WireError, encode
from shield.mux import MuxConfig
from shield.mux.events import Event, StreamRejected
from shield.mux.protocol import MuxProtocol
from shield.mux.stream import MuxStream
from shield.net import set_no_delay
from shield.transports import IStreamTransport

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
            stream_factory=BackendStreamFactory(
                slot.gateway.dialer,
                lambda: slot.endpoint,
                max_pending_opens=slot.gateway.config.max_pending_opens,
                clock=slot.clock,
                budget=slot.gateway.budget,
            ),
            clock=slot.clock,
            budget=slot.gateway.budget,
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
        self.control = self.open_stream(ControlClient(self, self._announcement()))

    def _announcement(self) -> Announce:
        gateway = self.slot.gateway.config
        return Announce(
            name=gateway.name,
            priority=gateway.priority,
            version=__version__,
            services=self.slot.gateway.health.up_services(),
        )

    def announce_again(self) -> bool:
        """After a reload: tell the DMZ the services and priority of the new configuration."""
        control = self.control
        if control is None or not self.accepted or control.disconnecting:
            return False
        control.write(encode(self._announcement()))
        return True

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
            self.close("refused by the DMZ")
            return
        again, self.accepted = self.accepted, True
        self.services = reply.services
        log.info(
            "link to {endpoint}: {what}; DMZ {dmz!r} accepted {services}",
            endpoint=self.slot.endpoint, what="announced again" if again else "up", dmz=reply.dmz_name,
            services=", ".join(reply.services) or "no services",
        )  # fmt: skip
        if not again:
            self.slot.link_up(self)

    def _dispatch(self, event: Event) -> None:
        # A stream the mux refuses (RST: max-streams reached, or going away) is counted, and a
        # burst of them is logged once per second, not once per stream as MuxProtocol would.
        if isinstance(event, StreamRejected):
            factory = self.stream_factory
            assert isinstance(factory, BackendStreamFactory)
            factory.stream_rejected(event.stream_id, event.reason, not self.session.local_go_away)
            return
        super()._dispatch(event)

    def go_away(self):
        """Drain: close the control stream too, so the link closes when the last tunnel ends."""
        closed = super().go_away()
        if self.control is not None:
            self.control.loseConnection()
        return closed

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        terminated = self.session.terminated
        super().connectionLost(reason)
        factory = self.stream_factory
        if isinstance(factory, BackendStreamFactory):
            factory.stop()
        from shield.tls.contexts import describe_tls_failure

        why = terminated.reason if terminated is not None else describe_tls_failure(reason)
        self.slot.link_lost(self, time.monotonic() - self.connected_at, why)


class ControlClient(Protocol):
    """The connector end of the control stream: sends ANNOUNCE, reads ANNOUNCE_REPLY."""

    transport: IStreamTransport  # connected before any event reaches the protocol

    def __init__(self, link: ConnectorLinkProtocol, announce: Announce) -> None:
        self.link = link
        self.announce = announce
        self._reader = MessageReader((AnnounceReply,))
        self._done = False

    def connectionMade(self) -> None:
        self.transport.write(encode(self.announce))

    def dataReceived(self, data: bytes) -> None:
        # One reply per ANNOUNCE: the first, and one for each announcement after a reload.
        while data and not self._done:
            try:
                reply, data = self._reader.feed(data)
            except WireError as problem:
                self._done = True
                log.error("link to {endpoint}: bad announce reply: {problem}", endpoint=self.link.slot.endpoint, problem=problem)
                self.link.transport.loseConnection()
                return
            if reply is None:
                return
            self._reader = MessageReader((AnnounceReply,))
            assert isinstance(reply, AnnounceReply)
            self.link.reply_received(reply)
