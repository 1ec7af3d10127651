"""How shield writes an address in a log line, a metric label or an endpoint name: the one helper.

``host:port``, ``[v6]:port`` for IPv6, the path of a unix socket. Code that needs the host of
something it labelled keeps the host itself; a label is never parsed back.
"""

from __future__ import annotations

from typing import Any


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe_address(address: Any) -> str:
    """An ``IAddress`` (IPv4/IPv6, unix, or one wrapped in a ``link``) as text; ``?`` for None."""
    if address is None:
        return "?"
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return host_port(str(host), port)
    name = getattr(address, "name", None)
    if name is not None:
        return name.decode() if isinstance(name, bytes) else str(name)
    link = getattr(address, "link", None)
    if link is not None:
        return describe_address(link)
    return str(address)


def host_of(address: Any) -> str:
    """The host of an ``IAddress`` (the whole address when it has none, a unix path say)."""
    return str(getattr(address, "host", address))
