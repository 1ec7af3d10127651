"""The reactor both gateways run on: Twisted's epoll reactor, with less work per message.

Twisted's ``FileDescriptor.write`` only queues: the bytes reach the socket on the next reactor
turn, after an ``epoll_ctl`` that asks for writability, an ``epoll_wait`` that reports it and a
second ``epoll_ctl`` that withdraws the interest. A tunnel pays that on every hop of every
message. asyncio's transports instead try ``send`` right away when nothing is queued, and fall
back to the event loop only for what the kernel did not take. ``ShieldReactor`` gives Twisted's
TCP and Unix sockets that behaviour (``EagerWrites``) and changes nothing else: reading, closing,
producers and errors go through Twisted's own code, and a socket that cannot take everything at
once is queued and flushed exactly as before.

Two more things cost every message a little and are trimmed here:

- Work deferred "until the end of this reactor turn" (a mux link frames what its streams wrote
  during the turn into one TLS write) would go through ``callLater(0)``: a ``DelayedCall``, a
  clock read, a heap push and pop. ``call_at_turn_end`` queues a plain callable instead, run
  once all the events of one ``epoll_wait`` have been handled. Users look for the method and
  fall back to ``callLater(0)`` on any other reactor (the in-process tests run on Twisted's).
- Twisted dispatches every socket event through ``log.callWithLogger``, which builds a legacy
  logging context (a dict copy and five calls) so that old-style ``log.msg`` lines can name the
  protocol. shield logs with ``twisted.logger`` and never reads that context; ``ShieldReactor``
  calls the handler directly. Twisted's own unhandled-error reports are still logged, with the
  system ``-`` instead of the protocol's name.

Measured with request/response clients through both gateways: see docs/performance.md.

The gateways select it themselves: ``install()`` runs when twistd loads the shield plugins,
before anything imports ``twisted.internet.reactor``. A reactor chosen with ``twistd --reactor``
is left alone (the gateways then run with Twisted's queued writes, correctly but slower).
"""

from __future__ import annotations

import errno
import sys
from typing import Any, Callable, Iterable

from twisted.internet import tcp, unix
from twisted.internet.abstract import FileDescriptor
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.interfaces import IConnector
from twisted.logger import Logger

log = Logger(namespace="shield.reactor")


class EagerWrites:
    """Mixin for a connected socket transport: ``write`` sends at once when nothing is queued.

    Only the happy path is new. Whatever the kernel does not take (a full send buffer, or an
    error, which the next ``doWrite`` reports through Twisted's usual path) is queued with
    ``FileDescriptor.write``, so ordering, producer pausing and connection loss behave exactly
    as in Twisted.
    """

    socket: Any
    connected: int  # as FileDescriptor has them: 0 or 1
    disconnecting: int
    dataBuffer: bytes
    offset: int
    _tempDataLen: int
    _writeDisconnected: bool
    _writeDisconnecting: bool
    TLS: bool

    def write(self, data: bytes) -> None:
        if (
            data
            and self.connected
            and not self.disconnecting
            and not self._writeDisconnecting
            and not self._tempDataLen
            and self.offset == len(self.dataBuffer)
            and not self.TLS
        ):
            try:
                sent = self.socket.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # queued below; the reactor's next doWrite meets the error and reports it
            if sent == len(data):
                return
            data = data[sent:]
        FileDescriptor.write(self, data)  # type: ignore[arg-type]  # a mixin: self is a FileDescriptor in every class that uses it

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        self.write(b"".join(iovec))

    def _isSendBufferFull(self) -> bool:
        """Pause the producer as soon as anything stays queued here.

        Twisted waits until ``bufferSize`` bytes are queued (shield reads 256 KiB at a time, and
        the same attribute sets both). With eager writes, a queue means the kernel's buffer is
        full, so more data would only wait in this process: the producer (a mux stream) pauses at
        once and keeps its credit until the queue has drained.

        Not once ``loseConnection`` was called: Twisted's ``doWrite``, on draining a queue, either
        resumes a paused producer or finishes the close, not both; a last write (a WebSocket close
        frame, say) that paused the producer would leave the connection open until the peer gave
        up.
        """
        if self.disconnecting:
            return False
        return self._tempDataLen + len(self.dataBuffer) - self.offset > 0


class EagerTCPServer(EagerWrites, tcp.Server):
    """An accepted TCP connection that sends at once."""


