"""shield.ops.http: the one hand-written HTTP answer (refusals on public ports and the admin)."""

from __future__ import annotations

from shield.ops.http import http_response


def test_a_refusal_is_a_whole_plain_text_answer_with_its_reason() -> None:
    answer = http_response(503, "no live link for service 'echo'\nsecond line is not sent")
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 503 Service Unavailable",
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Length: 32",
        b"Connection: close",
    ]
    assert body == b"no live link for service 'echo'\n"


def test_phrases_headers_and_the_codes_twisted_lacks() -> None:
    assert http_response(426, "use a WebSocket client").startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    redirect = http_response(302, headers=(("Location", "ws://10.0.0.2:8080/echo"),))
    assert b"\r\nLocation: ws://10.0.0.2:8080/echo\r\n" in redirect
    assert redirect.endswith(b"\r\nContent-Length: 0\r\nConnection: close\r\nLocation: ws://10.0.0.2:8080/echo\r\n\r\n")
    assert http_response(599).startswith(b"HTTP/1.1 599 Error\r\n")
    assert http_response(400, "naïve").endswith("naïve\n".encode())
