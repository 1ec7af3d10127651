"""The TLS layer: dev certificates, identities, and real handshakes between connector and DMZ contexts.

Most handshakes run in memory (TLSMemoryBIOFactory over twisted.test.iosim and a fake clock): the
same OpenSSL handshake as over a socket, deterministic and fast. One test runs over real TCP on
127.0.0.1 through SSL4ServerEndpoint / SSL4ClientEndpoint to show the objects plug into endpoints.
"""

from __future__ import annotations

import datetime
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from twisted.internet import defer, endpoints, error, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLContextFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from shield.tls import devcerts
from shield.tls.contexts import (
    TLSConfigError,
    TLSVerificationError,
    backend_client_options,
    backplane_client_options,
    backplane_server_context,
    describe_tls_failure,
    public_server_context,
    refusal_logged,
)
from shield.tls.devcerts import Authority, generate_dev_certs, issue_certificate, leaf_pem, new_authority
from shield.tls.identity import identity_from_certificate, peer_identity

KNOWN = {"internal1", "expired1"}
DMZ_ADDRESS = IPv4Address("TCP", "127.0.0.1", 5941)
CONNECTOR_ADDRESS = IPv4Address("TCP", "127.0.0.1", 40123)


# --- fixtures ---------------------------------------------------------------------------------


@dataclass
class PKI:
    """Files for every handshake scenario, all under one temporary directory."""

    root: Path
    ca: Path
    dmz: Path
    connector: Path
    unknown_connector: Path
    expired_connector: Path
    foreign_connector: Path
    foreign_ca: Path
    dmz_as_client: Path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    root = tmp_path_factory.mktemp("pki")
    generate_dev_certs(root, ["dmz1"], ["internal1", "stranger"])
    authority = devcerts.load_or_create_authority(root)[0]
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
    cert, key = issue_certificate(
        authority, "expired1", "client", not_before=past, not_after=past + datetime.timedelta(days=1)
    )
    expired = _write(root / "expired1.pem", leaf_pem(cert, key, [authority.certificate]))
    other = new_authority("some other CA")
    cert, key = issue_certificate(other, "internal1", "client")
    foreign = _write(root / "foreign-internal1.pem", leaf_pem(cert, key, [other.certificate]))
    foreign_ca = root / "other-ca.pem"
    foreign_ca.write_bytes(other.pem())
    return PKI(
        root=root,
        ca=root / "ca.pem",
        dmz=root / "dmz1.pem",
        connector=root / "internal1.pem",
        unknown_connector=root / "stranger.pem",
        expired_connector=expired,
        foreign_connector=foreign,
        foreign_ca=foreign_ca,
        dmz_as_client=root / "dmz1.pem",
    )


@pytest.fixture
def tls_log() -> Iterator[list[str]]:
    """Formatted lines that shield.tls logs while the test runs."""
    from twisted.logger import formatEvent

    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("shield.tls"):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observe)


# --- in-memory handshakes ---------------------------------------------------------------------


@implementer(IHandshakeListener)
class Peer(Protocol):
    """Records the handshake, what arrives and how the connection ended; greets when TLS is up."""

    greeting = b""

    def __init__(self) -> None:
        self.handshake_done = False
        self.identity: str | None = None
        self.received = b""
        self.lost: Failure | None = None

    def handshakeCompleted(self) -> None:
        self.handshake_done = True
        self.identity = peer_identity(self.transport)
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = error.ConnectionDone()) -> None:  # type: ignore[assignment]
        self.lost = reason


class ConnectorPeer(Peer):
    greeting = b"hello from the connector"


class DMZPeer(Peer):
    greeting = b"hello from the DMZ"


@dataclass
class Outcome:
    client: Peer
    server: Peer
    client_tls: Any
    server_tls: Any
    pump: iosim.IOPump

    @property
    def connected(self) -> bool:
        """Both sides saw the other's greeting: the link really works."""
        return (
            self.server.received == ConnectorPeer.greeting
            and self.client.received == DMZPeer.greeting
            and self.client.lost is None
            and self.server.lost is None
        )


