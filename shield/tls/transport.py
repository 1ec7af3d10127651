"""TLS transports for the backplane links: one socket write per mux write, one parse per read.

Twisted's ``TLSMemoryBIOProtocol`` is right for any protocol but costly for a link, which already
writes once per reactor turn and reads up to 256 KiB at a time:

- Writing, it encrypts 16 KiB at a time and hands every record to the socket transport on its
  own: with eager socket writes (``shield.reactor``) that is one ``send`` per 16 KiB. A link
  encrypts the whole write and hands the records over in one ``write``.
- Its default factory also collects small writes and sends them a reactor turn later, copying
  every byte twice: links use the plain protocol (``LinkTLSFactory``).
- Reading, it asks OpenSSL for more until OpenSSL raises ``WantReadError``, and then asks the
  send buffer for output until that raises too: two exceptions (about 4 us each through
  pyOpenSSL) for every socket read. A link counts the complete TLS records it fed in and asks
  for exactly that many, and reads the send buffer with a size that tells it when it is empty.
- OpenSSL hands over one record (at most 16 KiB) per read call. A link's TLS protocol tells the
  protocol above when a socket read begins and ends (``begin_batch`` / ``end_batch``, when it has
  them), so the mux parses everything one read decrypted at once.

Everything else (handshake, shutdown, errors, producers) is Twisted's own code. This module and
``shield.reactor`` are where shield relies on Twisted's TLS internals (``_tlsConnection``,
``_write``, ``_flushSendBIO``, ``_flushReceiveBIO``); tests/tls/test_link_transport.py pins the
behaviour they rely on.
"""

from __future__ import annotations

from typing import Any

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from shield.transports import IStreamTransport

#: The most plaintext one TLS record carries.
RECORD_PLAINTEXT = 16384
#: TLS record header: content type, version, length.
RECORD_HEADER = 5
#: Generous bound on what one record adds to its plaintext (header, AEAD tag, TLS 1.3 type byte,
#: CBC padding and MAC for TLS 1.2): used only to size reads of the send buffer.
RECORD_OVERHEAD = 256


class RecordCounter:
    """Counts the complete TLS records in a byte stream fed piece by piece (sans-IO).

    A record is a 5-byte header whose last two bytes are the length of the body that follows.
    """

    __slots__ = ("_header", "_body_left")

    def __init__(self) -> None:
        self._header = b""
        self._body_left = 0

    def feed(self, data: bytes) -> int:
        """How many records ``data`` completed."""
        complete = 0
        pos = 0
        end = len(data)
        while pos < end:
            if self._body_left:
                take = min(self._body_left, end - pos)
                self._body_left -= take
                pos += take
                if not self._body_left:
                    complete += 1
                continue
            need = RECORD_HEADER - len(self._header)
            header = self._header + data[pos : pos + need]
            pos += len(header) - len(self._header)
            if len(header) < RECORD_HEADER:
                self._header = header
                break
            self._header = b""
            self._body_left = (header[3] << 8) | header[4]
            if not self._body_left:
                complete += 1
        return complete


class LinkTLSProtocol(TLSMemoryBIOProtocol):
    """TLS for a mux link: writes go out whole, reads are parsed once per socket read."""

    transport: IStreamTransport  # the TCP connection, there before any event

    def __init__(self, factory: TLSMemoryBIOFactory, wrappedProtocol: IProtocol, _connectWrapped: bool = True) -> None:
        super().__init__(factory, wrappedProtocol, _connectWrapped)
        self._records = RecordCounter()
        #: Complete records fed to OpenSSL and not yet asked for. Counting too many costs a
        #: failing call; too few would strand data, so anything uncertain counts as a record.
        self._ready_records = 0

    def dataReceived(self, data: bytes) -> None:
        self._ready_records += self._records.feed(data)
        batching = getattr(self.wrappedProtocol, "begin_batch", None)
        if batching is None:
            super().dataReceived(data)
            return
        batching()
        try:
            super().dataReceived(data)
        finally:
            self.wrappedProtocol.end_batch()  # type: ignore[attr-defined]  # a protocol with begin_batch has end_batch

    def _flushReceiveBIO(self) -> None:
        """Twisted's loop, asking OpenSSL only as often as complete records arrived."""
        if not self._handshakeDone:
            super()._flushReceiveBIO()
            self._ready_records = 0
            return
        connection = self._tlsConnection
        while not self._lostTLSConnection and (self._ready_records > 0 or connection.pending()):
            if self._ready_records > 0:
                self._ready_records -= 1
            try:
                data = connection.recv(RECORD_PLAINTEXT)
            except WantReadError:
                continue  # a record with no application data (a TLS 1.3 session ticket, say)
            except ZeroReturnError:
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except Error:
                self._tlsShutdownFinished(Failure())
            else:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, data)
        self._flushSendBIO()

    def _write(self, data: bytes) -> None:
        """Encrypt all of ``data``, then hand every record to the socket in one write."""
        if self._lostTLSConnection:
            return
        connection = self._tlsConnection
        view = memoryview(data)
        sent = 0
        size = len(data)
        while sent < size:
            try:
                sent += connection.send(view[sent : sent + RECORD_PLAINTEXT])
            except WantReadError:
                self._bufferedWrite(bytes(view[sent:]))
                break
            except Error:
                self._tlsShutdownFinished(Failure())  # it writes what was encrypted so far first
                return
        self._flushSendBIO(sent)

    def _flushSendBIO(self, plaintext: int = 0) -> None:
        """Read everything OpenSSL has for the socket and write it at once.

        ``plaintext`` is how much was just encrypted: the read is sized to take all of it in
        one call, so a short read means the buffer is empty and no failing call is needed.
        """
        connection = self._tlsConnection
        want = plaintext + (plaintext // RECORD_PLAINTEXT + 1) * RECORD_OVERHEAD + RECORD_OVERHEAD
        chunks: list[bytes] = []
        while True:
            try:
                chunk = connection.bio_read(want)
            except WantReadError:
                break
            chunks.append(chunk)
            if len(chunk) < want:
                break
        if chunks:
            self.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))


class LinkTLSFactory(TLSMemoryBIOFactory):
    """``TLSMemoryBIOFactory`` for backplane links."""

    protocol = LinkTLSProtocol
    noisy = False


@implementer(IStreamClientEndpoint)
class LinkTLSEndpoint:
    """Like ``wrapClientTLS``, with ``LinkTLSFactory``."""

    def __init__(self, options: IOpenSSLClientConnectionCreator, wrapped: IStreamClientEndpoint) -> None:
        self._options = options
        self._wrapped = wrapped

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        tls = LinkTLSFactory(self._options, True, factory)
        connecting = self._wrapped.connect(tls)
        def unwrap(protocol: Any) -> IProtocol:
            return protocol.wrappedProtocol

        return connecting.addCallback(unwrap)


def handshake_pending(transport: object) -> bool:
    """Whether a TLS transport has not finished its handshake (False for any other transport)."""
    return getattr(transport, "_handshakeDone", True) is False


def tls_layer(transport: object) -> Any:
    """The TLS protocol under ``transport`` (through a mux stream or other wrappers), or None."""
    for _ in range(3):
        if transport is None:
            return None
        if hasattr(transport, "getPeerCertificate") and hasattr(transport, "_tlsConnection"):
            return transport
        transport = getattr(transport, "transport", None)
    return None
