"""A compromised DMZ: accepts a connector's links like a real one, then misbehaves on them.

    python hostile_dmz.py --port PORT --cert dmz1.pem --ca ca.pem --scenario NAME [options]

Built from shield's own pieces: real mutual TLS (``backplane_server_context``), the real yamux
server (``MuxProtocol``) and real shield-link messages. It accepts every connector certificate
from ``--ca`` and every ANNOUNCE (ANNOUNCE_REPLY accepted, all announced services), so the
connector sees a DMZ it trusts. What it then does on each accepted link is the scenario:

- ``unknown``: OPENs for unlisted services and, as raw bytes that bypass shield's own encoder,
  names a real DMZ could never send (odd characters, too long, addresses); then one ``echo``.
- ``oversized``: an OPEN of the largest size the envelope allows with a 255-byte name, a
  max-size OPEN that is valid, an OPEN that announces 65535 bytes and stops after 1000, a wrong
  version, 300 KiB of non-shield bytes; then one ``echo``.
- ``window``: breaks the stream window: link 1 sends, after an OPEN for ``--slow-service`` (whose
  backend does not answer, so the connector neither reads nor gives credit), frames that are each
  legal but add up to more than the window; link 2 sends one frame larger than the window.
- ``reuse``: link 1 sends a SYN for a stream id that is open, link 2 one for an id it used and
  closed, link 3 one with the connector's parity (id 1, its control stream).
- ``flood``: ``--rounds`` rounds of ``--streams`` stream opens at once, all for
  ``--slow-service``; prints what each round got back, then one ``echo``.

A scenario misbehaves on the first links only (as many as it has variants); later links behave
(idle, accepted), so a test can see the connector redial and settle. Output, one line each:

    LINK ACCEPTED n=1 from internal1
    RESULT case=nosuch outcome=UNKNOWN_SERVICE reason=...
    RESULT case=name-64 outcome=RESET detail=...
    GOAWAY n=1 code=1
    LINK LOST n=1 reason=...
    ROUND 1 streams=400 OVERLOADED=... RESET=... BACKEND_TIMEOUT=... OK=...
    SCENARIO DONE n=1

Runs until killed.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Generator

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from shield.link.wire import Announce, AnnounceReply, MessageReader, OpenReply, OpenRequest, WireError, encode
from shield.mux import MuxConfig
from shield.mux.frames import Flag, FrameType, encode_header
from shield.mux.protocol import MuxProtocol
from shield.tls.contexts import backplane_server_context, describe_tls_failure
from shield.tls.identity import peer_identity

PROBE = b"probe through the tunnel\n"
WINDOW = 256 * 1024


def say(line: str) -> None:
    print(line, flush=True)


def raw_open(service: bytes, client: bytes = b"192.0.2.7:4321", metadata: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """An OPEN built byte by byte, so it can carry what shield's encoder refuses to write."""
    body = bytes([len(service)]) + service + bytes([len(client)]) + client + bytes([len(metadata)])
    for key, value in metadata:
        body += bytes([len(key)]) + key + len(value).to_bytes(2, "big") + value
    assert len(body) <= 0xFFFF
    return b"SH\x01\x03" + len(body).to_bytes(2, "big") + body


def open_for(service: str) -> bytes:
    return encode(OpenRequest(service=service, client="192.0.2.7:4321", metadata=(("transport", "tcp"),)))


class Control(Protocol):
    """The connector's control stream: read ANNOUNCE, accept everything."""

    def __init__(self, link: "HostileLink") -> None:
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
        reply = AnnounceReply(accepted=True, dmz_name=self.link.dmz_name, services=announce.services, refused=(), message="")
        self.transport.write(encode(reply))
        self.link.accepted(announce)


class ControlFactory(Factory):
    def __init__(self, link: "HostileLink") -> None:
        self.link = link

    def buildProtocol(self, addr: object) -> Protocol | None:
        return Control(self.link)


