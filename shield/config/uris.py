"""Parsing of the URIs that name listeners and targets, strictly and without DNS.

A URI in a configuration file is checked once, here, so that the rest of shield can trust a
``Uri``: a known scheme, a syntactically valid host, a port in 1..65535, a path only where one
means something. Host names are lowercased and IPv6 addresses normalised so that two spellings
of one listener compare equal; nothing is resolved (a configuration check must not depend on DNS).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from shield.config.errors import ConfigError
from shield.config.model import Uri

#: What each scheme looks like, used in messages.
FORMS: dict[str, str] = {
    "ws": "ws://host:port/path",
    "wss": "wss://host:port/path",
    "tcp": "tcp://host:port",
    "tls": "tls://host:port",
    "http": "http://host:port",
    "udp": "udp://group:port",
    "unix": "unix:/absolute/path",
}
_WITH_PATH = frozenset({"ws", "wss"})
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(.*)", re.DOTALL)
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
#: Builds the error for one URI (it knows the key path).
_Fail = Callable[[str], ConfigError]
#: sun_path holds 108 bytes on Linux, including the terminating NUL.
MAX_UNIX_PATH_BYTES = 107


def parse_uri(text: str, allowed_schemes: tuple[str, ...], key_path: str) -> Uri:
    """Parse ``text`` into a ``Uri`` whose scheme is one of ``allowed_schemes``.

    Raises ``ConfigError`` at ``key_path`` saying what is wrong and what was expected.
    """
    unknown = set(allowed_schemes) - FORMS.keys()
    if unknown:
        raise ValueError(f"parse_uri cannot parse schemes {sorted(unknown)}")

    def fail(problem: str) -> ConfigError:
        return ConfigError(key_path, problem)

    if not text:
        raise fail(f"empty URI (expected {_expected_forms(allowed_schemes)})")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise fail(f"URI {text!r} contains spaces or control characters")
    match = _SCHEME.fullmatch(text)
    if match is None:
        raise fail(f"{text!r} is not a URI (expected {_expected_forms(allowed_schemes)})")
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme not in allowed_schemes:
        if rest.isdigit():  # "localhost:8080": the scheme is missing, not wrong
            raise fail(
                f"{text!r} has no scheme (expected {_expected_forms(allowed_schemes)})"
            )
        raise fail(f"unsupported scheme {scheme!r} (expected {_one_of(allowed_schemes)})")
    if scheme == "unix":
        return _parse_unix(rest, fail)
    return _parse_network(scheme, rest, fail)


def _one_of(schemes: tuple[str, ...]) -> str:
    return schemes[0] if len(schemes) == 1 else "one of " + ", ".join(schemes)


def _expected_forms(schemes: tuple[str, ...]) -> str:
    return " or ".join(FORMS[s] for s in schemes)


def _parse_unix(rest: str, fail: _Fail) -> Uri:
    """``unix:/abs/path`` (``unix:///abs/path`` is accepted too, as the same thing)."""
    if rest.startswith("//"):
        if not rest.startswith("///"):
            raise fail("a unix socket URI has no host (expected unix:/absolute/path)")
        rest = rest[2:]
    if "?" in rest or "#" in rest:
        raise fail("query string or fragment not allowed in a unix socket URI")
    if not rest:
        raise fail("missing socket path (expected unix:/absolute/path)")
    if not rest.startswith("/"):
        raise fail(f"unix socket path must be absolute (got {rest!r})")
    if len(rest.encode("utf-8", "surrogatepass")) > MAX_UNIX_PATH_BYTES:
        raise fail(f"unix socket path is longer than {MAX_UNIX_PATH_BYTES} bytes")
    return Uri("unix", path=rest)


def _parse_network(scheme: str, rest: str, fail: _Fail) -> Uri:
    """``scheme://host:port[/path]`` with the per-scheme rules on the path."""
    form = FORMS[scheme]
    if not rest.startswith("//"):
        raise fail(f"expected {form}")
    rest = rest[2:]
    rest, fragment = _split_off(rest, "#")
    if fragment is not None:
        raise fail(f"fragment not allowed ('#{fragment}')")
    rest, query = _split_off(rest, "?")
    if query is not None:
        raise fail(f"query string not allowed ('?{query}')")
    slash = rest.find("/")
    authority, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    host, port = _parse_authority(authority, form, fail)
    if scheme in _WITH_PATH:
        return Uri(scheme, host, port, path or "/")
    if path:
        raise fail(f"path {path!r} not allowed on {scheme}:// (expected {form})")
    return Uri(scheme, host, port)


def _split_off(text: str, sep: str) -> tuple[str, str | None]:
    head, found, tail = text.partition(sep)
    return head, (tail if found else None)


def _parse_authority(authority: str, form: str, fail: _Fail) -> tuple[str, int]:
    if "@" in authority:
        raise fail(f"user info not allowed (expected {form})")
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise fail(f"unclosed '[' in IPv6 address (expected {form})")
        host_text, after = authority[1:end], authority[end + 1 :]
        if after and not after.startswith(":"):
            raise fail(f"unexpected {after!r} after the IPv6 address (expected {form})")
        port_text = after[1:] if after else None
        host = _ipv6(host_text, fail)
    else:
        host_text, colon, port_text = authority.rpartition(":")
        port_text_raw: str | None = port_text
        if not colon:
            host_text, port_text_raw = authority, None
        if host_text and ":" in host_text:
            raise fail(f"IPv6 addresses must be in brackets, e.g. [::1] (expected {form})")
        port_text = port_text_raw
        host = _host(host_text, form, fail)
    return host, _port(port_text, form, fail)


def _ipv6(text: str, fail: _Fail) -> str:
    if not text:
        raise fail("empty IPv6 address in '[]'")
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise fail(f"bad IPv6 address {text!r}") from None


def _host(text: str, form: str, fail: _Fail) -> str:
    if not text:
        raise fail(f"empty host (expected {form})")
    if all(ch.isdigit() or ch == "." for ch in text):
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            raise fail(f"bad IPv4 address {text!r}") from None
    if not is_host_name(text):
        raise fail(
            f"bad host name {text!r} (letters, digits, '-' and '_' in dot-separated labels)"
        )
    return text.lower()


def is_host_name(text: str) -> bool:
    """True for a syntactically valid DNS name (ASCII labels, at most 253 characters)."""
    return len(text) <= 253 and all(_LABEL.fullmatch(label) for label in text.split("."))


def _port(text: str | None, form: str, fail: _Fail) -> int:
    if not text:
        raise fail(f"missing port (expected {form})")
    if len(text) > 5 or not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise fail(f"bad port {text!r} (expected 1..65535)")
    return int(text)
