"""The connector identity a certificate carries: its subject CN, or else its first DNS SAN.

The DMZ takes a connector's identity from the certificate its CA signed, never from anything the
connector says later, so an announcement cannot claim to be another connector.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import crypto

__all__ = ["certificate_identity", "identity_from_certificate", "negotiated_suite", "peer_identity"]


def identity_from_certificate(cert: x509.Certificate | crypto.X509) -> str | None:
    """Return the first non-empty subject CN, else the first DNS SAN, else None."""
    if isinstance(cert, crypto.X509):
        cert = cert.to_cryptography()
    return _common_name(cert) or _first_dns_name(cert)


def certificate_identity(path: Path) -> str | None:
    """The identity of the first certificate in a PEM file (the leaf of a chain)."""
    certificates = x509.load_pem_x509_certificates(path.read_bytes())
    return identity_from_certificate(certificates[0]) if certificates else None


def _common_name(cert: x509.Certificate) -> str | None:
    for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attribute.value
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if value:
            return value
    return None


def _first_dns_name(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    names = san.get_values_for_type(x509.DNSName)
    return names[0] if names else None


def peer_identity(transport: Any) -> str | None:
    """The identity in the peer certificate of a TLS transport once the handshake is done.

    None before the handshake, for a transport without TLS, or for a certificate that names nobody;
    callers treat None as "refuse".
    """
    get_peer_certificate = getattr(transport, "getPeerCertificate", None)
    if get_peer_certificate is None:
        return None
    try:
        cert = get_peer_certificate()
    except Exception:  # a transport whose TLS state is already gone
        return None
    if cert is None:
        return None
    return identity_from_certificate(cert)


def negotiated_suite(transport: Any) -> str:
    """The TLS version and cipher suite a finished handshake agreed on, e.g. ``TLSv1.3 TLS_AES_256_GCM_SHA384``.

    Logged when a link comes up, so an operator (and the benchmark report) can see what protects
    the backplane and what it costs. ``?`` when the transport is not TLS.
    """
    get_handle = getattr(transport, "getHandle", None)
    connection = get_handle() if get_handle is not None else None
    version = getattr(connection, "get_protocol_version_name", None)
    cipher = getattr(connection, "get_cipher_name", None)
    if version is None or cipher is None:
        return "?"
    return f"{version()} {cipher() or '?'}"
