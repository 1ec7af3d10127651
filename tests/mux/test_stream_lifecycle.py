"""A stream's lifecycle: the documented tables, illegal events, and random lives end to end.

Two MuxProtocols joined in memory (twisted.test.iosim, a fake clock; no sockets). The state
machine test drives both ends of one stream through random sequences of what their protocols and
the link can do, and checks what a user of the transport relies on.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from twisted.internet import error
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from shield.mux.config import MuxConfig
from shield.mux.errors import StreamStateError
from shield.mux.protocol import MuxProtocol
from shield.mux.stream import (
    RECEIVE_TRANSITIONS,
    SEND_TRANSITIONS,
    MuxStream,
    ReceiveState,
    SendState,
    StreamEvent,
)

from test_adapter import Link, Recorder, collecting_factory

CONFIG = MuxConfig(keepalive_interval=0)


class Observer(Protocol):
    """A protocol that cannot half-close, noting what reached it and when."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.eofs = 0
        self.write_closes = 0
        self.losses: list[Failure] = []
        self.violations: list[str] = []

    def dataReceived(self, data: bytes) -> None:
        if self.eofs or self.losses or self.transport.disconnecting:
            ended = "connectionLost" if self.losses else "readConnectionLost" if self.eofs else "loseConnection"
            self.violations.append(f"{len(data)} bytes delivered after {ended}")
        self.received += data

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.losses.append(reason)


@implementer(IHalfCloseableProtocol)
class HalfCloseObserver(Observer):
    def readConnectionLost(self) -> None:
        self.eofs += 1

    def writeConnectionLost(self) -> None:
        self.write_closes += 1


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.paused = False
        self.stops = 0

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stops += 1


# -- the tables ------------------------------------------------------------------------------------


def documented_table(corner: str) -> dict[tuple[str, str], str]:
    """The table in MuxStream's docstring whose top-left cell is ``corner``: (state, event) -> next."""
    assert MuxStream.__doc__ is not None
    lines = [line.strip() for line in MuxStream.__doc__.splitlines()]
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == [corner])
    states = lines[header].split()[1:]
    assert set(lines[header + 1]) == {"=", " "}, "a rule line follows the header"
    table: dict[tuple[str, str], str] = {}
    for line in lines[header + 2 :]:
        if set(line) <= {"=", " "}:
            break
        event, *cells = line.split()
        assert len(cells) == len(states), line
        table.update({(state, event): cell for state, cell in zip(states, cells) if cell != "-"})
    return table


@pytest.mark.parametrize(
    ("corner", "transitions", "states"),
    [("send", SEND_TRANSITIONS, SendState), ("receive", RECEIVE_TRANSITIONS, ReceiveState)],
)
def test_the_docstring_tables_are_the_transition_tables(corner: str, transitions: dict, states: type) -> None:
    documented = documented_table(corner)
    assert documented == {(state.label, event.value): after.label for (state, event), after in transitions.items()}
    assert {state for state, _ in documented} == {state.label for state in states}, "a column per state"


def test_every_event_drives_at_least_one_half() -> None:
    named = {event for _, event in SEND_TRANSITIONS} | {event for _, event in RECEIVE_TRANSITIONS}
    assert named == set(StreamEvent)


def open_stream(server_kind: type[Protocol] = HalfCloseObserver) -> tuple[Link, HalfCloseObserver, MuxStream, Protocol]:
    factory, accepted = collecting_factory(server_kind)
    link = Link(server_factory=factory, config=CONFIG)
    client = HalfCloseObserver()
    stream = link.client.open_stream(client)
    link.run()
    return link, client, stream, accepted[0]


def test_an_event_the_table_does_not_allow_raises_and_moves_nothing() -> None:
    link, client, stream, server = open_stream()
    server.transport.write(b"all of it")
    server.transport.loseWriteConnection()
    link.run()
    assert (stream.send_state, stream.receive_state) == (SendState.OPEN, ReceiveState.EOF_DELIVERED)

    with pytest.raises(StreamStateError, match="peer_fin is not allowed while sending is open and receiving is eof_delivered"):
        stream.remote_ended()
    with pytest.raises(StreamStateError, match="data is not allowed"):
        stream.data_received(b"after the end")
    with pytest.raises(StreamStateError, match="fin_sent is not allowed"):
        stream._transition(StreamEvent.FIN_SENT)  # no FIN was asked for
    assert (stream.send_state, stream.receive_state) == (SendState.OPEN, ReceiveState.EOF_DELIVERED)
    assert bytes(client.received) == b"all of it" and client.eofs == 1

    stream.abortConnection()
    with pytest.raises(StreamStateError, match="peer_reset is not allowed while sending is closed"):
        stream.reset_by_peer("a reset for a stream that is gone")
    stream.abortConnection()  # as on any closed transport: nothing happens
    stream.loseConnection()
    stream.session_lost("the link went down under a stream closed just before")
    assert len(client.losses) == 1 and client.losses[0].check(error.ConnectionAborted)