class Probe(Protocol):
    """One stream: send ``header`` (and maybe more), report what the connector did with it.

    ``outcome`` fires with ``(outcome, detail)``: the OPEN_REPLY status name and its reason, or
    ``RESET`` / ``CLOSED`` when the stream ended without a reply. With ``echo`` an OK reply is
    followed by a probe line that must come back.
    """

    def __init__(self, header: bytes, echo: bool = False, after: bytes = b"", keep: bool = False) -> None:
        self.header = header
        self.after = after
        self.echo = echo
        self.keep = keep  # an OK stream stays open (else it is closed once answered)
        self.outcome: Deferred[tuple[str, str]] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self._reader = MessageReader((OpenReply,))
        self._reply: OpenReply | None = None
        self._data = b""

    def connectionMade(self) -> None:
        if self.header:
            self.transport.write(self.header)
        if self.after:
            self.transport.write(self.after)

    def _fire(self, outcome: str, detail: str) -> None:
        if not self.outcome.called:
            self.outcome.callback((outcome, detail))

    def dataReceived(self, data: bytes) -> None:
        if self._reply is None:
            try:
                reply, data = self._reader.feed(data)
            except WireError as problem:
                self._fire("BAD_REPLY", str(problem))
                self.transport.abortConnection()
                return
            if reply is None:
                return
            assert isinstance(reply, OpenReply)
            self._reply = reply
            if reply.status.name != "OK" or not self.echo:
                self._fire(reply.status.name, reply.reason)
                if reply.status.name != "OK" or not self.keep:
                    self.transport.loseConnection()
                return
            self.transport.write(PROBE)
        self._data += data
        if self.echo and len(self._data) >= len(PROBE) and not self.outcome.called:
            self._fire("OK", f"echoed={self._data == PROBE}")
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        message = reason.getErrorMessage()
        self._fire("RESET" if "reset" in message else "CLOSED", message)
        self.ended.callback(None)


@implementer(IHandshakeListener)
class HostileLink(MuxProtocol):
    def __init__(self, server: "HostileDmz") -> None:
        super().__init__(client=False, config=MuxConfig(), stream_factory=ControlFactory(self), clock=reactor)
        self.server = server
        self.dmz_name = server.name
        self.number = 0

    def handshakeCompleted(self) -> None:
        say(f"TLS UP identity={peer_identity(self.transport)}")

    def accepted(self, announce: Announce) -> None:
        self.number = self.server.links = self.server.links + 1
        say(f"LINK ACCEPTED n={self.number} from {announce.name} services={','.join(announce.services)}")
        self.when_peer_goes_away().addCallback(lambda code: say(f"GOAWAY n={self.number} code={code}"))
        reactor.callLater(self.server.args.start_after, self.server.run_scenario, self)

    def raw(self, data: bytes) -> None:
        """Bytes on the wire behind everything the session has queued, bypassing its rules."""
        self._flush()
        self.transport.write(data)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        say(f"LINK LOST n={self.number} reason={self._close_reason or describe_tls_failure(reason)}")


def result(case: str, outcome: tuple[str, str]) -> None:
    kind, detail = outcome
    key = "detail" if kind in ("RESET", "CLOSED") else "reason"
    say(f"RESULT case={case} outcome={kind} {key}={detail}")


@inlineCallbacks
def probe(link: HostileLink, header: bytes, echo: bool = False, after: bytes = b"") -> Generator[Any, Any, tuple[str, str]]:
    stream = Probe(header, echo, after)
    link.open_stream(stream)
    outcome = yield stream.outcome
    return outcome


