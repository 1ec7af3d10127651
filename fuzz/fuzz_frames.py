#!/usr/bin/env python3
"""Coverage-guided fuzzing of the yamux frame parser (``shield.mux.session.Session``).

README. A fresh ``Session`` is fed bytes "from the peer" and must never raise, whatever they
are: session.py surfaces a peer's protocol error as a ``ConnectionTerminated`` event with
GoAway(protocol error) on the wire, or as a ``StreamReset`` for a one-stream error. Besides "no
exception", every run checks: only known event types, never an empty ``DataReceived``; at most
one ``ConnectionTerminated``, and last; never more than a partial header (< 12 bytes) buffered;
windows from 0 to 2**32-1; the output is well-formed frames. When the application does not act,
the same bytes fed in one call or in chunks give the same events (payload may be split
differently), output and state. When it acts between reads (acknowledges what it received,
opens, writes, ends, resets, pings, goes away), its commands may raise only ``MuxError``s.

Each input is two option bytes, then the peer's bytes. Byte 0: bit 0 client (else server); bit 1
a stream limit of 3; bits 2-3 streams this side opened first; bit 4 the application acts; bit 5
this side sent GoAway first; bit 6 abbreviated payloads; bit 7 windows may grow to 4 MiB. Byte 1
seeds how the bytes are cut into ``receive_data`` calls (0: one call). With abbreviated
payloads each Data frame carries at most 16 payload bytes and the harness pads it with zeros to
its declared length (1 MiB in all at most), so a small input fills 256 KiB windows, violates
them, and makes the application grant credit back.

Run: ``python fuzz/fuzz_frames.py [libFuzzer options] [corpus dir ...]``, e.g.
``python fuzz/fuzz_frames.py -max_total_time=60 build/fuzz/frames/corpus``;
``python fuzz/fuzz_frames.py --make-seeds DIR`` writes valid frame sequences to start from.
``make fuzz`` does both for every harness, ``make test`` runs each briefly
(tests/fuzz/test_fuzz_smoke.py). A failing input is saved as ``crash-*`` (see
-artifact_prefix); ``python fuzz/fuzz_frames.py crash-FILE`` replays it.
"""

from __future__ import annotations

import contextlib
import random
import sys
from pathlib import Path

import atheris

# Coverage feedback comes from instrumenting the code under test (not needed to write seeds).
_instrumented = (
    contextlib.nullcontext() if "--make-seeds" in sys.argv else atheris.instrument_imports(include=["shield.mux"])
)
with _instrumented:
    from shield.mux.config import MuxConfig
    from shield.mux.errors import MuxError
    from shield.mux.events import (
        ConnectionTerminated,
        DataReceived,
        GoAwayReceived,
        PongReceived,
        StreamAccepted,
        StreamClosed,
        StreamEnded,
        StreamOpened,
        StreamRejected,
        StreamReset,
        WindowUpdated,
    )
    from shield.mux.frames import HEADER_SIZE, MAX_UINT32, Flag, FrameType, GoAwayCode, decode_header, encode_header
    from shield.mux.session import Session

EVENT_TYPES = (
    StreamOpened, StreamRejected, StreamAccepted, DataReceived, WindowUpdated, StreamEnded,
    StreamClosed, StreamReset, PongReceived, GoAwayReceived, ConnectionTerminated,
)  # fmt: skip
CONFIGS = {
    (small, grow): MuxConfig(max_streams=3 if small else 16384, max_stream_window=4 << 20 if grow else None)
    for small in (False, True)
    for grow in (False, True)
}
EXPANDED_LIMIT = 1 << 20
CHUNK_SIZES = (1, 1, 2, 3, 5, 7, 11, 12, 13, 24, 64, 4096)
BULK_CHUNK_SIZES = (1, 12, 4096, 65536, 65536, 131072, 262144)


def make_session(options: int) -> Session:
    session = Session(client=bool(options & 1), config=CONFIGS[bool(options & 2), bool(options & 128)])
    for _ in range((options >> 2) & 3):
        session.open_stream()
    if options & 32:
        session.go_away()
    session.data_to_send()
    return session


def expand(data: bytes) -> bytes:
    """Pad each Data frame's abbreviated payload (at most 16 bytes given) to its length."""
    out = bytearray()
    pos = 0
    while pos + HEADER_SIZE <= len(data):
        header = data[pos : pos + HEADER_SIZE]
        out += header
        pos += HEADER_SIZE
        if header[1] == FrameType.DATA:
            length = int.from_bytes(header[8:12], "big")
            given = data[pos : pos + min(length, 16)]
            pos += len(given)
            out += given
            pad = min(length - len(given), EXPANDED_LIMIT - len(out))
            if pad > 0:
                out += bytes(pad)
    out += data[pos:]
    return bytes(out)


def chunks_of(data: bytes, seed: int, sizes: tuple[int, ...] = CHUNK_SIZES) -> list[bytes]:
    if seed == 0 or not data:
        return [data]
    rng = random.Random(seed)
    out, pos = [], 0
    while pos < len(data):
        size = rng.choice(sizes)
        out.append(data[pos : pos + size])
        pos += size
    return out