# -- regressions found while writing the tables down --------------------------------------------------


def test_lose_connection_while_the_peers_end_waits_behind_a_paused_consumer_still_finishes() -> None:
    """A slow client hangs up after the backend has finished: the stream must not linger.

    The consumer paused the stream, so the peer's last data and FIN wait in the inbox; then the
    protocol calls loseConnection (its consumer is gone and will never resume it).
    """
    factory, accepted = collecting_factory()
    link = Link(server_factory=factory)
    client = Recorder()
    stream = link.client.open_stream(client)
    link.run()
    server = accepted[0]
    stream.pauseProducing()
    server.transport.write(b"the last words")
    server.transport.loseWriteConnection()
    link.run()
    assert stream.buffered_inbound == len(b"the last words") and not client.read_closed

    stream.loseConnection()
    link.run()

    assert client.lost is not None and client.lost.check(error.ConnectionDone)
    assert link.client.streams == {}
    assert bytes(client.received) == b"" and not client.read_closed  # it hung up: nothing more
    assert link.client.budget.held == 0


def test_a_stream_finished_while_another_flushes_is_skipped() -> None:
    """One stream's FIN makes its protocol abort a second stream that has data queued in the
    same flush: the flush goes on with the streams that are left."""
    factory, accepted = collecting_factory()
    link = Link(server_factory=factory)
    first, second = Recorder(), Recorder()
    first_stream = link.client.open_stream(first)
    second_stream = link.client.open_stream(second)
    link.run()
    first.writeConnectionLost = second_stream.abortConnection  # type: ignore[method-assign]
    first_stream.loseWriteConnection()
    second_stream.write(b"never sent")
    link.run()
    assert second.lost is not None and second.lost.check(error.ConnectionAborted)
    assert accepted[0].read_closed
    assert bytes(accepted[1].received) == b""


def test_credit_for_data_dropped_by_lose_connection_reaches_the_peer() -> None:
    """The protocol hangs up with a window's worth parked and its FIN already out: the credit for
    the dropped bytes must be sent, or the peer can never finish writing and send its own FIN."""
    factory, accepted = collecting_factory()
    link = Link(server_factory=factory)
    client = Recorder()
    stream = link.client.open_stream(client)
    link.run()
    server = accepted[0]
    server.transport.pauseProducing()
    stream.write(b"x" * 300_000)  # more than the window: the rest waits for credit
    link.run()
    assert stream.buffered_outbound > 0
    server.transport.loseWriteConnection()
    link.run()

    server.transport.loseConnection()  # drops what it parked
    stream.loseWriteConnection()
    link.run()

    assert stream.buffered_outbound == 0
    assert client.lost is not None and client.lost.check(error.ConnectionDone)
    assert server.lost is not None and server.lost.check(error.ConnectionDone)
    assert "in time" not in server.lost.getErrorMessage()  # a clean close, no time passed


def test_lose_connection_after_our_fin_still_gives_the_peer_only_the_close_timeout() -> None:
    factory, accepted = collecting_factory()
    link = Link(server_factory=factory)
    client = Recorder()
    stream = link.client.open_stream(client)
    link.run()
    stream.loseWriteConnection()
    link.run()
    stream.loseConnection()  # the FIN is out already; the peer never closes its side
    link.run()
    link.clock.advance(link.client.config.stream_close_timeout)
    link.run()
    assert client.lost is not None and "did not close the stream in time" in client.lost.getErrorMessage()
    assert link.client.streams == {}
    assert accepted[0].lost is not None and "reset" in accepted[0].lost.getErrorMessage()


# -- random lives ----------------------------------------------------------------------------------------

PATTERN = bytes(range(251)) * 1300  # any write of SIZES, from any offset in the cycle
SIZES = st.sampled_from([1, 17, 4096, 100_000, 300_000])  # the last is more than a window


