"""A connection's lifecycle as an explicit state machine: one state, one transition table.

A class that has a lifecycle declares two enums (its states and the events that move it) and a
table ``{(state, event): next state}``, reproduced in its docstring, and composes a ``Lifecycle``
over them. ``fire(event)`` moves to the next state; an event the table does not list for the
current state raises ``StateError`` at once, instead of being ignored by some flag or acted on in
a state nobody thought of (the shape of h2's stream state machine and of yamux's per-stream
state).

The data path does not go through ``fire``: a per-message check reads ``life.state`` (one
attribute compare); only the few events of a connection's life look the table up.
"""

from __future__ import annotations

from enum import Enum
from typing import Callable, Generic, Mapping, TypeVar

StateT = TypeVar("StateT", bound=Enum)
EventT = TypeVar("EventT", bound=Enum)

#: ``(state, event) -> next state``; a pair that is not in it is an error.
Transitions = Mapping[tuple[StateT, EventT], StateT]


class StateError(RuntimeError):
    """An event arrived in a state whose table does not allow it: a bug, said where it happened."""

    def __init__(self, owner: str, state: Enum, event: Enum) -> None:
        super().__init__(f"{owner}: event {event.name} is not allowed in state {state.name}")
        self.owner = owner
        self.state = state
        self.event = event


class Lifecycle(Generic[StateT, EventT]):
    """The current state of one connection, moved only by its class's transition table.

    ``on_leave`` says what leaving a state undoes (a deadline that only that state has), so it
    is undone whichever event leaves it, in one place.
    """

    __slots__ = ("state", "_table", "_owner", "_on_leave")

    def __init__(
        self,
        owner: str,
        table: Transitions[StateT, EventT],
        initial: StateT,
        on_leave: Mapping[StateT, Callable[[], object]] | None = None,
    ) -> None:
        self.state = initial
        self._table = table
        self._owner = owner  # names the class in a StateError
        self._on_leave = on_leave

    def fire(self, event: EventT) -> StateT:
        """Take the transition ``(state, event)`` and return the new state, or raise ``StateError``."""
        before = self.state
        try:
            state = self._table[before, event]
        except KeyError:
            raise StateError(self._owner, before, event) from None
        self.state = state
        if self._on_leave is not None and state is not before:
            leave = self._on_leave.get(before)
            if leave is not None:
                leave()
        return state

    def __repr__(self) -> str:
        return f"<Lifecycle of {self._owner}: {self.state.name}>"
