"""docs/protocol.md's byte-level example is what the session core really sends."""

from __future__ import annotations

import re
from pathlib import Path

from shield.mux import MuxConfig, Session

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def documented_frames(section: str) -> bytes:
    """The hex bytes listed under ``section`` in the doc's example block."""
    text = DOC.read_text()
    example = text.split("## Example", 1)[1].split("```", 2)[1]
    lines = example.split(section, 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    hex_bytes = [re.match(r"((?:[0-9a-f]{2}\s+)+)", line).group(1).split() for line in lines]
    return bytes(int(b, 16) for line in hex_bytes for b in line)


def test_documented_exchange_matches_the_core() -> None:
    client, server = Session(client=True), Session(client=False)
    stream_id = client.open_stream()
    client.send_data(stream_id, b"hello")
    client.end_stream(stream_id)
    client_bytes = client.data_to_send()
    assert client_bytes == documented_frames("client -> server")

    server.receive_data(client_bytes)
    server.send_data(stream_id, b"hi")
    server.end_stream(stream_id)
    assert server.data_to_send() == documented_frames("server -> client")


def test_documented_session_frames_match_the_core() -> None:
    session, peer = Session(client=True), Session(client=False)
    session._next_ping = 7  # the example's opaque value
    session.ping(now=0.0)
    ping = session.data_to_send()
    peer.receive_data(ping)
    answer = peer.data_to_send()
    session.go_away()
    assert ping + answer + session.data_to_send() == documented_frames("either side")


def test_documented_large_window_syn() -> None:
    session = Session(client=True, config=MuxConfig(stream_window=1024 * 1024))
    session.open_stream()
    assert session.data_to_send()[8:12] == bytes.fromhex("000c0000")
