"""A DMZ that accepts one connector link, then asks it for services it may not have.

    python fake_dmz.py --port PORT --cert dmz1.pem --ca ca.pem --open nosuch --open echo

Built from shield's own pieces (mutual TLS context, yamux server, shield-link messages). It accepts
every connector certificate from ``--ca`` and every announcement (ANNOUNCE_REPLY accepted, with
all announced services), then, on the first accepted link, opens one stream per ``--open`` in
order, each headed by an OPEN naming that service, and prints the connector's OPEN_REPLY:

    OPEN_REPLY service=nosuch status=UNKNOWN_SERVICE reason=...

For an OK reply it sends a probe line through the tunnel and prints what came back
(``DATA service=echo ...``), then half-closes and goes on with the next ``--open``. It prints
``ALL OPENS DONE`` at the end and keeps running (the link stays up) until killed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IHandshakeListener, IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from shield.link.wire import Announce, AnnounceReply, MessageReader, OpenReply, OpenRequest, encode
from shield.mux import MuxConfig
from shield.mux.protocol import MuxProtocol
from shield.tls.contexts import backplane_server_context, describe_tls_failure
from shield.tls.identity import peer_identity

PROBE = b"probe through the tunnel\n"


def say(line: str) -> None:
    print(line, flush=True)


class Control(Protocol):
    """The connector's control stream: read ANNOUNCE, accept everything."""

    def __init__(self, link: "FakeDmzLink") -> None:
        self.link = link
        self._reader = MessageReader((Announce,))
        self._done = False

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        announce, _ = self._reader.feed(data)
        if announce is None:
            return
        self._done = True
        assert isinstance(announce, Announce)
        say(f"ANNOUNCE name={announce.name} services={','.join(announce.services)} priority={announce.priority}")
        reply = AnnounceReply(
            accepted=True, dmz_name=self.link.dmz_name, services=announce.services, refused=(), message=""
        )
        self.transport.write(encode(reply))
        say(f"LINK ACCEPTED from {announce.name}")
        self.link.accepted()


class ControlFactory(Factory):
    def __init__(self, link: "FakeDmzLink") -> None:
        self.link = link

    def buildProtocol(self, addr: object) -> Protocol | None:
        return Control(self.link)


@implementer(IHalfCloseableProtocol)
class OpenProbe(Protocol):
    """One stream: OPEN ``service``; print the reply; for OK, probe the tunnel with a line."""

    def __init__(self, service: str, finished: Callable[[], None]) -> None:
        self.service = service
        self._finished = finished
        self._reader = MessageReader((OpenReply,))
        self._reply: OpenReply | None = None
        self._data = b""
        self._done = False

    def connectionMade(self) -> None:
        request = OpenRequest(service=self.service, client="192.0.2.7:4321", metadata=(("transport", "tcp"),))
        self.transport.write(encode(request))
        say(f"OPEN sent service={self.service}")

    def dataReceived(self, data: bytes) -> None:
        if self._reply is None:
            reply, rest = self._reader.feed(data)
            if reply is None:
                return
            assert isinstance(reply, OpenReply)
            self._reply = reply
            say(f"OPEN_REPLY service={self.service} status={reply.status.name} reason={reply.reason}")
            if reply.status.name != "OK":
                self.transport.loseConnection()  # the connector ended it; close our side too
                self._next()
                return
            self.transport.write(PROBE)
            data = rest
        self._data += data
        if len(self._data) >= len(PROBE) and not self._done:
            say(f"DATA service={self.service} echoed={self._data == PROBE}")
            self.transport.loseWriteConnection()
            self._next()

    def _next(self) -> None:
        if not self._done:
            self._done = True
            self._finished()

    def readConnectionLost(self) -> None:
        pass

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        if self._reply is None:
            say(f"OPEN_REPLY service={self.service} status=NONE reason=stream lost: {reason.getErrorMessage()}")
        say(f"STREAM CLOSED service={self.service}")
        self._next()


@implementer(IHandshakeListener)
class FakeDmzLink(MuxProtocol):
    def __init__(self, server: "FakeDmz") -> None:
        super().__init__(client=False, config=MuxConfig(), stream_factory=ControlFactory(self))
        self.server = server
        self.dmz_name = server.name

    def handshakeCompleted(self) -> None:
        say(f"TLS UP identity={peer_identity(self.transport)}")

    def accepted(self) -> None:
        if not self.server.probing:
            self.server.probing = True
            self.server.probe(self, list(self.server.opens))

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        say(f"LINK LOST {describe_tls_failure(reason)}")


class FakeDmz(Factory):
    def __init__(self, name: str, opens: list[str]) -> None:
        self.name = name
        self.opens = opens
        self.probing = False

    def buildProtocol(self, addr: object) -> FakeDmzLink:
        return FakeDmzLink(self)

    def probe(self, link: FakeDmzLink, remaining: list[str]) -> None:
        if not remaining:
            say("ALL OPENS DONE")
            return
        service = remaining.pop(0)
        link.open_stream(OpenProbe(service, lambda: reactor.callLater(0, self.probe, link, remaining)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True, help="backplane port on 127.0.0.1")
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--name", default="dmz1")
    parser.add_argument("--open", action="append", default=[], help="service to OPEN, in order")
    args = parser.parse_args()

    context = backplane_server_context(args.cert, args.ca, lambda identity: True)
    factory = TLSMemoryBIOFactory(context, False, FakeDmz(args.name, args.open))

    def listening(port: object) -> None:
        say(f"fake DMZ {args.name} listening on 127.0.0.1:{args.port}")

    def failed(failure: Failure) -> None:
        say(f"LISTEN FAILED {failure.getErrorMessage()}")
        reactor.stop()

    TCP4ServerEndpoint(reactor, args.port, interface="127.0.0.1").listen(factory).addCallbacks(listening, failed)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
