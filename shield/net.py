"""Endpoints from config URIs and socket options, shared by both gateways."""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
import termios

from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXClientEndpoint,
)
from twisted.internet.interfaces import (
    IStreamClientEndpoint,
    IStreamServerEndpoint,
    ITransport,
)

from shield.config.model import Uri
from shield.transports import IGatewayReactor


def is_ipv6(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False


def is_ipv4(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv4Address)
    except ValueError:
        return False


def tcp_server_endpoint(reactor: IGatewayReactor, uri: Uri, backlog: int = 1024) -> IStreamServerEndpoint:
    """A TCP listening endpoint for ``uri``'s host and port (IPv4 or IPv6 literal, or a name)."""
    if is_ipv6(uri.host):
        return TCP6ServerEndpoint(reactor, uri.port, backlog=backlog, interface=uri.host)
    return TCP4ServerEndpoint(reactor, uri.port, backlog=backlog, interface=uri.host)


def stream_client_endpoint(reactor: IGatewayReactor, uri: Uri, timeout: float) -> IStreamClientEndpoint:
    """A plain stream endpoint to ``tcp://``/``tls://`` host:port (TLS is added by the caller) or ``unix:``."""
    if uri.scheme == "unix":
        return UNIXClientEndpoint(reactor, uri.path, timeout=timeout)
    # An address needs no lookup: HostnameEndpoint would still send it through the resolver's
    # thread pool on every connection.
    if is_ipv6(uri.host):
        return TCP6ClientEndpoint(reactor, uri.host, uri.port, timeout=timeout)
    if is_ipv4(uri.host):
        return TCP4ClientEndpoint(reactor, uri.host, uri.port, timeout=timeout)
    return HostnameEndpoint(reactor, uri.host, uri.port, timeout=timeout)


#: Bytes read from a socket per read call. Twisted's default is 64 KiB; bulk tunnels do better
#: with fewer, larger reads (fewer system calls and fewer, larger mux frames). It is also the most
#: a stream holds for a reader that stalled on the far side (one read, waiting for window), so
#: 128 KiB: 256 KiB moved no more bytes per second and doubled that.
READ_SIZE = 128 * 1024


def set_no_delay(transport: ITransport | None) -> None:
    """TCP_NODELAY and large reads on the socket under ``transport``, through TLS and other wrappers."""
    for _ in range(4):
        if transport is None:
            return
        setter = getattr(type(transport), "setTcpNoDelay", None)
        if setter is not None:
            try:
                setter(transport, True)
            except (OSError, AttributeError):
                pass
            if hasattr(transport, "bufferSize"):
                transport.bufferSize = READ_SIZE
            return
        transport = getattr(transport, "transport", None)


def socket_under(transport: object) -> socket.socket | None:
    """The OS socket beneath ``transport`` (through TLS and other wrappers), or None."""
    for _ in range(4):
        if transport is None:
            return None
        handle = getattr(transport, "getHandle", None)
        if handle is not None:
            found = handle()
            if isinstance(found, socket.socket):
                return found
        transport = getattr(transport, "transport", None)
    return None


_QUEUED = struct.Struct("i")


def send_room(sock: socket.socket | None) -> int:
    """Bytes the kernel would take into this socket's send buffer now (0 if unknown).

    ``SO_SNDBUF`` reports twice the payload the kernel promises (the rest pays for its
    bookkeeping); ``SIOCOUTQ`` counts what is queued and not yet acknowledged by the peer.
    """
    if sock is None:
        return 0
    try:
        size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        queued = _QUEUED.unpack(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 0
    return max(0, size // 2 - queued)