@dataclass
class End:
    """One end of the stream: its protocol, and what the test did to it."""

    name: str
    mux: MuxProtocol
    observer: Observer
    stream: MuxStream
    written: bytearray = field(default_factory=bytearray)  # everything the protocol wrote, in order
    accepted: int = 0  # how much of it a transport must take: what came before loseWriteConnection and the FIN
    write_closed: bool = False
    fins: int = 0
    queued_at_fin: list[int] = field(default_factory=list)
    finished_calls: int = 0
    producer: Producer | None = None

    @property
    def finished(self) -> bool:
        return bool(self.observer.losses)

    def watch(self) -> None:
        """Count the FINs this end's session frames and the host's stream_finished calls."""
        end_stream, stream_finished = self.mux.session.end_stream, self.mux.stream_finished

        def counting_end_stream(stream_id: int) -> bool:
            if stream_id == self.stream.stream_id:
                self.fins += 1
                self.queued_at_fin.append(self.stream.buffered_outbound)
            return end_stream(stream_id)

        def counting_stream_finished(stream: MuxStream) -> None:
            if stream is self.stream:
                self.finished_calls += 1
            stream_finished(stream)

        self.mux.session.end_stream = counting_end_stream  # type: ignore[method-assign]
        self.mux.stream_finished = counting_stream_finished  # type: ignore[method-assign]


