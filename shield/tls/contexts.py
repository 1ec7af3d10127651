"""TLS configuration for every shield socket, as objects Twisted endpoints and TLSMemoryBIOFactory accept.

- Backplane, DMZ side: ``backplane_server_context`` requires a connector certificate from the
  configured CA and refuses, during the handshake, any identity the DMZ does not know. The refusal is
  logged once, here, so the reason is on record even though the connector only sees a TLS alert.
- Backplane, connector side: ``backplane_client_options`` verifies the DMZ's chain and name.
- DMZ cluster members: ``cluster_server_context`` and ``cluster_client_options`` accept only a
  certificate from the backplane CA that is a gateway's (it may serve: serverAuth usage), used in
  both directions, and whose identity the cluster admits; a connector certificate (clientAuth
  only) can never be a member.
- Public listeners and tls:// backends: ``public_server_context`` / ``backend_client_options``.
- ``describe_tls_failure`` turns whatever a TLS connection died of into one line for a log.

Everything is TLS 1.2 or 1.3 with AEAD ciphers, no compression and no renegotiation.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Union

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import extract_patterns
from service_identity.hazmat import DNS_ID, IPAddress_ID, ServiceID, verify_service_identity
from twisted.internet import error as twisted_error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.ssl import (
    AcceptableCiphers,
    Certificate,
    KeyPair,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from shield.addresses import describe_address
from shield.proxy.connect import ProxyError
from shield.tls.identity import identity_from_certificate

__all__ = [
    "ServerTLSContext",
    "TLSConfigError",
    "TLSVerificationError",
    "backend_client_options",
    "backplane_client_options",
    "backplane_server_context",
    "cluster_client_options",
    "cluster_server_context",
    "describe_tls_failure",
    "public_server_context",
    "refusal_logged",
]

log = Logger(namespace="shield.tls")

#: TLS 1.2 suites: forward secret and AEAD only, AES-128-GCM first.
TLS12_CIPHERS = b"ECDHE+AES128GCM:ECDHE+AESGCM:ECDHE+CHACHA20"
#: TLS 1.3 suites (all AEAD) in the order a shield server prefers them: AES-128-GCM is the
#: protocol's mandatory suite and, with AES-NI, about 40 % cheaper per byte than AES-256-GCM,
#: which OpenSSL would otherwise pick (the backplane carries every byte of every tunnel).
TLS13_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
_NO_RENEGOTIATION: int = getattr(SSL, "OP_NO_RENEGOTIATION", 0)
_SERVER_OPTIONS = (
    SSL.OP_NO_COMPRESSION
    | SSL.OP_CIPHER_SERVER_PREFERENCE
    | SSL.OP_NO_TICKET  # no resumption: every connection is verified from scratch
    | _NO_RENEGOTIATION
)
#: Twisted's own client defaults still offer CBC, static RSA and DHE suites on TLS 1.2; ours do not.
_CLIENT_EXTRA_OPTIONS: dict[str, Any] = {
    "raiseMinimumTo": TLSVersion.TLSv1_2,
    "acceptableCiphers": AcceptableCiphers.fromOpenSSLCipherString(TLS12_CIPHERS.decode("ascii")),
}


class TLSConfigError(ValueError):
    """A certificate, key or CA file cannot be used; the message names the file and the problem."""


class TLSVerificationError(Exception):
    """The peer's certificate was rejected by us; the message says which certificate and why."""


# --- files -------------------------------------------------------------------------------------


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise TLSConfigError(f"{path}: cannot read: {e.strerror or e}") from e


def load_certificates(path: Path) -> list[x509.Certificate]:
    """All certificates in a PEM file (a CA bundle may hold several during a rotation)."""
    data = _read(path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TLSConfigError(f"{path}: no PEM certificate found ({e})") from e
    if not certs:
        raise TLSConfigError(f"{path}: no PEM certificate found")
    return certs


#: The private keys OpenSSL can use for a TLS certificate.
UsableKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey, dsa.DSAPrivateKey]


