"""TLS hygiene of every socket shield accepts or opens, and the certificate refusals on each link.

The rules (docs/security.md, issue 6 item 7): TLS 1.2 and 1.3 only; on TLS 1.2 only ECDHE key
exchange with an AEAD cipher (AES-GCM or ChaCha20-Poly1305); no renegotiation; no compression.

Every rule is checked with a real OpenSSL handshake (in memory, as in test_tls.py) against each
shield context:

- server side: ``backplane_server_context`` (DMZ backplane), ``cluster_server_context`` (a DMZ
  member accepting another), ``public_server_context`` (public ``wss://`` and ``tls://`` accepts);
- client side: ``backplane_client_options`` (connector), ``cluster_client_options`` (a DMZ member
  dialling another), ``backend_client_options`` (``tls://`` backends).

The other end is a bare pyOpenSSL peer that can be made as weak as a test needs (TLS 1.0, CBC,
static RSA, security level 0). Every weak peer is first shown to work against an equally permissive
bare peer (``test_weak_peer_works_against_a_permissive_peer``), so a refusal below means shield
refused, not that the peer could not talk at all.

The second half checks the three refusals the issue names (expired certificate, certificate from
another CA, wrong name) where test_tls.py does not already: the connector refusing the DMZ, the
cluster links in both directions, and ``tls://`` backends. test_tls.py covers the DMZ refusing an
expired connector, a connector from another CA and an unknown identity, and the connector's side
of a wrong name.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import SSL
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from shield.tls.contexts import (
    TLSVerificationError,
    backend_client_options,
    backplane_client_options,
    backplane_server_context,
    cluster_client_options,
    cluster_server_context,
    describe_tls_failure,
    public_server_context,
)
from shield.tls.devcerts import Authority, issue_certificate, leaf_pem, new_authority

SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 5941)
CLIENT_ADDRESS = IPv4Address("TCP", "127.0.0.1", 40123)

CONNECTORS = {"internal1"}
MEMBERS = {"dmz1", "dmz2"}

#: What a TLS 1.3 connection may end with (OpenSSL's default TLS 1.3 suites; all AEAD).
TLS13_AEAD = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
#: What a TLS 1.2 connection may end with: ECDHE, then AES-GCM or ChaCha20-Poly1305.
TLS12_AEAD = re.compile(r"ECDHE-(ECDSA|RSA)-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)")

#: SSL_OP_ALLOW_CLIENT_RENEGOTIATION (OpenSSL 3+; pyOpenSSL has no name for it): only the
#: permissive peer of the renegotiation premise sets it.
OP_ALLOW_CLIENT_RENEGOTIATION = 0x100


def is_aead(version: str | None, cipher: str | None) -> bool:
    if version == "TLSv1.3":
        return cipher in TLS13_AEAD
    if version == "TLSv1.2":
        return cipher is not None and TLS12_AEAD.fullmatch(cipher) is not None
    return False


# --- certificates -----------------------------------------------------------------------------


@dataclass
class PKI:
    root: Path
    ca: Path
    foreign_ca: Path
    files: dict[str, Path]

    def __getitem__(self, name: str) -> Path:
        return self.files[name]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """Good, expired and foreign certificates for the DMZs, a member, a connector; EC and RSA keys.

    The file name says what it is; the identity in it is the part before the first '-'.
    """
    root = tmp_path_factory.mktemp("hygiene-pki")
    ours, theirs = new_authority("shield hygiene CA"), new_authority("some other CA")
    (root / "ca.pem").write_bytes(ours.pem())
    (root / "foreign-ca.pem").write_bytes(theirs.pem())
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
    expired = {"not_before": past, "not_after": past + datetime.timedelta(days=1)}
    files: dict[str, Path] = {}

    def issue(file: str, role: str, authority: Authority = ours, **options: Any) -> None:
        cert, key = issue_certificate(authority, file.split("-")[0], role, **options)  # type: ignore[arg-type]
        files[file] = root / f"{file}.pem"
        files[file].write_bytes(leaf_pem(cert, key, [authority.certificate]))
        files[file].chmod(0o600)

    for name, role in (("dmz1", "server"), ("dmz2", "server"), ("dmz9", "server"), ("internal1", "client")):
        issue(name, role)
        issue(f"{name}-expired", role, **expired)
        issue(f"{name}-foreign", role, theirs)
    # An RSA key, so that suites with static RSA or DHE key exchange can be offered at all.
    issue("dmz1-rsa", "server", key=rsa.generate_private_key(65537, 2048))
    return PKI(root, root / "ca.pem", root / "foreign-ca.pem", files)


# --- in-memory handshakes ---------------------------------------------------------------------


@implementer(IHandshakeListener)
class Peer(Protocol):
    """Records the handshake (version, cipher, options of the live connection) and what arrives."""

    greeting = b""

    def __init__(self) -> None:
        self.handshake_done = False
        self.version: str | None = None
        self.cipher: str | None = None
        self.options = 0
        self.received = b""
        self.lost: Failure | None = None

    def handshakeCompleted(self) -> None:
        handle = self.transport.getHandle()
        self.handshake_done = True
        self.version = handle.get_protocol_version_name()
        self.cipher = handle.get_cipher_name()
        self.options = handle.set_options(0)  # SSL_set_options returns the options now in force
        self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = error.ConnectionDone()) -> None:  # type: ignore[assignment]
        self.lost = reason


class ClientPeer(Peer):
    greeting = b"hello from the client"


class ServerPeer(Peer):
    greeting = b"hello from the server"


@dataclass
class Outcome:
    client: Peer
    server: Peer
    client_tls: Any
    server_tls: Any
    pump: iosim.IOPump

    @property
    def connected(self) -> bool:
        return (
            self.client.handshake_done
            and self.server.handshake_done
            and self.server.received == ClientPeer.greeting
            and self.client.received == ServerPeer.greeting
            and self.client.lost is None
            and self.server.lost is None
        )

    @property
    def refused(self) -> bool:
        """Both ends gone, and not one byte of application data got through either way."""
        return (
            self.client.lost is not None
            and self.server.lost is not None
            and self.client.received == b""
            and self.server.received == b""
        )


def handshake(server_creator: Any, client_creator: Any) -> Outcome:
    clock = Clock()
    server_factory = TLSMemoryBIOFactory(server_creator, False, Factory.forProtocol(ServerPeer), clock=clock)
    client_factory = TLSMemoryBIOFactory(client_creator, True, Factory.forProtocol(ClientPeer), clock=clock)
    client_tls, server_tls, pump = iosim.connectedServerAndClient(
        lambda: server_factory.buildProtocol(CLIENT_ADDRESS),
        lambda: client_factory.buildProtocol(SERVER_ADDRESS),
        clientTransportFactory=lambda p: iosim.FakeTransport(p, False, CLIENT_ADDRESS, SERVER_ADDRESS),
        serverTransportFactory=lambda p: iosim.FakeTransport(p, True, SERVER_ADDRESS, CLIENT_ADDRESS),
        greet=False,
        clock=clock,
    )
    out = Outcome(client_tls.wrappedProtocol, server_tls.wrappedProtocol, client_tls, server_tls, pump)
    pump.flush()
    clock.advance(1)
    pump.flush()
    return out


# --- bare peers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    """What a bare peer speaks: a version range, a TLS 1.2 cipher string, a certificate kind."""

    label: str
    max_version: int = SSL.TLS1_3_VERSION
    min_version: int = SSL.TLS1_VERSION
    ciphers: bytes = b"ALL"
    key: str = "ec"  # the server certificate: "ec" (dmz1.pem) or "rsa" (dmz1-rsa.pem)

    def __str__(self) -> str:
        return self.label


def bare_context(offer: Offer, cert: Path | None = None, *, allow_client_renegotiation: bool = False) -> SSL.Context:
    """A peer with no rules of its own: security level 0, verifies nothing, speaks ``offer``."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(offer.min_version)
    ctx.set_max_proto_version(offer.max_version)
    ctx.set_cipher_list(offer.ciphers + b":@SECLEVEL=0")
    ctx.set_verify(SSL.VERIFY_NONE)
    if cert is not None:
        ctx.use_certificate_chain_file(str(cert))
        ctx.use_privatekey_file(str(cert))
    if allow_client_renegotiation:
        ctx.set_options(OP_ALLOW_CLIENT_RENEGOTIATION)
    return ctx


