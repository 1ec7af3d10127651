"""Discovery by DNS: the addresses of one host name, looked up again and again.

A connector keeps links to every address its ``connect`` host names resolve to, and a DMZ member
to every other member a ``members`` host name resolves to (a Kubernetes headless Service names
every pod of a Deployment or StatefulSet that way, and follows it as it scales). ``Discovery``
follows one such host: it asks a resolver (a callable returning a Deferred list of addresses),
compares the answer with the addresses it knows and reports the difference to a callback; then
it waits ``interval`` seconds and asks again. It does no I/O of its own and reads time only from
the clock it is given, so tests drive it with ``twisted.internet.task.Clock`` and a fake resolver.

- A look-up starts only when the previous one has finished (a slow resolver never piles up).
- A failed look-up (the resolver's Deferred fails, or answers no address) keeps the known
  addresses: a DNS outage never tears links down. The first failure of a streak is logged as a
  warning, the rest are not; the first success after it is logged once.
- Until the host has resolved once, a failed look-up is retried every ``retry`` seconds (5 s,
  or ``interval`` when that is shorter), so a connector started during a DNS outage joins
  as soon as DNS answers.
- ``interval`` 0 looks the host up until it has resolved once, then never again.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Callable

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure

from shield.config.model import Uri
from shield.net import is_ipv4, is_ipv6

log = Logger(namespace="shield.dns")

#: Seconds between look-ups while a host has never resolved (or ``interval``, when shorter).
UNRESOLVED_RETRY = 5.0


@dataclass(frozen=True, slots=True)
class Change:
    """What one successful look-up changed."""

    added: tuple[str, ...]  # addresses new in this answer, in the resolver's order
    removed: tuple[str, ...]  # addresses the answer no longer has, in the previous order
    addresses: tuple[str, ...]  # the whole answer
    first: bool  # the first answer for this host


class Discovery:
    """Resolves one host every ``interval`` seconds and reports added and removed addresses."""

    def __init__(
        self,
        host: str,
        resolver: Callable[[], Deferred[list[str]]],
        clock: IReactorTime,
        interval: float,
        changed: Callable[[Change], None],
        where: str = "",
        retry: float = UNRESOLVED_RETRY,
    ) -> None:
        self.host = host
        self.interval = interval
        self.where = where or f"host {host}"
        self.addresses: tuple[str, ...] = ()
        self.resolved = False  # has resolved at least once
        self.failure: str | None = None  # why the look-ups of the current failure streak failed
        self.failures = 0  # failed look-ups in the current streak
        self._resolver = resolver
        self._clock = clock
        self._changed = changed
        self._retry = min(retry, interval) if interval > 0 else retry
        self._timer: IDelayedCall | None = None
        self._running = False

    @property
    def next_delay(self) -> float | None:
        """Seconds until the next look-up once this one is done; None: no more look-ups."""
        if not self.resolved:
            return self._retry
        return self.interval if self.interval > 0 else None

    def start(self) -> Deferred[None]:
        """Look the host up now and then on schedule; fires once the first look-up is done."""
        self._running = True
        return self._look_up()

    def stop(self) -> None:
        """No more look-ups; the answer of one in flight is ignored."""
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    @property
    def running(self) -> bool:
        return self._running

    def _look_up(self) -> Deferred[None]:
        self._timer = None
        answer: Deferred[list[str]] = maybeDeferred(self._resolver)
        answer.addCallbacks(self._answered, self._failed)
        return answer.addBoth(self._done)

    def _answered(self, addresses: list[str]) -> None:
        if not self._running:
            return
        unique = tuple(dict.fromkeys(addresses))
        if not unique:
            self._failed(Failure(LookupError("no addresses")))
            return
        if self.failure is not None:
            log.info(
                "{where}: host {host} resolves again after {n} failed look-ups: {addresses}",
                where=self.where, host=self.host, n=self.failures, addresses=", ".join(unique),
            )
        self.failure = None
        self.failures = 0
        first = not self.resolved
        known = set(self.addresses)
        now = set(unique)
        change = Change(
            added=tuple(a for a in unique if a not in known),
            removed=tuple(a for a in self.addresses if a not in now),
            addresses=unique,
            first=first,
        )
        self.addresses = unique
        self.resolved = True
        if change.added or change.removed or first:
            try:
                self._changed(change)
            except Exception:
                log.failure("{where}: applying the new addresses of host {host}", where=self.where, host=self.host)

    def _failed(self, failure: Failure) -> None:
        if not self._running:
            return
        reason = describe_lookup_failure(failure)
        self.failures += 1
        if self.failure is None:
            delay = self.next_delay
            if self.resolved:
                keeping = f"keeping {', '.join(self.addresses)}"
                again = f"looking up again every {delay:g} s" if delay is not None else "not looking up again"
            else:
                keeping = "no endpoints yet"
                again = f"retrying every {delay:g} s"
            log.warn(
                "{where}: host {host} does not resolve: {reason}; {keeping}; {again}",
                where=self.where, host=self.host, reason=reason, keeping=keeping, again=again,
            )
        self.failure = reason

    def _done(self, _: object) -> None:
        if not self._running:
            return
        delay = self.next_delay
        if delay is not None:
            self._timer = self._clock.callLater(delay, self._look_up)


def describe_lookup_failure(failure: Failure) -> str:
    """``Name or service not known`` rather than ``[Errno -2] Name or service not known``."""
    error = failure.value
    if isinstance(error, socket.gaierror) and error.strerror:
        return error.strerror
    if isinstance(error, LookupError) and error.args:
        return str(error.args[0])
    return failure.getErrorMessage() or failure.type.__name__


def resolve(uri: Uri) -> Deferred[list[str]]:
    """The addresses of ``uri``'s host (an address is its own answer), each one once.

    ``getaddrinfo`` runs in the reactor's thread pool, and nothing here caches its answer: each
    call asks the system resolver again (glibc reads /etc/hosts afresh on every call).
    """
    if is_ipv4(uri.host) or is_ipv6(uri.host):
        return succeed([uri.host])

    def lookup() -> list[str]:
        infos = socket.getaddrinfo(uri.host, uri.port, type=socket.SOCK_STREAM)
        seen: list[str] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            address = str(sockaddr[0])
            if address not in seen:
                seen.append(address)
        return seen

    return deferToThread(lookup)
