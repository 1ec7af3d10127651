"""Why something is not served, as one record: a public client refused at the door or by its
authentication, a tunnel that could not be opened, a client a cluster member did not take."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int  # the HTTP status a WebSocket client gets (a TCP client is closed)
    label: str  # the metric label: a limit, or the reason of shield_open_failures_total
    reason: str  # one line, for the client and the log; never a secret


class RefusedError(Exception):
    """A ``Refusal`` travelling through a Deferred's errback; ``retry``: another peer may serve."""

    def __init__(self, refusal: Refusal, retry: bool = False) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal
        self.retry = retry

    @property
    def status(self) -> int:
        return self.refusal.status

    @property
    def label(self) -> str:
        return self.refusal.label

    @property
    def reason(self) -> str:
        return self.refusal.reason

    def __str__(self) -> str:
        return self.refusal.reason
