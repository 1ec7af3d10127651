"""Listening ports with their factories for the life of a gateway: the DMZ's backplane (a port per
``accept`` URI), the admin endpoint of either gateway.

A part of a gateway's ``MultiService``: it listens once the parts it comes after are up
(``after``), says so in one line, and stops listening when the drain closes it or the service
stops, whichever comes first.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort, IProtocolFactory

from shield.config.model import Uri
from shield.net import tcp_server_endpoint
from shield.ops.once import Once
from shield.transports import IGatewayReactor


def at_once() -> Deferred[None]:
    """For a part that waits for nothing."""
    return succeed(None)


class PortService(Service):
    """Listens on each URI of ``ports`` with its factory; ``when_started`` fires once all do (and
    fails, with no port left open, when one cannot)."""

    def __init__(
        self,
        reactor: IGatewayReactor,
        ports: Sequence[tuple[Uri, IProtocolFactory]],
        listening: Callable[[], None],
        after: Callable[[], Deferred[None]] = at_once,
    ) -> None:
        self.reactor = reactor
        self.ports = tuple(ports)
        self.listening = listening  # the line that says it is up
        self.after = after
        self.listeners: list[IListeningPort] = []
        self.started = Once()
        self._closed = False

    def startService(self) -> None:
        super().startService()
        waiting = self.after()
        waiting.addCallback(lambda _: self._listen())
        waiting.addCallbacks(self._listening, self.started.fail)

    def _listen(self) -> Deferred[list[IListeningPort]]:
        opening = [tcp_server_endpoint(self.reactor, uri).listen(factory) for uri, factory in self.ports]
        return DeferredList(opening, consumeErrors=True).addCallback(self._all_or_none)

    def _all_or_none(self, results: list[tuple[bool, Any]]) -> Deferred[list[IListeningPort]]:
        opened = [value for ok, value in results if ok]
        failures = [value for ok, value in results if not ok]
        if not failures:
            return succeed(opened)
        for port in opened:
            port.stopListening()
        failed: Deferred[list[IListeningPort]] = Deferred()
        failed.errback(failures[0])
        return failed

    def _listening(self, ports: list[IListeningPort]) -> None:
        if self._closed:  # closed while it was still opening: no door left behind
            for port in ports:
                port.stopListening()
            return
        self.listeners = ports
        self.listening()
        self.started.succeed()

    def when_started(self) -> Deferred[None]:
        return self.started.wait()

    def close(self) -> Deferred[None]:
        """Stop accepting (connections already made stay); a second close does nothing."""
        self._closed = True
        ports, self.listeners = self.listeners, []
        if not ports:
            return succeed(None)
        return gatherResults([maybeDeferred(port.stopListening) for port in ports]).addCallback(_nothing)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.close()


def _nothing(_: Any) -> None:
    return None