@implementer(IOpenSSLClientConnectionCreator)
class BareClient:
    def __init__(self, context: SSL.Context) -> None:
        self.context = context
        self.connections: list[SSL.Connection] = []

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_connect_state()
        self.connections.append(connection)
        return connection


@implementer(IOpenSSLServerConnectionCreator)
class BareServer:
    def __init__(self, context: SSL.Context) -> None:
        self.context = context
        self.connections: list[SSL.Connection] = []

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)  # Twisted sets accept state and app data
        self.connections.append(connection)
        return connection


def server_cert(pki: PKI, offer: Offer) -> Path:
    return pki["dmz1-rsa"] if offer.key == "rsa" else pki["dmz1"]


# --- the shield contexts ----------------------------------------------------------------------

#: Server side: (build the context with this certificate, the certificate a client must present).
SERVERS: dict[str, tuple[Callable[[PKI, Path], Any], str | None]] = {
    "backplane": (lambda pki, cert: backplane_server_context(cert, pki.ca, CONNECTORS.__contains__), "internal1"),
    "cluster": (lambda pki, cert: cluster_server_context(cert, pki.ca, MEMBERS.__contains__), "dmz2"),
    "public": (lambda pki, cert: public_server_context(cert), None),
}

#: Client side; each of them accepts a server that presents dmz1.pem or dmz1-rsa.pem (name "dmz1").
CLIENTS: dict[str, Callable[[PKI], Any]] = {
    "backplane": lambda pki: backplane_client_options(pki["internal1"], pki.ca, "dmz1"),
    "cluster": lambda pki: cluster_client_options(pki["dmz2"], pki.ca, MEMBERS.__contains__),
    "backend": lambda pki: backend_client_options("dmz1", pki.ca),
}


