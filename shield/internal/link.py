"""One connector link: TLS to a DMZ endpoint, yamux client, and the announcement.

Once TLS is up the connector opens its control stream and announces its name, services and
priority. The link counts as up only when the DMZ accepted; services the DMZ refused are logged.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from shield.internal.backend import BackendStreamFactory
from shield.link.roles import link_mux, tune_link_socket, why_link_ended
from shield.link.wire import Announce, AnnounceReply, MessageReader, WireError, encode
from shield.mux import MuxConfig
from shield.mux.budget import BufferBudget
from shield.mux.stream import MuxStream
from shield.transports import IStreamTransport

log = Logger(namespace="shield.internal.link")


class LinkHost(TypingProtocol):
    """What a connector link needs from the slot that keeps it up (shield/internal/pool.py)."""

    @property
    def endpoint(self) -> str:
        """The DMZ endpoint's label, for log lines."""

    def announcement(self) -> Announce:
        """What to announce now: the name, priority and the services whose backends are up."""

    def link_up(self, link: "ConnectorLinkEnd") -> None:
        """The DMZ accepted the announcement: the link carries tunnels from now on."""

    def link_lost(self, link: "ConnectorLinkEnd", uptime: float, reason: str) -> None:
        """The link is gone (accepted or not), after ``uptime`` seconds, for ``reason``."""


class ConnectorLinkEnd:
    """The connector's side of one link (yamux client: it dialled); its ``mux`` is the protocol."""

    def __init__(
        self,
        host: LinkHost,
        mux_config: MuxConfig,
        backend_streams: BackendStreamFactory,
        clock: IReactorTime,
        budget: BufferBudget | None = None,
    ) -> None:
        self.host = host
        self.backend_streams = backend_streams
        self.mux = link_mux(
            self, client=True, config=mux_config, stream_factory=backend_streams, clock=clock, budget=budget,
            keepalive_after_handshake=False,
        )  # fmt: skip
        self.accepted = False
        self.services: tuple[str, ...] = ()
        self.dmz_name = ""
        self.clock = clock
        self.connected_at = clock.seconds()
        self.control: MuxStream | None = None

    # -- MuxOwner ------------------------------------------------------------------------------

    def mux_connected(self) -> None:
        tune_link_socket(self.mux)

    def mux_secured(self) -> None:
        self.control = self.mux.open_stream(ControlClient(self, self.host.announcement()))

    def mux_going_away(self) -> None:
        """Drain: close the control stream too, so the link closes when the last tunnel ends."""
        if self.control is not None:
            self.control.loseConnection()

    def stream_rejected(self, stream_id: int, reason: str) -> bool:
        # A stream the mux refuses (RST: max-streams reached, or going away) is counted, and a
        # burst of them is logged once per second, not once per stream as the mux would.
        self.backend_streams.stream_rejected(stream_id, reason, not self.mux.session.local_go_away)
        return True

    def mux_lost(self, reason: Failure) -> None:
        self.backend_streams.stop()
        self.host.link_lost(self, self.clock.seconds() - self.connected_at, why_link_ended(self.mux, reason))

    # -- the announcement ----------------------------------------------------------------------

    def announce_again(self) -> bool:
        """After a reload: tell the DMZ the services and priority of the new configuration."""
        control = self.control
        if control is None or not self.accepted or control.disconnecting:
            return False
        control.write(encode(self.host.announcement()))
        return True

    def reply_received(self, reply: AnnounceReply) -> None:
        endpoint = self.host.endpoint
        self.dmz_name = reply.dmz_name
        for service, reason in reply.refused:
            log.warn(
                "link to {endpoint}: DMZ {dmz!r} refused service {service!r}: {reason}",
                endpoint=endpoint, dmz=reply.dmz_name, service=service, reason=reason,
            )  # fmt: skip
        if not reply.accepted:
            log.error(
                "link to {endpoint}: DMZ {dmz!r} refused this connector: {message}",
                endpoint=endpoint, dmz=reply.dmz_name, message=reply.message,
            )  # fmt: skip
            self.mux.close("refused by the DMZ")
            return
        again, self.accepted = self.accepted, True
        self.services = reply.services
        log.info(
            "link to {endpoint}: {what}; DMZ {dmz!r} accepted {services}",
            endpoint=endpoint, what="announced again" if again else "up", dmz=reply.dmz_name,
            services=", ".join(reply.services) or "no services",
        )  # fmt: skip
        if not again:
            self.host.link_up(self)

    def bad_reply(self, problem: WireError) -> None:
        log.error("link to {endpoint}: bad announce reply: {problem}", endpoint=self.host.endpoint, problem=problem)
        self.mux.close("bad announce reply")

    @property
    def tunnels(self) -> int:
        """Tunnels open on this link (every stream but the control stream, open or already closed)."""
        control = self.control
        return sum(1 for stream in self.mux.streams.values() if stream is not control)


class ControlClient(Protocol):
    """The connector end of the control stream: sends ANNOUNCE, reads ANNOUNCE_REPLY."""

    transport: IStreamTransport  # connected before any event reaches the protocol

    def __init__(self, link: ConnectorLinkEnd, announce: Announce) -> None:
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
                self.link.bad_reply(problem)
                return
            if reply is None:
                return
            self._reader = MessageReader((AnnounceReply,))
            assert isinstance(reply, AnnounceReply)
            self.link.reply_received(reply)