def check_output(out: bytes) -> None:
    """This side only ever writes whole, well-formed frames."""
    pos = 0
    while pos < len(out):
        header = decode_header(out, pos)  # raises HeaderError on a bad frame: a crash
        pos += HEADER_SIZE + (header.length if header.type is FrameType.DATA else 0)
    if pos != len(out):
        raise AssertionError(f"output ends inside a frame: {out.hex()}")


def check_state(session: Session, events: list, seen_terminated: bool) -> bool:
    for event in events:
        if not isinstance(event, EVENT_TYPES):
            raise AssertionError(f"unknown event {event!r}")
        if seen_terminated:
            raise AssertionError(f"event after ConnectionTerminated: {event!r}")
        if isinstance(event, DataReceived) and not event.data:
            raise AssertionError("empty DataReceived")
        if isinstance(event, ConnectionTerminated):
            seen_terminated = True
            if session.terminated != event or session.stream_ids:
                raise AssertionError("terminated session still holds streams")
    if seen_terminated != (session.terminated is not None):
        raise AssertionError("terminated without a ConnectionTerminated event")
    # Memory bound: payload is handed on as it arrives, only a partial header waits.
    if len(session._inbuf) >= HEADER_SIZE:
        raise AssertionError(f"{len(session._inbuf)} bytes buffered")
    for stream_id in session.stream_ids:
        if not 0 <= session.receive_window(stream_id) <= MAX_UINT32:
            raise AssertionError(f"receive window {session.receive_window(stream_id)}")
        if not 0 <= session.send_window(stream_id) <= MAX_UINT32:
            raise AssertionError(f"send window {session.send_window(stream_id)}")
    return seen_terminated


def normalize(events: list) -> list:
    merged: list = []
    for event in events:
        if isinstance(event, DataReceived) and merged and isinstance(merged[-1], DataReceived) \
                and merged[-1].stream_id == event.stream_id:
            merged[-1] = DataReceived(event.stream_id, bytes(merged[-1].data) + bytes(event.data))
        else:
            merged.append(event)
    return merged


def feed(session: Session, chunks: list[bytes]) -> tuple[list, bytes]:
    events: list = []
    out = []
    terminated = False
    for chunk in chunks:
        got = session.receive_data(chunk, 1.0)
        terminated = check_state(session, got, terminated)
        events += got
        out.append(session.data_to_send())
    output = b"".join(out)
    check_output(output)
    return events, output


def act(session: Session, rng: random.Random, events: list, now: float) -> None:
    """What an application may do between two reads; only documented MuxErrors may come back."""
    for event in events:
        if isinstance(event, DataReceived):
            session.acknowledge(event.stream_id, len(event.data), now)
    streams = session.stream_ids
    choice = rng.randrange(16)  # 7 and over: nothing
    try:
        if choice == 0:
            session.open_stream()
        elif choice == 1 and streams:
            session.send_data(rng.choice(streams), b"x" * rng.choice((1, 100, 70000)))
        elif choice == 2 and streams:
            session.end_stream(rng.choice(streams))
        elif choice == 3 and streams:
            session.reset_stream(rng.choice(streams))
        elif choice == 4:
            session.ping(now)
        elif choice == 5:
            session.go_away()
        elif choice == 6:
            session.keepalive(now)
    except MuxError:
        pass


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    options, seed, wire = data[0], data[1], data[2:]
    if options & 64:
        wire = expand(wire)
    chunks = chunks_of(wire, seed, BULK_CHUNK_SIZES if options & 64 else CHUNK_SIZES)
    if options & 16:
        session = make_session(options)
        rng = random.Random(seed)
        terminated = False
        now = 1.0
        for chunk in chunks:
            got = session.receive_data(chunk, now)
            terminated = check_state(session, got, terminated)
            act(session, rng, got, now)
            terminated = check_state(session, [], terminated or session.terminated is not None)
            check_output(session.data_to_send())
            now += 0.01
        if session.terminated is not None and session.receive_data(wire[:HEADER_SIZE] or b"\0", now):
            raise AssertionError("a terminated session still makes events")
        return
    whole = make_session(options)
    whole_events, whole_out = feed(whole, [wire])
    if len(chunks) > 1:
        pieces = make_session(options)
        piece_events, piece_out = feed(pieces, chunks)
        if normalize(piece_events) != normalize(whole_events):
            raise AssertionError(f"chunking changed the events:\n{whole_events}\n{piece_events}")
        if piece_out != whole_out:
            raise AssertionError("chunking changed the output")
        if pieces.terminated != whole.terminated or pieces.stream_ids != whole.stream_ids:
            raise AssertionError("chunking changed the state")
        for stream_id in whole.stream_ids:
            if (pieces.stream_state(stream_id), pieces.receive_window(stream_id), pieces.send_window(stream_id)) != (
                whole.stream_state(stream_id), whole.receive_window(stream_id), whole.send_window(stream_id)
            ):
                raise AssertionError(f"chunking changed stream {stream_id}")
    if whole.terminated is not None:
        if whole.terminated.code == GoAwayCode.PROTOCOL_ERROR and not any(
            isinstance(e, GoAwayReceived) for e in whole_events
        ) and not whole_out.endswith(encode_header(FrameType.GO_AWAY, Flag.NONE, 0, GoAwayCode.PROTOCOL_ERROR)):
            raise AssertionError("a protocol error must end with GoAway(protocol error)")
        if whole.receive_data(b"\0" * HEADER_SIZE) or whole.data_to_send():
            raise AssertionError("a terminated session still reacts")