def handshake(server_creator: Any, client_creator: Any) -> Outcome:
    """Run one TLS connection in memory until nothing moves any more."""
    clock = Clock()
    server_factory = TLSMemoryBIOFactory(server_creator, False, Factory.forProtocol(DMZPeer), clock=clock)
    client_factory = TLSMemoryBIOFactory(client_creator, True, Factory.forProtocol(ConnectorPeer), clock=clock)
    client_tls, server_tls, pump = iosim.connectedServerAndClient(
        lambda: server_factory.buildProtocol(CONNECTOR_ADDRESS),
        lambda: client_factory.buildProtocol(DMZ_ADDRESS),
        clientTransportFactory=lambda p: iosim.FakeTransport(p, False, CONNECTOR_ADDRESS, DMZ_ADDRESS),
        serverTransportFactory=lambda p: iosim.FakeTransport(p, True, DMZ_ADDRESS, CONNECTOR_ADDRESS),
        greet=False,
        clock=clock,
    )
    client, server = client_tls.wrappedProtocol, server_tls.wrappedProtocol  # gone after connectionLost
    pump.flush()
    clock.advance(1)
    pump.flush()
    return Outcome(client, server, client_tls, server_tls, pump)


def dmz_context(pki: PKI, known: set[str] = KNOWN) -> Any:
    return backplane_server_context(pki.dmz, pki.ca, known.__contains__)


#: OpenSSL cannot be told which alert to send when a callback refuses a valid certificate: the
#: connector sees "internal error", and describe_tls_failure points at the DMZ log.
UNKNOWN_IDENTITY_ON_CONNECTOR = "TLS handshake failed: peer sent alert internal error (a shield DMZ"


def refusals(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("refused connector certificate")]


def test_good_connector_and_dmz_connect_and_dmz_reads_identity(pki: PKI, tls_log: list[str]) -> None:
    out = handshake(dmz_context(pki), backplane_client_options(pki.connector, pki.ca, "dmz1"))
    assert out.connected
    assert out.server.identity == "internal1"
    assert out.client.identity == "dmz1"
    assert peer_identity(out.server_tls) == "internal1"
    assert out.server_tls.getHandle().get_protocol_version_name() in {"TLSv1.2", "TLSv1.3"}
    assert refusals(tls_log) == []


@pytest.mark.parametrize("server_name", ["dmz1", "localhost", "127.0.0.1", "::1"])
def test_connector_accepts_every_name_in_the_dev_certificate(pki: PKI, server_name: str) -> None:
    out = handshake(dmz_context(pki), backplane_client_options(pki.connector, pki.ca, server_name))
    assert out.connected


def test_tls12_link_uses_an_aead_cipher(pki: PKI) -> None:
    server = dmz_context(pki)
    server.getContext().set_max_proto_version(SSL.TLS1_2_VERSION)
    out = handshake(server, backplane_client_options(pki.connector, pki.ca, "dmz1"))
    assert out.connected
    handle = out.client_tls.getHandle()
    assert handle.get_protocol_version_name() == "TLSv1.2"
    cipher = handle.get_cipher_name()
    assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)


def _assert_both_failed(out: Outcome) -> None:
    assert out.server.lost is not None and out.client.lost is not None
    assert out.server.received == b""  # nothing from a refused connector reaches the DMZ protocol
    assert out.server.identity is None or not out.server.handshake_done


def test_connector_from_another_ca_is_refused(pki: PKI, tls_log: list[str]) -> None:
    out = handshake(dmz_context(pki), backplane_client_options(pki.foreign_connector, pki.ca, "dmz1"))
    _assert_both_failed(out)
    lines = refusals(tls_log)
    assert len(lines) == 1, tls_log
    assert "certificate" in lines[0] and "peer 127.0.0.1:40123" in lines[0]
    assert "self-signed certificate in certificate chain" in lines[0] or "local issuer" in lines[0]
    assert refusal_logged(out.server_tls)
    assert describe_tls_failure(out.server.lost).startswith("TLS handshake failed: certificate verify failed")
    assert describe_tls_failure(out.client.lost) == "TLS handshake failed: peer refused our certificate: alert unknown ca"


def test_unknown_identity_is_refused_with_one_log_line(pki: PKI, tls_log: list[str]) -> None:
    out = handshake(dmz_context(pki), backplane_client_options(pki.unknown_connector, pki.ca, "dmz1"))
    _assert_both_failed(out)
    assert refusals(tls_log) == [
        "refused connector certificate: unknown identity 'stranger' (peer 127.0.0.1:40123)"
    ]
    assert describe_tls_failure(out.client.lost).startswith(UNKNOWN_IDENTITY_ON_CONNECTOR)


