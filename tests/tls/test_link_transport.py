"""The link TLS transport: one socket write per mux write, records counted, nothing stranded.

It overrides parts of Twisted's TLSMemoryBIOProtocol (``_write``, ``_flushSendBIO``,
``_flushReceiveBIO``); these tests pin what shield relies on, in memory over ``iosim`` with the
real backplane contexts (mutual TLS, TLS 1.3 with session tickets) and with TLS 1.2.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.test import iosim

from shield.tls.contexts import backplane_client_options, backplane_server_context
from shield.tls.devcerts import generate_dev_certs
from shield.tls.transport import RECORD_HEADER, LinkTLSFactory, RecordCounter

DMZ = IPv4Address("TCP", "127.0.0.1", 5941)
CONNECTOR = IPv4Address("TCP", "127.0.0.1", 40123)


# --- counting records (sans-IO) -----------------------------------------------------------------


def record(body_length: int) -> bytes:
    return bytes([23, 3, 3]) + body_length.to_bytes(2, "big") + os.urandom(body_length)


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 18000), max_size=12),
    cuts=st.lists(st.integers(0, 250000), max_size=20),
)
def test_records_are_counted_however_the_stream_is_cut(lengths: list[int], cuts: list[int]) -> None:
    stream = b"".join(record(n) for n in lengths)
    points = sorted({min(cut, len(stream)) for cut in cuts} | {0, len(stream)})
    counter = RecordCounter()
    counted = 0
    ends = []
    position = 0
    for length in lengths:
        position += RECORD_HEADER + length
        ends.append(position)
    for start, stop in zip(points, points[1:]):
        counted += counter.feed(stream[start:stop])
        # Never more than the records that have fully arrived.
        assert counted == sum(1 for end in ends if end <= stop)
    assert counted == len(lengths)


def test_a_partial_header_is_kept_until_the_rest_arrives() -> None:
    counter = RecordCounter()
    whole = record(3)
    assert [counter.feed(whole[i : i + 1]) for i in range(len(whole))] == [0] * (len(whole) - 1) + [1]


# --- in memory, real contexts ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    generate_dev_certs(root, ["dmz1"], ["internal1"])
    return root


class Recorder(Protocol):
    """Keeps what arrives; counts the writes its TLS transport makes to the socket below."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.batches: list[tuple[str, int]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def begin_batch(self) -> None:
        self.batches.append(("begin", len(self.received)))

    def end_batch(self) -> None:
        self.batches.append(("end", len(self.received)))


class CountingTransport(iosim.FakeTransport):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes: list[int] = []

    def write(self, data: bytes) -> None:
        self.writes.append(len(data))
        super().write(data)


def link_pair(pki: Path, client_creator: Any = None, server_creator: Any = None) -> tuple[Any, Any, iosim.IOPump]:
    clock = Clock()
    server_creator = server_creator or backplane_server_context(pki / "dmz1.pem", pki / "ca.pem", lambda name: True)
    client_creator = client_creator or backplane_client_options(pki / "internal1.pem", pki / "ca.pem", "dmz1")
    server_factory = LinkTLSFactory(server_creator, False, Factory.forProtocol(Recorder), clock=clock)
    client_factory = LinkTLSFactory(client_creator, True, Factory.forProtocol(Recorder), clock=clock)
    client, server, pump = iosim.connectedServerAndClient(
        lambda: server_factory.buildProtocol(CONNECTOR),
        lambda: client_factory.buildProtocol(DMZ),
        clientTransportFactory=lambda p: CountingTransport(p, False, CONNECTOR, DMZ),
        serverTransportFactory=lambda p: CountingTransport(p, True, DMZ, CONNECTOR),
        greet=False,
        clock=clock,
    )
    pump.flush()
    assert client._handshakeDone and server._handshakeDone
    return client, server, pump


def test_one_large_write_is_one_socket_write_and_arrives_whole(pki: Path) -> None:
    client, server, pump = link_pair(pki)
    payload = os.urandom(1_000_000)  # 62 records
    client.transport.writes.clear()
    client.write(payload)
    assert len(client.transport.writes) == 1  # Twisted's own protocol makes 62
    assert client.transport.writes[0] > len(payload)  # every record, with its overhead
    pump.flush()
    assert hashlib.sha256(b"".join(server.wrappedProtocol.received)).digest() == hashlib.sha256(payload).digest()


def test_many_small_writes_and_both_directions(pki: Path) -> None:
    client, server, pump = link_pair(pki)
    sent = [os.urandom(n) for n in (1, 17, 1024, 16384, 16385, 40000, 3)]
    for chunk in sent:
        client.write(chunk)
        server.write(chunk[::-1])
        pump.flush()
    assert b"".join(server.wrappedProtocol.received) == b"".join(sent)
    assert b"".join(client.wrappedProtocol.received) == b"".join(chunk[::-1] for chunk in sent)


def test_a_read_is_delivered_inside_one_batch(pki: Path) -> None:
    client, server, pump = link_pair(pki)
    receiver = server.wrappedProtocol
    receiver.batches.clear()
    client.write(os.urandom(100_000))
    pump.flush()
    # iosim delivers what was written in one piece: one batch around all the records' data.
    begins = [i for i, (kind, _) in enumerate(receiver.batches) if kind == "begin"]
    assert receiver.batches[0][0] == "begin" and receiver.batches[-1][0] == "end"
    assert len(begins) == len([kind for kind, _ in receiver.batches if kind == "end"])


def test_records_fed_a_byte_at_a_time_are_all_delivered(pki: Path) -> None:
    """A slow network: records arrive in pieces; no record's data may be stranded in OpenSSL."""
    client, server, pump = link_pair(pki)
    payload = os.urandom(50_000)
    client.write(payload)
    client.write(b"again")
    out = client.transport.getOutBuffer()
    for i in range(len(out)):
        server.dataReceived(out[i : i + 1])
    assert b"".join(server.wrappedProtocol.received) == payload + b"again"


def test_tls12_links_work_the_same(pki: Path) -> None:
    server_context = backplane_server_context(pki / "dmz1.pem", pki / "ca.pem", lambda name: True)
    server_context.getContext().set_max_proto_version(SSL.TLS1_2_VERSION)
    client, server, pump = link_pair(pki, server_creator=server_context)
    assert client.getHandle().get_protocol_version_name() == "TLSv1.2"
    payload = os.urandom(300_000)
    client.write(payload)
    server.write(payload[:1000])
    pump.flush()
    assert b"".join(server.wrappedProtocol.received) == payload
    assert b"".join(client.wrappedProtocol.received) == payload[:1000]


def test_a_clean_close_reaches_the_other_side(pki: Path) -> None:
    client, server, pump = link_pair(pki)
    receiver = server.wrappedProtocol  # the wrapper lets go of it once the connection is gone
    client.write(b"last words")
    client.loseConnection()
    pump.flush()
    assert b"".join(receiver.received) == b"last words"
    assert not server.connected
