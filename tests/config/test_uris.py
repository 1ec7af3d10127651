"""``parse_uri``: the accepted forms, each refusal with its message, and a round-trip property."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shield.config.errors import ConfigError
from shield.config.model import Uri
from shield.config.uris import parse_uri

ALL = ("ws", "wss", "tcp", "tls", "http", "unix")
PUBLIC = ("ws", "wss", "tcp", "tls")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ws://example.com:8080/echo", Uri("ws", "example.com", 8080, "/echo")),
        ("ws://example.com:8080", Uri("ws", "example.com", 8080, "/")),
        ("wss://127.0.0.1:443/a/b/", Uri("wss", "127.0.0.1", 443, "/a/b/")),
        ("tcp://10.0.0.1:1", Uri("tcp", "10.0.0.1", 1)),
        ("tls://gw.example:65535", Uri("tls", "gw.example", 65535)),
        ("http://127.0.0.1:9100", Uri("http", "127.0.0.1", 9100)),
        ("unix:/run/shield/backend.sock", Uri("unix", path="/run/shield/backend.sock")),
        ("unix:///run/x.sock", Uri("unix", path="/run/x.sock")),
        ("ws://[::1]:8080/x", Uri("ws", "::1", 8080, "/x")),
        ("tcp://[0:0:0:0:0:0:0:1]:80", Uri("tcp", "::1", 80)),
        ("tls://[fe80::1%eth0]:5941", Uri("tls", "fe80::1%eth0", 5941)),
        ("WS://Example.COM:80/Path", Uri("ws", "example.com", 80, "/Path")),
        ("tcp://under_score.local:7", Uri("tcp", "under_score.local", 7)),
    ],
)
def test_accepted_forms(text: str, expected: Uri) -> None:
    assert parse_uri(text, ALL, "k") == expected


@pytest.mark.parametrize(
    ("text", "schemes", "problem"),
    [
        ("htp://a:1", PUBLIC, "unsupported scheme 'htp' (expected one of ws, wss, tcp, tls)"),
        ("tcp://a:1", ("tls",), "unsupported scheme 'tcp' (expected tls)"),
        ("ws://host/x", PUBLIC, "missing port (expected ws://host:port/path)"),
        ("tcp://host:", PUBLIC, "missing port (expected tcp://host:port)"),
        ("tcp://host", PUBLIC, "missing port"),
        ("ws://[::1]/x", PUBLIC, "missing port"),
        ("tcp://host:0", PUBLIC, "bad port '0' (expected 1..65535)"),
        ("tcp://host:65536", PUBLIC, "bad port '65536' (expected 1..65535)"),
        ("tcp://host:http", PUBLIC, "bad port 'http'"),
        ("tcp://host:-1", PUBLIC, "bad port '-1'"),
        ("tcp://host:" + "9" * 5000, PUBLIC, "bad port"),
        ("tcp://host:80/x", PUBLIC, "path '/x' not allowed on tcp:// (expected tcp://host:port)"),
        ("tls://host:80/", PUBLIC, "path '/' not allowed on tls://"),
        ("http://host:80/metrics", ("http",), "path '/metrics' not allowed on http://"),
        ("ws://host:80/x?a=b", PUBLIC, "query string not allowed ('?a=b')"),
        ("ws://host:80/x#top", PUBLIC, "fragment not allowed ('#top')"),
        ("tcp://:80", PUBLIC, "empty host (expected tcp://host:port)"),
        ("ws://[]:80/", PUBLIC, "empty IPv6 address"),
        ("ws://[::1:80/", PUBLIC, "unclosed '['"),
        ("ws://[::1]x:80/", PUBLIC, "unexpected 'x:80'"),
        ("ws://[zz::1]:80/", PUBLIC, "bad IPv6 address 'zz::1'"),
        ("ws://::1:80/", PUBLIC, "IPv6 addresses must be in brackets"),
        ("tcp://256.1.1.1:80", PUBLIC, "bad IPv4 address '256.1.1.1'"),
        ("tcp://bad!host:80", PUBLIC, "bad host name 'bad!host'"),
        ("tcp://-bad.example:80", PUBLIC, "bad host name"),
        ("tcp://a..b:80", PUBLIC, "bad host name"),
        ("tcp://user@host:80", PUBLIC, "user info not allowed"),
        ("tcp://ho st:80", PUBLIC, "contains spaces or control characters"),
        ("tcp:host:80", PUBLIC, "expected tcp://host:port"),
        ("", PUBLIC, "empty URI"),
        ("127.0.0.1:80", PUBLIC, "is not a URI"),
        ("localhost:8080", PUBLIC, "has no scheme"),
        ("unix:run/x.sock", ("unix",), "unix socket path must be absolute (got 'run/x.sock')"),
        ("unix:", ("unix",), "missing socket path"),
        ("unix://host/x", ("unix",), "has no host"),
        ("unix:/x?y", ("unix",), "query string or fragment not allowed"),
        ("unix:/" + "x" * 200, ("unix",), "longer than 107 bytes"),
    ],
)
def test_refusals_name_the_problem(text: str, schemes: tuple[str, ...], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_uri(text, schemes, "a.b[0]")
    assert info.value.key_path == "a.b[0]"
    assert problem in info.value.problem
    assert info.value.file is None


def test_unknown_scheme_in_allowed_list_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        parse_uri("gopher://a:1", ("gopher",), "k")


hosts = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}", fullmatch=True).filter(
        lambda host: not host.replace(".", "").isdigit()  # all digits: read as an IPv4 address
    ),
    st.ip_addresses().map(str),
)
paths = st.from_regex(r"(/[A-Za-z0-9._~%!$&'()*+,;=:@-]{0,8}){1,4}", fullmatch=True)


@st.composite
def uris(draw: st.DrawFn) -> Uri:
    scheme = draw(st.sampled_from(ALL))
    if scheme == "unix":
        # "unix://..." is the host form (refused), so a socket path never starts with "//"
        return Uri("unix", path=draw(paths.filter(lambda path: not path.startswith("//"))))
    path = draw(paths) if scheme in ("ws", "wss") else ""
    return Uri(scheme, draw(hosts), draw(st.integers(1, 65535)), path)


@settings(max_examples=200, deadline=None)
@given(uris())
def test_str_of_a_uri_parses_back_to_it(uri: Uri) -> None:
    assert parse_uri(str(uri), ALL, "k") == uri


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.sampled_from([PUBLIC, ("tls",), ("tcp", "tls", "unix"), ALL]))
def test_any_text_parses_or_raises_config_error(text: str, schemes: tuple[str, ...]) -> None:
    try:
        uri = parse_uri(text, schemes, "k")
    except ConfigError:
        return
    assert uri.scheme in schemes