def test_identity_check_follows_the_live_predicate(pki: PKI, tls_log: list[str]) -> None:
    """The predicate runs per handshake, so the DMZ can change who is welcome without a new context."""
    known = {"internal1"}
    ctx = dmz_context(pki, known)
    assert handshake(ctx, backplane_client_options(pki.connector, pki.ca, "dmz1")).connected
    known.clear()
    _assert_both_failed(handshake(ctx, backplane_client_options(pki.connector, pki.ca, "dmz1")))
    assert refusals(tls_log) == ["refused connector certificate: unknown identity 'internal1' (peer 127.0.0.1:40123)"]


def test_expired_connector_certificate_is_refused(pki: PKI, tls_log: list[str]) -> None:
    out = handshake(dmz_context(pki), backplane_client_options(pki.expired_connector, pki.ca, "dmz1"))
    _assert_both_failed(out)
    assert refusals(tls_log) == [
        "refused connector certificate: certificate has expired (certificate 'expired1', depth 0)"
        " (peer 127.0.0.1:40123)"
    ]
    assert describe_tls_failure(out.client.lost) == (
        "TLS handshake failed: peer refused our certificate: alert certificate expired"
    )


def test_server_certificate_cannot_act_as_connector(pki: PKI, tls_log: list[str]) -> None:
    """EKU serverAuth only: the DMZ's own certificate is no connector credential."""
    out = handshake(dmz_context(pki, {"dmz1"}), backplane_client_options(pki.dmz_as_client, pki.ca, "dmz1"))
    _assert_both_failed(out)
    [line] = refusals(tls_log)
    assert "certificate purpose (certificate 'dmz1', depth 0)" in line  # "unsupported"/"unsuitable"


def test_client_without_certificate_is_refused(pki: PKI) -> None:
    out = handshake(dmz_context(pki), backend_client_options("dmz1", pki.ca))
    _assert_both_failed(out)
    assert "certificate" in describe_tls_failure(out.client.lost)


def test_wrong_server_name_fails_on_the_connector_naming_it(pki: PKI, tls_log: list[str]) -> None:
    out = handshake(dmz_context(pki), backplane_client_options(pki.connector, pki.ca, "dmz2"))
    assert out.client.lost is not None and out.server.lost is not None
    assert out.client.lost.check(TLSVerificationError)
    line = describe_tls_failure(out.client.lost)
    assert line.startswith("TLS handshake failed: server certificate does not match the expected name 'dmz2'")
    assert "DNS:dmz1" in line
    assert out.server.received == b""
    assert refusals(tls_log) == []  # the DMZ never got to judge the connector


def test_connector_refuses_dmz_from_another_ca(pki: PKI) -> None:
    out = handshake(dmz_context(pki), backplane_client_options(pki.connector, pki.foreign_ca, "dmz1"))
    assert out.client.lost is not None and out.client.lost.check(TLSVerificationError)
    assert describe_tls_failure(out.client.lost).startswith(
        "TLS handshake failed: server certificate verify failed: "
    )
    line = describe_tls_failure(out.client.lost)
    assert "expected name 'dmz1'" in line
    assert "self-signed certificate in certificate chain" in line or "local issuer" in line


def _legacy_client(max_version: int) -> Any:
    """A client stuck below TLS 1.2, the kind the DMZ must turn away."""

    @implementer(IOpenSSLContextFactory)
    class Legacy:
        def getContext(self) -> SSL.Context:
            ctx = SSL.Context(SSL.TLS_METHOD)
            ctx.set_min_proto_version(SSL.TLS1_VERSION)
            ctx.set_max_proto_version(max_version)
            ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
            ctx.set_verify(SSL.VERIFY_NONE)
            return ctx

    return Legacy()


def _client_hello_version(creator: Any) -> bytes:
    """The highest version a client offers, read from its ClientHello (guards the TLS 1.1 test's premise)."""
    conn = SSL.Connection(creator.getContext(), None)
    conn.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        conn.do_handshake()
    return conn.bio_read(65536)[9:11]  # record header (5) + handshake header (4), then client_version


