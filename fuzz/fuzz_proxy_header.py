#!/usr/bin/env python3
"""Coverage-guided fuzzing of the PROXY protocol header reader, ``shield.proxy_protocol.parse``.

README. Each input is one option byte and then bytes "from the load balancer". The option byte
seeds how the bytes are cut into ``feed`` calls (0: one call). Only ``ProxyProtocolError`` may
come out, and: the answer does not depend on the cutting (the same header and leftover, or an
error, as when fed in one call); the leftover is exactly the bytes after the header; a header
that parses re-encodes (``build``, v1 and v2) to bytes that parse back to the same header; the
reader never holds more than 107 bytes of a v1 header or 16 + ``MAX_V2_BLOCK`` of a v2 header;
``header_start`` says HEADER or UNDECIDED for every input the reader does not refuse at once.

Run: ``python fuzz/fuzz_proxy_header.py [libFuzzer options] [corpus dir ...]``;
``python fuzz/fuzz_proxy_header.py --make-seeds DIR`` writes valid headers to start from.
``make fuzz`` does both for every harness; ``make test`` runs a short smoke run
(tests/fuzz/test_fuzz_smoke.py). Replay a crash with ``python fuzz/fuzz_proxy_header.py crash-FILE``.
"""

from __future__ import annotations

import contextlib
import random
import sys
from pathlib import Path

import atheris

_instrumented = (
    contextlib.nullcontext() if "--make-seeds" in sys.argv else atheris.instrument_imports(include=["shield.proxy_protocol"])
)
with _instrumented:
    from shield.proxy_protocol.build import build_v1, build_v2
    from shield.proxy_protocol.header import V1_MAX_LENGTH, Endpoint, ProxyHeader
    from shield.proxy_protocol.parse import (
        MAX_V2_BLOCK,
        V2_PREAMBLE,
        HeaderReader,
        HeaderStart,
        ProxyProtocolError,
        header_start,
    )

CHUNK_SIZES = (1, 1, 2, 3, 5, 7, 12, 13, 16, 17, 100, 5000)


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


def read(chunks: list[bytes]) -> tuple[ProxyHeader, bytes] | ProxyProtocolError | None:
    reader = HeaderReader()
    for index, chunk in enumerate(chunks):
        try:
            result = reader.feed(chunk)
        except ProxyProtocolError as error:
            return error
        if result is not None:
            return result[0], result[1] + b"".join(chunks[index + 1 :])
        bound = V1_MAX_LENGTH if chunks[0][:1] == b"P" else V2_PREAMBLE + MAX_V2_BLOCK
        if reader.buffered > bound:
            raise AssertionError(f"{reader.buffered} bytes held")
    return None


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    seed, rest = data[0], data[1:]
    whole = read([rest])
    cut = read(chunks_of(rest, seed))
    if isinstance(whole, ProxyProtocolError) != isinstance(cut, ProxyProtocolError):
        raise AssertionError(f"cutting changed the verdict: {whole!r} / {cut!r}")
    if not isinstance(whole, ProxyProtocolError) and whole != cut:
        raise AssertionError(f"cutting changed the answer: {whole!r} / {cut!r}")
    if whole is None or isinstance(whole, ProxyProtocolError):
        if whole is None and header_start(rest) is HeaderStart.PLAIN:
            raise AssertionError("header_start says plain for bytes the reader waits on")
        return
    header, leftover = whole
    if not rest.endswith(leftover):
        raise AssertionError("the leftover is not what followed the header")
    for encoded in (build_v1(header), build_v2(header)):
        again = HeaderReader().feed(encoded + b"x")
        if again != (header, b"x"):
            raise AssertionError(f"{header!r} does not round-trip: {again!r}")


def seeds() -> dict[str, bytes]:
    header = ProxyHeader(Endpoint.of("192.168.0.1", 56324), Endpoint.of("192.168.0.11", 443))
    six = ProxyHeader(Endpoint.of("2001:db8::1", 1), Endpoint.of("::1", 65535))
    tlvs = bytes.fromhex("01000268320400020000")
    block = bytes.fromhex("7f0000057f00000115b30050") + tlvs
    with_tlvs = bytes.fromhex("0d0a0d0a000d0a515549540a2111") + len(block).to_bytes(2, "big") + block
    local = build_v2(ProxyHeader(None, None))
    return {
        "v1-tcp4": b"\x00" + build_v1(header) + b"GET / HTTP/1.1\r\n",
        "v1-tcp4-chunked": b"\x07" + build_v1(header),
        "v1-tcp6": b"\x03" + build_v1(six),
        "v1-unknown": b"\x00PROXY UNKNOWN\r\n",
        "v1-unknown-long": b"\x05PROXY UNKNOWN " + b"f" * 90 + b"\r\n",
        "v2-inet": b"\x00" + build_v2(header) + b"\x16\x03\x01",
        "v2-inet-chunked": b"\x09" + build_v2(header),
        "v2-inet6": b"\x02" + build_v2(six),
        "v2-local": b"\x00" + local,
        "v2-tlvs": b"\x04" + with_tlvs,
        "v2-unix": b"\x00" + bytes.fromhex("0d0a0d0a000d0a515549540a213100d8") + bytes(216),
        "plain": b"\x00GET / HTTP/1.1\r\n",
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
