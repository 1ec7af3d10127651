#!/usr/bin/env python3
"""Coverage-guided fuzzing of the shield-link messages: the stream-open header (OPEN /
OPEN_REPLY) and the announcement (ANNOUNCE / ANNOUNCE_REPLY), ``shield.link.wire``.

README. Each input is three option bytes and then bytes "from the peer". Byte 0: bits 0-3 pick
the message types a ``MessageReader`` expects (0 means all four), bits 4-5 the mode; byte 1 the
reader's ``max_body`` (below 0x80: the protocol's 65535; else ``(byte & 0x7f) * 16``); byte 2 seeds
how the bytes are cut into ``feed`` calls. In the decode modes the bytes go to ``decode`` and to a
reader; only ``WireError`` may come out, and: whatever decodes re-encodes to exactly the same
bytes; the reader and ``decode`` agree; a reader answers a message only of a type it expects,
and hands back every byte after it; a declared body length over ``max_body`` is refused by the
feed that completes the 6-byte envelope, before any body is buffered; once finished, a reader
refuses more input with RuntimeError. In the encode mode (bits 4-5 = 2) the bytes are taken as
field values (any Unicode, lone surrogates and controls included, any counts and integers) for a
message of the type the input picks: ``encode`` gives bytes that decode back to an equal
message, or ``WireError``.

Run: ``python fuzz/fuzz_open_header.py [libFuzzer options] [corpus dir ...]``, e.g.
``python fuzz/fuzz_open_header.py -max_total_time=60 build/fuzz/open_header/corpus``;
``python fuzz/fuzz_open_header.py --make-seeds DIR`` writes valid messages to start from.
``make fuzz`` does both for every harness; ``make test`` runs a short smoke run
(tests/fuzz/test_fuzz_smoke.py). Replay a crash with ``python fuzz/fuzz_open_header.py crash-FILE``.
"""

from __future__ import annotations

import contextlib
import random
import sys
from pathlib import Path

import atheris

# Coverage feedback comes from instrumenting the code under test (not needed to write seeds).
_instrumented = (
    contextlib.nullcontext() if "--make-seeds" in sys.argv else atheris.instrument_imports(include=["shield.link"])
)
with _instrumented:
    from shield.link.wire import (
        HEADER_SIZE,
        MAX_BODY,
        Announce,
        AnnounceReply,
        MessageReader,
        OpenReply,
        OpenRequest,
        OpenStatus,
        WireError,
        decode,
        encode,
    )

TYPES = (Announce, AnnounceReply, OpenRequest, OpenReply)
TYPE_CODES = {Announce: 1, AnnounceReply: 2, OpenRequest: 3, OpenReply: 4}
CHUNK_SIZES = (1, 1, 2, 3, 4, 5, 6, 7, 9, 16, 100, 70000)


def chunks_of(data: bytes, seed: int) -> list[bytes]:
    if seed == 0 or not data:
        return [data]
    rng = random.Random(seed)
    out, pos = [], 0
    while pos < len(data):
        size = rng.choice(CHUNK_SIZES)
        out.append(data[pos : pos + size])
        pos += size
    return out


def decode_or_error(data: bytes):  # type: ignore[no-untyped-def]
    try:
        return decode(data)
    except WireError as error:
        return error


def check_decode_and_read(data: bytes, expect: tuple[type, ...], max_body: int, seed: int) -> None:
    decoded = decode_or_error(data)
    if not isinstance(decoded, WireError):
        if encode(decoded) != data:
            raise AssertionError(f"{data.hex()} decodes but re-encodes differently")

    reader = MessageReader(expect, max_body)
    fed = 0
    result = None
    leftover = b""
    chunks = chunks_of(data, seed)
    for index, chunk in enumerate(chunks):
        before = fed
        fed += len(chunk)
        try:
            message, leftover = reader.feed(chunk)
        except WireError as error:
            result = error
            break
        if message is not None:
            result = message
            rest = b"".join(chunks[index + 1 :])
            break
    else:
        # Still waiting: then no refusal was due, and the envelope said more was coming.
        if len(data) >= HEADER_SIZE and data[:2] == b"SH" and data[2] == 1:
            declared = int.from_bytes(data[4:6], "big")
            if declared > max_body:
                raise AssertionError("over-limit length not refused")
            if len(data) >= HEADER_SIZE + declared:
                raise AssertionError("a whole message left unanswered")
        return

    try:
        reader.feed(b"")
    except RuntimeError:
        pass
    else:
        raise AssertionError("a finished reader took more input")

    envelope_ok = len(data) >= HEADER_SIZE and data[:3] == b"SH\x01" and 1 <= data[3] <= 4
    if envelope_ok and TYPES[data[3] - 1] in expect and int.from_bytes(data[4:6], "big") > max_body:
        if not isinstance(result, WireError) or "over the limit" not in str(result):
            raise AssertionError(f"over-limit length not refused: {result!r}")
        if before >= HEADER_SIZE:
            raise AssertionError("over-limit length refused only after the envelope was buffered")

    if isinstance(result, WireError):
        return
    if not isinstance(result, expect):
        raise AssertionError(f"reader answered {type(result).__name__}, expected {expect}")
    consumed = fed - len(leftover)
    if leftover + rest != data[consumed:]:
        raise AssertionError("bytes after the message were lost")
    if decode(data[:consumed]) != result:
        raise AssertionError("reader and decode disagree")
    if consumed == len(data) and decoded != result:
        raise AssertionError("reader and decode disagree on the whole input")


