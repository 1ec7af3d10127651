"""Random orders of everything that can happen to public clients, their tunnels and backends.

Hypothesis drives a whole DMZ in process (``Front``: real protocols, real backplane link, real
connector, in-memory sockets, one fake clock) through any interleaving of: clients connecting
(some over the service's connection limit), sending, half-closing, closing or vanishing; the
connector answering or failing its dials; backends sending, half-closing or vanishing; time
passing (open timeouts, close handshakes); the backplane link dropping and coming back. One
machine has raw TCP clients (``PublicTcpProtocol``), the other WebSocket clients
(``PublicWebSocketProtocol``); both go through ``TunnelStream``, ``BackendStream`` and ``Relay``.

After every step it checks what a user would: no bytes cross between clients, every byte a
client got came in order from its own backend (and the other way round), nothing is written
after an end, a WebSocket client gets at most one HTTP answer and nothing after its refusal or
its close frame, and no state machine raised. At the end every client has had its one end, and
the gauges and counts (active streams, admitted clients, tunnels per link, pending opens,
relays) are back to zero.
"""

from __future__ import annotations

import dataclasses
import gc
import re
from typing import Any

import txaio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from twisted.internet import error
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from dmz_world_inprocess import Front, Pipe, WsClient, upgrade_request
from shield.config.model import ClientLimits
from shield.dmz.frontplane_tcp import PublicTcpProtocol, TcpClientState
from shield.dmz.frontplane_ws import PublicWebSocketProtocol, WsClientState

#: The service admits this many clients at once; the machines keep up to one more than that.
MAX_CLIENTS = 3
#: Clients one run may have in all.
CLIENTS_PER_RUN = 8
OPEN_TIMEOUT = 4.0
_TAG = re.compile(rb"<([cb]\d+)\.")

SETTINGS = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)  # fmt: skip


class Peer:
    """One end the test plays (a raw TCP client or a backend): what it wrote, in order, whether
    delivered yet or still waiting while the gateway does not read its socket."""

    def __init__(self, pipe: Pipe, tag: str) -> None:
        self.pipe = pipe
        self.tag = tag
        self.wrote = bytearray()
        self.eof = False  # it half-closed (its EOF follows what it wrote)
        self._queue: list[bytes] = []
        self._eof_queued = False

    @property
    def open(self) -> bool:
        return not self.pipe.disconnecting and not self.pipe.lost

    def write(self, size: int) -> None:
        chunk = f"<{self.tag}.{len(self.wrote)}>".encode() + b"." * size
        self.wrote += chunk
        self._queue.append(chunk)

    def half_close(self) -> None:
        self.eof = self._eof_queued = True

    def flush(self) -> bool:
        """Deliver what waits, while the gateway reads this socket; True if anything moved."""
        moved = False
        while self._queue and self.open and self.pipe.producerState == "producing":
            self.pipe.feed(self._queue.pop(0))
            moved = True
        if self._eof_queued and not self._queue and self.open and self.pipe.producerState == "producing":
            self._eof_queued = False
            self.pipe.feed_eof()
            moved = True
        return moved


def writer_of(received: bytes) -> str | None:
    found = _TAG.match(received)
    return found.group(1).decode() if found else None


