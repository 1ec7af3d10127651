"""Development certificates: a throw-away CA, one server certificate per DMZ, one client per connector.

Only for running shield on one machine (``shield certs-dev``); production brings its own PKI. Everything
uses EC P-256 keys. The CA is reused when it is already there, so a rerun that adds a connector keeps
every certificate issued before it valid.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shield.names import NAME_RULE, is_name

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "Authority",
    "Role",
    "generate_dev_certs",
    "issue_certificate",
    "leaf_pem",
    "load_or_create_authority",
    "new_authority",
    "validate_name",
]

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
CA_COMMON_NAME = "shield development CA"
CA_DAYS = 3650
#: Certificates start a little in the past so that small clock skew between hosts does not matter.
BACKDATE = datetime.timedelta(minutes=5)

_RESERVED = {"ca", "ca-key"}

Role = Literal["server", "client"]


@dataclass(frozen=True)
class Authority:
    """A CA certificate and the key that signs with it."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def pem(self) -> bytes:
        """The CA certificate as PEM (what peers put in their ``ca`` file)."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def validate_name(name: str) -> str:
    """Return ``name`` if it is a gateway name (``shield.names``): it becomes a file name, a DNS SAN
    and the identity a connector announces."""
    if not is_name(name):
        raise ValueError(f"invalid certificate name {name!r}: use {NAME_RULE}")
    if name.lower() in _RESERVED:
        raise ValueError(f"invalid certificate name {name!r}: reserved for the CA files")
    return name


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def new_authority(
    common_name: str = CA_COMMON_NAME,
    *,
    days: int = CA_DAYS,
    not_before: datetime.datetime | None = None,
) -> Authority:
    """Create a self-signed CA that may only sign end-entity certificates (path length 0)."""
    key = _new_key()
    start = not_before if not_before is not None else _now() - BACKDATE
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def issue_certificate(
    authority: Authority,
    name: str,
    role: Role,
    *,
    days: int = 365,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
    alt_names: Sequence[str] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Issue a DMZ ("server") or connector ("client") certificate for ``name`` (and ``alt_names``,
    more DNS names: the identity stays ``name``, the subject's CN).

    ``not_before`` / ``not_after`` override the validity window (tests use them to make expired
    certificates); otherwise the certificate runs ``days`` from now, never past the CA's own expiry.
    """
    validate_name(name)
    for alt in alt_names:
        validate_name(alt)
    key = key if key is not None else _new_key()
    start = not_before if not_before is not None else _now() - BACKDATE
    end = not_after if not_after is not None else min(
        _now() + datetime.timedelta(days=days), authority.certificate.not_valid_after_utc
    )
    public = key.public_key()
    ca_public = authority.key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(authority.certificate.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(name, role, alt_names)), critical=False)
        .add_extension(x509.ExtendedKeyUsage([_eku(role)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
        )
    )
    return builder.sign(authority.key, hashes.SHA256()), key


def _subject_alt_names(name: str, role: Role, alt_names: Sequence[str] = ()) -> list[x509.GeneralName]:
    """DMZ certificates also name localhost and the loopback addresses, for one-machine setups."""
    if role == "client":
        return [x509.DNSName(value) for value in (name, *(alt for alt in alt_names if alt != name))]
    names: list[x509.GeneralName] = [x509.DNSName(name)]
    names += [x509.DNSName(alt) for alt in dict.fromkeys(alt_names) if alt not in (name, "localhost")]
    if name != "localhost":
        names.append(x509.DNSName("localhost"))
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    names.append(x509.IPAddress(ipaddress.ip_address("::1")))
    return names


def _eku(role: Role) -> x509.ObjectIdentifier:
    if role == "server":
        return ExtendedKeyUsageOID.SERVER_AUTH
    if role == "client":
        return ExtendedKeyUsageOID.CLIENT_AUTH
    raise ValueError(f"unknown certificate role {role!r}")


def leaf_pem(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, chain: Sequence[x509.Certificate] = ()
) -> bytes:
    """The one-file format gateways load: certificate, then its chain, then the unencrypted key."""
    parts = [cert.public_bytes(serialization.Encoding.PEM)]
    parts += [c.public_bytes(serialization.Encoding.PEM) for c in chain]
    parts.append(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return b"".join(parts)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with the final mode set before any byte lands, so a key is never world-readable."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _load_authority(cert_path: Path, key_path: Path) -> Authority:
    """Load an existing development CA, refusing one that cannot sign anything useful any more."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: the development CA key must be an EC key")
    if key.public_key() != cert.public_key():
        raise ValueError(f"{key_path} does not match {cert_path}")
    if cert.not_valid_after_utc <= _now():
        raise ValueError(f"{cert_path}: the development CA has expired; delete {cert_path.name} and {key_path.name}")
    return Authority(cert, key)


def load_or_create_authority(out_dir: Path) -> tuple[Authority, list[Path]]:
    """Reuse ``ca.pem`` + ``ca-key.pem`` in ``out_dir`` or create them; also return the files written."""
    cert_path, key_path = out_dir / CA_CERT_FILE, out_dir / CA_KEY_FILE
    have_cert, have_key = cert_path.exists(), key_path.exists()
    if have_cert and have_key:
        return _load_authority(cert_path, key_path), []
    if have_cert or have_key:
        missing = key_path if have_cert else cert_path
        raise ValueError(f"{missing} is missing: refusing to replace half of the development CA")
    authority = new_authority()
    _write_file(key_path, authority.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ), 0o600)
    _write_file(cert_path, authority.pem(), 0o644)
    return authority, [cert_path, key_path]


def generate_dev_certs(
    out_dir: Path, dmz_names: Sequence[str], connectors: Sequence[str], days: int = 365,
    dmz_alt_names: Sequence[str] = (),
) -> list[Path]:
    """Create (or reuse) the dev CA in ``out_dir`` and (re)issue one file per DMZ name and connector;
    every DMZ certificate also carries the DNS names ``dmz_alt_names``.

    Returns the paths written: the CA files only when they were created, then every leaf file.
    Names are validated before anything is written.
    """
    if isinstance(dmz_names, str) or isinstance(connectors, str):
        raise TypeError("dmz_names and connectors are sequences of names, not a single string")
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    for name in [*dmz_names, *connectors, *dmz_alt_names]:
        validate_name(name)
    both = set(dmz_names) & set(connectors)
    if both:
        raise ValueError(f"name(s) used both for a DMZ and a connector: {', '.join(sorted(both))}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    authority, written = load_or_create_authority(out_dir)
    plan: list[tuple[str, Role]] = [(n, "server") for n in dmz_names] + [(n, "client") for n in connectors]
    for name, role in dict.fromkeys(plan):
        alt = tuple(dmz_alt_names) if role == "server" else ()
        cert, key = issue_certificate(authority, name, role, days=days, alt_names=alt)
        path = out_dir / f"{name}.pem"
        _write_file(path, leaf_pem(cert, key, [authority.certificate]), 0o600)
        written.append(path)
    return written
