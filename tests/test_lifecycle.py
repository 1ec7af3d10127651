"""The explicit connection lifecycles: the shared helper, and each class's table against its docstring.

Every class with a lifecycle documents its transition table in its docstring as a reST simple
table (``state  event  next  what happens``). These tests read that table back and compare it
with the class's ``LIFECYCLE`` dict, so the two cannot drift apart, and check that every pair
the table leaves out is refused.
"""

from __future__ import annotations

import inspect
import re
from enum import Enum, auto
from typing import Any

import pytest

from shield.cluster.link import ForwardEvent, ForwardState, ForwardStream
from shield.dmz.balancer import BalancedClientEvent, BalancedClientState, _BalancedClient
from shield.dmz.frontplane_tcp import PublicTcpProtocol, TcpClientEvent, TcpClientState
from shield.dmz.frontplane_ws import PublicWebSocketProtocol, WsClientEvent, WsClientState
from shield.dmz.proxy_door import DoorEvent, DoorState, ProxyDoor
from shield.dmz.tunnel import TunnelEvent, TunnelState, TunnelStream
from shield.internal.backend import BackendStream, BackendStreamEvent, BackendStreamState
from shield.lifecycle import Lifecycle, StateError
from shield.relay import Relay, RelayEvent, RelayState

#: Each class with a lifecycle: (class, its state enum, its event enum).
LIFECYCLES: list[tuple[type, type[Enum], type[Enum]]] = [
    (Relay, RelayState, RelayEvent),
    (BackendStream, BackendStreamState, BackendStreamEvent),
    (TunnelStream, TunnelState, TunnelEvent),
    (ForwardStream, ForwardState, ForwardEvent),
    (PublicTcpProtocol, TcpClientState, TcpClientEvent),
    (PublicWebSocketProtocol, WsClientState, WsClientEvent),
    (_BalancedClient, BalancedClientState, BalancedClientEvent),
    (ProxyDoor, DoorState, DoorEvent),
]

_RULE = re.compile(r"^=+(?: +=+){2,}$")


def documented_table(doc: str) -> dict[tuple[str, str], str]:
    """The rows of the one reST simple table in ``doc`` whose columns start ``state event next``."""
    lines = inspect.cleandoc(doc).splitlines()
    rules = [n for n, line in enumerate(lines) if _RULE.match(line.rstrip())]
    assert len(rules) == 3, f"expected one simple table (three rule lines), found {len(rules)} rule lines"
    assert lines[rules[0] + 1].split()[:3] == ["state", "event", "next"], lines[rules[0] + 1]
    rows: dict[tuple[str, str], str] = {}
    for line in lines[rules[1] + 1 : rules[2]]:
        if not line.strip() or line[0].isspace():
            continue  # a blank line, or the note of the row above going on
        state, event, next_state = line.split(None, 3)[:3]
        assert (state, event) not in rows, f"({state}, {event}) is documented twice"
        rows[state, event] = next_state
    return rows


def by_name(table: Any) -> dict[tuple[str, str], str]:
    return {(state.name, event.name): after.name for (state, event), after in table.items()}


# -- the helper -----------------------------------------------------------------------------------


class Door(Enum):
    CLOSED = auto()
    OPEN = auto()
    LOCKED = auto()


class Push(Enum):
    OPEN = auto()
    CLOSE = auto()
    LOCK = auto()


DOOR = {
    (Door.CLOSED, Push.OPEN): Door.OPEN,
    (Door.OPEN, Push.CLOSE): Door.CLOSED,
    (Door.CLOSED, Push.LOCK): Door.LOCKED,
}


def test_fire_follows_the_table_and_returns_the_new_state() -> None:
    life = Lifecycle("Door", DOOR, Door.CLOSED)
    assert life.fire(Push.OPEN) is Door.OPEN and life.state is Door.OPEN
    assert life.fire(Push.CLOSE) is Door.CLOSED
    assert life.fire(Push.LOCK) is Door.LOCKED
    assert repr(life) == "<Lifecycle of Door: LOCKED>"


def test_leaving_a_state_undoes_what_it_alone_had_whichever_event_leaves_it() -> None:
    undone: list[str] = []
    life = Lifecycle("Door", {**DOOR, (Door.OPEN, Push.OPEN): Door.OPEN}, Door.CLOSED, {Door.OPEN: lambda: undone.append("wedge")})
    life.fire(Push.OPEN)
    life.fire(Push.OPEN)  # staying is not leaving
    assert undone == []
    life.fire(Push.CLOSE)
    assert undone == ["wedge"] and life.state is Door.CLOSED
    with pytest.raises(StateError):
        life.fire(Push.CLOSE)
    assert undone == ["wedge"]  # a refused event leaves nothing


def test_an_event_the_table_does_not_list_raises_and_leaves_the_state_alone() -> None:
    life = Lifecycle("Door", DOOR, Door.LOCKED)
    with pytest.raises(StateError, match="^Door: event OPEN is not allowed in state LOCKED$") as raised:
        life.fire(Push.OPEN)
    assert (raised.value.state, raised.value.event) == (Door.LOCKED, Push.OPEN)
    assert life.state is Door.LOCKED


def test_the_table_reader_reads_rows_and_skips_notes_that_go_on() -> None:
    doc = """Something.

        =====  =====  =====  ============
        state  event  next   what happens
        =====  =====  =====  ============
        A      GO     B      a note that
                             goes on
        B      STOP   A
        =====  =====  =====  ============
        """
    assert documented_table(doc) == {("A", "GO"): "B", ("B", "STOP"): "A"}


# -- every class's table ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls, states, events", LIFECYCLES, ids=lambda v: getattr(v, "__name__", ""))
def test_the_docstring_table_is_the_transition_table(cls: type, states: type[Enum], events: type[Enum]) -> None:
    assert documented_table(cls.__doc__ or "") == by_name(cls.LIFECYCLE)  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls, states, events", LIFECYCLES, ids=lambda v: getattr(v, "__name__", ""))
def test_every_state_and_event_takes_part(cls: type, states: type[Enum], events: type[Enum]) -> None:
    table = cls.LIFECYCLE  # type: ignore[attr-defined]
    assert all(isinstance(s, states) and isinstance(e, events) and isinstance(n, states) for (s, e), n in table.items())
    reached = {n for n in table.values()} | {s for s, _ in table}
    assert reached == set(states), f"states outside the table: {set(states) - reached}"
    assert {e for _, e in table} == set(events), f"events never taken: {set(events) - {e for _, e in table}}"


@pytest.mark.parametrize("cls, states, events", LIFECYCLES, ids=lambda v: getattr(v, "__name__", ""))
def test_every_pair_outside_the_table_raises(cls: type, states: type[Enum], events: type[Enum]) -> None:
    table = cls.LIFECYCLE  # type: ignore[attr-defined]
    for state in states:
        for event in events:
            life = Lifecycle(cls.__name__, table, state)
            if (state, event) in table:
                assert life.fire(event) is table[state, event]
            else:
                with pytest.raises(StateError):
                    life.fire(event)
                assert life.state is state


# -- the relay ------------------------------------------------------------------------------------


def test_the_relay_table_is_total_since_either_side_may_report_anything_at_any_time() -> None:
    assert set(Relay.LIFECYCLE) == {(s, e) for s in RelayState for e in RelayEvent}
