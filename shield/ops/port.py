"""One listening port with one factory for the life of a gateway: the DMZ's backplane, the admin
endpoint of either gateway.

A part of a gateway's ``MultiService``: it listens once the parts it comes after are up
(``after``), says so in one line, and stops listening when the drain closes it or the service
stops, whichever comes first.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort, IProtocolFactory

from shield.config.model import Uri
from shield.net import tcp_server_endpoint
from shield.ops.once import Once
from shield.transports import IGatewayReactor


def at_once() -> Deferred[None]:
    """For a part that waits for nothing."""
    return succeed(None)


class PortService(Service):
    """Listens on ``uri`` with ``factory``; ``when_started`` fires once it does."""

    def __init__(
        self,
        reactor: IGatewayReactor,
        uri: Uri,
        factory: IProtocolFactory,
        listening: Callable[[], None],
        after: Callable[[], Deferred[None]] = at_once,
    ) -> None:
        self.reactor = reactor
        self.uri = uri
        self.factory = factory
        self.listening = listening  # the line that says it is up
        self.after = after
        self.port: IListeningPort | None = None
        self.started = Once()
        self._closed = False

    def startService(self) -> None:
        super().startService()
        waiting = self.after()
        waiting.addCallback(lambda _: tcp_server_endpoint(self.reactor, self.uri).listen(self.factory))
        waiting.addCallbacks(self._listening, self.started.fail)

    def _listening(self, port: IListeningPort) -> None:
        if self._closed:  # closed while it was still opening: no door left behind
            port.stopListening()
            return
        self.port = port
        self.listening()
        self.started.succeed()

    def when_started(self) -> Deferred[None]:
        return self.started.wait()

    def close(self) -> Deferred[None]:
        """Stop accepting (connections already made stay); a second close does nothing."""
        self._closed = True
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening).addCallback(_nothing)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.close()


def _nothing(_: Any) -> None:
    return None
