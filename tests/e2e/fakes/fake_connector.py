"""A connector that links up, announces its services, and then NEVER answers an OPEN.

    python fake_connector.py --connect PORT --cert internal1.pem --ca ca.pem --server-name dmz1
                             --name internal1 --service echo [--service other] [--links 1]

Built from shield's own pieces (mutual TLS contexts, yamux client, shield-link messages), so the
DMZ sees a well-behaved link; only the open requests go unanswered, and their streams are held
open. It prints one line when a link is accepted (or refused) and one per OPEN it received, so a
test can wait on them. Runs until killed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from shield.link.wire import Announce, AnnounceReply, MessageReader, OpenRequest, WireError, encode
from shield.mux import MuxConfig
from shield.mux.protocol import MuxProtocol
from shield.tls.contexts import backplane_client_options, describe_tls_failure


def say(line: str) -> None:
    print(line, flush=True)


class SilentStream(Protocol):
    """A stream the DMZ opened: read the OPEN, print it, never answer, never close."""

    def __init__(self) -> None:
        self._reader = MessageReader((OpenRequest,))
        self._done = False

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        try:
            request, _ = self._reader.feed(data)
        except WireError as problem:
            self._done = True
            say(f"BAD OPEN {problem}")
            return
        if request is None:
            return
        self._done = True
        assert isinstance(request, OpenRequest)
        say(f"OPEN service={request.service} client={request.client} (not answering)")

    def connectionLost(self, reason: Failure) -> None:
        say(f"STREAM CLOSED {reason.getErrorMessage()}")


class SilentStreamFactory(Factory):
    def buildProtocol(self, addr: object) -> SilentStream:
        return SilentStream()


class Control(Protocol):
    def __init__(self, link: "FakeLink") -> None:
        self.link = link
        self._reader = MessageReader((AnnounceReply,))
        self._done = False

    def connectionMade(self) -> None:
        self.transport.write(encode(self.link.announce))

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        reply, _ = self._reader.feed(data)
        if reply is None:
            return
        self._done = True
        assert isinstance(reply, AnnounceReply)
        for service, reason in reply.refused:
            say(f"SERVICE REFUSED {service}: {reason}")
        if reply.accepted:
            say(f"LINK ACCEPTED by {reply.dmz_name} services={','.join(reply.services)}")
        else:
            say(f"LINK REFUSED by {reply.dmz_name}: {reply.message}")


@implementer(IHandshakeListener)
class FakeLink(MuxProtocol):
    def __init__(self, announce: Announce) -> None:
        super().__init__(client=True, config=MuxConfig(), stream_factory=SilentStreamFactory())
        self.announce = announce

    def handshakeCompleted(self) -> None:
        say("TLS UP")
        self.open_stream(Control(self))

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        say(f"LINK LOST {describe_tls_failure(reason)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connect", type=int, required=True, help="DMZ backplane port on 127.0.0.1")
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--server-name", default="dmz1")
    parser.add_argument("--name", default="internal1")
    parser.add_argument("--service", action="append", default=[])
    parser.add_argument("--priority", type=int, default=100)
    parser.add_argument("--links", type=int, default=1)
    args = parser.parse_args()

    announce = Announce(name=args.name, priority=args.priority, version="fake", services=tuple(args.service))
    options = backplane_client_options(args.cert, args.ca, args.server_name)
    endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", args.connect, timeout=10))
    factory = Factory.forProtocol(lambda: FakeLink(announce))

    def failed(failure: Failure) -> None:
        say(f"CONNECT FAILED {describe_tls_failure(failure)}")

    for _ in range(args.links):
        endpoint.connect(factory).addErrback(failed)
    say(f"fake connector {args.name} dialling 127.0.0.1:{args.connect}")
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