class TunnelWorld(RuleBasedStateMachine):
    """The connector, its backends, the link and the clock; subclasses add their clients."""

    def __init__(self) -> None:
        super().__init__()
        self.f = Front(mode="hold", limits=ClientLimits(max_connections=MAX_CLIENTS), open_timeout=OPEN_TIMEOUT)
        self.backends: list[Peer] = []
        self.failures: list[str] = []
        globalLogPublisher.addObserver(self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        failure = event.get("log_failure")
        if failure is not None:
            self.failures.append(f"{formatEvent(event)}\n{failure.getTraceback()}")

    # -- what the subclasses provide ---------------------------------------------------------------

    def clients_flush(self) -> bool:
        raise NotImplementedError

    def clients_read(self) -> None:
        raise NotImplementedError

    def client_wrote(self, tag: str) -> bytes:
        """Everything the client named ``tag`` sent toward its backend."""
        raise NotImplementedError

    def client_protocols(self) -> list[Any]:
        raise NotImplementedError

    def gone(self, protocol: Any) -> bool:
        raise NotImplementedError

    # -- moving the world ----------------------------------------------------------------------------

    def settle(self) -> None:
        """Run until quiet, letting every end send what waits for its socket to be read again."""
        world = self.f.world
        for _ in range(50):
            world.run()
            self._adopt_backends()
            moved = self.clients_flush()
            for peer in self.backends:
                moved |= peer.flush()
            if not moved:
                break
        self.clients_read()

    def _adopt_backends(self) -> None:
        for pipe in self.f.backends[len(self.backends) :]:
            self.backends.append(Peer(pipe, f"b{len(self.backends)}"))

    def _may_connect(self) -> bool:
        """One more client than the service admits may be connected; a run has a few in all."""
        protocols = self.client_protocols()
        live = sum(1 for protocol in protocols if not self.gone(protocol))
        return live <= MAX_CLIENTS and len(protocols) < CLIENTS_PER_RUN

    def _pending_dials(self) -> list[Any]:
        return [dial for dial in self.f.connector.dialer.held if not dial.called]

    def _open_backends(self) -> list[Peer]:
        return [peer for peer in self.backends if peer.open and not peer.eof]

    def _live_links(self) -> list[Any]:
        return [link for link in self.f.world.links if link.live]

    @initialize(mode=st.sampled_from(["hold", "connect"]))
    def connector_starts_dialling_so(self, mode: str) -> None:
        """Its dials wait for ``connector_answers``, or succeed at once."""
        self.f.connector.dialer.mode = mode

    @rule(mode=st.sampled_from(["connect", "hold", "refuse"]))
    def connector_dials_backends_so(self, mode: str) -> None:
        """From now on its dials succeed at once, wait for ``connector_answers``, or are refused."""
        self.f.connector.dialer.mode = mode

    @precondition(lambda self: self._pending_dials())
    @rule(i=st.integers(0, 9), connects=st.booleans())
    def connector_answers(self, i: int, connects: bool) -> None:
        pending = self._pending_dials()
        dial = pending[i % len(pending)]
        if connects:
            dial.callback(self.f.connector.dialer.connect_backend())
        else:
            dial.errback(Failure(error.ConnectionRefusedError("connection refused")))
        self.settle()

    @precondition(lambda self: self._open_backends())
    @rule(i=st.integers(0, 9), size=st.integers(0, 3000))
    def backend_sends(self, i: int, size: int) -> None:
        backends = self._open_backends()
        backends[i % len(backends)].write(size)
        self.settle()

    @precondition(lambda self: self._open_backends())
    @rule(i=st.integers(0, 9))
    def backend_half_closes(self, i: int) -> None:
        backends = self._open_backends()
        backends[i % len(backends)].half_close()
        self.settle()

    @precondition(lambda self: any(peer.open for peer in self.backends))
    @rule(i=st.integers(0, 9), clean=st.booleans())
    def backend_vanishes(self, i: int, clean: bool) -> None:
        backends = [peer for peer in self.backends if peer.open]
        backends[i % len(backends)].pipe.drop(clean)
        self.settle()

    @rule(seconds=st.sampled_from([0.5, 0.5, 1.5, 3.0, 6.0]))
    def time_passes(self, seconds: float) -> None:
        self.f.world.advance(seconds, step=0.5)
        self.settle()

    @rule(roll=st.integers(0, 3))
    def link_drops_or_comes_back(self, roll: int) -> None:
        """Now and then (one roll in four, the least simple one) the backplane link drops, or a
        new one comes up."""
        if roll != 3:
            return
        live = self._live_links()
        if live:
            live[0].drop()
        else:
            self.f.world.link(self.f.connector)
        self.settle()

    # -- what a user would check, after every step -----------------------------------------------

    @invariant()
    def no_state_machine_raised_and_nothing_was_logged_as_a_failure(self) -> None:
        assert not self.failures, self.failures[0]

    @invariant()
    def each_backend_got_in_order_what_one_client_sent_and_nothing_after_its_end(self) -> None:
        for peer in self.backends:
            got = bytes(peer.pipe.sent)
            writer = writer_of(got)
            if writer is not None:
                assert writer.startswith("c"), f"{peer.tag} got {got[:40]!r}"
                assert self.client_wrote(writer).startswith(got), f"{peer.tag} got bytes {writer} did not send, or out of order"
            assert peer.pipe.writes_after_end == 0, f"{peer.tag} was written to after its end"

    @invariant()
    def the_active_streams_gauge_counts_the_relays_of_live_clients(self) -> None:
        relays = len(self.f.front.relays)
        assert self.f.sample("shield_streams_active", service="echo") == relays
        assert relays <= sum(1 for protocol in self.client_protocols() if not self.gone(protocol))

    # -- the end ---------------------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            self._everything_ends_and_every_count_returns_to_zero()
        finally:
            globalLogPublisher.removeObserver(self._observe)

    def _everything_ends_and_every_count_returns_to_zero(self) -> None:
        self.end_clients()
        for peer in self.backends:
            if peer.open:
                peer.pipe.drop(clean=False)
        # Open timeouts, WebSocket close handshakes and mux close timeouts all run out.
        self.f.world.advance(OPEN_TIMEOUT + 30.0, step=1.0)
        self.settle()
        gc.collect()  # a Deferred that failed unhandled says so when it is collected
        assert not self.failures, self.failures[0]
        for protocol in self.client_protocols():
            assert self.gone(protocol), f"a client protocol never ended: {protocol!r}"
        for peer in self.backends:
            assert peer.pipe.lost, f"backend {peer.tag} was never closed"
        f = self.f
        assert f.gate.total == 0 and f.gate.per_service.get("echo", 0) == 0
        assert f.front.relays == set()
        assert f.sample("shield_streams_active", service="echo") == 0
        connector_active = f.connector.dialer.metrics.registry.get_sample_value("shield_streams_active", {"service": "echo"})
        assert (connector_active or 0.0) == 0
        for link in f.world.links:
            assert link.registered is None or link.registered.tunnels == 0
            assert link.pending_opens == 0

    def end_clients(self) -> None:
        raise NotImplementedError


class TcpClients(TunnelWorld):
    """Raw TCP clients (``PublicTcpProtocol``)."""

    def __init__(self) -> None:
        super().__init__()
        self.clients: list[Peer] = []

    def clients_flush(self) -> bool:
        moved = False
        for peer in self.clients:
            moved |= peer.flush()
        return moved

    def clients_read(self) -> None:
        pass  # what a raw TCP client got is its pipe's ``sent``

    def client_wrote(self, tag: str) -> bytes:
        return bytes(self.clients[int(tag[1:])].wrote)

    def client_protocols(self) -> list[Any]:
        return [peer.pipe.protocol for peer in self.clients]

    def gone(self, protocol: Any) -> bool:
        assert isinstance(protocol, PublicTcpProtocol)
        return protocol.state is TcpClientState.GONE

    def _open_clients(self) -> list[Peer]:
        return [peer for peer in self.clients if peer.open and not peer.eof]

    @precondition(lambda self: self._may_connect())
    @rule()
    def client_connects(self) -> None:
        peer = Peer(self.f.connect(), f"c{len(self.clients)}")
        self.clients.append(peer)
        self.settle()

    @precondition(lambda self: self._open_clients())
    @rule(i=st.integers(0, 9), size=st.integers(0, 3000))
    def client_sends(self, i: int, size: int) -> None:
        clients = self._open_clients()
        clients[i % len(clients)].write(size)
        self.settle()

    @precondition(lambda self: self._open_clients())
    @rule(i=st.integers(0, 9))
    def client_half_closes(self, i: int) -> None:
        clients = self._open_clients()
        clients[i % len(clients)].half_close()
        self.settle()

    @precondition(lambda self: any(peer.open for peer in self.clients))
    @rule(i=st.integers(0, 9), clean=st.booleans())
    def client_vanishes(self, i: int, clean: bool) -> None:
        clients = [peer for peer in self.clients if peer.open]
        clients[i % len(clients)].pipe.drop(clean)
        self.settle()

    @invariant()
    def a_client_relays_exactly_while_its_relay_is_counted(self) -> None:
        relaying = sum(1 for protocol in self.client_protocols() if protocol.state is TcpClientState.RELAYING)
        assert relaying == len(self.f.front.relays)

    @invariant()
    def each_client_got_in_order_what_one_backend_sent_and_nothing_after_its_end(self) -> None:
        backends = {peer.tag: peer for peer in self.backends}
        for peer in self.clients:
            got = bytes(peer.pipe.sent)
            writer = writer_of(got)
            if writer is not None:
                assert bytes(backends[writer].wrote).startswith(got), f"{peer.tag} got bytes {writer} did not send"
            assert peer.pipe.writes_after_end == 0, f"{peer.tag} was written to after its end"

    def end_clients(self) -> None:
        for peer in self.clients:
            if peer.open:
                peer.pipe.drop(clean=False)


class WsClients(TunnelWorld):
    """WebSocket clients (``PublicWebSocketProtocol``), some with an origin the service refuses."""

    ALLOWED_ORIGIN = "https://app.test"

    def __init__(self) -> None:
        super().__init__()
        # Autobahn's timers (open and close handshakes) run on txaio's one loop: this clock.
        self._txaio_loop = txaio.config.loop
        txaio.config.loop = self.f.world.clock
        self.f.front.config = dataclasses.replace(self.f.front.config, allow_origin=(self.ALLOWED_ORIGIN,))
        self.clients: list[WsClient] = []
        self.wrote: list[bytearray] = []  # per client: the payloads of its messages, in order
        self.requested: list[bool] = []
        self.closing: list[bool] = []  # the client sent its close frame or half-closed

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            txaio.config.loop = self._txaio_loop

    def clients_flush(self) -> bool:
        moved = False
        for client in self.clients:
            before = client.pipe.unread
            client.flush()
            moved |= client.pipe.unread != before
        return moved

    def clients_read(self) -> None:
        for client in self.clients:
            client.read()

    def client_wrote(self, tag: str) -> bytes:
        return bytes(self.wrote[int(tag[1:])])

    def client_protocols(self) -> list[Any]:
        return [client.pipe.protocol for client in self.clients]

    def gone(self, protocol: Any) -> bool:
        assert isinstance(protocol, PublicWebSocketProtocol)
        return protocol.lifecycle_state is WsClientState.GONE

    def _indices(self, *, requested: bool | None = None, upgraded: bool = False) -> list[int]:
        return [
            n for n, client in enumerate(self.clients)
            if client.can_send and not self.closing[n]
            and (requested is None or self.requested[n] == requested)
            and (not upgraded or (client.upgraded and not client.ended))
        ]  # fmt: skip

    @precondition(lambda self: self._may_connect())
    @rule()
    def client_connects(self) -> None:
        self.clients.append(self.f.connect_ws())
        self.wrote.append(bytearray())
        self.requested.append(False)
        self.closing.append(False)
        self.settle()

    @precondition(lambda self: self._indices(requested=False))
    @rule(i=st.integers(0, 9), kind=st.sampled_from(["upgrade", "upgrade", "upgrade", "foreign origin", "no upgrade"]))
    def client_asks_for_the_upgrade(self, i: int, kind: str) -> None:
        candidates = self._indices(requested=False)
        n = candidates[i % len(candidates)]
        self.requested[n] = True
        if kind == "no upgrade":
            self.clients[n].send(b"GET /echo HTTP/1.1\r\nHost: echo.test\r\n\r\n")
        else:
            origin = self.ALLOWED_ORIGIN if kind == "upgrade" else "https://elsewhere.test"
            self.clients[n].send(upgrade_request(headers=(("Origin", origin),)))
        self.settle()

    @precondition(lambda self: self._indices(upgraded=True))
    @rule(i=st.integers(0, 9), size=st.integers(0, 3000))
    def client_sends_a_message(self, i: int, size: int) -> None:
        candidates = self._indices(upgraded=True)
        n = candidates[i % len(candidates)]
        payload = f"<c{n}.{len(self.wrote[n])}>".encode() + b"." * size
        self.wrote[n] += payload
        self.clients[n].send_message(payload)
        self.settle()

    @precondition(lambda self: self._indices(upgraded=True))
    @rule(i=st.integers(0, 9), half_close=st.booleans())
    def client_closes(self, i: int, half_close: bool) -> None:
        """A close frame, or (a balancer going away, a client gone) the end of its input."""
        candidates = self._indices(upgraded=True)
        n = candidates[i % len(candidates)]
        self.closing[n] = True
        if half_close:
            self.clients[n].send_eof()
        else:
            self.clients[n].send_close(1000)
        self.settle()

    @precondition(lambda self: any(c.close_code is not None and c.can_send and not self.closing[n] for n, c in enumerate(self.clients)))
    @rule(i=st.integers(0, 9))
    def client_answers_the_servers_close(self, i: int) -> None:
        candidates = [n for n, c in enumerate(self.clients) if c.close_code is not None and c.can_send and not self.closing[n]]
        n = candidates[i % len(candidates)]
        self.closing[n] = True
        self.clients[n].send_close(1000)
        self.settle()

    @precondition(lambda self: any(client.can_send for client in self.clients))
    @rule(i=st.integers(0, 9), clean=st.booleans())
    def client_vanishes(self, i: int, clean: bool) -> None:
        candidates = [client for client in self.clients if client.can_send]
        candidates[i % len(candidates)].pipe.drop(clean)
        self.settle()

    @invariant()
    def each_client_gets_one_answer_and_nothing_after_its_end(self) -> None:
        backends = {peer.tag: peer for peer in self.backends}
        for client in self.clients:
            assert client.http_responses <= 1
            assert client.after_end == b"", f"bytes after the end: {client.after_end[:60]!r}"
            if client.status is not None and client.status != 101:
                assert client.status in (400, 403, 426, 502, 503, 504), client.status
                assert client.messages == []
            got = b"".join(client.messages)
            writer = writer_of(got)
            if writer is not None:
                assert bytes(backends[writer].wrote).startswith(got), f"a client got bytes {writer} did not send"
            assert client.pipe.writes_after_end == 0

    def end_clients(self) -> None:
        for client in self.clients:
            if client.can_send:
                client.pipe.drop(clean=False)


TestTcpClientsInAnyOrder = TcpClients.TestCase
TestTcpClientsInAnyOrder.settings = SETTINGS
TestWebSocketClientsInAnyOrder = WsClients.TestCase
TestWebSocketClientsInAnyOrder.settings = SETTINGS