@pytest.mark.parametrize("server", ["backplane", "public"])
def test_tls11_only_client_is_refused(pki: PKI, server: str) -> None:
    legacy = _legacy_client(SSL.TLS1_1_VERSION)
    assert _client_hello_version(legacy) == b"\x03\x02"  # it really offers TLS 1.1 at most
    ctx = dmz_context(pki) if server == "backplane" else public_server_context(pki.dmz)
    out = handshake(ctx, legacy)
    assert out.server.lost is not None and out.client.lost is not None
    assert not out.server.handshake_done and not out.client.handshake_done
    assert "protocol version" in describe_tls_failure(out.client.lost)
    assert describe_tls_failure(out.server.lost).startswith("TLS handshake failed: ")


def test_public_server_context_needs_no_client_certificate(pki: PKI) -> None:
    out = handshake(public_server_context(pki.dmz), backend_client_options("localhost", pki.ca))
    assert out.connected
    assert out.server.identity is None  # no client certificate was asked for


def test_backend_client_uses_system_trust_without_ca(pki: PKI) -> None:
    """The dev CA is in no system store, so without ``ca`` the dev certificate is rejected."""
    out = handshake(public_server_context(pki.dmz), backend_client_options("dmz1", None))
    assert out.client.lost is not None and out.client.lost.check(TLSVerificationError)
    assert "server certificate verify failed" in describe_tls_failure(out.client.lost)


def test_server_context_options(pki: PKI) -> None:
    ctx = dmz_context(pki).getContext()
    options = ctx.set_options(0)
    assert options & SSL.OP_NO_COMPRESSION
    assert options & SSL.OP_NO_RENEGOTIATION
    assert ctx.get_verify_mode() == SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    ciphers = SSL.Connection(ctx, None).get_cipher_list()
    tls12 = [c for c in ciphers if not c.startswith("TLS_")]
    assert tls12 and all(c.startswith("ECDHE-") and ("GCM" in c or "CHACHA20" in c) for c in tls12)


def test_each_call_builds_a_new_context(pki: PKI) -> None:
    assert dmz_context(pki).getContext() is not dmz_context(pki).getContext()