class StreamLives(RuleBasedStateMachine):
    """Both ends of one stream, each written to, closed, paused and reset at random."""

    def __init__(self) -> None:
        super().__init__()
        self.link: Link
        self.ends: dict[bool, End] = {}

    @initialize(client_half_closes=st.booleans(), server_half_closes=st.booleans(), hang_up_at_the_end=st.booleans())
    def setup(self, client_half_closes: bool, server_half_closes: bool, hang_up_at_the_end: bool) -> None:
        self.hang_up_at_the_end = hang_up_at_the_end
        self.server_kind: list[type[Observer]] = []
        self.link = Link(server_factory=self.ServerFactory(self), config=CONFIG)
        self.open(client_half_closes, server_half_closes)

    class ServerFactory(Factory):
        def __init__(self, machine: StreamLives) -> None:
            self.machine = machine

        def buildProtocol(self, addr: object) -> Observer:
            return self.machine.server_kind.pop()()

    def open(self, client_half_closes: bool, server_half_closes: bool) -> None:
        kind = {True: HalfCloseObserver, False: Observer}
        self.server_kind.append(kind[server_half_closes])
        client = kind[client_half_closes]()
        stream = self.link.client.open_stream(client)
        self.link.run()
        server = self.link.server.streams[stream.stream_id].protocol
        assert isinstance(server, Observer) and isinstance(server.transport, MuxStream)
        self.ends = {
            True: End("client", self.link.client, client, stream),
            False: End("server", self.link.server, server, server.transport),
        }
        for end in self.ends.values():
            end.watch()

    @precondition(lambda self: all(end.finished for end in self.ends.values()))
    @rule(client_half_closes=st.booleans(), server_half_closes=st.booleans())
    def next_stream(self, client_half_closes: bool, server_half_closes: bool) -> None:
        """Both ends are done (and were checked on the way): a new stream, on a new link if need be."""
        if not (self.link.client.is_open and self.link.server.is_open):
            self.link = Link(server_factory=self.ServerFactory(self), config=CONFIG)
        self.open(client_half_closes, server_half_closes)

    # -- what a protocol does ---------------------------------------------------------------------

    @rule(client=st.booleans(), size=SIZES)
    def write(self, client: bool, size: int) -> None:
        end = self.ends[client]
        start = len(end.written) % 251
        data = PATTERN[start : start + size]
        if not (end.write_closed or end.fins or end.finished) and end.accepted == len(end.written):
            end.accepted += size
        end.written += data
        end.stream.write(data)

    @rule(client=st.booleans())
    def lose_write_connection(self, client: bool) -> None:
        end = self.ends[client]
        end.write_closed = True
        end.stream.loseWriteConnection()

    @rule(client=st.booleans())
    def lose_connection(self, client: bool) -> None:
        self.ends[client].stream.loseConnection()

    @rule(client=st.booleans(), luck=st.integers(0, 3))
    def abort_connection(self, client: bool, luck: int) -> None:
        if luck == 0:  # one pick in four: a stream lives long enough to reach its later states
            self.ends[client].stream.abortConnection()

    @rule(client=st.booleans())
    def pause_producing(self, client: bool) -> None:
        self.ends[client].stream.pauseProducing()

    @rule(client=st.booleans())
    def resume_producing(self, client: bool) -> None:
        self.ends[client].stream.resumeProducing()

    @precondition(lambda self: any(end.producer is None for end in self.ends.values()))
    @rule(client=st.booleans())
    def register_producer(self, client: bool) -> None:
        end = self.ends[client]
        if end.producer is not None:
            return
        producer = Producer()
        end.stream.registerProducer(producer, True)
        if end.finished:
            assert producer.stops == 1, "a finished transport stops a producer at once"
        else:
            end.producer = producer

    @rule(client=st.booleans())
    def unregister_producer(self, client: bool) -> None:
        end = self.ends[client]
        end.stream.unregisterProducer()
        end.producer = None

    # -- what the link does -----------------------------------------------------------------------

    @rule()
    def flush(self) -> None:
        """End the reactor turn: the streams frame what they queued (nothing is delivered yet)."""
        self.link.clock.advance(0)

    @rule()
    def deliver(self) -> None:
        """Move what is on the wire one step, both ways."""
        self.link.pump.pump()

    @rule()
    def settle(self) -> None:
        self.link.run()

    @rule()
    def close_timeout_passes(self) -> None:
        self.link.clock.advance(CONFIG.stream_close_timeout)

    @rule(client=st.booleans(), luck=st.integers(0, 3))
    def link_lost(self, client: bool, luck: int) -> None:
        if luck == 0:  # as abort_connection
            self.ends[client].mux.abort("the test cut the link")
            self.link.run()

    # -- what a user relies on ----------------------------------------------------------------------

    @invariant()
    def ends_once(self) -> None:
        for end in self.ends.values():
            assert len(end.observer.losses) <= 1, f"{end.name}: connectionLost {len(end.observer.losses)} times"
            assert end.finished_calls == len(end.observer.losses), f"{end.name}: stream_finished and connectionLost differ"
            assert end.stream.connected is not end.finished
            closed = (end.stream.send_state is SendState.CLOSED, end.stream.receive_state is ReceiveState.CLOSED)
            assert closed == (end.finished, end.finished), f"{end.name}: {end.stream.send_state} {end.stream.receive_state}"
            if end.finished and end.producer is not None:
                assert end.producer.stops == 1, f"{end.name}: its producer was not stopped"

    @invariant()
    def states_at_rest_agree(self) -> None:
        for end in self.ends.values():
            send, receive = end.stream.send_state, end.stream.receive_state
            if send is SendState.CLOSING:
                assert end.stream.disconnecting, f"{end.name}: closing without having hung up"
            if send is SendState.FIN_SENT:
                assert receive not in (ReceiveState.EOF_DELIVERED, ReceiveState.DISCARDED), (
                    f"{end.name}: both FINs crossed and the end handled, yet not finished ({receive})"
                )

    @invariant()
    def nothing_after_the_end(self) -> None:
        for end in self.ends.values():
            assert end.observer.violations == [], f"{end.name}: {end.observer.violations}"
            assert end.observer.eofs <= 1

    @invariant()
    def one_fin_after_everything_queued(self) -> None:
        for end in self.ends.values():
            assert end.fins <= 1, f"{end.name}: {end.fins} FINs"
            assert end.queued_at_fin == [0] * end.fins, f"{end.name}: FIN with {end.queued_at_fin} bytes still queued"

    @invariant()
    def bytes_arrive_in_order_and_whole(self) -> None:
        for client in (True, False):
            sender, reader = self.ends[client], self.ends[not client]
            received = reader.observer.received
            assert len(received) <= sender.accepted and sender.written.startswith(received), (
                f"{reader.name} received what {sender.name} did not write"
            )
            if reader.observer.eofs:
                assert len(received) == sender.accepted, (
                    f"{reader.name} had the end after {len(received)} of {sender.accepted} bytes"
                )

    def teardown(self) -> None:
        """Both protocols close, and both streams end cleanly at once: nothing lingers, nothing
        waits for the close timeout (the clock does not move).

        Either both hang up as they are (a paused consumer stays paused: it may be gone), or both
        take everything and half-close.
        """
        # Only settle runs that got this far without an error (teardown runs in a ``finally``).
        if sys.exc_info()[0] is not None or not self.ends:
            return
        if self.hang_up_at_the_end:
            for end in self.ends.values():
                end.stream.loseConnection()
        else:
            for end in self.ends.values():
                end.stream.resumeProducing()
            self.link.run()
            for end in self.ends.values():
                end.write_closed = True
                end.stream.loseWriteConnection()
        self.link.run()
        self.ends_once()
        self.nothing_after_the_end()
        self.one_fin_after_everything_queued()
        self.bytes_arrive_in_order_and_whole()
        for end in self.ends.values():
            assert end.finished, f"{end.name} never ended: {end.stream.send_state}, {end.stream.receive_state}"
            assert end.mux.streams == {}
            assert (end.mux.budget.held, end.mux.budget.lent) == (0, 0), f"{end.name}: the budget kept {end.mux.budget}"


StreamLives.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestStreamLives = StreamLives.TestCase