def load_bundle(path: Path) -> tuple[list[x509.Certificate], UsableKey]:
    """A gateway's own identity: certificate, its chain, and the unencrypted key that matches it."""
    certs = load_certificates(path)
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except TypeError as e:
        raise TLSConfigError(f"{path}: the private key is encrypted; shield needs it unencrypted") from e
    except ValueError as e:
        raise TLSConfigError(f"{path}: no usable PEM private key found ({e})") from e
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey, dsa.DSAPrivateKey)):
        raise TLSConfigError(f"{path}: a {type(key).__name__} cannot sign TLS handshakes (use an EC, RSA or Ed25519 key)")
    if key.public_key() != certs[0].public_key():
        raise TLSConfigError(f"{path}: the private key does not match the first certificate")
    return certs, key


def _chain_to_send(certs: list[x509.Certificate]) -> list[x509.Certificate]:
    """Intermediates after the leaf; self-signed roots are left out (the peer must already trust them)."""
    return [c for c in certs[1:] if c.issuer != c.subject]


# --- verification text ------------------------------------------------------------------------

_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
    27: "certificate not trusted",
    28: "certificate rejected",
}


def verify_error_text(errno: int) -> str:
    """OpenSSL's text for an X509_V_ERR code, e.g. 10 -> 'certificate has expired'."""
    try:  # pyOpenSSL's own binding knows every code; fall back to the common ones if it goes away.
        from OpenSSL._util import ffi, lib

        return ffi.string(lib.X509_verify_cert_error_string(errno)).decode("ascii", "replace")
    except Exception:
        return _VERIFY_ERRORS.get(errno, f"certificate verify error {errno}")


def _subject(cert: crypto.X509) -> str:
    return identity_from_certificate(cert) or cert.to_cryptography().subject.rfc4514_string()


def _peer_of(conn: SSL.Connection) -> str:
    """'host:port' of the TCP peer of a connection made by TLSMemoryBIOProtocol (its app data)."""
    try:
        address = conn.get_app_data().transport.getPeer()
    except Exception:
        return "unknown"
    return describe_address(address)


# --- server side ------------------------------------------------------------------------------

_refused: weakref.WeakSet[Any] = weakref.WeakSet()


def refusal_logged(transport: Any) -> bool:
    """True if this TLS transport's certificate refusal was already logged by the backplane context.

    Lets the DMZ protocol's connectionLost skip a second log line for the same refusal. A layer
    above TLS (a ``wss://`` link's WebSocket) is looked through to the TLS transport under it.
    """
    for _ in range(3):
        try:
            if transport in _refused:
                return True
        except TypeError:
            return False
        transport = getattr(transport, "transport", None)
        if transport is None:
            return False
    return False


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class ServerTLSContext:
    """One configured SSL.Context; every accepted connection is a new SSL.Connection on it.

    Pass it as ``sslContextFactory`` to SSL4ServerEndpoint / reactor.listenSSL, as ``contextFactory``
    to TLSMemoryBIOFactory(ctx, False, factory) or to transport.startTLS. Reloading certificates
    means building a new one; connections made on the old one keep it.
    """

    def __init__(self, context: SSL.Context, description: str) -> None:
        self.context = context
        self.description = description

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """IOpenSSLServerConnectionCreator: Twisted sets accept state and app data itself."""
        return SSL.Connection(self.context, None)

    def getContext(self) -> SSL.Context:
        """IOpenSSLContextFactory, for APIs that still want a context."""
        return self.context

    def __repr__(self) -> str:
        return f"<ServerTLSContext {self.description}>"


