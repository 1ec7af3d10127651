"""Cluster messages: what one member writes, another reads back exactly; garbage is refused."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, strategies as st

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


@given(st.builds(ForwardRequest, service=names, kind=st.sampled_from(["ws", "tcp"]), client_host=names,
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
