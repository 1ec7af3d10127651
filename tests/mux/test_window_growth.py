"""Receive-window growth: a stream whose reader keeps up earns a larger window; others never do."""

from __future__ import annotations

import pytest

from shield.mux import MuxConfig, Session
from shield.mux.events import ConnectionTerminated, DataReceived
from shield.mux.frames import HEADER_SIZE, FrameType, decode_header

KiB = 1024
MiB = 1024 * KiB


def opened_pair(config: MuxConfig) -> tuple[Session, Session, int]:
    client, server = Session(client=True, config=config), Session(client=False, config=config)
    stream_id = client.open_stream()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    return client, server, stream_id


def granted(session: Session) -> list[int]:
    """Window-update deltas queued by ``session``."""
    wire, deltas, pos = session.data_to_send(), [], 0
    while pos < len(wire):
        header = decode_header(wire, pos)
        pos += HEADER_SIZE + (header.length if header.type is FrameType.DATA else 0)
        if header.type is FrameType.WINDOW_UPDATE:
            deltas.append(header.length)
    return deltas


def transfer(sender: Session, receiver: Session, stream_id: int, amount: int) -> int:
    """Send ``amount`` (as far as the window allows); returns what the receiver got."""
    sent = sender.send_data(stream_id, b"x" * amount)
    events = receiver.receive_data(sender.data_to_send())
    assert not any(isinstance(e, ConnectionTerminated) for e in events), events
    assert sum(len(e.data) for e in events if isinstance(e, DataReceived)) == sent
    return sent


def test_growth_rules() -> None:
    config = MuxConfig(max_stream_window=1 * MiB, window_growth_interval=0.05)
    client, server, sid = opened_pair(config)
    windows = []
    now = 0.0
    for _ in range(8):
        window = server.receive_window(sid)
        got = transfer(client, server, sid, window)
        server.acknowledge(sid, got, now)
        deltas = granted(server)
        client.receive_data(encode_updates(deltas, sid))
        windows.append(server.receive_window(sid))
        now += 0.001  # a fast reader
    assert windows[0] == 256 * KiB  # the first grant has no earlier one to compare with
    assert windows[1] == 512 * KiB
    assert windows[2] == 1 * MiB
    assert windows[-1] == 1 * MiB  # capped
    assert client.send_window(sid) == 1 * MiB  # and the sender may really use it


def encode_updates(deltas: list[int], stream_id: int) -> bytes:
    from shield.mux.frames import Flag, encode_header

    return b"".join(encode_header(FrameType.WINDOW_UPDATE, Flag.NONE, stream_id, d) for d in deltas)


@pytest.mark.parametrize("pace", [0.2, None])
def test_slow_or_unclocked_reader_keeps_its_window(pace: float | None) -> None:
    config = MuxConfig(max_stream_window=4 * MiB, window_growth_interval=0.05)
    client, server, sid = opened_pair(config)
    now = 0.0
    for _ in range(6):
        got = transfer(client, server, sid, server.receive_window(sid))
        server.acknowledge(sid, got, None if pace is None else now)
        client.receive_data(encode_updates(granted(server), sid))
        now += pace or 0.0
        assert server.receive_window(sid) == 256 * KiB


def test_paused_reader_never_grows() -> None:
    config = MuxConfig(max_stream_window=4 * MiB)
    client, server, sid = opened_pair(config)
    got = transfer(client, server, sid, 10 * MiB)
    assert got == 256 * KiB  # the peer stops at the initial window
    assert server.receive_window(sid) == 0
    assert granted(server) == []


def test_default_config_does_not_grow() -> None:
    client, server, sid = opened_pair(MuxConfig())
    for step in range(4):
        got = transfer(client, server, sid, server.receive_window(sid))
        server.acknowledge(sid, got, step * 0.001)
        client.receive_data(encode_updates(granted(server), sid))
    assert server.receive_window(sid) == 256 * KiB


def test_config_bounds() -> None:
    with pytest.raises(ValueError, match="max_stream_window"):
        MuxConfig(stream_window=1 * MiB, max_stream_window=512 * KiB)
    with pytest.raises(ValueError, match="max_stream_window"):
        MuxConfig(max_stream_window=32 * MiB)
    assert MuxConfig(max_stream_window=4 * MiB).frame_length_limit == 4 * MiB
