"""The client's two ends as OPEN metadata (shield/link/client_ends.py): written by the DMZ, read
back by a connector into a PROXY header, refused (with why) when absent or not addresses."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shield.link.client_ends import client_ends, endpoint_of, ends_metadata
from shield.link.wire import OpenRequest, decode, encode
from shield.proxy_protocol.header import Endpoint, ProxyHeader

ends = st.builds(
    Endpoint,
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    st.integers(0, 65535),
)


@given(ends, ends)
def test_written_ends_read_back_through_the_wire(client: Endpoint, accepted: Endpoint) -> None:
    request = OpenRequest("echo", "label", (("transport", "tcp"),) + ends_metadata(client, accepted))
    decoded = decode(encode(request))
    assert isinstance(decoded, OpenRequest)
    assert client_ends(decoded.metadata) == ProxyHeader(client, accepted)


def test_the_keys_as_documented() -> None:
    pairs = ends_metadata(Endpoint.of("203.0.113.5", 51234), Endpoint.of("2001:db8::1", 443))
    assert pairs == (
        ("client-ip", "203.0.113.5"),
        ("client-port", "51234"),
        ("accepted-ip", "2001:db8::1"),
        ("accepted-port", "443"),
    )


def test_an_older_dmz_sends_none_and_the_reason_says_so() -> None:
    why = client_ends((("transport", "ws"), ("path", "/echo")))
    assert isinstance(why, str) and "no client-ip, client-port" in why
    assert "no client-ip, client-port" in str(client_ends(ends_metadata(None, Endpoint.of("192.0.2.1", 1))))


def test_an_unknown_accepted_end_is_the_unspecified_address() -> None:
    # a client a balancer forwarded from another member: the member knows only the client
    assert client_ends(ends_metadata(Endpoint.of("192.0.2.1", 1), None)) == ProxyHeader(
        Endpoint.of("192.0.2.1", 1), Endpoint.of("0.0.0.0", 0)
    )
    assert client_ends(ends_metadata(Endpoint.of("2001:db8::1", 1), None)) == ProxyHeader(
        Endpoint.of("2001:db8::1", 1), Endpoint.of("::", 0)
    )
    assert isinstance(client_ends((("client-ip", "192.0.2.1"), ("client-port", "1"), ("accepted-port", "2"))), str)


@given(st.text(max_size=40), st.text(max_size=8))
def test_anything_else_is_refused_never_raised(host: str, port: str) -> None:
    result = client_ends((("client-ip", host), ("client-port", port), ("accepted-ip", "::1"), ("accepted-port", "1")))
    assert isinstance(result, (str, ProxyHeader))


def test_what_is_not_an_address_is_not_sent() -> None:
    assert endpoint_of("example.com", 80) is None
    assert endpoint_of("/run/x.sock", None) is None
    assert endpoint_of("192.0.2.1", 70000) is None
    assert endpoint_of("192.0.2.1", True) is None
    assert isinstance(
        client_ends((("client-ip", "fe80::1%eth0"), ("client-port", "1"), ("accepted-ip", "::1"), ("accepted-port", "01"))), str
    )
