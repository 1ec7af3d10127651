"""Two sans-IO sessions talking over in-memory wires, driven by a hypothesis state machine.

A client and a server ``Session`` are connected by two one-directional byte buffers. Rules open
streams, write, deliver arbitrary prefixes of a wire in arbitrary chunks, consume data, half-close,
reset, ping and go away, in any order. A model records, per stream and direction, exactly which
bytes each ``send_data`` accepted and which bytes arrived as ``DataReceived``; the invariants say
that delivery is an in-order prefix without duplication, that flow control is respected, that no
data follows the end of a stream, and that legal traffic never ends the session. A quiescence
step delivers and consumes everything and checks that all data arrived and both sides agree on
every stream's state.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shield.mux.config import MuxConfig
from shield.mux.errors import GoingAwayError, StreamLimitError
from shield.mux.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    GoAwayReceived,
    PongReceived,
    StreamAccepted,
    StreamClosed,
    StreamEnded,
    StreamOpened,
    StreamRejected,
    StreamReset,
    WindowUpdated,
)
from shield.mux.frames import INITIAL_WINDOW, GoAwayCode
from shield.mux.session import Session, StreamState

KIB = 1024
MIB = 1024 * KIB

#: The state a peer must be in, at quiescence, given this side's state.
MIRROR = {
    StreamState.OPEN: StreamState.OPEN,
    StreamState.HALF_CLOSED_LOCAL: StreamState.HALF_CLOSED_REMOTE,
    StreamState.HALF_CLOSED_REMOTE: StreamState.HALF_CLOSED_LOCAL,
    StreamState.CLOSED: StreamState.CLOSED,
}
WRITABLE = (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)


@dataclass
class Side:
    """One peer: its session, the bytes it wrote but nobody delivered, and the app's view."""

    name: str
    session: Session
    wire: bytearray = field(default_factory=bytearray)  # written by this side, not yet delivered
    pending: dict[int, bytearray] = field(default_factory=dict)  # app data not yet taken
    sent: dict[int, bytearray] = field(default_factory=dict)  # bytes send_data accepted
    received: dict[int, bytearray] = field(default_factory=dict)  # bytes from DataReceived
    unacked: dict[int, int] = field(default_factory=dict)  # delivered, not yet acknowledged
    finished: set[int] = field(default_factory=set)  # no DataReceived may come after this
    ended: set[int] = field(default_factory=set)  # this side called end_stream
    remote_ended: set[int] = field(default_factory=set)  # StreamEnded seen
    reset_local: set[int] = field(default_factory=set)  # this side called reset_stream
    rejected: set[int] = field(default_factory=set)  # this side refused the peer's SYN
    accepted: set[int] = field(default_factory=set)  # StreamAccepted seen
    opened_by_peer: set[int] = field(default_factory=set)  # StreamOpened seen
    pings: dict[int, float] = field(default_factory=dict)
    last_data_stream: int | None = None  # the stream of the latest DataReceived

    def collect(self) -> None:
        self.wire += self.session.data_to_send()

    @property
    def window(self) -> int:
        return self.session.config.stream_window


