"""What members say to each other: length-prefixed JSON messages on cluster streams.

Every cluster stream begins with a header message naming what it carries: ``heartbeats`` (a
one-way series of ``Heartbeat``) or ``forward`` (one public client, then its bytes, after a
``ForwardReply``). Each message is a 4-byte big-endian length and a UTF-8 JSON object, at most
64 KiB: the cluster is between trusted gateways, but a bad peer still only breaks its own link.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any

MAX_MESSAGE = 65536
#: Deepest nesting of arrays and objects a message may have (a heartbeat needs 4). JSON nested
#: deeper is refused: Python's parser and ``repr`` recurse, so it could raise RecursionError.
MAX_DEPTH = 16
#: A forwarded client's host (an IP address, or "?") goes into log lines and, as "host:port",
#: into the OPEN header's client field (at most 255 bytes): bytes of UTF-8 it may take.
MAX_HOST = 200
_LENGTH = struct.Struct(">I")
#: C0, DEL and C1 controls (a forged log line) and lone surrogates (not encodable as UTF-8).
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
VERSION = 1


class ClusterWireError(ValueError):
    """A peer sent something that is not a valid cluster message."""


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_MESSAGE:
        raise ClusterWireError(f"message of {len(body)} bytes is over {MAX_MESSAGE}")
    return _LENGTH.pack(len(body)) + body


class MessageDecoder:
    """Turns a byte stream into messages; ``feed`` returns those complete so far."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes, limit: int | None = None) -> list[dict[str, Any]]:
        """Messages complete so far, at most ``limit``: what follows may be other bytes."""
        self._buffer += data
        messages: list[dict[str, Any]] = []
        while len(self._buffer) >= 4 and (limit is None or len(messages) < limit):
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > MAX_MESSAGE:
                raise ClusterWireError(f"message length {length} is over {MAX_MESSAGE}")
            if len(self._buffer) < 4 + length:
                break
            body = bytes(self._buffer[4 : 4 + length])
            del self._buffer[: 4 + length]
            try:
                value = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                raise ClusterWireError(f"not JSON: {e}") from None
            except RecursionError:
                raise ClusterWireError(f"JSON nested more than {MAX_DEPTH} levels deep") from None
            if not isinstance(value, dict):
                raise ClusterWireError("a message must be a JSON object")
            _check_depth(value)
            messages.append(value)
        return messages

    def take_rest(self) -> bytes:
        """Bytes after the last complete message (a forwarded client's first bytes)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest


def _check_depth(value: Any) -> None:
    """Refuse arrays and objects nested deeper than ``MAX_DEPTH``, without recursing."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise ClusterWireError(f"JSON nested more than {MAX_DEPTH} levels deep")
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        pending += [(child, depth + 1) for child in children if isinstance(child, (dict, list))]


