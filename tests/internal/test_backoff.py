"""The connector's redial policy: full jitter, 0.5 s doubling to a 30 s cap, reset after 10 s up."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shield.internal.pool import Backoff


def test_ceiling_doubles_from_half_a_second_to_thirty() -> None:
    backoff = Backoff(random=lambda: 1.0)  # the ceiling itself
    delays = [backoff.next_delay() for _ in range(10)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=60))
def test_full_jitter_stays_between_zero_and_the_ceiling(draws: list[float]) -> None:
    values = iter(draws)
    backoff = Backoff(random=lambda: next(values))
    for attempt, draw in enumerate(draws):
        ceiling = min(30.0, 0.5 * 2**attempt)
        assert backoff.next_delay() == draw * ceiling


def test_a_link_that_stayed_up_ten_seconds_starts_over() -> None:
    backoff = Backoff(random=lambda: 1.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.link_lasted(9.9)  # flapping: keep backing off
    assert backoff.next_delay() == 16.0
    backoff.link_lasted(10.0)
    assert backoff.next_delay() == 0.5
