"""Graceful drain on SIGTERM, and a loud stop when a gateway cannot start."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from shield.mux.protocol import MuxProtocol
from shield.transports import IGatewayReactor
from shield.reactor import forget_exit_signal


def drain_links(
    links: Sequence[MuxProtocol],
    grace_period: float,
    clock: IReactorTime,
    open_tunnels: Callable[[], int],
    log: Logger,
) -> Deferred[None]:
    """GoAway on every link; fires when all are closed, or aborts what is left after the grace period.

    GoAway lets open streams finish and closes each link once it has none, so in the common case
    this fires as soon as the last tunnel ends.
    """
    closing = [link.go_away() for link in links if link.transport is not None]
    if not closing:
        return succeed(None)

    def expired() -> None:
        left = open_tunnels()
        log.warn(
            "grace period of {grace:g} s over: closing {n} tunnels still open", grace=grace_period, n=left
        )
        for link in links:
            if link.is_open:
                link.abort("shutting down: grace period over")

    return within_grace(DeferredList(closing, consumeErrors=True), grace_period, clock, expired)


def within_grace(
    closing: Deferred[Any], grace_period: float, clock: IReactorTime, expired: Callable[[], None]
) -> Deferred[None]:
    """Fires when ``closing`` does. If the grace period ends first, ``expired`` runs: it cuts
    what is left, so ``closing`` fires soon after. (Both gateways' drains have this shape.)"""
    timer = clock.callLater(grace_period, expired)

    def finished(_: object) -> None:
        if timer.active():
            timer.cancel()

    return closing.addBoth(finished)


def exit_cleanly_after_drain(reactor: IGatewayReactor) -> None:
    """A completed SIGTERM drain exits with status 0.

    twistd normally re-raises the signal that stopped it once the reactor is done, so the
    process would end "killed by SIGTERM"; after a graceful drain that is not what happened.
    """
    forget_exit_signal(reactor, signal.SIGTERM)


def fatal(failure: Failure, reactor: IGatewayReactor, what: str) -> None:
    """Log why the gateway cannot run and exit with status 1 once the reactor has stopped."""
    log = Logger(namespace="shield")
    log.critical("{what}: {reason}", what=what, reason=failure.getErrorMessage() or failure.type.__name__)

    def exit_now() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    reactor.addSystemEventTrigger("after", "shutdown", exit_now)
    if reactor.running:
        reactor.stop()
    else:  # startService runs before the reactor does
        reactor.callWhenRunning(reactor.stop)


def raise_file_limit(log: Logger) -> int:
    """Lift the soft open-files limit to the hard one: every client is a socket (often 2)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as problem:
            log.warn("cannot raise the open-files limit from {soft}: {problem}", soft=soft, problem=problem)
    return soft