class HostileDmz(Factory):
    def __init__(self, args: argparse.Namespace) -> None:
        self.name = args.name
        self.args = args
        self.links = 0

    def buildProtocol(self, addr: object) -> HostileLink:
        return HostileLink(self)

    def run_scenario(self, link: HostileLink) -> None:
        scenario = getattr(self, f"scenario_{self.args.scenario}")
        running = scenario(link, link.number)
        running.addCallback(lambda _: say(f"SCENARIO DONE n={link.number}"))
        running.addErrback(lambda failure: say(f"SCENARIO FAILED n={link.number}: {failure.getErrorMessage()}"))

    # -- unlisted services and names no real DMZ sends ------------------------------------------

    @inlineCallbacks
    def scenario_unknown(self, link: HostileLink, n: int):  # type: ignore[no-untyped-def]
        if n > 1:
            return
        cases: list[tuple[str, bytes]] = [
            ("nosuch", open_for("nosuch")),
            ("admin", open_for("admin")),
            ("ECHO", open_for("ECHO")),
            ("echo.internal", open_for("echo.internal")),
            ("name-63", open_for("x" * 63)),
            ("name-64", raw_open(b"x" * 64)),
            ("name-255", raw_open(b"a" * 255)),
            ("empty", raw_open(b"")),
            ("path", raw_open(b"../../etc/passwd")),
            # Addresses where the test listens (a canary): a connector that dialled them would show.
            ("host-port", raw_open(f"127.0.0.1:{self.args.canary}".encode())),
            ("uri", raw_open(f"tcp://127.0.0.1:{self.args.canary}".encode())),
            ("newline", raw_open(b"echo\n")),
            ("nul", raw_open(b"echo\x00")),
            ("escape", raw_open(b"\x1b[31mecho")),
            ("utf8", raw_open("écho".encode())),
            ("bad-utf8", raw_open(b"ech\xff")),
            ("length-lies", b"SH\x01\x03\x00\x05\xffecho"),
        ]
        for case, header in cases:
            result(case, (yield probe(link, header)))
        result("echo", (yield probe(link, open_for("echo"), echo=True)))

    # -- oversized and unfinished OPEN headers ---------------------------------------------------

    @inlineCallbacks
    def scenario_oversized(self, link: HostileLink, n: int):  # type: ignore[no-untyped-def]
        if n > 1:
            return
        # Announces its whole 65535-byte body, sends 1000 bytes of it, then nothing: runs alongside.
        unfinished = probe(link, (b"SH\x01\x03\xff\xff" + b"\x04echo" + b"\x00" * 995))
        value = 0xFFFF - (1 + 255 + 1 + 1 + 2 + 2)
        big_bad = raw_open(b"a" * 255, b"", ((b"k", b"v" * value),))
        assert len(big_bad) == 6 + 0xFFFF
        value = 0xFFFF - (1 + 4 + 1 + 1 + 2 + 2)
        big_good = raw_open(b"echo", b"", ((b"k", b"v" * value),))
        assert len(big_good) == 6 + 0xFFFF
        cases: list[tuple[str, bytes, bool]] = [
            ("max-size-long-name", big_bad, False),
            ("max-size-valid", big_good, True),
            ("wrong-version", b"SH\x02\x03\x00\x08" + b"\x04echo\x00\x00", False),
            ("not-shield-300KiB", b"A" * (300 * 1024), False),
        ]
        for case, header, echo in cases:
            result(case, (yield probe(link, header, echo=echo)))
        result("unfinished-header", (yield unfinished))
        result("echo", (yield probe(link, open_for("echo"), echo=True)))
        rtt = yield link.ping()
        say(f"LINK STILL UP n={n} rtt={rtt * 1000:.1f}ms")

    # -- window violations -----------------------------------------------------------------------

    @inlineCallbacks
    def scenario_window(self, link: HostileLink, n: int):  # type: ignore[no-untyped-def]
        if n == 1:
            # Each frame is legal; together they overrun the window of a stream the connector is
            # not reading (its backend is still being dialled, so it gives no credit back).
            header = open_for(self.args.slow_service)
            stream = Probe(header)
            transport = link.open_stream(stream)
            yield deferLater(reactor, 0.5, lambda: None)
            frames = b""
            for _ in range(WINDOW // (64 * 1024) + 1):
                frames += encode_header(FrameType.DATA, Flag.NONE, transport.stream_id, 64 * 1024) + b"w" * (64 * 1024)
            say(f"SENDING n={n} {len(frames)} bytes of data frames on stream {transport.stream_id} (window {WINDOW})")
            link.raw(frames)
        elif n == 2:
            stream = Probe(open_for("echo"), keep=True)
            transport = link.open_stream(stream)
            result("open-before-overrun", (yield stream.outcome))
            say(f"SENDING n={n} one data frame of {WINDOW + 1} bytes on stream {transport.stream_id}")
            link.raw(encode_header(FrameType.DATA, Flag.NONE, transport.stream_id, WINDOW + 1) + b"w" * (WINDOW + 1))

    # -- stream id reuse -------------------------------------------------------------------------

    @inlineCallbacks
    def scenario_reuse(self, link: HostileLink, n: int):  # type: ignore[no-untyped-def]
        if n == 1:
            stream = Probe(open_for("echo"), keep=True)
            transport = link.open_stream(stream)
            result("open-before-reuse", (yield stream.outcome))
            say(f"SENDING n={n} SYN for stream {transport.stream_id}, which is open")
            link.raw(encode_header(FrameType.WINDOW_UPDATE, Flag.SYN, transport.stream_id, 0))
        elif n == 2:
            stream = Probe(open_for("nosuch"))
            transport = link.open_stream(stream)
            result("closed-before-reuse", (yield stream.outcome))
            yield stream.ended
            yield deferLater(reactor, 0.3, lambda: None)
            say(f"SENDING n={n} SYN for stream {transport.stream_id}, which was used and closed")
            link.raw(encode_header(FrameType.WINDOW_UPDATE, Flag.SYN, transport.stream_id, 0) + open_for("echo"))
        elif n == 3:
            say(f"SENDING n={n} SYN for stream 1, the connector's own id (its control stream)")
            link.raw(encode_header(FrameType.WINDOW_UPDATE, Flag.SYN, 1, 0))

    # -- a flood of stream opens -----------------------------------------------------------------

    @inlineCallbacks
    def scenario_flood(self, link: HostileLink, n: int):  # type: ignore[no-untyped-def]
        if n > 1:
            return
        header = open_for(self.args.slow_service)
        for round_ in range(1, self.args.rounds + 1):
            streams = [Probe(header) for _ in range(self.args.streams)]
            for stream in streams:
                link.open_stream(stream)
            outcomes = yield DeferredList([stream.outcome for stream in streams])
            counts = Counter(outcome[0] for ok, outcome in outcomes)
            yield DeferredList([stream.ended for stream in streams])
            say(
                f"ROUND {round_} streams={len(streams)} "
                + " ".join(f"{kind}={count}" for kind, count in sorted(counts.items()))
            )
            if self.args.pause:
                yield deferLater(reactor, self.args.pause, lambda: None)
        say(f"FLOOD DONE n={n}")
        result("echo", (yield probe(link, open_for("echo"), echo=True)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True, help="backplane port on 127.0.0.1")
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--name", default="dmz1")
    parser.add_argument("--scenario", required=True, choices=["unknown", "oversized", "window", "reuse", "flood"])
    parser.add_argument("--canary", type=int, default=22, help="a port the test listens on: names in OPENs point at it")
    parser.add_argument("--slow-service", default="slow", help="a service whose backend never answers")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--streams", type=int, default=400)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between flood rounds")
    parser.add_argument("--start-after", type=float, default=0.2, help="seconds from a link's acceptance to its scenario")
    args = parser.parse_args()

    context = backplane_server_context(args.cert, args.ca, lambda identity: True)
    factory = TLSMemoryBIOFactory(context, False, HostileDmz(args))

    def listening(port: object) -> None:
        say(f"hostile DMZ {args.name} ({args.scenario}) listening on 127.0.0.1:{args.port}")

    def failed(failure: Failure) -> None:
        say(f"LISTEN FAILED {failure.getErrorMessage()}")
        reactor.stop()

    TCP4ServerEndpoint(reactor, args.port, interface="127.0.0.1").listen(factory).addCallbacks(listening, failed)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