def shield_server(pki: PKI, kind: str, cert: Path) -> Any:
    return SERVERS[kind][0](pki, cert)


def bare_client(pki: PKI, kind: str, offer: Offer, **options: Any) -> BareClient:
    """A bare client for the ``kind`` server, with the certificate that server asks for."""
    credential = SERVERS[kind][1]
    return BareClient(bare_context(offer, pki[credential] if credential else None, **options))


#: Peers shield must turn away. Each works against a permissive peer (the premise test).
WEAK = [
    Offer("TLS 1.0", max_version=SSL.TLS1_VERSION),
    Offer("TLS 1.1", max_version=SSL.TLS1_1_VERSION),
    Offer("CBC with SHA-1", max_version=SSL.TLS1_2_VERSION, ciphers=b"ECDHE-ECDSA-AES128-SHA"),
    Offer("CBC with SHA-384", max_version=SSL.TLS1_2_VERSION, ciphers=b"ECDHE-ECDSA-AES256-SHA384"),
    Offer("CBC, RSA key", max_version=SSL.TLS1_2_VERSION, ciphers=b"ECDHE-RSA-AES128-SHA256", key="rsa"),
    Offer("CCM_8 (short tag)", max_version=SSL.TLS1_2_VERSION, ciphers=b"ECDHE-ECDSA-AES128-CCM8"),
    Offer("no encryption", max_version=SSL.TLS1_2_VERSION, ciphers=b"ECDHE-ECDSA-NULL-SHA"),
    Offer("anonymous ECDH", max_version=SSL.TLS1_2_VERSION, ciphers=b"AECDH-AES128-SHA"),
    Offer("static RSA, GCM", max_version=SSL.TLS1_2_VERSION, ciphers=b"AES128-GCM-SHA256", key="rsa"),
    Offer("static RSA, CBC", max_version=SSL.TLS1_2_VERSION, ciphers=b"AES256-SHA256", key="rsa"),
    Offer("DHE, GCM", max_version=SSL.TLS1_2_VERSION, ciphers=b"DHE-RSA-AES128-GCM-SHA256", key="rsa"),
    Offer("DHE, ChaCha20", max_version=SSL.TLS1_2_VERSION, ciphers=b"DHE-RSA-CHACHA20-POLY1305", key="rsa"),
]

