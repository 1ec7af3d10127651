"""What the code uses of Twisted's transports and reactor, as interfaces for the type checker.

Twisted types ``Protocol.transport`` as ``ITransport | None``: ``None`` until ``makeConnection``,
and an ``ITransport`` without ``abortConnection`` or the producer methods. Every transport these
protocols run on (TCP, TLS over TCP, a mux stream, the test doubles) is connected before any
event reaches the protocol and offers those methods; a protocol class says so by declaring
``transport: IStreamTransport``.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    IReactorCore,
    IReactorProcess,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
    IReactorUDP,
    IReactorUNIX,
    ITCPTransport,
)


class IStreamTransport(ITCPTransport, IConsumer, IPushProducer):
    """A connected stream transport: write, half-close, abort, addresses, producers; and a
    producer itself (pause and resume reading)."""


class IGatewayReactor(
    IReactorCore, IReactorTime, IReactorTCP, IReactorUNIX, IReactorThreads, IReactorUDP, IReactorProcess
):
    """The reactor a gateway runs on: time, TCP, unix sockets, UDP (discovery), threads (DNS),
    processes (the demo). ``the_reactor()`` is Twisted's global one, typed so."""


def the_reactor() -> IGatewayReactor:
    """Twisted's installed reactor (``twisted.internet.reactor``), with the type it has."""
    from twisted.internet import reactor

    return cast(IGatewayReactor, reactor)
