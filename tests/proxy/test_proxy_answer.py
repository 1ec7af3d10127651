"""HTTP CONNECT without I/O (shield/proxy/connect.py): the request, and reading a proxy's answer
from whatever bytes arrive, in whatever pieces."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shield.proxy.connect import MAX_ANSWER_HEAD, AnswerReader, ConnectAnswer, MalformedAnswer, connect_request


def read(data: bytes, limit: int = MAX_ANSWER_HEAD) -> ConnectAnswer | None:
    return AnswerReader(limit).feed(data)


# -- the request ----------------------------------------------------------------------------------


def test_the_request_names_the_target_and_only_it() -> None:
    assert connect_request("dmz.example", 5941) == b"CONNECT dmz.example:5941 HTTP/1.1\r\nHost: dmz.example:5941\r\n\r\n"
    assert connect_request("2001:db8::1", 5941).startswith(b"CONNECT [2001:db8::1]:5941 HTTP/1.1\r\nHost: [2001:db8::1]:5941\r\n")


def test_credentials_go_as_basic() -> None:
    request = connect_request("dmz.example", 5941, ("connector", "pä:ss"))
    token = base64.b64encode("connector:pä:ss".encode()).decode()
    assert request == (
        b"CONNECT dmz.example:5941 HTTP/1.1\r\nHost: dmz.example:5941\r\n"
        b"Proxy-Authorization: Basic " + token.encode() + b"\r\n\r\n"
    )


# -- answers --------------------------------------------------------------------------------------


def test_established_with_the_tunnels_first_bytes() -> None:
    answer = read(b"HTTP/1.1 200 Connection established\r\nVia: 1.1 squid\r\n\r\n\x16\x03\x03")
    assert answer == ConnectAnswer(200, "Connection established", b"\x16\x03\x03")
    assert answer.established


def test_http_1_0_bare_newlines_and_no_reason() -> None:
    assert read(b"HTTP/1.0 200\n\n") == ConnectAnswer(200, "", b"")


@pytest.mark.parametrize(
    ("head", "status", "reason"),
    [
        (b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\r\nbody", 407, "Proxy Authentication Required"),
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\n", 403, "Forbidden"),
        (b"HTTP/1.1 502 Bad Gateway\r\n\r\n", 502, "Bad Gateway"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", 101, "Switching Protocols"),  # no upgrade was asked
    ],
)
def test_refusals_are_answers_too(head: bytes, status: int, reason: str) -> None:
    answer = read(head)
    assert answer is not None and (answer.status, answer.reason, answer.established) == (status, reason, False)


def test_interim_answers_are_skipped() -> None:
    assert read(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\n\r\n!") == ConnectAnswer(
        200, "OK", b"!"
    )


def test_an_incomplete_head_waits() -> None:
    reader = AnswerReader()
    assert reader.feed(b"HTTP/1.1 200 OK\r\nVia: x\r\n") is None
    assert reader.feed(b"\r") is None
    assert reader.feed(b"\nrest") == ConnectAnswer(200, "OK", b"rest")


def test_the_reason_is_printable_and_short() -> None:
    answer = read(b"HTTP/1.1 403 \x80\xfe" + b"x" * 200 + b"\r\n\r\n")
    assert answer is not None and answer.reason == "?þ" + "x" * 78  # latin-1, unprintable as ?, cut at 80


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "expected an HTTP status line, got b'SSH-2.0-OpenSSH_9.2'"),
        (b"\x15\x03\x01\x00\x02\x02\x50", "expected an HTTP status line, got b'\\x15\\x03"),
        (b"HTTP/2 200\r\n\r\n", "expected an HTTP status line, got b'HTTP/2 200'"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "expected an HTTP status line"),
        (b"HTTP/1.1 600 Nope\r\n\r\n", "expected an HTTP status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "bad header line b'no colon here'"),
        (b"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n", "bad header line"),
        (b"\r\nHTTP/1.1 200 OK\r\n\r\n", "expected an HTTP status line, got b''"),
    ],
)
def test_garbage_is_malformed(data: bytes, problem: str) -> None:
    with pytest.raises(MalformedAnswer) as info:
        read(data)
    assert str(info.value).startswith(problem)


def test_garbage_is_noticed_before_any_line_end() -> None:
    with pytest.raises(MalformedAnswer, match="expected an HTTP status line, got b'<htm'"):
        AnswerReader().feed(b"<htm")


def test_a_head_over_the_limit_is_malformed_even_without_a_line_end() -> None:
    reader = AnswerReader(limit=64)
    assert reader.feed(b"HTTP/1.1 200 OK\r\n") is None
    with pytest.raises(MalformedAnswer, match="no end of the answer's head within 64 bytes"):
        reader.feed(b"X-Padding: " + b"a" * 60)
    with pytest.raises(MalformedAnswer, match="within 64 bytes"):
        read(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20 + b"\r\n", limit=64)
    # exactly at the limit is fine
    head = b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * (64 - 17 - 3 - 4) + b"\r\n\r\n"
    assert len(head) == 64 and read(head, limit=64) == ConnectAnswer(200, "OK", b"")


# -- properties -----------------------------------------------------------------------------------


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def feed_all(reader: AnswerReader, pieces: list[bytes]) -> ConnectAnswer | None:
    for piece in pieces:
        answer = reader.feed(piece)
        if answer is not None:
            return answer
    return None


@settings(max_examples=300)
@given(st.binary(max_size=2048), st.lists(st.integers(0, 2048), max_size=20), st.integers(1, 4096))
def test_arbitrary_bytes_raise_nothing_but_malformed(data: bytes, cuts: list[int], limit: int) -> None:
    reader = AnswerReader(limit)
    try:
        feed_all(reader, chunked(data, cuts))
    except MalformedAnswer:
        pass


@settings(max_examples=300)
@given(
    st.lists(st.sampled_from([b"HTTP/1.", b"1 ", b"0 ", b"200", b"407", b"100", b" OK", b"\r\n", b"\n", b"X: y", b":", b"\x00", b" "]), max_size=40),
    st.lists(st.integers(0, 400), max_size=10),
)
def test_near_http_bytes_raise_nothing_but_malformed(parts: list[bytes], cuts: list[int]) -> None:
    data = b"".join(parts)
    try:
        feed_all(AnswerReader(), chunked(data, cuts))
    except MalformedAnswer:
        pass


field_name = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-ABCXYZ0123456789", min_size=1, max_size=20)
field_value = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@settings(max_examples=100)
@given(
    st.sampled_from([b"HTTP/1.0", b"HTTP/1.1"]),
    st.integers(200, 299),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    st.lists(st.tuples(field_name, field_value), max_size=5),
    st.sampled_from([b"\r\n", b"\n"]),
    st.binary(max_size=64),
)
def test_an_established_answer_split_anywhere_reads_the_same(
    version: bytes, status: int, reason: str, fields: list[tuple[str, str]], eol: bytes, leftover: bytes
) -> None:
    head = version + b" " + str(status).encode() + (b" " + reason.encode() if reason else b"") + eol
    head += b"".join(f"{name}: {value}".encode() + eol for name, value in fields) + eol
    data = head + leftover
    whole = AnswerReader().feed(data)
    assert whole == ConnectAnswer(status, reason.strip(), leftover)
    for cut in range(len(data) + 1):
        reader = AnswerReader()
        first = reader.feed(data[:cut])
        if first is None:
            assert cut < len(head)
            assert reader.feed(data[cut:]) == whole
        else:
            assert cut >= len(head) and first == ConnectAnswer(status, reason.strip(), data[len(head):cut])