#: TLS 1.2 suites shield accepts, each offered alone.
GOOD_TLS12 = [
    Offer(suite, min_version=SSL.TLS1_2_VERSION, max_version=SSL.TLS1_2_VERSION, ciphers=suite.encode(), key=key)
    for suite, key in (
        ("ECDHE-ECDSA-AES128-GCM-SHA256", "ec"),
        ("ECDHE-ECDSA-AES256-GCM-SHA384", "ec"),
        ("ECDHE-ECDSA-CHACHA20-POLY1305", "ec"),
        ("ECDHE-RSA-AES128-GCM-SHA256", "rsa"),
        ("ECDHE-RSA-AES256-GCM-SHA384", "rsa"),
        ("ECDHE-RSA-CHACHA20-POLY1305", "rsa"),
    )
]

TLS13_ONLY = Offer("TLS 1.3", min_version=SSL.TLS1_3_VERSION)

#: A TLS 1.2 peer that offers (or, as a server, prefers) the weak suites first and an AEAD one last.
WEAK_FIRST = Offer(
    "weak suites first",
    max_version=SSL.TLS1_2_VERSION,
    ciphers=b"ECDHE-RSA-AES128-SHA:AES128-GCM-SHA256:DHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-SHA256:"
    b"ECDHE-RSA-AES128-GCM-SHA256",
    key="rsa",
)


def assert_hygienic(peer: Peer) -> None:
    """A shield end of an established connection: AEAD, no compression, no renegotiation.

    Compression is checked as the option on the live connection: pyOpenSSL cannot report the
    negotiated method, and an OpenSSL built without compression (as most are) never offers any.
    """
    assert is_aead(peer.version, peer.cipher), (peer.version, peer.cipher)
    assert peer.options & SSL.OP_NO_COMPRESSION, hex(peer.options)
    assert peer.options & SSL.OP_NO_RENEGOTIATION, hex(peer.options)


# --- premise ----------------------------------------------------------------------------------


@pytest.mark.parametrize("offer", WEAK, ids=str)
def test_weak_peer_works_against_a_permissive_peer(pki: PKI, offer: Offer) -> None:
    """Each weak offer really is spoken by this OpenSSL: without shield in the way, it connects."""
    out = handshake(BareServer(bare_context(offer, server_cert(pki, offer))), BareClient(bare_context(offer)))
    assert out.connected, (describe_tls_failure(out.client.lost) if out.client.lost else None)
    assert not is_aead(out.client.version, out.client.cipher)
    if offer.max_version < SSL.TLS1_2_VERSION:
        assert out.client.version in {"TLSv1", "TLSv1.1"}
    else:
        assert out.client.cipher == offer.ciphers.decode()


# --- server side: backplane, cluster, public --------------------------------------------------


@pytest.mark.parametrize("offer", WEAK, ids=str)
@pytest.mark.parametrize("kind", SERVERS)
def test_server_refuses_weak_client(pki: PKI, kind: str, offer: Offer) -> None:
    out = handshake(shield_server(pki, kind, server_cert(pki, offer)), bare_client(pki, kind, offer))
    assert out.refused
    assert not out.server.handshake_done and not out.client.handshake_done
    why = describe_tls_failure(out.server.lost)  # what the shield side logs
    assert why.startswith("TLS handshake failed: "), why
    assert ("unsupported protocol" if offer.max_version < SSL.TLS1_2_VERSION else "no shared cipher") in why


@pytest.mark.parametrize("offer", [*GOOD_TLS12, TLS13_ONLY], ids=str)
@pytest.mark.parametrize("kind", SERVERS)
def test_server_accepts_aead(pki: PKI, kind: str, offer: Offer) -> None:
    out = handshake(shield_server(pki, kind, server_cert(pki, offer)), bare_client(pki, kind, offer))
    assert out.connected
    assert_hygienic(out.server)
    if offer is TLS13_ONLY:
        assert out.server.version == "TLSv1.3"
    else:
        assert (out.server.version, out.server.cipher) == ("TLSv1.2", offer.ciphers.decode())


