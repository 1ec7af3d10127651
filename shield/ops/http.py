"""The one way shield writes an HTTP answer by hand: a refusal before (or instead of) any HTTP
framework, on public ports, balancers and the admin endpoint. Plain text, the reason as its
one-line body, and ``Connection: close``: the connection ends after it."""

from __future__ import annotations

from http import HTTPStatus

from twisted.web.http import RESPONSES


def http_response(status: int, reason: str = "", headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete HTTP/1.1 answer. The body is the first line of ``reason`` (none without one, a
    redirect say), so a client and a log show the same words."""
    phrase = status_phrase(status)
    body = (reason.splitlines()[0] + "\n").encode("utf-8") if reason else b""
    lines = [f"HTTP/1.1 {status} {phrase}", "Content-Type: text/plain; charset=utf-8",
             f"Content-Length: {len(body)}", "Connection: close"]  # fmt: skip
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def status_phrase(status: int) -> str:
    """Twisted's reason phrase, or the standard library's for codes Twisted lacks (426)."""
    if status in RESPONSES:
        return RESPONSES[status].decode("latin-1")
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