def _get(message: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = message.get(key)
    if isinstance(value, bool) and kind is not bool:
        raise ClusterWireError(f"{key!r} must be {_kind_name(kind)}")
    if not isinstance(value, kind):
        raise ClusterWireError(f"{key!r} must be {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _strings(message: dict[str, Any], key: str) -> tuple[str, ...]:
    value = _get(message, key, list)
    if not all(isinstance(item, str) for item in value):
        raise ClusterWireError(f"{key!r} must be a list of strings")
    return tuple(value)


@dataclass(frozen=True)
class ServiceState:
    """One tunnel service of a member, as its heartbeat says."""

    name: str
    live: bool  # the member has a connector link for it now
    clients: int
    accept: tuple[str, ...]  # public URIs, as in the member's config
    balance: tuple[str, ...]  # balancer accepts that may send clients here

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "live": self.live, "clients": self.clients,
            "accept": list(self.accept), "balance": list(self.balance),
        }  # fmt: skip

    @classmethod
    def from_json(cls, value: Any) -> "ServiceState":
        if not isinstance(value, dict):
            raise ClusterWireError("a service must be an object")
        return cls(
            name=_get(value, "name", str),
            live=_get(value, "live", bool),
            clients=_get(value, "clients", int),
            accept=_strings(value, "accept"),
            balance=_strings(value, "balance"),
        )


@dataclass(frozen=True)
class Heartbeat:
    """A member's state, sent every ``interval`` seconds on each of its links."""

    cluster: str
    name: str
    seq: int
    interval: float
    draining: bool
    clients: int  # all public clients this member serves now
    services: tuple[ServiceState, ...] = ()
    seen_draining: tuple[str, ...] = ()  # members this one knows are draining
    version: int = VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "heartbeat", "v": self.version, "cluster": self.cluster, "name": self.name,
            "seq": self.seq, "interval": self.interval, "draining": self.draining,
            "clients": self.clients, "services": [s.to_json() for s in self.services],
            "seen_draining": list(self.seen_draining),
        }  # fmt: skip

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> "Heartbeat":
        if value.get("type") != "heartbeat":
            raise ClusterWireError(f"expected a heartbeat, got {str(value.get('type'))[:40]!r}")
        interval = _get(value, "interval", (int, float))
        # Compared before float(): JSON integers have no size limit, float() would overflow.
        if not 0.01 <= interval <= 600:
            raise ClusterWireError(f"heartbeat interval {str(interval)[:40]} out of range")
        interval = float(interval)
        services = _get(value, "services", list)
        return cls(
            cluster=_get(value, "cluster", str),
            name=_get(value, "name", str),
            seq=_get(value, "seq", int),
            interval=interval,
            draining=_get(value, "draining", bool),
            clients=_get(value, "clients", int),
            services=tuple(ServiceState.from_json(s) for s in services),
            seen_draining=_strings(value, "seen_draining"),
            version=_get(value, "v", int),
        )


def heartbeats_header(cluster: str) -> dict[str, Any]:
    return {"type": "heartbeats", "v": VERSION, "cluster": cluster}


@dataclass(frozen=True)
class ForwardRequest:
    """A balancer hands one public client to a member: which service, how it arrived, from where."""

    service: str
    kind: str  # "ws" or "tcp": the bytes that follow are an HTTP upgrade request or raw bytes
    client_host: str
    client_port: int
    metadata: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "forward", "v": VERSION, "service": self.service, "kind": self.kind,
            "client": [self.client_host, self.client_port], "metadata": self.metadata,
        }  # fmt: skip

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> "ForwardRequest":
        kind = _get(value, "kind", str)
        if kind not in ("ws", "tcp"):
            raise ClusterWireError(f"unknown forward kind {kind[:20]!r}")
        client = _get(value, "client", list)
        if len(client) != 2 or not isinstance(client[0], str) or not isinstance(client[1], int):
            raise ClusterWireError("'client' must be [host, port]")
        host, port = client
        if _UNPRINTABLE.search(host) or len(host.encode("utf-8")) > MAX_HOST:
            raise ClusterWireError(
                f"'client' host must be at most {MAX_HOST} bytes of UTF-8 with no control characters"
            )
        if isinstance(port, bool) or not 0 <= port <= 65535:
            raise ClusterWireError(f"'client' port must be from 0 to 65535, got {str(port)[:20]}")
        metadata = _get(value, "metadata", dict)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ClusterWireError("'metadata' must map strings to strings")
        return cls(_get(value, "service", str), kind, client[0], client[1], metadata)


@dataclass(frozen=True)
class ForwardReply:
    """The member's answer: ``status`` 0 means it serves the client; else an HTTP status and why."""

    status: int
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 0

    def to_json(self) -> dict[str, Any]:
        return {"type": "forward-reply", "status": self.status, "reason": self.reason}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> "ForwardReply":
        if value.get("type") != "forward-reply":
            raise ClusterWireError("expected a forward reply")
        status = _get(value, "status", int)
        if status != 0 and not 400 <= status <= 599:
            raise ClusterWireError(f"forward reply status {status} is neither 0 nor an HTTP error")
        # The reason reaches a log line and a client's answer: no control characters, one line.
        from shield.link.wire import safe_text

        return cls(status, safe_text(_get(value, "reason", str), 1000))