@pytest.mark.parametrize("kind", SERVERS)
def test_server_picks_aead_when_the_client_prefers_weak_suites(pki: PKI, kind: str) -> None:
    out = handshake(shield_server(pki, kind, pki["dmz1-rsa"]), bare_client(pki, kind, WEAK_FIRST))
    assert out.connected
    assert (out.server.version, out.server.cipher) == ("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256")


def pump_memory(a: SSL.Connection, b: SSL.Connection) -> None:
    moved = True
    while moved:
        moved = False
        for source, sink in ((a, b), (b, a)):
            try:
                data = source.bio_read(65536)
            except SSL.WantReadError:
                continue
            if data:
                sink.bio_write(data)
                moved = True


def drive(conn: SSL.Connection) -> str:
    """One step of a handshake: "done", "want" (more bytes needed) or the OpenSSL error text."""
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        return "want"
    except SSL.Error as e:
        return "error: " + "; ".join(str(entry[-1]) for entry in (e.args[0] if e.args else []))
    return "done"


def client_renegotiation(server_context: SSL.Context, client_context: SSL.Context) -> list[str]:
    """A TLS 1.2 handshake, then the client asks to renegotiate: what the client's steps said."""
    server = SSL.Connection(server_context, None)
    server.set_accept_state()
    client = SSL.Connection(client_context, None)
    client.set_connect_state()
    for _ in range(10):
        steps = drive(client), drive(server)
        pump_memory(client, server)
        if steps == ("done", "done"):
            break
    assert steps == ("done", "done"), steps
    assert client.get_protocol_version_name() == "TLSv1.2"
    assert client.renegotiate()
    seen = []
    for _ in range(10):
        seen.append(drive(client))
        try:
            server.recv(1024)  # the server reads the new ClientHello and answers it
        except (SSL.WantReadError, SSL.Error):
            pass
        pump_memory(client, server)
        if seen[-1] != "want":
            break
    return seen


@pytest.mark.parametrize("kind", SERVERS)
def test_server_refuses_client_renegotiation(pki: PKI, kind: str) -> None:
    tls12 = Offer("TLS 1.2", max_version=SSL.TLS1_2_VERSION)
    # Premise: the same client does renegotiate with a server that allows it.
    permissive = bare_context(tls12, pki["dmz1"], allow_client_renegotiation=True)
    assert client_renegotiation(permissive, bare_client(pki, kind, tls12).context)[-1] == "done"

    server = shield_server(pki, kind, pki["dmz1"])
    steps = client_renegotiation(server.getContext(), bare_client(pki, kind, tls12).context)
    assert steps[-1].startswith("error: ") and "no renegotiation" in steps[-1], steps


# --- client side: connector, cluster member, tls:// backend ----------------------------------


@pytest.mark.parametrize("offer", WEAK, ids=str)
@pytest.mark.parametrize("kind", CLIENTS)
def test_client_refuses_weak_server(pki: PKI, kind: str, offer: Offer) -> None:
    out = handshake(BareServer(bare_context(offer, server_cert(pki, offer))), CLIENTS[kind](pki))
    assert out.refused
    assert not out.client.handshake_done and not out.server.handshake_done
    why = describe_tls_failure(out.client.lost)  # what the shield side logs
    assert why.startswith("TLS handshake failed: "), why


@pytest.mark.parametrize("offer", [*GOOD_TLS12, TLS13_ONLY], ids=str)
@pytest.mark.parametrize("kind", CLIENTS)
def test_client_accepts_aead(pki: PKI, kind: str, offer: Offer) -> None:
    out = handshake(BareServer(bare_context(offer, server_cert(pki, offer))), CLIENTS[kind](pki))
    assert out.connected
    assert_hygienic(out.client)
    if offer is TLS13_ONLY:
        assert out.client.version == "TLSv1.3"
    else:
        assert (out.client.version, out.client.cipher) == ("TLSv1.2", offer.ciphers.decode())


