"""Cluster messages: what one member writes, another reads back exactly; garbage is refused."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from shield.cluster.messages import (
    MAX_MESSAGE,
    ClusterWireError,
    ForwardReply,
    ForwardRequest,
    Heartbeat,
    MessageDecoder,
    ServiceState,
    encode,
)

names = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF), max_size=20)
services = st.builds(
    ServiceState,
    name=names,
    live=st.booleans(),
    clients=st.integers(0, 10**6),
    accept=st.lists(names, max_size=3).map(tuple),
    balance=st.lists(names, max_size=3).map(tuple),
)
heartbeats = st.builds(
    Heartbeat,
    cluster=names,
    name=names,
    seq=st.integers(0, 2**53),
    interval=st.floats(0.05, 60),
    draining=st.booleans(),
    clients=st.integers(0, 10**6),
    services=st.lists(services, max_size=4).map(tuple),
    seen_draining=st.lists(names, max_size=3).map(tuple),
)


@given(heartbeats, st.lists(st.integers(1, 64), min_size=1, max_size=8))
def test_heartbeats_survive_any_chunking(heartbeat: Heartbeat, cuts: list[int]) -> None:
    data = encode(heartbeat.to_json()) * 2
    decoder = MessageDecoder()
    got = []
    position = 0
    for cut in cuts * 100:
        if position >= len(data):
            break
        got += decoder.feed(data[position : position + cut])
        position += cut
    got += decoder.feed(data[position:])
    assert [Heartbeat.from_json(m) for m in got] == [heartbeat, heartbeat]


# A client host is an address: no C0, DEL or C1 controls (ForwardRequest.from_json refuses them).
hosts = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF).filter(lambda c: not 0x7F <= ord(c) <= 0x9F), max_size=20)


@given(st.builds(ForwardRequest, service=names, kind=st.sampled_from(["ws", "tcp"]), client_host=hosts,
                 client_port=st.integers(0, 65535), metadata=st.dictionaries(names, names, max_size=3)))  # fmt: skip
def test_forward_request_round_trip(request_: ForwardRequest) -> None:
    [message] = MessageDecoder().feed(encode(request_.to_json()))
    assert ForwardRequest.from_json(message) == request_


def test_forward_reply_and_the_bytes_after_it() -> None:
    decoder = MessageDecoder()
    [message] = decoder.feed(encode(ForwardReply(503, "draining").to_json()) + b"GET / HTTP/1.1\r\n", limit=1)
    assert ForwardReply.from_json(message) == ForwardReply(503, "draining")
    assert not ForwardReply.from_json(message).ok
    assert decoder.take_rest() == b"GET / HTTP/1.1\r\n"


def test_oversized_length_is_refused_before_buffering() -> None:
    with pytest.raises(ClusterWireError, match="over"):
        MessageDecoder().feed(struct.pack(">I", MAX_MESSAGE + 1))


@pytest.mark.parametrize(
    "body, problem",
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b"not json", "not JSON"),
    ],
)
def test_garbage_is_refused(body: bytes, problem: str) -> None:
    with pytest.raises(ClusterWireError, match=problem):
        MessageDecoder().feed(struct.pack(">I", len(body)) + body)


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"type": "forward"}, "expected a heartbeat"),
        ({"interval": 0}, "out of range"),
        ({"interval": "1"}, "'interval' must be"),
        ({"draining": 1}, "'draining' must be bool"),
        ({"clients": True}, "'clients' must be int"),
        ({"services": [{"name": "x"}]}, "'live' must be bool"),
        ({"seen_draining": [1]}, "list of strings"),
    ],
)
def test_malformed_heartbeats_are_refused(change: dict, problem: str) -> None:
    good = Heartbeat("c1", "dmz1", 1, 1.0, False, 0).to_json()
    with pytest.raises(ClusterWireError, match=problem):
        Heartbeat.from_json({**good, **change})


@given(st.binary(max_size=200))
def test_any_bytes_give_messages_or_a_clean_error(data: bytes) -> None:
    try:
        for message in MessageDecoder().feed(data):
            assert isinstance(message, dict)
    except ClusterWireError:
        pass


# --- hostile input (issue 6, fuzzing): regressions and a property --------------------------------


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize("depth", [17, 2000, 30000])
def test_deeply_nested_json_is_a_clean_error(depth: int) -> None:
    """Regression: 30000 '[' made json.loads raise RecursionError out of feed(), past the
    link's ``except ClusterWireError``; nesting within the recursion limit could do the same
    later, in repr() of a field for an error message."""
    body = b'{"type":' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(ClusterWireError, match="nested more than 16 levels"):
        MessageDecoder().feed(frame(body))


def test_nesting_a_heartbeat_needs_is_fine() -> None:
    body = b'{"a":' + b"[" * 15 + b"]" * 15 + b"}"
    assert MessageDecoder().feed(frame(body)) == [{"a": [[[[[[[[[[[[[[[]]]]]]]]]]]]]]]}]


@pytest.mark.parametrize("interval", [10**400, -(10**400), 10**309], ids=["1e400", "-1e400", "1e309"])
def test_a_huge_integer_interval_is_a_clean_error(interval: int) -> None:
    """Regression: float() of a JSON integer over ~1e308 raised OverflowError."""
    good = Heartbeat("c1", "dmz1", 1, 1.0, False, 0).to_json()
    [message] = MessageDecoder().feed(encode({**good, "interval": interval}))
    with pytest.raises(ClusterWireError, match="out of range"):
        Heartbeat.from_json(message)


@pytest.mark.parametrize(
    "client, problem",
    [
        (["203.0.113.5", 70000], "port must be from 0 to 65535"),
        (["203.0.113.5", -1], "port must be from 0 to 65535"),
        (["203.0.113.5", True], "port must be from 0 to 65535"),
        (["203.0.113.5\nFAKE log line", 1], "no control characters"),
        (["\u0085", 1], "no control characters"),
        (["\ud800", 1], "no control characters"),
        (["1" * 201, 1], "at most 200 bytes"),
    ],
)
def test_forwarded_client_address_is_checked(client: list, problem: str) -> None:
    """Regression: any host and any integer port were taken; the host:port then went into log
    lines and the OPEN header, whose encoder refused it (control characters, over 255 bytes)."""
    good = ForwardRequest("echo", "ws", "203.0.113.5", 1).to_json()
    with pytest.raises(ClusterWireError, match=problem):
        ForwardRequest.from_json({**good, "client": client})


def test_an_ipv6_client_with_a_scope_is_fine() -> None:
    good = ForwardRequest("echo", "tcp", "fe80::1%eth0", 65535)
    assert ForwardRequest.from_json(good.to_json()) == good


json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.sampled_from([10**400, -(10**400), 2**64]),
        st.floats(), st.text(max_size=10), st.sampled_from(["heartbeat", "forward", "forward-reply", "ws"]),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=10,
)  # fmt: skip
KEYS = ["type", "v", "cluster", "name", "seq", "interval", "draining", "clients", "services", "seen_draining",
        "live", "accept", "balance", "service", "kind", "client", "metadata", "status", "reason"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["heartbeat", "forward", "reply"]), st.dictionaries(st.sampled_from(KEYS), json_values))
def test_any_json_object_gives_a_message_or_a_clean_error(kind: str, changes: dict) -> None:
    """Whatever a peer puts in any field: a message, or ClusterWireError, never another error."""
    base = {
        "heartbeat": Heartbeat("c1", "dmz1", 1, 1.0, False, 0, (ServiceState("echo", True, 0, (), ()),)).to_json(),
        "forward": ForwardRequest("echo", "ws", "203.0.113.5", 1).to_json(),
        "reply": ForwardReply(0).to_json(),
    }[kind]
    message = {**base, **changes}
    try:
        [decoded] = MessageDecoder().feed(encode(message))
    except ClusterWireError:
        return  # nested too deeply
    parse = {"heartbeat": Heartbeat.from_json, "forward": ForwardRequest.from_json, "reply": ForwardReply.from_json}
    try:
        parse[kind](decoded)
    except ClusterWireError:
        pass
