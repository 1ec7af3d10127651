"""HTTP CONNECT without I/O: the request a connector sends its proxy, and reading the answer.

The answer's head is read line by line as bytes arrive, at most ``MAX_ANSWER_HEAD`` bytes of it,
so a proxy (or something that is no proxy) can neither make the connector buffer without bound
nor crash it: anything but a well-formed HTTP/1.x head is ``MalformedAnswer``, the one error.
Interim ``1xx`` answers are skipped (RFC 9110, 15.2: a client must accept them); the bytes after
the final head belong to the tunnel (RFC 9110, 9.3.6: a 2xx answer to CONNECT has no body).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from shield.addresses import host_port

#: The most bytes a proxy's answer head (with any interim answers) may take.
MAX_ANSWER_HEAD = 16384
#: The longest reason phrase kept for a log line; the rest is cut.
MAX_REASON = 80

_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] ([1-5][0-9][0-9])(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
_FIELD_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:")
_HTTP = b"HTTP/"


class MalformedAnswer(Exception):
    """What came back is not an HTTP answer; the text says why, with a short sample."""


@dataclass(frozen=True, slots=True)
class ConnectAnswer:
    """The proxy's final answer to CONNECT."""

    status: int
    reason: str  # printable, at most MAX_REASON characters ("" when the proxy sent none)
    leftover: bytes  # what followed the head: the tunnel's first bytes

    @property
    def established(self) -> bool:
        return 200 <= self.status < 300


def connect_request(host: str, port: int, credentials: tuple[str, str] | None = None) -> bytes:
    """``CONNECT host:port``, with Basic ``Proxy-Authorization`` when ``credentials`` are given."""
    target = host_port(host, port)
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if credentials is not None:
        user, password = credentials
        token = base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")
        lines.append(f"Proxy-Authorization: Basic {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


class AnswerReader:
    """Fed the proxy's bytes as they come; returns the final answer once its head is complete.

    ``feed`` returns None while the head is incomplete and raises ``MalformedAnswer`` (and only
    that) for anything that is not an HTTP/1.x answer or is longer than ``limit``. Once it has
    returned an answer or raised, the reader is done and must not be fed again.
    """

    def __init__(self, limit: int = MAX_ANSWER_HEAD) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer known to hold no line end
        self._consumed = 0  # bytes of complete head lines so far
        self._status: tuple[int, str] | None = None  # of the answer whose header lines are being read

    def feed(self, data: bytes) -> ConnectAnswer | None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end < 0:
                self._scanned = len(self._buffer)
                self._check_pending()
                return None
            line = bytes(self._buffer[:end]).removesuffix(b"\r")
            del self._buffer[: end + 1]
            self._scanned = 0
            self._consumed += end + 1
            if self._consumed > self.limit:
                raise self._too_long()
            answer = self._line(line)
            if answer is not None:
                return answer

    def _line(self, line: bytes) -> ConnectAnswer | None:
        if self._status is None:
            self._status = _status_line(line)
            return None
        if line:
            if not (line[:1] in (b" ", b"\t") or _FIELD_LINE.match(line)):  # obs-fold, or name:
                raise MalformedAnswer(f"bad header line {_sample(line)}")
            return None
        status, reason = self._status
        self._status = None
        if 100 <= status < 200 and status != 101:  # interim: the final answer follows
            return None
        return ConnectAnswer(status, reason, bytes(self._buffer))

    def _check_pending(self) -> None:
        """Fail early: a status line that cannot start with HTTP/, or a head that grew too long."""
        pending = bytes(self._buffer)
        if self._status is None and not _HTTP.startswith(pending[: len(_HTTP)]):
            raise MalformedAnswer(f"expected an HTTP status line, got {_sample(pending)}")
        if self._consumed + len(pending) > self.limit:
            raise self._too_long()

    def _too_long(self) -> MalformedAnswer:
        return MalformedAnswer(f"no end of the answer's head within {self.limit} bytes")


def _status_line(line: bytes) -> tuple[int, str]:
    match = _STATUS_LINE.fullmatch(line)
    if match is None:
        raise MalformedAnswer(f"expected an HTTP status line, got {_sample(line)}")
    reason = (match.group(2) or b"").decode("latin-1")
    printable = "".join(ch if ch.isprintable() else "?" for ch in reason).strip()
    return int(match.group(1)), printable[:MAX_REASON]


def _sample(data: bytes, size: int = 40) -> str:
    """The first bytes of ``data`` as a Python bytes literal (control bytes escaped), for a log line."""
    return repr(data[:size]) + ("..." if len(data) > size else "")


class ProxyError(Exception):
    """A dial through the proxy failed before the tunnel was up. The text is the reason a log line
    gives: it names the proxy and the target, never the credentials."""


class ProxyRefusedError(ProxyError):
    """The proxy answered CONNECT with something other than 2xx."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
