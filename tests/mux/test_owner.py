"""A link role composes a ``MuxProtocol`` and hears its life through ``MuxOwner``, without sockets.

The three link roles (shield/dmz/backplane.py, shield/internal/link.py, shield/cluster/link.py)
rely on exactly these events, in this order, with these reasons; this pins them.
"""

from __future__ import annotations

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim

from shield.mux.config import MuxConfig
from shield.mux.protocol import MuxProtocol


class Owner:
    """Records what its mux tells it; ``accounts`` says whether it takes refused streams."""

    def __init__(self, accounts: bool = False) -> None:
        self.mux: MuxProtocol | None = None
        self.events: list[str] = []
        self.accounts = accounts
        self.lost_reason: Failure | None = None
        self.ended_by: str | None = None

    def mux_connected(self) -> None:
        self.events.append("connected")

    def mux_secured(self) -> None:
        self.events.append("secured")

    def mux_going_away(self) -> None:
        self.events.append("going away")

    def stream_rejected(self, stream_id: int, reason: str) -> bool:
        self.events.append(f"rejected {stream_id}")
        return self.accounts

    def mux_lost(self, reason: Failure) -> None:
        assert self.mux is not None
        assert not self.mux.streams, "every stream has ended before the owner hears of the loss"
        self.events.append("lost")
        self.lost_reason = reason
        self.ended_by = self.mux.ended_by


def pair(
    client_owner: Owner,
    server_owner: Owner,
    config: MuxConfig | None = None,
    keepalive_after_handshake: bool = False,
    server_config: MuxConfig | None = None,
) -> tuple[MuxProtocol, MuxProtocol, iosim.IOPump, MemoryReactorClock]:
    clock = MemoryReactorClock()
    config = config or MuxConfig(keepalive_interval=0)
    accept_all = Factory.forProtocol(Protocol)
    client = MuxProtocol(True, config, None, clock, owner=client_owner, keepalive_after_handshake=keepalive_after_handshake)
    server = MuxProtocol(False, server_config or config, accept_all, clock, owner=server_owner, keepalive_after_handshake=keepalive_after_handshake)
    client_owner.mux, server_owner.mux = client, server
    pump = iosim.connect(
        server, iosim.FakeTransport(server, isServer=True), client, iosim.FakeTransport(client, isServer=False),
        greet=False, clock=clock,
    )  # fmt: skip
    return client, server, pump, clock


def settle(pump: iosim.IOPump, clock: MemoryReactorClock) -> None:
    for _ in range(1000):
        clock.advance(0)
        if not pump.pump():
            return


def test_the_owner_hears_connected_secured_going_away_and_lost_in_order() -> None:
    ours, theirs = Owner(), Owner()
    client, server, pump, clock = pair(ours, theirs)
    assert ours.events == ["connected"] and theirs.events == ["connected"]
    client.handshakeCompleted()  # what the TLS layer calls
    assert ours.events == ["connected", "secured"]

    client.open_stream(Protocol())
    settle(pump, clock)
    client.go_away()
    assert ours.events[-1] == "going away"
    settle(pump, clock)
    assert client.is_open, "GoAway waits for the open stream"
    next(iter(client.streams.values())).abortConnection()
    settle(pump, clock)
    assert ours.events == ["connected", "secured", "going away", "lost"]
    assert theirs.events == ["connected", "lost"]


def test_ended_by_says_why_when_this_side_ended_the_link_and_nothing_when_the_peer_did() -> None:
    ours, theirs = Owner(), Owner()
    client, server, pump, clock = pair(ours, theirs)
    client.close("refused by the DMZ")
    settle(pump, clock)
    assert ours.events[-1] == "lost" and ours.ended_by == "refused by the DMZ"
    assert theirs.events[-1] == "lost" and theirs.ended_by is None
    assert theirs.lost_reason is not None


def test_a_refused_stream_goes_to_the_owner_and_the_mux_logs_it_only_when_the_owner_does_not() -> None:
    from twisted.logger import globalLogPublisher

    lines: list[str] = []
    observer = lambda event: lines.append(str(event.get("log_format", "")))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        for accounts in (True, False):
            ours, theirs = Owner(), Owner(accounts=accounts)
            limited = MuxConfig(keepalive_interval=0, max_streams=1)
            client, server, pump, clock = pair(ours, theirs, server_config=limited)
            client.open_stream(Protocol())
            client.open_stream(Protocol())  # beyond the server's max-streams: RST
            settle(pump, clock)
            assert [e for e in theirs.events if e.startswith("rejected")] == ["rejected 3"]
            assert bool([line for line in lines if "refused stream" in line]) is (not accounts)
    finally:
        globalLogPublisher.removeObserver(observer)


def test_under_tls_keepalive_starts_only_once_the_handshake_is_done() -> None:
    ours, theirs = Owner(), Owner()
    config = MuxConfig(keepalive_interval=5.0)
    client, server, pump, clock = pair(ours, theirs, config, keepalive_after_handshake=True)
    before = len(clock.getDelayedCalls())
    client.handshakeCompleted()
    assert len(clock.getDelayedCalls()) == before + 1  # the client's ping loop