class SessionPair(RuleBasedStateMachine):
    """Client (A) and server (B) sessions, and a model of what each stream carried."""

    def __init__(self) -> None:
        super().__init__()
        self.a: Side
        self.b: Side
        self.opener: dict[int, Side] = {}
        self.streams: list[int] = []
        self.reset_any: set[int] = set()  # streams aborted by a reset or a refusal
        self.clock = 0.0

    # -- set-up -------------------------------------------------------------------------------

    @initialize(
        window_a=st.sampled_from([INITIAL_WINDOW, MIB]),
        window_b=st.sampled_from([INITIAL_WINDOW, MIB]),
        frame_a=st.sampled_from([251, 4 * KIB, 64 * KIB, MIB]),
        frame_b=st.sampled_from([251, 4 * KIB, 64 * KIB, MIB]),
        streams_a=st.sampled_from([2, 4096, 4096]),
        streams_b=st.sampled_from([3, 4096, 4096]),
    )
    def setup(
        self, window_a: int, window_b: int, frame_a: int, frame_b: int, streams_a: int, streams_b: int
    ) -> None:
        config_a = MuxConfig(stream_window=window_a, send_frame_size=frame_a, max_streams=streams_a)
        config_b = MuxConfig(stream_window=window_b, send_frame_size=frame_b, max_streams=streams_b)
        self.a = Side("A", Session(client=True, config=config_a))
        self.b = Side("B", Session(client=False, config=config_b))

    # -- helpers ------------------------------------------------------------------------------

    def side(self, first: bool) -> tuple[Side, Side]:
        return (self.a, self.b) if first else (self.b, self.a)

    def pick(self, index: int) -> int:
        """A stream by index; even indexes prefer streams that one of the sides still holds."""
        candidates = self.streams
        if index % 2 == 0:
            held = set(self.a.session.stream_ids) | set(self.b.session.stream_ids)
            candidates = [sid for sid in self.streams if sid in held] or self.streams
        return candidates[(index // 2) % len(candidates)]

    def has_streams(self) -> bool:
        return bool(self.streams)

    def flush(self, side: Side, stream_id: int) -> int:
        """Offer the app's pending bytes to ``send_data``; record what it took."""
        pending = side.pending.get(stream_id)
        if not pending or side.session.stream_state(stream_id) not in WRITABLE:
            return 0
        taken = side.session.send_data(stream_id, bytes(pending))
        assert 0 <= taken <= len(pending)
        side.sent[stream_id] += pending[:taken]
        del pending[:taken]
        side.collect()
        return taken

    def forget_pending(self, side: Side, stream_id: int) -> None:
        if stream_id in side.pending:
            side.pending[stream_id].clear()

    def deliver(self, src: Side, dst: Side, chunks: list[int]) -> None:
        """Feed ``src.wire`` to ``dst`` in chunks of the given sizes (their sum at most the wire)."""
        for size in chunks:
            if not size:
                continue
            chunk = bytes(src.wire[:size])
            del src.wire[:size]
            self.clock += 0.001
            events = dst.session.receive_data(chunk, now=self.clock)
            assert isinstance(events, list)
            dst.collect()
            self.handle(dst, src, events)

    def handle(self, side: Side, peer: Side, events: list[Event]) -> None:
        """Check each event against the model and update it."""
        for event in events:
            if isinstance(event, ConnectionTerminated):
                raise AssertionError(f"{side.name}: legal traffic ended the session: {event}")
            if isinstance(event, DataReceived):
                sid = event.stream_id
                assert sid in self.opener, f"{side.name}: data for unknown stream {sid}"
                assert sid not in side.finished, (
                    f"{side.name}: DataReceived on stream {sid} after it ended/reset/closed"
                )
                assert event.data, "empty DataReceived"
                got = side.received[sid]
                expected = peer.sent[sid][len(got) : len(got) + len(event.data)]
                assert event.data == expected, (
                    f"{side.name}: stream {sid} bytes {len(got)}..{len(got) + len(event.data)} "
                    "differ from what the peer sent"
                )
                got += event.data
                side.unacked[sid] += len(event.data)
                side.last_data_stream = sid
            elif isinstance(event, StreamOpened):
                sid = event.stream_id
                assert self.opener.get(sid) is peer, f"{side.name}: StreamOpened({sid}) not opened by peer"
                assert not side.session.local_go_away, f"{side.name}: accepted {sid} after go-away"
                assert sid not in side.opened_by_peer and sid not in side.rejected
                side.opened_by_peer.add(sid)
            elif isinstance(event, StreamRejected):
                sid = event.stream_id
                assert self.opener.get(sid) is peer
                assert sid not in side.opened_by_peer and sid not in side.rejected
                # Refused because this side went away, or else because of the stream limit.
                assert ("going away" in event.reason) == side.session.local_go_away, event
                side.rejected.add(sid)
                side.finished.add(sid)
                self.reset_any.add(sid)
            elif isinstance(event, StreamAccepted):
                sid = event.stream_id
                assert self.opener.get(sid) is side
                assert sid not in side.accepted
                side.accepted.add(sid)
            elif isinstance(event, WindowUpdated):
                assert event.window > 0
                assert event.stream_id in self.opener
            elif isinstance(event, StreamEnded):
                sid = event.stream_id
                assert sid in peer.ended, f"{side.name}: StreamEnded({sid}) but the peer never ended it"
                assert sid not in side.remote_ended
                assert sid not in side.finished
                side.remote_ended.add(sid)
                side.finished.add(sid)
            elif isinstance(event, StreamClosed):
                sid = event.stream_id
                assert sid in side.ended and sid in side.remote_ended
                side.finished.add(sid)
            elif isinstance(event, StreamReset):
                sid = event.stream_id
                # In legal traffic a reset only ever comes from the peer's reset or refusal.
                assert event.reason == "reset by peer", event
                assert sid in peer.reset_local or sid in peer.rejected, (
                    f"{side.name}: stream {sid} reset but the peer never reset or refused it"
                )
                side.finished.add(sid)
                self.reset_any.add(sid)
                self.forget_pending(side, sid)
            elif isinstance(event, PongReceived):
                assert event.opaque in side.pings
                assert event.rtt >= 0
            elif isinstance(event, GoAwayReceived):
                assert event.code == GoAwayCode.NORMAL
                assert peer.session.local_go_away
            else:  # pragma: no cover - a new event type the model does not know
                raise AssertionError(f"unexpected event {event!r}")

    # -- rules --------------------------------------------------------------------------------

    @rule(first=st.booleans())
    def open_stream(self, first: bool) -> None:
        side, peer = self.side(first)
        session = side.session
        if session.local_go_away or session.remote_go_away:
            expected: type[Exception] | None = GoingAwayError
        elif len(session.stream_ids) >= session.config.max_streams:
            expected = StreamLimitError
        else:
            expected = None
        try:
            sid = session.open_stream()
        except (GoingAwayError, StreamLimitError) as error:
            assert expected is not None and isinstance(error, expected), (
                f"{side.name}: open_stream raised {error!r}, expected {expected}"
            )
            return
        assert expected is None, f"{side.name}: open_stream should have raised {expected}"
        assert sid not in self.opener
        assert sid % 2 == (1 if side is self.a else 0)
        assert session.stream_state(sid) is StreamState.OPEN
        assert session.send_window(sid) == INITIAL_WINDOW
        assert session.receive_window(sid) == side.window
        self.opener[sid] = side
        self.streams.append(sid)
        for s in (side, peer):
            s.pending[sid] = bytearray()
            s.sent[sid] = bytearray()
            s.received[sid] = bytearray()
            s.unacked[sid] = 0
        side.collect()

    @precondition(has_streams)
    @rule(
        first=st.booleans(),
        index=st.integers(0, 1000),
        size=st.one_of(st.integers(1, 40), st.integers(1, 8 * KIB), st.integers(200 * KIB, 1200 * KIB)),
        seed=st.integers(0, 2**32 - 1),
    )
    def write(self, first: bool, index: int, size: int, seed: int) -> None:
        side, _ = self.side(first)
        sid = self.pick(index)
        if side.session.stream_state(sid) not in WRITABLE or sid in side.ended:
            return  # the application knows the stream is not writable
        side.pending[sid] += random.Random(seed).randbytes(size)
        self.flush(side, sid)

    @rule()
    def flush_all(self) -> None:
        for side in (self.a, self.b):
            for sid in self.streams:
                self.flush(side, sid)

    @rule(
        first=st.booleans(),
        percent=st.one_of(st.just(100), st.integers(0, 100)),
        head=st.lists(st.integers(1, 30), max_size=5),
        pieces=st.integers(1, 4),
        bytewise=st.booleans(),
    )
    def deliver_prefix(self, first: bool, percent: int, head: list[int], pieces: int, bytewise: bool) -> None:
        src, dst = self.side(first)
        total = len(src.wire) * percent // 100
        if bytewise and total <= 600:
            self.deliver(src, dst, [1] * total)
            return
        chunks: list[int] = []
        left = total
        for size in head:
            size = min(size, left)
            chunks.append(size)
            left -= size
        step = -(-left // pieces) if left else 0
        while left:
            size = min(step, left)
            chunks.append(size)
            left -= size
        self.deliver(src, dst, chunks)

    @precondition(has_streams)
    @rule(first=st.booleans(), index=st.integers(0, 1000), percent=st.integers(0, 100))
    def consume(self, first: bool, index: int, percent: int) -> None:
        side, _ = self.side(first)
        sid = self.pick(index)
        amount = side.unacked[sid] * percent // 100
        if amount == 0 and side.unacked[sid]:
            amount = 1
        side.session.acknowledge(sid, amount)
        side.unacked[sid] -= amount
        side.collect()

    @precondition(has_streams)
    @rule(first=st.booleans(), index=st.integers(0, 1000))
    def half_close(self, first: bool, index: int) -> None:
        side, _ = self.side(first)
        sid = self.pick(index)
        if side.session.stream_state(sid) not in WRITABLE or sid in side.ended:
            return
        self.flush(side, sid)
        if side.pending[sid]:
            return  # the application ends a stream only after all its data went out
        before = side.session.stream_state(sid)
        finished = side.session.end_stream(sid)
        assert finished == (before is StreamState.HALF_CLOSED_REMOTE)
        side.ended.add(sid)
        side.collect()
        after = side.session.stream_state(sid)
        assert after is (StreamState.CLOSED if finished else StreamState.HALF_CLOSED_LOCAL)
        assert side.session.send_window(sid) == 0

    @precondition(has_streams)
    @rule(first=st.booleans(), index=st.integers(0, 1000), latest=st.booleans())
    def reset(self, first: bool, index: int, latest: bool) -> None:
        side, _ = self.side(first)
        sid = self.pick(index)
        if latest and side.last_data_stream is not None:
            # The stream that is receiving right now, quite possibly in the middle of a frame.
            sid = side.last_data_stream
        held = sid in side.session.stream_ids
        side.session.reset_stream(sid)
        side.collect()
        assert side.session.stream_state(sid) in (StreamState.CLOSED, StreamState.IDLE)
        if held:
            side.reset_local.add(sid)
            side.finished.add(sid)
            self.reset_any.add(sid)
        self.forget_pending(side, sid)

    @rule(first=st.booleans())
    def ping(self, first: bool) -> None:
        side, _ = self.side(first)
        self.clock += 0.001
        opaque = side.session.ping(self.clock)
        side.pings[opaque] = self.clock
        side.collect()

    @rule(first=st.booleans(), roll=st.integers(0, 3))
    def go_away(self, first: bool, roll: int) -> None:
        if roll:
            return  # a go-away ends all stream opening: keep it rare
        side, _ = self.side(first)
        side.session.go_away()
        assert side.session.local_go_away
        side.collect()

    @rule()
    def quiesce(self) -> None:
        self.settle()

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def sessions_alive(self) -> None:
        if not hasattr(self, "a"):
            return
        assert self.a.session.terminated is None, self.a.session.terminated
        assert self.b.session.terminated is None, self.b.session.terminated

    @invariant()
    def windows_and_prefixes(self) -> None:
        if not hasattr(self, "a"):
            return
        for side, peer in ((self.a, self.b), (self.b, self.a)):
            session = side.session
            held = set(session.stream_ids)
            for sid in self.streams:
                send_window = session.send_window(sid)
                assert send_window >= 0, f"{side.name}: stream {sid}: send window {send_window}"
                receive_window = session.receive_window(sid)
                assert receive_window >= 0, f"{side.name}: stream {sid}: receive window {receive_window}"
                if sid in held:
                    # The peer never had more in flight than this side granted.
                    assert side.unacked[sid] + receive_window <= side.window, (
                        f"{side.name}: stream {sid}: {side.unacked[sid]} unacknowledged + "
                        f"{receive_window} window > {side.window}"
                    )
                received, sent = side.received[sid], peer.sent[sid]
                assert len(received) <= len(sent) and sent.startswith(received), (
                    f"{side.name}: stream {sid}: the {len(received)} bytes received are not a "
                    f"prefix of the {len(sent)} bytes {peer.name} sent"
                )

    # -- quiescence ---------------------------------------------------------------------------

    def settle(self) -> None:
        """Deliver, consume and flush until nothing moves; then everything must be consistent."""
        for _ in range(10_000):
            moved = False
            for side in (self.a, self.b):
                for sid in self.streams:
                    if self.flush(side, sid):
                        moved = True
            for src, dst in ((self.a, self.b), (self.b, self.a)):
                if src.wire:
                    self.deliver(src, dst, [len(src.wire)])
                    moved = True
            for side in (self.a, self.b):
                for sid in self.streams:
                    if side.unacked[sid]:
                        side.session.acknowledge(sid, side.unacked[sid])
                        side.unacked[sid] = 0
                        side.collect()
                        moved = True
            if not moved:
                break
        else:
            raise AssertionError("the sessions never went quiet")
        self.sessions_alive()
        assert not self.a.wire and not self.b.wire
        for sid in self.streams:
            self.check_settled_stream(sid)

    def check_settled_stream(self, sid: int) -> None:
        a, b = self.a, self.b
        state_a, state_b = a.session.stream_state(sid), b.session.stream_state(sid)
        assert state_a is not StreamState.IDLE and state_b is not StreamState.IDLE
        assert MIRROR[state_a] is state_b, f"stream {sid}: A is {state_a}, B is {state_b}"
        if sid in self.reset_any:
            assert state_a is StreamState.CLOSED and state_b is StreamState.CLOSED
            return
        for side, peer in ((a, b), (b, a)):
            assert not side.pending[sid], (
                f"{side.name}: stream {sid} still has {len(side.pending[sid])} bytes unsent"
            )
            assert peer.received[sid] == side.sent[sid], (
                f"stream {sid} {side.name}->{peer.name}: sent {len(side.sent[sid])} bytes, "
                f"{len(peer.received[sid])} arrived"
            )
            # Ended exactly when the writer ended it.
            assert (sid in peer.remote_ended) == (sid in side.ended)
            # With nothing in flight, the writer may send exactly what the reader will accept.
            if side.session.stream_state(sid) in WRITABLE:
                send_window = side.session.send_window(sid)
                receive_window = peer.session.receive_window(sid)
                assert send_window == receive_window, (
                    f"stream {sid}: {side.name} may send {send_window} bytes, "
                    f"{peer.name} expects {receive_window}"
                )
                # Everything was consumed, so less than half a window of credit is held back.
                assert send_window > peer.window - peer.window // 2, (
                    f"stream {sid}: {side.name} may send only {send_window} of {peer.window}"
                )

    def teardown(self) -> None:
        # Only settle runs that got this far without an error (teardown runs in a ``finally``).
        if sys.exc_info()[0] is not None or not hasattr(self, "a"):
            return
        self.settle()


SessionPair.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestSessionPair = SessionPair.TestCase