def test_bad_files_raise_tls_config_error(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match="cannot read"):
        backplane_server_context(tmp_path / "missing.pem", pki.ca, KNOWN.__contains__)
    cert_only = tmp_path / "cert-only.pem"
    cert_only.write_bytes(x509.load_pem_x509_certificates(pki.dmz.read_bytes())[0].public_bytes(serialization.Encoding.PEM))
    with pytest.raises(TLSConfigError, match="private key"):
        public_server_context(cert_only)
    mismatched = tmp_path / "mismatch.pem"
    mismatched.write_bytes(cert_only.read_bytes() + ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(TLSConfigError, match="does not match"):
        backplane_client_options(mismatched, pki.ca, "dmz1")
    with pytest.raises(TLSConfigError, match="no PEM certificate"):
        backplane_server_context(pki.dmz, pki.root / "ca-key.pem", KNOWN.__contains__)


# --- over real TCP on 127.0.0.1 ---------------------------------------------------------------


class _Notify(Peer):
    def __init__(self, done: defer.Deferred[Peer]) -> None:
        super().__init__()
        self.done = done

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if not self.done.called:
            self.done.callback(self)

    def connectionLost(self, reason: Failure = error.ConnectionDone()) -> None:  # type: ignore[assignment]
        super().connectionLost(reason)
        if not self.done.called:
            self.done.callback(self)


class _NotifyConnector(_Notify):
    greeting = ConnectorPeer.greeting


class _NotifyDMZ(_Notify):
    greeting = DMZPeer.greeting


async def _tcp_round(pki: PKI, client_cert: Path) -> tuple[_Notify, _Notify]:
    server_done: defer.Deferred[Peer] = defer.Deferred()
    client_done: defer.Deferred[Peer] = defer.Deferred()
    server_ep = endpoints.SSL4ServerEndpoint(reactor, 0, dmz_context(pki), interface="127.0.0.1")
    port = await server_ep.listen(Factory.forProtocol(lambda: _NotifyDMZ(server_done)))
    try:
        client_ep = endpoints.SSL4ClientEndpoint(
            reactor, "127.0.0.1", port.getHost().port, backplane_client_options(client_cert, pki.ca, "dmz1")
        )
        client = await client_ep.connect(Factory.forProtocol(lambda: _NotifyConnector(client_done)))
        server = await defer.gatherResults([server_done, client_done]).addCallback(lambda r: r[0])
        client.transport.loseConnection()
        return server, client
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_tcp_good_connector(pki: PKI, tls_log: list[str]) -> None:
    server, client = await _tcp_round(pki, pki.connector)
    assert server.received == ConnectorPeer.greeting and client.received == DMZPeer.greeting
    assert server.identity == "internal1"
    assert refusals(tls_log) == []


@pytest_twisted.ensureDeferred
async def test_tcp_unknown_connector_refused(pki: PKI, tls_log: list[str]) -> None:
    server, client = await _tcp_round(pki, pki.unknown_connector)
    assert server.received == b"" and server.lost is not None
    assert [line.split(" (peer ")[0] for line in refusals(tls_log)] == [
        "refused connector certificate: unknown identity 'stranger'"
    ]
    assert "(peer 127.0.0.1:" in refusals(tls_log)[0]
    if client.lost is None:  # TLS 1.3: the client's handshake ends before the DMZ judges it
        await _wait_lost(client)
    assert describe_tls_failure(client.lost).startswith(UNKNOWN_IDENTITY_ON_CONNECTOR)


async def _wait_lost(peer: Peer) -> None:
    for _ in range(200):
        if peer.lost is not None:
            return
        await _sleep(0.01)
    raise AssertionError("connection was not lost")


def _sleep(seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


# --- identity ---------------------------------------------------------------------------------


def _bare_cert(subject: list[x509.NameAttribute], sans: list[x509.GeneralName]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256())


def test_identity_prefers_cn_then_first_dns_san() -> None:
    cn = [x509.NameAttribute(NameOID.COMMON_NAME, "internal1")]
    org = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme")]
    dns = [x509.DNSName("first.example"), x509.DNSName("second.example")]
    assert identity_from_certificate(_bare_cert(cn, dns)) == "internal1"
    assert identity_from_certificate(_bare_cert(org, dns)) == "first.example"
    assert identity_from_certificate(_bare_cert(org, [])) is None
    assert identity_from_certificate(crypto.X509.from_cryptography(_bare_cert(org, dns))) == "first.example"


def test_peer_identity_without_tls_is_none() -> None:
    assert peer_identity(object()) is None
    assert peer_identity(iosim.FakeTransport(Protocol(), True)) is None


# --- dev certificates -------------------------------------------------------------------------


def _bundle(path: Path) -> tuple[list[x509.Certificate], Any]:
    data = path.read_bytes()
    return x509.load_pem_x509_certificates(data), serialization.load_pem_private_key(data, None)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _fingerprint(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).fingerprint(hashes.SHA256())


def test_dev_certs_files_parse_and_match(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    written = generate_dev_certs(out, ["dmz1"], ["internal1"])
    assert written == [out / "ca.pem", out / "ca-key.pem", out / "dmz1.pem", out / "internal1.pem"]
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((out / "ca-key.pem").read_bytes(), None)
    assert ca_key.public_key() == ca.public_key()
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for name in ("dmz1", "internal1"):
        certs, key = _bundle(out / f"{name}.pem")
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
        assert key.public_key() == certs[0].public_key()
        assert certs[1] == ca
        certs[0].verify_directly_issued_by(ca)
        assert identity_from_certificate(certs[0]) == name
        assert _mode(out / f"{name}.pem") == 0o600
    assert _mode(out / "ca-key.pem") == 0o600


def test_dev_certs_sans_and_ekus(tmp_path: Path) -> None:
    generate_dev_certs(tmp_path, ["dmz1"], ["internal1"])
    import ipaddress

    server = _bundle(tmp_path / "dmz1.pem")[0][0]
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["dmz1", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert list(server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]

    client = _bundle(tmp_path / "internal1.pem")[0][0]
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "internal1"
    san = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["internal1"]
    assert san.get_values_for_type(x509.IPAddress) == []
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_dev_certs_alt_names_for_members_with_certificates_of_their_own(tmp_path: Path) -> None:
    """Kubernetes: shield-dmz-0 and -1 each have their own identity; connectors verify 'shield-dmz'."""
    import subprocess
    import sys

    from service_identity.cryptography import verify_certificate_hostname

    shield = str(Path(sys.executable).parent / "shield")
    done = subprocess.run(
        [shield, "certs-dev", "--out", str(tmp_path), "--dmz-name", "shield-dmz-0", "shield-dmz-1",
         "--dmz-alt-name", "shield-dmz", "--connector", "app-sidecar"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for member in ("shield-dmz-0", "shield-dmz-1"):
        cert = _bundle(tmp_path / f"{member}.pem")[0][0]
        assert identity_from_certificate(cert) == member
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [member, "shield-dmz", "localhost"]
        verify_certificate_hostname(cert, "shield-dmz")
    client = _bundle(tmp_path / "app-sidecar.pem")[0][0]
    san = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["app-sidecar"]
    bad = subprocess.run(
        [shield, "certs-dev", "--out", str(tmp_path), "--dmz-name", "d", "--dmz-alt-name", "bad name", "--connector", "c"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "bad name" in bad.stderr, bad


def test_dev_certs_rerun_reuses_ca_and_adds_certs(tmp_path: Path) -> None:
    generate_dev_certs(tmp_path, ["dmz1"], ["internal1"])
    before = _fingerprint(tmp_path / "ca.pem")
    old_connector = _bundle(tmp_path / "internal1.pem")[0][0]
    written = generate_dev_certs(tmp_path, ["dmz2"], ["internal2"], days=30)
    assert written == [tmp_path / "dmz2.pem", tmp_path / "internal2.pem"]
    assert _fingerprint(tmp_path / "ca.pem") == before
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    for path in (tmp_path / "dmz2.pem", tmp_path / "internal2.pem"):
        _bundle(path)[0][0].verify_directly_issued_by(ca)
    assert _bundle(tmp_path / "internal1.pem")[0][0] == old_connector  # untouched
    lifetime = _bundle(tmp_path / "internal2.pem")[0][0]
    span = lifetime.not_valid_after_utc - lifetime.not_valid_before_utc
    assert datetime.timedelta(days=30) <= span <= datetime.timedelta(days=30, minutes=10)


def test_dev_certs_work_for_a_real_handshake(tmp_path: Path) -> None:
    generate_dev_certs(tmp_path, ["dmz1"], ["internal1"])
    ctx = backplane_server_context(tmp_path / "dmz1.pem", tmp_path / "ca.pem", {"internal1"}.__contains__)
    out = handshake(ctx, backplane_client_options(tmp_path / "internal1.pem", tmp_path / "ca.pem", "dmz1"))
    assert out.connected and out.server.identity == "internal1"


@pytest.mark.parametrize(
    "name", ["", "a" * 65, "a b", "a/b", "../x", "é", "dmz1\n", ".", "..", "ca", "ca-key"]
)
def test_dev_certs_reject_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        generate_dev_certs(tmp_path, [name], [])
    with pytest.raises(ValueError):
        generate_dev_certs(tmp_path, [], [name])
    assert list(tmp_path.iterdir()) == []  # nothing written before validation


def test_dev_certs_accept_edge_names(tmp_path: Path) -> None:
    written = generate_dev_certs(tmp_path, ["a" * 63], ["A.b_c-9"])
    assert tmp_path / ("a" * 63 + ".pem") in written and tmp_path / "A.b_c-9.pem" in written


def test_dev_certs_refuse_half_a_ca(tmp_path: Path) -> None:
    generate_dev_certs(tmp_path, ["dmz1"], [])
    (tmp_path / "ca-key.pem").unlink()
    with pytest.raises(ValueError, match="ca-key.pem"):
        generate_dev_certs(tmp_path, ["dmz1"], [])


def test_issue_certificate_other_authority_is_not_trusted(tmp_path: Path) -> None:
    generate_dev_certs(tmp_path, [], [])
    ours = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    other: Authority = new_authority("elsewhere")
    cert, _ = issue_certificate(other, "internal1", "client")
    with pytest.raises((ValueError, InvalidSignature)):
        cert.verify_directly_issued_by(ours)


def test_certs_dev_repeated_flags_add_up(tmp_path: Path) -> None:
    """`--connector a --connector b` makes both (it once made only b, silently)."""
    from shield.cli import main

    assert main(["certs-dev", "--out", str(tmp_path), "--dmz-name", "dmz1", "--dmz-name", "dmz2",
                 "--connector", "a", "--connector", "b", "c"]) == 0  # fmt: skip
    made = sorted(path.name for path in tmp_path.glob("*.pem"))
    assert made == ["a.pem", "b.pem", "c.pem", "ca-key.pem", "ca.pem", "dmz1.pem", "dmz2.pem"]
