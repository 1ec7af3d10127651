"""The validated configuration of each gateway: what the rest of shield reads, never raw TOML.

Every value here has been checked by ``shield.config.loader``; paths are absolute (relative paths
in a file are taken relative to that file's folder).

Each field declares the TOML key it is read from, once, here (``shield.config.schema``): by
default its name with underscores turned into dashes (``heartbeat_interval`` is
``heartbeat-interval``); otherwise its ``metadata`` says (``key("tokens")``, ``table()``,
``tables("service")``, ``inline("keepalive-")``, ``not_in_file()``). The loader accepts exactly
these keys. Closed sets of strings are ``StrEnum`` classes: a member equals its plain string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from shield.config.schema import inline, key, not_in_file, table, tables

#: Link defaults, the same on both ends of a backplane link (docs/configuration.md).
STREAM_WINDOW = 256 * 1024  # the receive window a stream grants at first
STREAM_WINDOW_MAX = 4 * 1024 * 1024  # a stream whose reader keeps up may grow its window to this
MAX_STREAMS = 16384  # open streams per link

#: Schemes a DMZ service may accept public clients on.
PUBLIC_SCHEMES = ("ws", "wss", "tcp", "tls")
#: Schemes a connector may reach a backend with.
BACKEND_SCHEMES = ("tcp", "tls", "unix")
#: What links ride on: TLS straight, or a WebSocket over TLS (through HTTPS-only middleboxes).
BACKPLANE_SCHEMES = ("tls", "wss")


class ServiceType(StrEnum):
    """``type`` of a ``[[dmz.service]]``."""

    TUNNEL = "tunnel"  # clients go to a connector
    BALANCER = "balancer"  # clients go to a cluster member


class BalancerMode(StrEnum):
    """``mode`` of a balancer."""

    PROXY = "proxy"  # spliced by the balancer
    REDIRECT = "redirect"  # HTTP 302 to the member


class AuthKind(StrEnum):
    """``auth`` of a ``[[dmz.service]]``."""

    NONE = "none"
    TOKEN = "token"  # Bearer / access_token
    MTLS = "mtls"  # client certificate


class ProxyProtocolVersion(StrEnum):
    """``proxy-protocol`` of an ``[[internal.service]]``: the PROXY header sent to the backend."""

    V1 = "v1"  # text
    V2 = "v2"  # binary


class HealthCheck(StrEnum):
    """``health-check`` of an ``[[internal.service]]``."""

    CONNECT = "connect"
    TLS = "tls"  # tls:// backends only
    HTTP = "http"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class Uri:
    """A parsed listener or target: ``ws://host:port/path``, ``tls://host:port``, ``unix:/path``.

    ``host`` is without brackets for IPv6; ``port`` is 0 only for ``unix``; ``path`` is the
    WebSocket path (``/`` when absent) or the socket path for ``unix``, empty otherwise.
    """

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = self.path if self.scheme in ("ws", "wss", "http", "https") else ""
        return f"{self.scheme}://{host}:{self.port}{path}"


@dataclass(frozen=True, slots=True)
class KeepaliveSettings:
    interval: float = 5.0  # seconds between pings on a link; 0 disables
    misses: int = 3  # unanswered pings that make a link dead


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """What one public client, or one source address, may take; 0 means no limit."""

    max_connections: int = 10000  # open clients of a service (or of the gateway, globally)
    max_connections_per_source: int = 256  # open clients from one IP address
    handshake_timeout: float = 10.0  # TLS handshake and request head must be done by then
    idle_timeout: float = 0.0  # no payload either way for this long closes the client; 0: never
    bytes_per_second: int = 0  # toward each client (Kaazing's tcp.maximum.outbound.rate); 0: no cap


@dataclass(frozen=True, slots=True)
class DmzService:
    name: str
    accept: tuple[Uri, ...]
    allow_origin: tuple[str, ...] = ("*",)
    max_message_size: int = 131072
    ws_ping_interval: float = 30.0
    open_timeout: float = 10.0
    cert: Path | None = None  # required when accept has wss:// or tls://
    type: ServiceType = ServiceType.TUNNEL
    mode: BalancerMode = BalancerMode.PROXY  # balancers only
    balance: tuple[Uri, ...] = ()  # tunnels only: balancer accepts that may send clients here
    auth: AuthKind = AuthKind.NONE
    # SHA-256 digests of the accepted tokens (auth = "token"), from the key tokens
    token_hashes: tuple[bytes, ...] = field(default=(), metadata=key("tokens"))
    client_ca: Path | None = None  # CA of client certificates (auth = "mtls")
    # max-connections, ... in the service's own table
    limits: ClientLimits = field(default=ClientLimits(), metadata=inline())
    # load balancers whose connections must start with a PROXY protocol header (v1 or v2), whose
    # source is then the client's address; empty: no header is accepted from anyone
    proxy_protocol_from: tuple[IPv4Network | IPv6Network, ...] = ()

    @property
    def is_balancer(self) -> bool:
        return self.type == ServiceType.BALANCER


@dataclass(frozen=True, slots=True)
class DmzCluster:
    """Membership of a DMZ gateway in a cluster: member links over mutual TLS, heartbeats."""

    name: str
    accept: Uri  # tls:// for member-to-member links
    members: tuple[Uri, ...] = ()  # static peers to dial (may include this member's own accept)
    connect: Uri | None = None  # udp:// multicast group for discovery, or None
    heartbeat_interval: float = 1.0
    member_names: tuple[str, ...] = ()  # identities allowed as members; empty: any non-connector
    resolve_interval: float = 30.0  # seconds between look-ups of host names in members; 0: once


@dataclass(frozen=True, slots=True)
class DmzBackplane:
    accept: tuple[Uri, ...]  # tls://host:port and wss://host:port/path, a string or an array
    cert: Path
    ca: Path
    # [dmz.backplane.connectors]: identity -> the services it may offer (read whole, as a value)
    connectors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    keepalive: KeepaliveSettings = field(default=KeepaliveSettings(), metadata=inline("keepalive-"))
    stream_window: int = STREAM_WINDOW
    stream_window_max: int = STREAM_WINDOW_MAX
    max_streams: int = MAX_STREAMS


@dataclass(frozen=True, slots=True)
class DmzConfig:
    name: str
    backplane: DmzBackplane = field(metadata=table())
    services: tuple[DmzService, ...] = field(metadata=tables("service"))  # [[dmz.service]]
    admin: Uri | None = None
    grace_period: float = 30.0
    open_timeout: float = 10.0
    cluster: DmzCluster | None = field(default=None, metadata=table())
    # the whole gateway
    limits: ClientLimits = field(default=ClientLimits(max_connections=50000), metadata=table())
    buffer_budget: int = 268435456  # tunnel data held in stream buffers (or lent as window), at most
    source: Path | None = field(default=None, metadata=not_in_file())  # the file it was read from


@dataclass(frozen=True, slots=True)
class ProxyAuth:
    """Basic credentials for the egress proxy, read from ``proxy-auth-file`` (at start and at every
    reload, so a rotated Secret is picked up). Only the file shows in a repr: the credentials
    must never reach a log line or a traceback."""

    file: Path
    user: str = field(repr=False)
    password: str = field(repr=False)


# kw_only: links comes before the required cert and ca, the order of the keys in a file.
@dataclass(frozen=True, slots=True, kw_only=True)
class InternalBackplane:
    connect: tuple[Uri, ...]
    server_name: str
    links: int = 2
    cert: Path
    ca: Path
    keepalive: KeepaliveSettings = field(default=KeepaliveSettings(), metadata=inline("keepalive-"))
    stream_window: int = STREAM_WINDOW
    stream_window_max: int = STREAM_WINDOW_MAX
    resolve_interval: float = 30.0  # seconds between DNS look-ups of connect host names
    max_streams: int = MAX_STREAMS
    # http://host:port of an HTTP CONNECT proxy every link goes through (the proxy resolves the
    # connect host names then); None: links go straight to the DMZ
    proxy: Uri | None = None
    # Basic credentials for the proxy, from the key proxy-auth-file (a file of one line user:password)
    proxy_auth: ProxyAuth | None = field(default=None, metadata=key("proxy-auth-file"))


@dataclass(frozen=True, slots=True)
class InternalService:
    name: str
    connect: Uri
    connect_timeout: float = 5.0  # below the DMZ's open-timeout (10), so another connector can be tried
    ca: Path | None = None  # for tls:// backends; None means the system's trust store
    server_name: str | None = None  # for tls:// backends; defaults to the URI's host
    health_check: HealthCheck = HealthCheck.CONNECT
    health_interval: float = 2.0  # seconds between active checks
    health_timeout: float = 2.0  # seconds a check may take
    health_rise: int = 2  # consecutive successes that bring a down backend back
    health_fall: int = 3  # consecutive failures that take an up backend down
    health_path: str = "/"  # http checks: the path to GET
    health_status: int = 200  # http checks: the status that means healthy
    # a PROXY protocol header (v1 or v2) written to the backend before any byte; None: none
    proxy_protocol: ProxyProtocolVersion | None = None


@dataclass(frozen=True, slots=True)
class InternalConfig:
    name: str
    backplane: InternalBackplane = field(metadata=table())
    services: tuple[InternalService, ...] = field(metadata=tables("service"))  # [[internal.service]]
    admin: Uri | None = None
    priority: int = 100
    grace_period: float = 30.0
    max_pending_opens: int = 256  # stream opens waiting for a backend, per DMZ link
    buffer_budget: int = 268435456  # tunnel data held in stream buffers (or lent as window), at most
    source: Path | None = field(default=None, metadata=not_in_file())  # None: not from a file
