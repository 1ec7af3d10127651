"""The benchmark backend, as its own process: ``python benchmarks/backend.py PORT``.

One listener serves every scenario, so every target reaches the very same backend. Each
connection carries commands, each a 9-byte header: one command byte and a big-endian 8-byte
argument N.

- ``S`` N: sink. Reads exactly N bytes, then answers N as 8 big-endian bytes (the receipt the
  bulk client waits for), then reads the next command.
- ``O`` N: source. Sends N bytes, then reads the next command.
- ``E`` 0: echo. Sends back every byte it receives, until EOF.

Speed matters more than anything here: the backend must never be what limits a target. It is an
asyncio ``BufferedProtocol`` that reads into one preallocated 1 MiB buffer (the loop is single
threaded and every byte is consumed before the next read), sources from one preallocated
immutable block, keeps up to 8 MiB queued per connection before pausing, and sets TCP_NODELAY.
It raises its open-files limit to the hard limit so it can hold every idle client. It prints
"listening" once ready.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import sys

HEADER = 9
READ_BUFFER = 1 << 20
SOURCE_BLOCK = 1 << 20
WRITE_HIGH = 8 << 20
WRITE_LOW = 2 << 20

_read_buffer = bytearray(READ_BUFFER)
_read_view = memoryview(_read_buffer)
_source_block = memoryview(bytes(range(256)) * (SOURCE_BLOCK // 256))


def header(command: bytes, argument: int = 0) -> bytes:
    """The 9 bytes a client sends to start ``command`` (``S``, ``O`` or ``E``)."""
    return command + argument.to_bytes(8, "big")


class Backend(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending = bytearray()  # an incomplete command header
        self.mode = b""  # b"" (waiting for a header), b"S", b"O" or b"E"
        self.remaining = 0
        self.paused = False

    # -- asyncio -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)  # type: ignore[union-attr]

    def get_buffer(self, sizehint: int) -> memoryview:
        return _read_view

    def buffer_updated(self, nbytes: int) -> None:
        self.consume(_read_view[:nbytes])

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.mode == b"O":
            self.pump()

    # -- commands ------------------------------------------------------------------------------

    def consume(self, data: memoryview) -> None:
        transport = self.transport
        while data and transport is not None:
            if self.mode == b"E":
                transport.write(bytes(data))
                return
            if self.mode == b"S":
                take = min(self.remaining, len(data))
                self.remaining -= take
                data = data[take:]
                if self.remaining == 0:
                    self.mode = b""
                    transport.write(self.sunk.to_bytes(8, "big"))
                continue
            if self.mode == b"O":
                return  # bytes sent while sourcing are ignored
            need = HEADER - len(self.pending)
            self.pending += data[:need]
            data = data[need:]
            if len(self.pending) == HEADER:
                self.start(bytes(self.pending[:1]), int.from_bytes(self.pending[1:], "big"))
                self.pending.clear()

    def start(self, command: bytes, argument: int) -> None:
        assert self.transport is not None
        if command == b"E":
            self.mode = b"E"
        elif command == b"S":
            self.mode, self.remaining, self.sunk = b"S", argument, argument
            if argument == 0:
                self.mode = b""
                self.transport.write((0).to_bytes(8, "big"))
        elif command == b"O":
            self.mode, self.remaining = b"O", argument
            self.pump()
        else:
            print(f"unknown command {command!r}", flush=True)
            self.transport.abort()

    def pump(self) -> None:
        transport = self.transport
        while transport is not None and self.remaining > 0 and not self.paused:
            size = min(SOURCE_BLOCK, self.remaining)
            transport.write(_source_block[:size])
            self.remaining -= size
        if self.remaining == 0 and self.mode == b"O":
            self.mode = b""


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def main(port: int) -> None:
    raise_nofile()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Backend, "127.0.0.1", port, backlog=4096, reuse_address=True)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
