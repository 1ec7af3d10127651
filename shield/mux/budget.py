"""How much tunnel data one gateway may hold at once, over all its links and streams (sans-IO).

A stream holds data when a reader cannot take it: bytes parked in its inbox while its consumer
is paused, bytes its consumer accepted but still keeps in user space (not yet in the kernel), and
bytes written to it that wait for the peer's window.
Streams whose readers keep up may also grow their receive window beyond the protocol's 256 KiB
for throughput; that growth is lent by the budget, because a grown window is data that may
arrive at any moment.

- ``held`` and ``lent`` are what the streams report; ``limit`` is the configured budget.
- Growth is granted only while ``held + lent`` stays within ``limit`` (``room_for_growth``); when
  the budget is short, grown windows shrink back to the base window at their next credit.
- A gateway whose streams hold the whole budget (``exhausted``) takes no new streams: the DMZ
  answers new clients 503, a connector answers OVERLOADED. Open streams keep their base window,
  so a stalled client never holds up the others.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Default budget of one gateway: 256 MiB of tunnel data held or lent at once.
DEFAULT_BUFFER_BUDGET = 256 * 1024 * 1024


@dataclass(slots=True)
class BufferBudget:
    """The gateway's running totals; every stream of every link reports to the same one."""

    limit: int = DEFAULT_BUFFER_BUDGET
    held: int = 0
    lent: int = 0

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"a buffer budget must be positive, got {self.limit}")

    def room_for_growth(self, own_loan: int = 0) -> int:
        """How far one stream's window may reach beyond the base, in bytes: what the budget has
        left besides what is held and what the other streams borrowed (``own_loan`` is what this
        stream has already)."""
        return max(0, self.limit - self.held - self.lent + own_loan)

    @property
    def exhausted(self) -> bool:
        """The streams hold the whole budget: take no new ones."""
        return self.held >= self.limit


#: For sessions run without a gateway (tests, tools): never short.
def unlimited() -> BufferBudget:
    return BufferBudget(limit=1 << 62)