class EagerTCPClient(EagerWrites, tcp.Client):
    """A dialled TCP connection that sends at once."""


class EagerTCPPort(tcp.Port):
    transport = EagerTCPServer


class EagerTCPConnector(tcp.Connector):
    def _makeTransport(self) -> EagerTCPClient:
        return EagerTCPClient(self.host, self.port, self.bindAddress, self, self.reactor)


class EagerUNIXClient(EagerWrites, unix.Client):
    """A dialled Unix socket (a ``unix:`` backend) that sends at once."""


class EagerUNIXConnector(unix.Connector):
    def _makeTransport(self) -> EagerUNIXClient:  # type: ignore[override]  # Twisted annotates it with its TCP Client
        return EagerUNIXClient(self.address, self, self.reactor, self.checkPID)


class TurnEndCall:
    """A call queued for the end of the reactor turn; ``cancel`` it like a ``DelayedCall``."""

    __slots__ = ("function", "pending")

    def __init__(self, function: Callable[[], object]) -> None:
        self.function = function
        self.pending = True

    def active(self) -> bool:
        return self.pending

    def cancel(self) -> None:
        self.pending = False


class ShieldReactor(EPollReactor):
    """Twisted's epoll reactor with ``EagerWrites`` on every TCP and Unix stream socket, direct
    event dispatch, and ``call_at_turn_end``."""

    def __init__(self) -> None:
        self._turn_end: list[TurnEndCall] = []
        super().__init__()

    def call_at_turn_end(self, function: Callable[[], object]) -> TurnEndCall:
        """Run ``function`` once the events of the current turn are handled (soon, in any case)."""
        call = TurnEndCall(function)
        self._turn_end.append(call)
        return call

    def timeout(self) -> float | None:
        # Calls queued outside a poll (from a timed call) must not wait for the next event.
        return 0.0 if self._turn_end else super().timeout()

    def doPoll(self, timeout: float | None) -> None:
        """Twisted's ``EPollReactor.doPoll`` without the per-event logging context, then the
        calls queued for the end of the turn."""
        try:
            events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        except OSError as problem:
            if problem.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        handle = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                handle(selectable, fd, event)
        self._run_turn_end()

    doIteration = doPoll

    def _run_turn_end(self) -> None:
        while self._turn_end:
            calls, self._turn_end = self._turn_end, []
            for call in calls:
                if not call.pending:
                    continue
                call.pending = False
                try:
                    call.function()
                except Exception:
                    log.failure("call at the end of a reactor turn failed: {call!r}", call=call.function)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> EagerTCPPort:
        listening = EagerTCPPort(port, factory, backlog, interface, self)
        listening.startListening()
        return listening

    def connectTCP(
        self, host: str, port: int, factory: Any, timeout: float = 30.0, bindAddress: Any = None
    ) -> IConnector:
        connector = EagerTCPConnector(host, port, factory, timeout, bindAddress, self)
        connector.connect()
        return connector

    def connectUNIX(self, address: str, factory: Any, timeout: float = 30, checkPID: int = 0) -> IConnector:
        connector = EagerUNIXConnector(address, factory, timeout, self, checkPID)
        connector.connect()
        return connector


def install() -> bool:
    """Make ``ShieldReactor`` the global reactor, unless one is installed already.

    Returns whether it was installed. Called when twistd loads a shield plugin, which is before
    twistd or anything else imports ``twisted.internet.reactor``.
    """
    if "twisted.internet.reactor" in sys.modules:
        return False
    from twisted.internet.main import installReactor

    installReactor(ShieldReactor())
    return True


def describe(reactor: object) -> str:
    """For the start-up log line: which reactor runs, and whether writes are eager."""
    name = type(reactor).__name__
    if isinstance(reactor, ShieldReactor):
        return f"{name} (epoll, eager socket writes)"
    return f"{name} (queued socket writes: start without --reactor for the faster ShieldReactor)"


def forget_exit_signal(reactor: object, number: int) -> None:
    """twistd re-raises the signal that stopped the reactor (its private ``_exitSignal``), so the
    process would end "killed by SIGTERM" after a graceful drain; forget it if it is ``number``."""
    if getattr(reactor, "_exitSignal", None) == number:
        reactor._exitSignal = None  # type: ignore[attr-defined]  # pinned by tests/test_private_internals.py