@pytest.mark.parametrize("kind", CLIENTS)
def test_client_ends_with_aead_when_the_server_prefers_weak_suites(pki: PKI, kind: str) -> None:
    context = bare_context(WEAK_FIRST, pki["dmz1-rsa"])
    context.set_options(SSL.OP_CIPHER_SERVER_PREFERENCE)
    out = handshake(BareServer(context), CLIENTS[kind](pki))
    assert out.connected
    assert (out.client.version, out.client.cipher) == ("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256")


def server_renegotiation(server: BareServer, client_creator: Any) -> tuple[Outcome, SSL.Connection]:
    """A TLS 1.2 connection on which the server asks the client to renegotiate (HelloRequest)."""
    out = handshake(server, client_creator)
    assert out.connected
    connection = server.connections[-1]
    assert connection.renegotiate()
    out.server_tls.write(b"after the HelloRequest")
    out.pump.flush()
    out.client_tls.write(b"the client answers")
    out.pump.flush()
    out.server_tls.write(b"and once more")
    out.pump.flush()
    return out, connection


@pytest.mark.parametrize("kind", CLIENTS)
def test_client_refuses_server_renegotiation(pki: PKI, kind: str) -> None:
    tls12 = Offer("TLS 1.2", max_version=SSL.TLS1_2_VERSION)
    # Premise: a client that allows it does renegotiate with this server, and the link stays up.
    permissive, connection = server_renegotiation(
        BareServer(bare_context(tls12, pki["dmz1"])), BareClient(bare_context(tls12))
    )
    assert not connection.renegotiate_pending()  # the second handshake completed
    assert permissive.client.lost is None and permissive.server.lost is None

    out, connection = server_renegotiation(BareServer(bare_context(tls12, pki["dmz1"])), CLIENTS[kind](pki))
    assert connection.renegotiate_pending()  # never completed
    assert out.client.lost is not None
    assert out.server.lost is not None and "no renegotiation" in describe_tls_failure(out.server.lost)


# --- shield against shield: what the real pairs negotiate -------------------------------------

PAIRS: dict[str, tuple[Callable[[PKI], Any], Callable[[PKI], Any]]] = {
    "backplane": (lambda pki: shield_server(pki, "backplane", pki["dmz1"]), CLIENTS["backplane"]),
    "cluster": (lambda pki: shield_server(pki, "cluster", pki["dmz1"]), CLIENTS["cluster"]),
    "public and backend": (lambda pki: shield_server(pki, "public", pki["dmz1"]), CLIENTS["backend"]),
}


