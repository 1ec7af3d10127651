"""The client side of every scenario, in asyncio: one code path for every target.

A connection is a ``TcpConn`` (non-blocking socket driven by the loop's ``sock_*`` calls, 1 MiB
reads, TCP_NODELAY) or a ``WsConn`` (the ``websockets`` library: no compression, no size limit on
what it receives, messages of at most ``WS_MESSAGE`` bytes, which is the DMZ's default
``max-message-size``). Both speak the backend's commands (see backend.py): ``S`` sink with a
receipt, ``O`` source, ``E`` echo. Every socket is made by a ``Dial``, which can bind it to one of
many loopback source addresses first (the DMZ limits clients per source address) and give it a
small receive buffer. The request/response and stalled-reader scenarios use the cheaper
callback-driven clients of rawclients.py instead.

Every workload is bounded: by a byte count or a duration, and by the caller's timeout.
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from benchmarks.backend import header

MB = 1_000_000
MIB = 1 << 20
WS_MESSAGE = 131072
TCP_CHUNK = 1 << 20

_block = memoryview(bytes(range(256)) * (TCP_CHUNK // 256))
_discard = memoryview(bytearray(TCP_CHUNK))


#: Linux's IP_BIND_ADDRESS_NO_PORT (Python names it from 3.12 on).
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class EndOfStream(Exception):
    pass


def source_addresses(count: int) -> list[str]:
    """``count`` loopback addresses from 127.0.1.1 on (Linux answers for the whole of 127.0.0.0/8).

    The DMZ admits at most ``max-connections-per-source`` (256 by default) clients per source
    address; real clients come from many addresses, so the idle scenario spreads its clients over
    these rather than raise the limit.
    """
    return [f"127.0.{1 + index // 254}.{1 + index % 254}" for index in range(count)]


@dataclass
class Dial:
    """How client sockets are made: bound round robin to ``sources`` (none: the kernel picks
    127.0.0.1), with SO_RCVBUF ``rcvbuf`` set before connect (0: the kernel's autotuned default)."""

    sources: list[str] = field(default_factory=list)
    rcvbuf: int = 0
    turn: int = 0

    def source(self) -> str | None:
        if not self.sources:
            return None
        address = self.sources[self.turn % len(self.sources)]
        self.turn += 1
        return address

    async def connect(self, host: str, port: int) -> socket.socket:
        """A connected non-blocking socket with TCP_NODELAY."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            source = self.source()
            if source is not None:
                # The port is picked at connect, per destination: 10,000 clients need not find
                # 10,000 ports free for bind() alone.
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((source, 0))
            await loop.sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return sock


PLAIN = Dial()


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


class TcpConn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def open(cls, port: int, dial: Dial = PLAIN) -> "TcpConn":
        return cls(await dial.connect("127.0.0.1", port))

    async def send(self, data: bytes | memoryview) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def send_bulk(self, total: int) -> None:
        while total > 0:
            size = min(total, TCP_CHUNK)
            await self.loop.sock_sendall(self.sock, _block[:size])
            total -= size

    async def recv_count(self) -> int:
        """Whatever arrives next, discarded; its length (0: the peer closed)."""
        return await self.loop.sock_recv_into(self.sock, _discard)

    async def discard(self, total: int) -> None:
        while total > 0:
            got = await self.loop.sock_recv_into(self.sock, _discard[: min(total, TCP_CHUNK)])
            if not got:
                raise EndOfStream(f"{total} bytes short")
            total -= got

    async def read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            more = await self.loop.sock_recv(self.sock, size - len(data))
            if not more:
                raise EndOfStream(f"{size - len(data)} bytes short")
            data += more
        return data

    async def close(self) -> None:
        self.sock.close()

    def abort(self) -> None:
        self.sock.close()


class WsConn:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.leftover = b""

    @classmethod
    async def open(cls, url: str, dial: Dial = PLAIN) -> "WsConn":
        sock = await dial.connect(*host_port(url))
        try:
            ws = await connect(
                url,
                sock=sock,
                proxy=None,
                compression=None,
                max_size=None,
                ping_interval=None,
                open_timeout=60,
                close_timeout=10,
                write_limit=MIB,
            )
        except BaseException:
            sock.close()
            raise
        return cls(ws)

    async def send(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        for offset in range(0, len(view), WS_MESSAGE):
            await self.ws.send(view[offset : offset + WS_MESSAGE])

    async def send_bulk(self, total: int) -> None:
        while total > 0:
            size = min(total, WS_MESSAGE)
            await self.ws.send(_block[:size])
            total -= size

    async def _message(self) -> bytes:
        if self.leftover:
            data, self.leftover = self.leftover, b""
            return data
        try:
            message = await self.ws.recv()
        except ConnectionClosed as closed:
            raise EndOfStream(str(closed)) from None
        return message if isinstance(message, bytes) else message.encode()

    async def recv_count(self) -> int:
        try:
            return len(await self._message())
        except EndOfStream:
            return 0

    async def discard(self, total: int) -> None:
        while total > 0:
            message = await self._message()
            if len(message) > total:
                self.leftover = message[total:]
                return
            total -= len(message)

    async def read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            message = await self._message()
            need = size - len(data)
            data += message[:need]
            if len(message) > need:
                self.leftover = message[need:]
        return data

    async def close(self) -> None:
        await self.ws.close()

    def abort(self) -> None:
        self.ws.transport.abort()


Conn = TcpConn | WsConn
Opener = Callable[[], Awaitable[Conn]]


def opener(client: str, address: str | int, dial: Dial = PLAIN) -> Opener:
    """A function that opens one connection to a target, each made by ``dial``."""
    if client == "ws":
        return lambda: WsConn.open(str(address), dial)
    return lambda: TcpConn.open(int(address), dial)


# -- bulk -----------------------------------------------------------------------------------------


async def upload(conn: Conn, total: int) -> None:
    """``total`` bytes to the sink, until its receipt says they all arrived."""
    await conn.send(header(b"S", total))
    await conn.send_bulk(total)
    receipt = int.from_bytes(await conn.read(8), "big")
    if receipt != total:
        raise RuntimeError(f"the backend received {receipt} bytes, not {total}")


async def download(conn: Conn, total: int) -> None:
    """``total`` bytes from the source."""
    await conn.send(header(b"O", total))
    await conn.discard(total)


async def bulk(open_conn: Opener, direction: str, total: int) -> dict[str, float]:
    """One stream, ``total`` bytes one way (``up``: to the backend; ``down``: from it); MB/s."""
    conn = await open_conn()
    try:
        start = time.perf_counter()
        await (upload if direction == "up" else download)(conn, total)
        elapsed = time.perf_counter() - start
    finally:
        await conn.close()
    return {"mb_per_s": total / elapsed / MB, "seconds": elapsed, "bytes": total}


async def streams(open_conn: Opener, count: int, total: int) -> dict[str, float]:
    """``count`` streams at once, half uploading and half downloading, ``total`` bytes in all."""
    each = total // count
    conns = list(await asyncio.gather(*(open_conn() for _ in range(count))))
    try:
        start = time.perf_counter()
        await asyncio.gather(
            *((upload if index % 2 == 0 else download)(conn, each) for index, conn in enumerate(conns))
        )
        elapsed = time.perf_counter() - start
    finally:
        for conn in conns:
            conn.abort()
    moved = each * count
    return {"mb_per_s": moved / elapsed / MB, "seconds": elapsed, "bytes": moved, "streams": count}


# -- latency --------------------------------------------------------------------------------------


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def latency(open_conn: Opener, rate: float, duration: float, warmup: float, size: int = 1024) -> dict[str, float]:
    """Requests of ``size`` bytes echoed back, sent at ``rate`` per second on an absolute schedule.

    Message k is due at start + k / rate whatever the replies do (an open loop: a slow reply
    does not delay the next request). Each latency is the time from just before a request was
    written to the arrival of its last echoed byte. The first ``warmup`` seconds are not counted.
    """
    loop = asyncio.get_running_loop()
    total = int(rate * (warmup + duration))
    skip = int(rate * warmup)
    sent = [0.0] * total
    received = [0.0] * total
    payload = bytes(size)
    conn = await open_conn()
    receiver: asyncio.Future[None] | None = None
    try:
        await conn.send(header(b"E"))

        async def receive() -> None:
            arrived = 0
            done = 0
            while done < total:
                got = await conn.recv_count()
                if not got:
                    raise EndOfStream(f"{total - done} replies missing")
                now = time.perf_counter()
                arrived += got
                while done < total and arrived >= (done + 1) * size:
                    received[done] = now
                    done += 1

        receiver = asyncio.ensure_future(receive())
        late = []
        start = loop.time() + 0.01
        for index in range(total):
            due = start + index / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                late.append(-delay)
            if receiver.done():
                break
            sent[index] = time.perf_counter()
            await conn.send(payload)
        await receiver
        elapsed = loop.time() - start
    finally:
        if receiver is not None and not receiver.done():
            receiver.cancel()
        await conn.close()
    samples = sorted((received[k] - sent[k]) * 1000.0 for k in range(skip, total))
    return {
        "p50_ms": percentile(samples, 0.50),
        "p99_ms": percentile(samples, 0.99),
        "p999_ms": percentile(samples, 0.999),
        "max_ms": samples[-1],
        "mean_ms": sum(samples) / len(samples),
        "samples": len(samples),
        "achieved_rate": total / elapsed,
        "sends_behind_schedule": len(late),
        "worst_send_delay_ms": max(late, default=0.0) * 1000.0,
    }


async def echo_once(conn: Conn, size: int) -> None:
    """``size`` bytes echoed back once, on a new connection."""
    await conn.send(header(b"E") + bytes(size))
    await conn.discard(size)


# -- connection rate ------------------------------------------------------------------------------


async def connection_rate(open_conn: Opener, workers: int, duration: float, size: int = 1024) -> dict[str, float]:
    """``workers`` clients in parallel, each: connect, send ``size`` bytes, receive them, close."""
    loop = asyncio.get_running_loop()
    request = header(b"E") + bytes(size)
    deadline = loop.time() + duration
    errors: list[str] = []

    async def worker() -> int:
        done = 0
        while loop.time() < deadline:
            try:
                conn = await open_conn()
            except (OSError, asyncio.TimeoutError, Exception) as problem:  # noqa: BLE001
                errors.append(repr(problem))
                if len(errors) > 100:
                    raise RuntimeError(f"too many failed connections, last: {problem!r}") from problem
                await asyncio.sleep(0.01)
                continue
            try:
                await conn.send(request)
                await conn.discard(size)
            finally:
                await conn.close()
            done += 1
        return done

    start = loop.time()
    counts = await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = loop.time() - start
    return {"per_s": sum(counts) / elapsed, "connections": sum(counts), "seconds": elapsed, "errors": len(errors)}


# -- idle clients ---------------------------------------------------------------------------------


@dataclass
class IdleClients:
    conns: list[Conn] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    established: int = 0
    seconds: float = 0.0

    def abort_all(self) -> None:
        for conn in self.conns:
            try:
                conn.abort()
            except Exception:  # noqa: BLE001
                pass
        self.conns.clear()


async def open_idle(
    open_conn: Opener, count: int, concurrency: int, result: IdleClients, progress: Callable[[int], None] | None = None
) -> IdleClients:
    """``count`` clients, at most ``concurrency`` opening at once, each proven end to end by a 1-byte echo.

    They are kept in ``result`` (given by the caller, so it can abort them whatever happens).
    """
    gate = asyncio.Semaphore(concurrency)
    request = header(b"E") + b"x"

    async def one() -> None:
        async with gate:
            if len(result.errors) > 50:
                return
            try:
                conn = await open_conn()
            except Exception as problem:  # noqa: BLE001
                result.errors.append(repr(problem))
                return
            result.conns.append(conn)
            try:
                await conn.send(request)
                await conn.discard(1)
            except Exception as problem:  # noqa: BLE001
                result.errors.append(repr(problem))
                return
            result.established += 1
            if progress is not None and result.established % 1000 == 0:
                progress(result.established)

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    result.seconds = time.perf_counter() - start
    return result
