"""A backend for end-to-end tests, as its own process: ``backend.py MODE PORT``.

- ``echo``: sends back every byte it receives; half-closes after the client's EOF.
- ``source``: reads an 8-byte big-endian count N, sends N bytes of a known pattern
  (``pattern_block``), then half-closes; keeps reading until EOF.
- ``count``: reads to EOF and answers the byte count and SHA-256 of what it got, as one line.
- ``ident:NAME``: first sends the line ``NAME\n``, then echoes like ``echo``; so a client can tell
  which of several backends (and so which connector) served it.
- ``http:STATUS``: answers every HTTP request with STATUS and closes (for health checks).
- ``hang``: listens but never accepts, with its accept queue full: a connection attempt hangs
  until the client gives up (a backend that is up but stuck).
PORT may be a unix socket path (starting with /). It prints "listening" once ready and one line per connection, so tests can count connections.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys

BLOCK = 64 * 1024


def pattern_block(index: int, size: int = BLOCK) -> bytes:
    """Block ``index`` of the source pattern: cheap to make, different per block."""
    seed = index.to_bytes(8, "big")
    return (seed * (size // 8 + 1))[:size]


def pattern_digest(total: int) -> str:
    digest = hashlib.sha256()
    for index in range((total + BLOCK - 1) // BLOCK):
        digest.update(pattern_block(index, min(BLOCK, total - index * BLOCK)))
    return digest.hexdigest()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    await writer.drain()
    writer.close()


async def source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    total = int.from_bytes(await reader.readexactly(8), "big")
    sent = 0
    index = 0
    while sent < total:
        block = pattern_block(index, min(BLOCK, total - sent))
        writer.write(block)
        await writer.drain()
        sent += len(block)
        index += 1
    writer.write_eof()
    while await reader.read(1 << 16):
        pass
    writer.close()


async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    digest = hashlib.sha256()
    total = 0
    while data := await reader.read(1 << 16):
        digest.update(data)
        total += len(data)
    writer.write(f"{total} {digest.hexdigest()}\n".encode())
    await writer.drain()
    writer.close()


def ident(name: str):  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"{name}\n".encode())
        await writer.drain()
        await echo(reader, writer)

    return handler


def http_status(status: int):  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 {status} Test\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode())
        await writer.drain()
        writer.close()

    return handler


async def hang(port: int) -> None:
    """A listening socket that is never accepted from, its queue filled by connections of its own."""
    import socket

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    await asyncio.sleep(0.2)
    print(f"listening on 127.0.0.1:{port} (hang)", flush=True)
    await asyncio.Event().wait()


async def main(mode: str, port: int | str) -> None:
    if mode == "hang":
        assert isinstance(port, int)
        await hang(port)
        return
    if mode.startswith("http:"):
        handler = http_status(int(mode.split(":", 1)[1]))
    elif mode.startswith("ident:"):
        handler = ident(mode.split(":", 1)[1])
    else:
        handler = {"echo": echo, "source": source, "count": count}[mode]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        print(f"connection from {writer.get_extra_info('peername')}", flush=True)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError) as problem:
            print(f"connection ended: {problem!r}", flush=True)

    if isinstance(port, str):
        server = await asyncio.start_unix_server(serve, port)
        print(f"listening on unix:{port} ({mode})", flush=True)
    else:
        server = await asyncio.start_server(serve, "127.0.0.1", port)
        print(f"listening on 127.0.0.1:{port} ({mode})", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    where = sys.argv[2]
    asyncio.run(main(sys.argv[1], where if where.startswith("/") else int(where)))
