"""Membership without sockets: who is alive, who is dead, and whom a balancer picks."""

from __future__ import annotations

from hypothesis import given, strategies as st

from shield.cluster.membership import Membership, balances
from shield.cluster.messages import Heartbeat, ServiceState
from shield.config.model import Uri

BALANCER = Uri("ws", "10.0.0.1", 8000, "/echo")
BALANCE = ("ws://front.example:8000/echo",)


def beat(name: str, clients: int = 0, *, live: bool = True, draining: bool = False, seen: tuple[str, ...] = (),
         balance: tuple[str, ...] = BALANCE, interval: float = 1.0) -> Heartbeat:  # fmt: skip
    service = ServiceState("echo", live, clients, (f"ws://{name}:9000/echo",), balance)
    return Heartbeat("c1", name, 1, interval, draining, clients, (service,), seen)


def test_alive_needs_a_link_and_a_fresh_heartbeat() -> None:
    m = Membership("dmz1")
    m.link_up("dmz2")
    assert m.alive(0.0) == []  # linked, but not heard yet
    assert m.heard(beat("dmz2"), 10.0) == (True, True)
    assert [v.name for v in m.alive(10.0)] == ["dmz2"]
    assert [v.name for v in m.alive(13.0)] == ["dmz2"]  # 3 intervals is still alive
    assert m.alive(13.01) == []
    assert m.expire(13.01) == ["dmz2"]
    assert m.expire(14.0) == []  # named once


def test_the_peer_interval_decides_silence() -> None:
    m = Membership("dmz1")
    m.link_up("dmz2")
    m.heard(beat("dmz2", interval=0.2), 0.0)
    assert m.alive(0.6) and not m.alive(0.61)


def test_losing_the_last_link_is_death_at_once() -> None:
    m = Membership("dmz1")
    m.link_up("dmz2")
    m.link_up("dmz2")
    m.heard(beat("dmz2"), 0.0)
    assert m.link_down("dmz2") is False  # one link left
    assert [v.name for v in m.alive(0.1)] == ["dmz2"]
    assert m.link_down("dmz2") is True
    assert m.alive(0.1) == []
    assert m.link_down("dmz2") is False


def test_fewest_clients_first_this_member_included() -> None:
    m = Membership("dmz1")
    for name, clients in (("dmz2", 5), ("dmz3", 1)):
        m.link_up(name)
        m.heard(beat(name, clients), 0.0)
    order = m.candidates(BALANCER, beat("dmz1", 3), 0.5)
    assert [c.member for c in order] == ["dmz3", None, "dmz2"]
    assert [c.clients for c in order] == [1, 3, 5]
    # Clients sent to dmz3 since its last heartbeat count against it.
    order = m.candidates(BALANCER, beat("dmz1", 3), 0.5, recent={"dmz3": 4})
    assert [c.member for c in order] == [None, "dmz2", "dmz3"]


def test_draining_dead_not_live_and_unbalanced_members_are_skipped() -> None:
    m = Membership("dmz1")
    peers = {
        "draining": beat("draining", draining=True),
        "nolink": beat("nolink", live=False),
        "other": beat("other", balance=("ws://front.example:8000/other",)),
        "ok": beat("ok", 9),
    }
    for name, hb in peers.items():
        m.link_up(name)
        m.heard(hb, 0.0)
    m.link_up("silent")
    m.heard(beat("silent"), -10.0)
    order = m.candidates(BALANCER, beat("dmz1", draining=True), 0.0)
    assert [c.member for c in order] == ["ok"]
    assert m.candidates(BALANCER, beat("dmz1"), 0.0, exclude={None, "ok"}) == []


def test_drain_acknowledgement() -> None:
    m = Membership("dmz1")
    for name in ("dmz2", "dmz3"):
        m.link_up(name)
        m.heard(beat(name), 0.0)
    assert m.peers_seeing_drain(0.1) == ([], ["dmz2", "dmz3"])
    m.heard(beat("dmz2", seen=("dmz1",)), 0.2)
    assert m.peers_seeing_drain(0.3) == (["dmz2"], ["dmz3"])
    m.link_down("dmz3")  # a dead peer need not acknowledge
    assert m.peers_seeing_drain(0.3) == (["dmz2"], [])
    m.heard(beat("dmz2", draining=True), 0.4)
    assert m.draining_seen(0.5) == ("dmz2",)


def test_balance_uris_match_on_scheme_port_and_path() -> None:
    assert balances("ws://anything.example:8000/echo", BALANCER)
    assert not balances("wss://anything.example:8000/echo", BALANCER)
    assert not balances("ws://anything.example:8001/echo", BALANCER)
    assert not balances("ws://anything.example:8000/other", BALANCER)
    assert not balances("garbage", BALANCER)
    assert balances("tcp://x:9000", Uri("tcp", "0.0.0.0", 9000))


@given(st.lists(st.tuples(st.integers(0, 100), st.booleans(), st.booleans()), max_size=8), st.integers(0, 100))
def test_the_pick_is_always_a_qualified_member_with_the_fewest_clients(peers, own_clients) -> None:  # type: ignore[no-untyped-def]
    m = Membership("self")
    qualified = {None: own_clients}
    for index, (clients, draining, live) in enumerate(peers):
        name = f"m{index}"
        m.link_up(name)
        m.heard(beat(name, clients, draining=draining, live=live), 0.0)
        if live and not draining:
            qualified[name] = clients
    order = m.candidates(BALANCER, beat("self", own_clients), 0.0)
    assert {c.member for c in order} == set(qualified)
    assert [c.clients for c in order] == sorted(qualified.values())