def _server_context(cert: Path) -> SSL.Context:
    """The settings both server kinds share, with the certificate chain and key from ``cert``."""
    certs, key = load_bundle(cert)
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(_SERVER_OPTIONS)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.set_cipher_list(TLS12_CIPHERS)
    ctx.set_tls13_ciphersuites(TLS13_SUITES)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_session_id(b"shield")  # required by OpenSSL whenever client certificates are requested
    ctx.use_certificate(certs[0])
    for extra in _chain_to_send(certs):
        ctx.add_extra_chain_cert(extra)
    ctx.use_privatekey(key)
    ctx.check_privatekey()
    return ctx


#: X509_V_ERR_INVALID_PURPOSE: the certificate's extended key usage does not fit the role.
_INVALID_PURPOSE = 26


def _can_serve(cert: crypto.X509) -> bool:
    """True if the certificate may be used by a server (no EKU at all, or serverAuth among them)."""
    try:
        usage = cert.to_cryptography().extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        return True
    return x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usage.value


def _identity_verifier(
    what: str, is_known_identity: Callable[[str], bool], *, must_serve: bool = False
) -> Callable[[SSL.Connection, crypto.X509, int, int, int], bool]:
    """A verify callback: OpenSSL's chain verdict first, then the identity at depth 0.

    ``what`` names the peer in the log ("connector", "cluster member"). Returning False stops
    OpenSSL at the first problem, so each handshake logs at most one line.
    """

    def refuse(conn: SSL.Connection, fmt: str, **fields: Any) -> bool:
        try:
            _refused.add(conn.get_app_data())
        except TypeError:
            pass
        log.warn(f"refused {what} certificate: " + fmt + " (peer {peer})", peer=_peer_of(conn), **fields)
        return False

    def verify(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        try:
            if must_serve and not ok and errno == _INVALID_PURPOSE and depth == 0:
                # A member dials with its server certificate, so OpenSSL's client-purpose check
                # would refuse it; the rule for members is "a gateway certificate" (below).
                ok = 1
            if not ok:
                return refuse(
                    conn,
                    "{error} (certificate {subject!r}, depth {depth})",
                    error=verify_error_text(errno),
                    subject=_subject(cert),
                    depth=depth,
                )
            if depth != 0:
                return True
            identity = identity_from_certificate(cert)
            if identity is None:
                return refuse(conn, "no identity (no subject CN and no DNS name)")
            if must_serve and not _can_serve(cert):
                return refuse(
                    conn, "{identity!r} is not a gateway certificate (no serverAuth usage)",
                    identity=identity,
                )  # fmt: skip
            if not is_known_identity(identity):
                return refuse(conn, "unknown identity {identity!r}", identity=identity)
            return True
        except BaseException:  # an exception inside an OpenSSL callback would be lost
            log.failure(f"refused {what} certificate: error while verifying it")
            return False

    return verify


def _mutual_server_context(cert: Path, ca: Path) -> SSL.Context:
    ca_certs = load_certificates(ca)
    ctx = _server_context(cert)
    try:
        ctx.load_verify_locations(str(ca))
    except SSL.Error as e:
        raise TLSConfigError(f"{ca}: cannot load CA certificates: {_openssl_reasons(e)}") from e
    for ca_cert in ca_certs:
        ctx.add_client_ca(ca_cert)  # tells the peer which CA we want
    return ctx


def backplane_server_context(
    cert: Path, ca: Path, is_known_identity: Callable[[str], bool]
) -> ServerTLSContext:
    """The DMZ backplane listener: mutual TLS against ``ca``, only identities the DMZ knows.

    ``is_known_identity`` is called during each handshake, so it may consult live configuration.
    """
    ctx = _mutual_server_context(cert, ca)
    ctx.set_verify(
        SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
        _identity_verifier("connector", is_known_identity),
    )
    return ServerTLSContext(ctx, f"backplane {cert}")


def cluster_server_context(cert: Path, ca: Path, is_member: Callable[[str], bool]) -> ServerTLSContext:
    """The cluster listener: the peer must be a gateway certificate from ``ca`` the cluster admits."""
    ctx = _mutual_server_context(cert, ca)
    ctx.set_verify(
        SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
        _identity_verifier("cluster member", is_member, must_serve=True),
    )
    return ServerTLSContext(ctx, f"cluster {cert}")


@implementer(IOpenSSLClientConnectionCreator)
class MemberConnectionCreator:
    """Dialling a cluster member: its name is learnt from its certificate, not known in advance.

    So the check is the chain (``ca``), a gateway certificate and an admitted identity, instead of
    a host name. The client presents this member's own certificate.
    """

    def __init__(self, context: SSL.Context, description: str) -> None:
        self.context = context
        self.description = description

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_connect_state()
        return connection

    def __repr__(self) -> str:
        return f"<MemberConnectionCreator {self.description}>"


def cluster_client_options(cert: Path, ca: Path, is_member: Callable[[str], bool]) -> MemberConnectionCreator:
    """The dialling side of a member-to-member link (same rules as ``cluster_server_context``)."""
    ctx = _mutual_server_context(cert, ca)  # same certificate, chain and trust; client role below
    ctx.set_verify(
        SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
        _identity_verifier("cluster member", is_member, must_serve=True),
    )
    return MemberConnectionCreator(ctx, f"cluster {cert}")


def public_server_context(cert: Path, client_ca: Path | None = None, verify: Any = None) -> ServerTLSContext:
    """Public wss:// and tls:// listeners: a server certificate; with ``client_ca``, clients are
    asked for a certificate from that CA, and ``verify`` (a pyOpenSSL verify callback) judges it.
    """
    if client_ca is None:
        return ServerTLSContext(_server_context(cert), f"public {cert}")
    ctx = _mutual_server_context(cert, client_ca)
    ctx.set_verify(SSL.VERIFY_PEER, verify)
    return ServerTLSContext(ctx, f"public {cert} (client certificates from {client_ca})")


# --- client side ------------------------------------------------------------------------------


def _service_id(server_name: str) -> ServiceID:
    """What service_identity must find in the server certificate: an IP SAN or a DNS SAN."""
    try:
        if isIPAddress(server_name) or isIPv6Address(server_name):
            return IPAddress_ID(server_name)
        return DNS_ID(server_name)
    except (ValueError, TypeError, CertificateError) as e:
        raise TLSConfigError(f"invalid server name {server_name!r}: {e}") from e


def _certificate_names(cert: crypto.X509) -> str:
    """The names a certificate offers, for a mismatch message."""
    try:
        san = cert.to_cryptography().extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subjectAltName"
    names = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
    names += [f"IP:{a}" for a in san.get_values_for_type(x509.IPAddress)]
    return ", ".join(names) or "no DNS or IP subjectAltName"


def _server_verifier(
    tls_protocol: Any, server_name: str, service_id: ServiceID
) -> Callable[[SSL.Connection, crypto.X509, int, int, int], bool]:
    """Chain verdict from OpenSSL, then the name with service_identity, failing with a readable reason.

    Twisted's own callback would say only "certificate verify failed"; this one hands the
    connection a TLSVerificationError naming the certificate and the problem.

    The handshake then fails the ordinary way, so OpenSSL sends the server its alert
    ("certificate expired", "unknown ca", ...) and a shield DMZ logs that its certificate was
    refused; ``failVerification`` would cut the TCP connection without any alert, leaving the
    server only "connection lost".
    """
    protocol_ref = weakref.ref(tls_protocol)

    def fail(message: str) -> bool:
        protocol = protocol_ref()
        if protocol is not None:
            failure = Failure(TLSVerificationError(message))
            if getattr(protocol, "_reason", False) is None:
                # TLSMemoryBIOProtocol reports a reason set before the handshake error instead
                # of OpenSSL's, and flushes the alert before it closes the connection.
                protocol._reason = failure
            else:  # another TLS transport: Twisted's public way, without the alert
                protocol.failVerification(failure)
        return False

    def verify(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        try:
            if not ok:
                return fail(
                    f"server certificate verify failed: {verify_error_text(errno)} "
                    f"(certificate {_subject(cert)!r}, depth {depth}, expected name {server_name!r})"
                )
            if depth != 0:
                return True
            try:
                verify_service_identity(extract_patterns(cert.to_cryptography()), [service_id], [])
            except (VerificationError, CertificateError):
                return fail(
                    f"server certificate does not match the expected name {server_name!r} "
                    f"(it names {_certificate_names(cert)})"
                )
            return True
        except BaseException:  # an exception inside an OpenSSL callback would be lost
            log.failure("error while verifying the server certificate for {name!r}", name=server_name)
            return fail(f"internal error while verifying the server certificate for {server_name!r}")

    return verify


@implementer(IOpenSSLClientConnectionCreator)
class ClientConnectionCreator:
    """optionsForClientTLS's connection creator, with shield's own verify callback on each connection.

    Everything else (trust root, client certificate, minimum version, SNI) is Twisted's, except that
    each connection also refuses a server's renegotiation request (Twisted's context allows it).
    """

    def __init__(self, inner: IOpenSSLClientConnectionCreator, server_name: str) -> None:
        self._inner = inner
        self.server_name = server_name
        self._service_id = _service_id(server_name)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = self._inner.clientConnectionForTLS(tlsProtocol)
        connection.set_options(_NO_RENEGOTIATION)
        connection.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
            _server_verifier(tlsProtocol, self.server_name, self._service_id),
        )
        return connection

    def __repr__(self) -> str:
        return f"<ClientConnectionCreator server_name={self.server_name!r}>"


def _trust_root(ca: Path) -> Any:
    return trustRootFromCertificates(
        [Certificate(crypto.X509.from_cryptography(c)) for c in load_certificates(ca)]
    )


def _client_options(
    server_name: str, trust_root: Any, cert: Path | None
) -> ClientConnectionCreator:
    extra: dict[str, Any] = dict(_CLIENT_EXTRA_OPTIONS)
    client_certificate = None
    if cert is not None:
        certs, key = load_bundle(cert)
        client_certificate = PrivateCertificate.fromCertificateAndKeyPair(
            Certificate(crypto.X509.from_cryptography(certs[0])),
            KeyPair(crypto.PKey.from_cryptography_key(key)),
        )
        chain = _chain_to_send(certs)
        if chain:
            extra["extraCertChain"] = [crypto.X509.from_cryptography(c) for c in chain]
    _service_id(server_name)  # fail on a bad name now, not at the first connection
    inner = optionsForClientTLS(
        server_name,
        trustRoot=trust_root,
        clientCertificate=client_certificate,
        extraCertificateOptions=extra,
    )
    return ClientConnectionCreator(inner, server_name)


def backplane_client_options(cert: Path, ca: Path, server_name: str) -> ClientConnectionCreator:
    """The connector's side of a link: present ``cert``, trust only ``ca``, expect ``server_name``.

    ``server_name`` may be a DNS name or an IP address; it must be a SAN of the DMZ certificate.
    """
    return _client_options(server_name, _trust_root(ca), cert)


def backend_client_options(server_name: str, ca: Path | None) -> ClientConnectionCreator:
    """tls:// backends: the system trust store unless a CA file is given."""
    trust_root = platformTrust() if ca is None else _trust_root(ca)
    return _client_options(server_name, trust_root, None)


# --- describing failures ----------------------------------------------------------------------

#: OpenSSL spells these "sslv3 alert ...", "tlsv1 alert ...", "tlsv13 alert ...", "tls alert ...".
_ALERT_RE = re.compile(r"^(?:[a-z0-9/]+ )?alert (?P<alert>.+)$")
_CERTIFICATE_ALERTS = {
    "bad certificate",
    "unsupported certificate",
    "certificate revoked",
    "certificate expired",
    "certificate unknown",
    "unknown ca",
    "access denied",
    "certificate required",
}
_HANDSHAKE_REASONS = {
    "certificate verify failed",
    "peer did not return a certificate",
    "unsupported protocol",
    "no shared cipher",
    "no protocols available",
    "wrong version number",
    "unknown protocol",
    "version too low",
}


def _openssl_reasons(exc: SSL.Error) -> list[str]:
    """The reason strings of an OpenSSL error queue, deduplicated, in order."""
    reasons: list[str] = []
    queue = exc.args[0] if exc.args else []
    if isinstance(queue, (list, tuple)):
        for entry in queue:
            text = str(entry[-1]) if isinstance(entry, (list, tuple)) and entry else str(entry)
            if text and text not in reasons:
                reasons.append(text)
    elif queue:
        reasons.append(str(queue))
    return reasons


def _describe_openssl_error(exc: SSL.Error) -> str:
    reasons = _openssl_reasons(exc)
    for reason in reasons:
        match = _ALERT_RE.match(reason)
        if match is None:
            continue
        alert = match.group("alert")
        if alert in _CERTIFICATE_ALERTS:
            return f"TLS handshake failed: peer refused our certificate: alert {alert}"
        if alert == "internal error":
            # OpenSSL sends this when a verify callback refuses a certificate it found valid,
            # which is how a shield DMZ refuses an unknown connector identity, a cluster member
            # a certificate that is no member's, and a connector a DMZ certificate without its name.
            return (
                "TLS handshake failed: peer sent alert internal error"
                " (a shield DMZ sends this when it refuses our certificate's identity, a connector"
                " when our certificate lacks the name it expects; its log says why)"
            )
        return f"TLS handshake failed: peer sent alert {alert}"
    if not reasons:
        return f"TLS error: {type(exc).__name__}"
    text = "; ".join(reasons)
    if any(r in _HANDSHAKE_REASONS for r in reasons):
        return f"TLS handshake failed: {text}"
    return f"TLS error: {text}"


def _describe_mismatch(exc: VerificationError) -> str:
    wanted = []
    for err in exc.errors:
        sid = getattr(err, "mismatched_id", None)
        name = getattr(sid, "hostname", None) or getattr(sid, "ip", None)
        wanted.append(repr(name if not isinstance(name, bytes) else name.decode("ascii", "replace")))
    names = ", ".join(wanted) or "?"
    return f"TLS handshake failed: server certificate does not match the expected name {names}"


def describe_tls_failure(reason: Failure) -> str:
    """One readable line for why a TLS connection failed or ended, for the connector's (or any) log."""
    exc = reason.value
    if isinstance(exc, ProxyError):  # already a whole reason: proxy, target, status
        return str(exc)
    if isinstance(exc, TLSVerificationError):
        return f"TLS handshake failed: {exc}"
    if isinstance(exc, VerificationError):
        return _describe_mismatch(exc)
    if isinstance(exc, SSL.Error):
        return _describe_openssl_error(exc)
    if isinstance(exc, TLSConfigError):
        return f"TLS configuration error: {exc}"
    if isinstance(exc, twisted_error.ConnectionDone):
        return "connection closed"
    if isinstance(exc, (twisted_error.ConnectionLost, twisted_error.ConnectionAborted)):
        return "connection lost (closed by the peer or the network, possibly during the TLS handshake)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class ReloadableServerTLS:
    """A listener's TLS settings that a reload can replace: new handshakes use ``current``,
    connections made before keep what they started with."""

    def __init__(self, current: Any) -> None:
        self.current = current

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return self.current.serverConnectionForTLS(tlsProtocol)

    def getContext(self) -> SSL.Context:
        return self.current.getContext()


@implementer(IOpenSSLClientConnectionCreator)
class ReloadableClientTLS:
    """Dialling TLS settings that a reload can replace; links already up keep theirs."""

    def __init__(self, current: Any) -> None:
        self.current = current

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return self.current.clientConnectionForTLS(tlsProtocol)