def check_encode(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)

    def text(limit: int) -> str:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, limit))

    def texts(limit: int) -> tuple[str, ...]:
        return tuple(text(70) for _ in range(fdp.ConsumeIntInRange(0, limit)))

    kind = fdp.ConsumeIntInRange(0, 3)
    if kind == 0:
        message = OpenRequest(text(70), text(300), tuple(zip(texts(8), texts(8))))
    elif kind == 1:
        message = OpenReply(fdp.ConsumeIntInRange(-1, 7), text(300))
    elif kind == 2:
        message = Announce(text(70), fdp.ConsumeIntInRange(-1, 2**32), text(300), texts(8))
    else:
        services = texts(6)
        message = AnnounceReply(fdp.ConsumeBool(), text(70), services[: len(services) // 2],
                                tuple(zip(services[len(services) // 2 :], texts(3))), text(300))  # fmt: skip
    try:
        encoded = encode(message)
    except WireError:
        return
    if decode(encoded) != message:
        raise AssertionError(f"{message!r} does not round-trip")
    got, leftover = MessageReader((type(message),)).feed(encoded + b"tail")
    if got != message or leftover != b"tail":
        raise AssertionError(f"{message!r} does not round-trip through a reader")


def TestOneInput(data: bytes) -> None:
    if len(data) < 3:
        return
    options, limit, seed, rest = data[0], data[1], data[2], data[3:]
    mask = options & 15 or 15
    expect = tuple(t for i, t in enumerate(TYPES) if mask & (1 << i))
    max_body = MAX_BODY if limit < 0x80 else (limit & 0x7F) * 16
    if (options >> 4) & 3 == 2:
        check_encode(rest)
    else:
        check_decode_and_read(rest, expect, max_body, seed)


# -- seeds ----------------------------------------------------------------------------------------


def seeds() -> dict[str, bytes]:
    open_ = encode(OpenRequest("echo", "203.0.113.5:51234", (("transport", "ws"), ("path", "/echo"))))
    reply = encode(OpenReply(OpenStatus.BACKEND_REFUSED, "connection refused"))
    ok = encode(OpenReply(OpenStatus.OK))
    announce = encode(Announce("internal1", 100, "0.1.0", ("echo", "chat")))
    announce_reply = encode(AnnounceReply(True, "dmz1", ("echo",), (("chat", "not offered"),), ""))
    refused = encode(AnnounceReply(False, "dmz1", (), (), "unknown connector internal9"))
    return {
        "open": bytes([4, 0, 0]) + open_,
        "open-then-payload-chunked": bytes([4, 0, 3]) + open_ + b"GET / HTTP/1.1\r\n",
        "open-reply": bytes([8, 0, 0]) + reply,
        "open-reply-ok-chunked": bytes([8, 0, 9]) + ok + b"payload",
        "open-over-limit": bytes([4, 0x81, 1]) + open_,
        "announce": bytes([1, 0, 0]) + announce,
        "announce-chunked": bytes([1, 0, 5]) + announce,
        "announce-reply": bytes([2, 0, 0]) + announce_reply,
        "announce-refused": bytes([2, 0, 2]) + refused,
        "any-type": bytes([0, 0, 0]) + open_,
        "wrong-type": bytes([1, 0, 0]) + open_,
        "encode-open": bytes([0x20, 0, 0]) + b"\x00" + bytes(range(64)),
        "encode-announce": bytes([0x20, 0, 0]) + b"\x02" + b"internal1" * 8,
    }


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
