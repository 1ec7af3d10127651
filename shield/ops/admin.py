"""The admin HTTP endpoint: /healthz, /readyz and /metrics for orchestrators and Prometheus."""

from __future__ import annotations

from typing import Callable

from prometheus_client.twisted import MetricsResource
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from shield.transports import IStreamTransport
from shield.ops.http import http_response

log = Logger(namespace="shield.ops.admin")

#: Seconds an admin client may stay silent (probes answer in milliseconds).
ADMIN_TIMEOUT = 10.0

#: A readiness check answers (ready, lines explaining what is missing when not).
ReadinessCheck = Callable[[], tuple[bool, list[str]]]


class _Text(Resource):
    isLeaf = True

    def __init__(self, respond: Callable[[], tuple[int, str]]) -> None:
        super().__init__()
        self._respond = respond

    def render_GET(self, request: Request) -> bytes:
        status, body = self._respond()
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return (body.rstrip("\n") + "\n").encode()


class _AdminChannel(HTTPChannel):
    """An admin connection: a bad request is closed with one log line (HTTPChannel says nothing)."""

    transport: IStreamTransport  # connected before any event reaches the protocol

    def _bad(self, why: str) -> None:
        peer = self.transport.getPeer()
        log.warn("admin client {host}:{port}: {why}; closed (400)", host=getattr(peer, "host", "?"), port=getattr(peer, "port", "?"), why=why)

    def lineLengthExceeded(self, line: bytes) -> object:
        # Called again for every read of a long line until the socket closes: answer once.
        self.dataReceived = lambda data: None  # type: ignore[method-assign]  # after the 400, whatever else arrives is dropped
        if getattr(self, "_answered_bad", False):
            return None
        self._answered_bad = True
        self._bad(f"request or header line over {self.MAX_LENGTH} bytes")
        self.transport.write(http_response(400, f"request or header line over {self.MAX_LENGTH} bytes"))
        self.transport.loseConnection()
        return None

    def _respondToBadRequestAndDisconnect(self) -> None:
        self._bad("malformed or oversized request head")
        super()._respondToBadRequestAndDisconnect()

    def timeoutConnection(self) -> None:
        self._bad(f"silent for {ADMIN_TIMEOUT:g} s")
        super().timeoutConnection()


def admin_site(readiness: ReadinessCheck, registry: object) -> Site:
    """/healthz: 200 while the process runs; /readyz: 200 or 503 with what is missing."""

    def healthz() -> tuple[int, str]:
        return 200, "ok"

    def readyz() -> tuple[int, str]:
        ready, missing = readiness()
        if ready:
            return 200, "ready"
        return 503, "not ready:\n" + "\n".join(missing)

    root = Resource()
    root.putChild(b"healthz", _Text(healthz))
    root.putChild(b"readyz", _Text(readyz))
    root.putChild(b"metrics", MetricsResource(registry=registry))
    site = Site(root, timeout=ADMIN_TIMEOUT)
    # Twisted types Site.protocol as its HTTP/1-or-2 wrapper; buildProtocol only calls it.
    site.protocol = _AdminChannel  # type: ignore[method-assign, assignment]  # see the line above
    site.noisy = False
    site.displayTracebacks = False
    site.log = lambda request: None  # type: ignore[method-assign]  # probes every second: no access log
    return site