# -- seeds ----------------------------------------------------------------------------------------


def _h(type_: FrameType, flags: int, stream_id: int, length: int) -> bytes:
    return encode_header(type_, flags, stream_id, length)


def seeds() -> dict[str, bytes]:
    """Valid conversations (and a few classic violations), with option bytes in front."""
    P16 = b"0123456789abcdef"  # an abbreviated payload (option bit 6): the rest is zeros
    data, wu, ping, away = FrameType.DATA, FrameType.WINDOW_UPDATE, FrameType.PING, FrameType.GO_AWAY
    syn, ack, fin, rst = Flag.SYN, Flag.ACK, Flag.FIN, Flag.RST
    # The peer is the client (odd ids) when we are the server (option bit 0 clear).
    from_client = (
        _h(wu, syn, 1, 0) + _h(data, 0, 1, 5) + b"hello" + _h(wu, 0, 1, 4096) + _h(data, fin, 1, 3) + b"bye"
        + _h(wu, syn, 3, 0) + _h(data, 0, 3, 2) + b"hi" + _h(wu, rst, 3, 0)
        + _h(ping, syn, 0, 7) + _h(data, syn, 5, 4) + b"data" + _h(away, 0, 0, GoAwayCode.NORMAL)
    )  # fmt: skip
    # We are the client with one stream of our own (id 1): the server ACKs it and answers.
    to_client = (
        _h(wu, ack, 1, 0) + _h(data, 0, 1, 4) + b"pong" + _h(wu, 0, 1, 100) + _h(wu, fin, 1, 0)
        + _h(wu, syn, 2, 0) + _h(data, 0, 2, 1) + b"!" + _h(ping, ack, 0, 0) + _h(ping, syn, 0, 9)
    )  # fmt: skip
    return {
        "server-conversation": bytes([0, 0]) + from_client,
        "server-conversation-chunked": bytes([0, 7]) + from_client,
        "server-conversation-acting": bytes([16, 3]) + from_client,
        "server-small-limit": bytes([2, 5]) + from_client + _h(wu, syn, 7, 0) + _h(wu, syn, 9, 0),
        "server-going-away": bytes([32, 0]) + from_client,
        "client-own-stream": bytes([1 | 4, 0]) + to_client,
        "client-own-stream-chunked": bytes([1 | 4, 11]) + to_client,
        "client-acting": bytes([1 | 8 | 16, 2]) + to_client,
        "id-gaps": bytes([0, 1]) + _h(wu, syn, 7, 0) + _h(wu, syn, 3, 0) + _h(wu, syn, 1, 0),
        "violation-data-on-0": bytes([0, 0]) + _h(data, 0, 0, 0),
        "violation-window-overflow": bytes([0, 0]) + _h(wu, syn, 1, 0) + _h(wu, 0, 1, MAX_UINT32),
        "violation-reuse": bytes([0, 0]) + _h(wu, syn, 1, 0) + _h(wu, rst, 1, 0) + _h(wu, syn, 1, 0),
        "data-after-fin": bytes([0, 0]) + _h(wu, syn | fin, 1, 0) + _h(data, 0, 1, 2) + b"xx",
        "peer-go-away-error": bytes([1, 0]) + _h(away, 0, 0, GoAwayCode.PROTOCOL_ERROR),
        # Abbreviated payloads (bit 6): a whole 256 KiB window in two frames, read and granted
        # back by the application (bit 4), then more; with growth (bit 7) a bigger window.
        "bulk-acked": bytes([64 | 16, 4]) + _h(wu, syn, 1, 0) + _h(data, 0, 1, 131072) + b"head" * 4
        + _h(data, 0, 1, 131072) + P16 + _h(data, 0, 1, 65536) + P16 + _h(data, fin, 1, 0),
        "bulk-growing": bytes([128 | 64 | 16, 9]) + _h(wu, syn, 1, 0) + _h(data, 0, 1, 200000) + P16
        + _h(data, 0, 1, 200000) + P16 + _h(data, 0, 1, 300000) + P16,
        "bulk-over-window": bytes([64, 6]) + _h(wu, syn, 1, 0) + _h(data, 0, 1, 262144) + P16
        + _h(data, 0, 1, 1) + b"!",
    }  # fmt: skip


def write_seeds(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in seeds().items():
        (folder / f"seed-{name}").write_bytes(blob)


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[1] == "--make-seeds":
        write_seeds(Path(argv[2]))
        return
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
