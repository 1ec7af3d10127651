"""Callback-driven clients for the request/response and stalled-reader scenarios.

The request/response scenario counts round trips per second, so the client's cost per round
trip must be far below any tunnel's, on a machine where the client shares two cores with both
gateways and the backend. The coroutine clients of clients.py pay for a task switch, a future and
an epoll registration and removal for every ``sock_recv`` that has to wait (in a ping-pong, every
one); these pay for none of that. A ``Channel`` is an asyncio
protocol that stays registered for reading and hands each arrival's payload length to a
``sink`` callback, which may write the next request from inside that callback: one ``recv`` and
one ``send`` per round trip, no task in between.

- ``TcpChannel``: a ``BufferedProtocol`` reading into one shared scratch buffer (the bytes are
  never looked at: only their count matters).
- ``WsChannel``: the ``websockets`` sans-I/O ``ClientProtocol`` (handshake, masking in C,
  frame parsing, answers to pings) under a plain asyncio protocol; each ``send`` is one binary
  message.

A channel can stop reading (``pause``): the stalled-reader scenario needs a client that has
read fast and then reads nothing at all, which the coroutine clients cannot express (the
``websockets`` client keeps reading into its own queue).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from benchmarks.backend import header
from benchmarks.clients import Dial, EndOfStream, host_port, percentile

SCRATCH = 1 << 18
_scratch = memoryview(bytearray(SCRATCH))

Sink = Callable[[int], None]


def _ignore(count: int) -> None:
    pass


class Channel:
    """What the scenarios need of a connection: send, count what arrives, pause, close."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.sink: Sink = _ignore
        self.ready: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def pause(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _lost(self, problem: Exception | None) -> None:
        failure = problem or EndOfStream("the connection closed")
        for future in (self.ready, self.lost):
            if not future.done():
                future.set_exception(failure)
                future.exception()  # retrieved: whoever waits on it sees it, nobody else is told


class TcpChannel(Channel, asyncio.BufferedProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ready.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _scratch

    def buffer_updated(self, nbytes: int) -> None:
        self.sink(nbytes)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class WsChannel(Channel, asyncio.Protocol):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.protocol.send_request(self.protocol.connect())
        self.flush()

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Frame):
                if event.opcode in (Opcode.BINARY, Opcode.CONT, Opcode.TEXT):
                    self.sink(len(event.data))
            elif isinstance(event, Response) and not self.ready.done():
                if protocol.handshake_exc is not None:
                    self.ready.set_exception(protocol.handshake_exc)
                else:
                    self.ready.set_result(None)
        self.flush()  # answers to pings, to a close

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    def send(self, data: bytes) -> None:
        self.protocol.send_binary(data)
        self.flush()

    def flush(self) -> None:
        assert self.transport is not None
        for chunk in self.protocol.data_to_send():
            if chunk:  # b"" asks for the write side to be closed: the scenarios close themselves
                self.transport.write(chunk)


async def open_channel(client: str, address: str | int, dial: Dial) -> Channel:
    """A ``Channel`` to a target (``client`` ``ws``: ``address`` is the URL; else a port), ready."""
    loop = asyncio.get_running_loop()
    if client == "ws":
        url = str(address)
        sock = await dial.connect(*host_port(url))
        factory: Callable[[], Channel] = lambda: WsChannel(url)  # noqa: E731
    else:
        sock = await dial.connect("127.0.0.1", int(address))
        factory = TcpChannel
    try:
        _, channel = await loop.create_connection(factory, sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        await channel.ready
    except BaseException:
        channel.abort()
        raise
    return channel


ChannelOpener = Callable[[], Awaitable[Channel]]


def channel_opener(client: str, address: str | int, dial: Dial) -> ChannelOpener:
    return lambda: open_channel(client, address, dial)


async def open_all(open_one: ChannelOpener, count: int, channels: list[Channel]) -> None:
    """``count`` channels at once, each kept in ``channels`` (the caller's: it closes them whatever happens)."""

    async def one() -> None:
        channels.append(await open_one())

    # Every attempt runs to its end before a failure is raised, so none is left to open unseen.
    outcomes = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


# -- request/response -----------------------------------------------------------------------------


@dataclass
class Window:
    """The counted interval; round trips that complete inside it are counted and timed."""

    start: float
    end: float
    samples: list[float] = field(default_factory=list)


class RoundTripper:
    """One closed-loop client: the next request leaves when the last byte of the previous echo arrives."""

    def __init__(self, channel: Channel, size: int, window: Window) -> None:
        self.channel = channel
        self.payload = bytes(size)
        self.size = size
        self.window = window
        self.pending = 0
        self.sent_at = 0.0
        self.stopping = False
        self.idle: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        channel.sink = self.arrived

    def fire(self) -> None:
        self.pending = self.size
        self.sent_at = time.perf_counter()
        self.channel.send(self.payload)

    def arrived(self, count: int) -> None:
        self.pending -= count
        if self.pending > 0:
            return
        now = time.perf_counter()
        window = self.window
        if window.start <= now < window.end:
            window.samples.append(now - self.sent_at)
        if self.stopping:
            if not self.idle.done():
                self.idle.set_result(None)
            return
        self.fire()


async def round_trips(open_one: ChannelOpener, clients: int, size: int, duration: float, warmup: float) -> dict[str, float]:
    """``clients`` closed-loop clients in echo mode, requests of ``size`` bytes, for ``warmup`` + ``duration`` s.

    Round trips per second are those completed inside the counted window, all clients together;
    a latency is from just before a request is written to the arrival of the last byte of its
    echo. The clients are connected (and told ``E``) before the clock starts.
    """
    channels: list[Channel] = []
    try:
        await open_all(open_one, clients, channels)
        for channel in channels:
            channel.send(header(b"E"))
        start = time.perf_counter() + warmup
        window = Window(start, start + duration)
        trippers = [RoundTripper(channel, size, window) for channel in channels]
        for tripper in trippers:
            tripper.fire()
        lost = [channel.lost for channel in channels]
        done, _ = await asyncio.wait(lost, timeout=warmup + duration, return_when=asyncio.FIRST_COMPLETED)
        for future in done:
            future.result()  # a connection that closed under the clients: the measurement failed
        for tripper in trippers:
            tripper.stopping = True
            if tripper.pending <= 0 and not tripper.idle.done():
                tripper.idle.set_result(None)
        # Let the round trips in flight finish, so no gateway sees a reset mid-request.
        await asyncio.wait([tripper.idle for tripper in trippers], timeout=5.0)
    finally:
        for channel in channels:
            channel.close()
    samples = sorted(sample * 1000.0 for sample in window.samples)
    if not samples:
        raise RuntimeError(f"no round trip completed within the {duration:.1f} s window")
    return {
        "per_s": len(samples) / duration,
        "round_trips": len(samples),
        "p50_ms": percentile(samples, 0.50),
        "p99_ms": percentile(samples, 0.99),
        "max_ms": samples[-1],
        "mean_ms": sum(samples) / len(samples),
        "clients": clients,
        "size": size,
        "seconds": duration,
    }


# -- stalled readers ------------------------------------------------------------------------------


class StalledReader:
    """Downloads without end; reads fast until ``fast`` bytes have arrived, then reads nothing more."""

    def __init__(self, channel: Channel, fast: int) -> None:
        self.channel = channel
        self.fast = fast
        self.received = 0
        self.stalled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        channel.sink = self.arrived

    def arrived(self, count: int) -> None:
        self.received += count
        if self.received >= self.fast and not self.stalled.done():
            self.channel.pause()
            self.stalled.set_result(None)


async def stall(open_one: ChannelOpener, count: int, fast: int, endless: int, readers: list[StalledReader]) -> None:
    """``count`` clients each asking the backend for ``endless`` bytes, read until ``fast`` arrived, then paused.

    Returns once every client has stopped reading. The readers are kept in ``readers`` (the
    caller's: it aborts them whatever happens).
    """
    channels: list[Channel] = []
    try:
        await open_all(open_one, count, channels)
    finally:
        readers += [StalledReader(channel, fast) for channel in channels]
    for reader in readers:
        reader.channel.send(header(b"O", endless))
    for reader in readers:
        await asyncio.wait([reader.stalled, reader.channel.lost], return_when=asyncio.FIRST_COMPLETED)
        if not reader.stalled.done():
            reader.channel.lost.result()  # raises why it closed
            raise EndOfStream(f"closed after {reader.received} bytes")
