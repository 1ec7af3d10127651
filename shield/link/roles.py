"""What every link role shares: the DMZ end of a connector link, the connector end, a member link.

Each role is a plain object that composes a ``MuxProtocol`` and is its ``MuxOwner``
(shield/mux/protocol.py): it hears the link's five events and never overrides the mux. What the
three would otherwise each write again lives here once: the mux a role builds, the words for why
a link ended, and the reconnecting client both dialling roles keep their links up with.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.application.internet import ClientService
from twisted.internet.interfaces import IProtocolFactory, IReactorTime
from twisted.logger import ILogObserver, Logger, LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from shield.link.websocket import WebSocketEnded
from shield.mux.budget import BufferBudget
from shield.mux.config import MuxConfig
from shield.mux.protocol import MuxOwner, MuxProtocol
from shield.net import set_no_delay
from shield.tls.contexts import describe_tls_failure


def link_mux(
    owner: MuxOwner,
    client: bool,
    config: MuxConfig,
    stream_factory: IProtocolFactory,
    clock: IReactorTime,
    budget: BufferBudget | None,
    keepalive_after_handshake: bool = True,
) -> MuxProtocol:
    """The mux of one link, owned by its role. Links run under TLS, so by default they ping only
    once TLS is up (the role's handshake deadline rules before that)."""
    return MuxProtocol(
        client=client,
        config=config,
        stream_factory=stream_factory,
        clock=clock,
        budget=budget,
        owner=owner,
        keepalive_after_handshake=keepalive_after_handshake,
    )


def tune_link_socket(mux: MuxProtocol) -> None:
    """TCP_NODELAY and large reads on the socket under a link, through its TLS layer."""
    set_no_delay(mux.transport)


def why_link_ended(mux: MuxProtocol, reason: Failure) -> str:
    """Why a link ended, in one phrase for its log line: what this side said when it ended it (a
    protocol error, a refusal, a drain's grace running out), else what the WebSocket under a
    ``wss://`` link said, else what TLS or the network said."""
    if mux.ended_by:
        return mux.ended_by
    if isinstance(reason.value, WebSocketEnded):
        return str(reason.value)
    return describe_tls_failure(reason)


def _warnings_only(event: dict[str, Any]) -> None:
    if event.get("log_level", LogLevel.info) >= LogLevel.warn:
        globalLogPublisher(event)


class QuietClientService(ClientService):
    """Twisted's reconnecting client without its info line for every retry: the roles say
    themselves why a dial failed and when the next one comes.

    (``ClientService._log`` is the one private name this leans on; tests/test_private_internals.py
    pins it.)
    """

    _log = Logger(namespace="shield.link.redial", observer=cast(ILogObserver, _warnings_only))


__all__ = ["QuietClientService", "link_mux", "tune_link_socket", "why_link_ended"]