@pytest.mark.parametrize("max_version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION], ids=["TLS 1.2", "TLS 1.3"])
@pytest.mark.parametrize("pair", PAIRS)
def test_shield_pairs_negotiate_aead(pki: PKI, pair: str, max_version: int) -> None:
    make_server, make_client = PAIRS[pair]
    server = make_server(pki)
    server.getContext().set_max_proto_version(max_version)
    out = handshake(server, make_client(pki))
    assert out.connected
    assert out.client.version == ("TLSv1.2" if max_version == SSL.TLS1_2_VERSION else "TLSv1.3")
    assert_hygienic(out.client)
    assert_hygienic(out.server)


# --- refusals: expired, another CA, wrong name ------------------------------------------------


@pytest.fixture
def tls_log() -> Iterator[list[str]]:
    """Formatted lines that shield.tls logs while the test runs."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("shield.tls"):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observe)


#: What a shield end that did not refuse logs: the peer turned our certificate down, and how.
PEER_REFUSED = "TLS handshake failed: peer refused our certificate: alert "
#: ... when the chain was fine but the identity or name in it was not (OpenSSL: "internal error").
PEER_REFUSED_NAME = (
    "TLS handshake failed: peer sent alert internal error (a shield DMZ sends this when it refuses our"
    " certificate's identity, a connector when our certificate lacks the name it expects; its log says why)"
)


@dataclass(frozen=True)
class Refusal:
    label: str
    dmz_cert: str  # file the DMZ (server) presents
    server_name: str  # what the connector expects
    ca: str  # "ca" or "foreign_ca": what the connector trusts
    reason: str  # regular expression for the connector's line after "TLS handshake failed: "
    alert: str | None = None  # the alert the server is sent; None: "internal error" (a name problem)

    def __str__(self) -> str:
        return self.label


CONNECTOR_REFUSES_DMZ = [
    Refusal(
        "expired DMZ certificate", "dmz1-expired", "dmz1", "ca",
        r"server certificate verify failed: certificate has expired \(certificate 'dmz1', depth 0, expected name 'dmz1'\)",
        "certificate expired",
    ),
    Refusal(
        "DMZ certificate from another CA", "dmz1-foreign", "dmz1", "ca",
        r"server certificate verify failed: unable to get local issuer certificate"
        r" \(certificate 'dmz1', depth 0, expected name 'dmz1'\)",
        "unknown ca",
    ),
    Refusal(
        "wrong host name", "dmz1", "dmz2", "ca",
        r"server certificate does not match the expected name 'dmz2' \(it names DNS:dmz1, DNS:localhost, "
        r"IP:127\.0\.0\.1, IP:::1\)",
    ),
]


@pytest.mark.parametrize("case", CONNECTOR_REFUSES_DMZ, ids=str)
def test_connector_refuses_dmz_and_both_sides_say_why(pki: PKI, case: Refusal, tls_log: list[str]) -> None:
    """The connector names the certificate and the problem; the DMZ learns its certificate was refused.

    test_tls.py covers the other direction (the DMZ refusing an expired connector, one from
    another CA, an unknown identity), each with its "refused connector certificate" line.
    """
    dmz = backplane_server_context(pki[case.dmz_cert], pki.ca, CONNECTORS.__contains__)
    out = handshake(dmz, backplane_client_options(pki["internal1"], getattr(pki, case.ca), case.server_name))
    assert out.refused
    assert out.client.lost is not None and out.client.lost.check(TLSVerificationError)
    connector_line = describe_tls_failure(out.client.lost)  # the connector logs "link to ...: <this>"
    assert re.fullmatch("TLS handshake failed: " + case.reason, connector_line), connector_line
    # The DMZ logs "link from <peer>: closed before TLS completed: <this>".
    assert_other_side_knows(describe_tls_failure(out.server.lost), case.alert)
    assert not out.server.handshake_done
    assert [line for line in tls_log if line.startswith("refused connector certificate")] == []


# Cluster links: the member that dials uses cluster_client_options, the one that accepts
# cluster_server_context; both check the other the same way, so every refusal is tried both ways.

ALL_GATEWAYS = MEMBERS | CONNECTORS | {"dmz9"}


@dataclass(frozen=True)
class MemberRefusal:
    label: str
    bad_cert: str
    reason: str  # regular expression for what follows "refused cluster member certificate: "
    # The alert the refused member is sent when it dialled / when it was dialled; None: "internal
    # error". OpenSSL sends "unsupported certificate" when its purpose check had objected too (a
    # member dials with its serverAuth certificate, which the refusing callback lets pass first).
    alert_to_dialler: str | None
    alert_to_listener: str | None
    admitted: frozenset[str] = frozenset(MEMBERS)

    def __str__(self) -> str:
        return self.label


MEMBER_REFUSALS = [
    MemberRefusal(
        "connector certificate (clientAuth only)", "internal1",
        r"'internal1' is not a gateway certificate \(no serverAuth usage\)",
        None, "unsupported certificate",
        admitted=frozenset(ALL_GATEWAYS),  # even admitted by name, its certificate cannot make it a member
    ),
    MemberRefusal(
        "expired member certificate", "dmz2-expired",
        r"certificate has expired \(certificate 'dmz2', depth 0\)",
        "certificate expired", "certificate expired",
    ),
    MemberRefusal(
        "member certificate from another CA", "dmz2-foreign",
        r"unable to get local issuer certificate \(certificate 'dmz2', depth 0\)",
        "unknown ca", "unknown ca",
    ),
    MemberRefusal(
        "member the cluster does not admit", "dmz9", r"unknown identity 'dmz9'", "unsupported certificate", None
    ),
]


def member_refusals(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("refused cluster member certificate")]


def assert_other_side_knows(why: str, alert: str | None) -> None:
    """The end that did not refuse logs that the peer refused its certificate."""
    assert why == (PEER_REFUSED + alert if alert else PEER_REFUSED_NAME), why


def test_good_members_link(pki: PKI, tls_log: list[str]) -> None:
    out = handshake(
        cluster_server_context(pki["dmz1"], pki.ca, MEMBERS.__contains__),
        cluster_client_options(pki["dmz2"], pki.ca, MEMBERS.__contains__),
    )
    assert out.connected
    assert member_refusals(tls_log) == []


@pytest.mark.parametrize("case", MEMBER_REFUSALS, ids=str)
def test_accepting_member_refuses_dialler(pki: PKI, case: MemberRefusal, tls_log: list[str]) -> None:
    out = handshake(
        cluster_server_context(pki["dmz1"], pki.ca, case.admitted.__contains__),
        cluster_client_options(pki[case.bad_cert], pki.ca, case.admitted.__contains__),
    )
    assert out.refused and not out.server.handshake_done
    [line] = member_refusals(tls_log)
    assert re.fullmatch(r"refused cluster member certificate: " + case.reason + r" \(peer 127\.0\.0\.1:40123\)", line), line
    assert describe_tls_failure(out.server.lost).startswith("TLS handshake failed: ")
    assert_other_side_knows(describe_tls_failure(out.client.lost), case.alert_to_dialler)


@pytest.mark.parametrize("case", MEMBER_REFUSALS, ids=str)
def test_dialling_member_refuses_listener(pki: PKI, case: MemberRefusal, tls_log: list[str]) -> None:
    out = handshake(
        cluster_server_context(pki[case.bad_cert], pki.ca, case.admitted.__contains__),
        cluster_client_options(pki["dmz1"], pki.ca, case.admitted.__contains__),
    )
    assert out.refused and not out.client.handshake_done
    [line] = member_refusals(tls_log)
    assert re.fullmatch(r"refused cluster member certificate: " + case.reason + r" \(peer 127\.0\.0\.1:5941\)", line), line
    assert describe_tls_failure(out.client.lost).startswith("TLS handshake failed: ")
    assert_other_side_knows(describe_tls_failure(out.server.lost), case.alert_to_listener)


BACKEND_REFUSALS = [
    Refusal(
        "expired backend certificate", "dmz1-expired", "dmz1", "ca",
        r"server certificate verify failed: certificate has expired \(certificate 'dmz1', depth 0, expected name 'dmz1'\)",
    ),
    Refusal(
        "backend certificate from another CA", "dmz1-foreign", "dmz1", "ca",
        # This backend sends its whole chain, root included (shield never sends a root).
        r"server certificate verify failed: self-signed certificate in certificate chain"
        r" \(certificate 'some other CA', depth 1, expected name 'dmz1'\)",
    ),
    Refusal(
        "wrong backend host name", "dmz1", "backend.example", "ca",
        r"server certificate does not match the expected name 'backend\.example' \(it names DNS:dmz1, "
        r"DNS:localhost, IP:127\.0\.0\.1, IP:::1\)",
    ),
]


@pytest.mark.parametrize("case", BACKEND_REFUSALS, ids=str)
def test_tls_backend_refused(pki: PKI, case: Refusal) -> None:
    """A ``tls://`` backend is not shield: the connector's line is the one that says why."""
    backend = BareServer(bare_context(Offer("backend", min_version=SSL.TLS1_2_VERSION), pki[case.dmz_cert]))
    out = handshake(backend, backend_client_options(case.server_name, getattr(pki, case.ca)))
    assert out.refused and not out.client.handshake_done
    assert out.client.lost is not None and out.client.lost.check(TLSVerificationError)
    line = describe_tls_failure(out.client.lost)
    assert re.fullmatch("TLS handshake failed: " + case.reason, line), line
