"""The admin HTTP endpoint: /healthz, /readyz and /metrics for orchestrators and Prometheus."""

from __future__ import annotations

from typing import Callable

from prometheus_client.twisted import MetricsResource
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

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
    site = Site(root)
    site.noisy = False
    site.displayTracebacks = False
    site.log = lambda request: None  # type: ignore[method-assign]  # probes every second: no access log
    return site
