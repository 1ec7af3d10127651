"""Public-client authentication per service: bearer tokens and client certificates.

Tokens are kept only as SHA-256 digests; a presented token is hashed and compared with every
accepted digest in constant time (``hmac.compare_digest``, all of them, no early exit), so
neither the file nor the timing tells an attacker anything. No token ever reaches a log line.
Client certificates are verified during the TLS handshake against the service's ``client-ca``;
the verdict is kept with the connection so a WebSocket client can be told why in an HTTP answer.
"""

from __future__ import annotations

import hashlib
import hmac
import weakref
from typing import Any, Mapping

from OpenSSL import SSL, crypto

from shield.refusal import Refusal  # 401: no credentials; 403: credentials refused
from shield.config.model import DmzService
from shield.tls.contexts import verify_error_text
from shield.tls.identity import identity_from_certificate
from shield.tls.transport import tls_layer




def presented_token(headers: Mapping[str, str], params: Mapping[str, list[str]]) -> str | None:
    """``Authorization: Bearer <token>``, else the ``access_token`` query parameter."""
    header = headers.get("authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return ""  # an Authorization header that is not a bearer token
    values = params.get("access_token")
    if values:
        return values[0]
    return None


def token_accepted(token: str, hashes: tuple[bytes, ...]) -> bool:
    digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
    accepted = False
    for known in hashes:
        accepted |= hmac.compare_digest(digest, known)
    return accepted


def check_token(service: DmzService, headers: Mapping[str, str], params: Mapping[str, list[str]]) -> Refusal | None:
    token = presented_token(headers, params)
    if token is None:
        return Refusal(401, "unauthorized", f"service {service.name!r} needs a token (Authorization: Bearer, or access_token)")
    if token == "" or not token_accepted(token, service.token_hashes):
        return Refusal(401, "bad_token", f"token refused for service {service.name!r}")
    return None


# -- client certificates ------------------------------------------------------------------------

#: TLS connection -> why its client certificate was refused (absent: accepted or none sent).
_refused_certificates: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def client_certificate_verifier() -> Any:
    """A verify callback that never fails the handshake but remembers a refused certificate.

    The service then answers 403 with the reason (WebSocket) or closes with one log line (raw
    TLS), instead of a bare TLS alert the client cannot explain.
    """

    def verify(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        if not ok:
            subject = identity_from_certificate(cert) or "?"
            try:
                _refused_certificates.setdefault(
                    conn.get_app_data(), f"{verify_error_text(errno)} (certificate {subject!r}, depth {depth})"
                )
            except TypeError:
                pass
        return True

    return verify


def check_client_certificate(service: DmzService, transport: Any) -> Refusal | None:
    """For ``auth = "mtls"``: a certificate from the service's client CA, verified.

    A client a balancer forwarded arrives on a cluster stream; the balancer verified it against
    the same kind of rule and says so (``client_identity`` on that stream).
    """
    forwarded = getattr(transport, "client_identity", None)
    if forwarded:
        return None
    tls = tls_layer(transport)
    cert = None
    if tls is not None:
        try:
            cert = tls.getPeerCertificate()
        except Exception:
            cert = None
    if cert is None:
        return Refusal(401, "no_client_certificate", f"service {service.name!r} needs a client certificate")
    why = _refused_certificates.get(tls)
    if why is not None:
        return Refusal(403, "bad_client_certificate", f"client certificate refused: {why}")
    return None


def client_identity(transport: Any) -> str | None:
    forwarded = getattr(transport, "client_identity", None)
    if forwarded:
        return str(forwarded)
    tls = tls_layer(transport)
    if tls is None or tls in _refused_certificates:
        return None
    try:
        cert = tls.getPeerCertificate()
    except Exception:
        return None
    return identity_from_certificate(cert) if cert is not None else None


