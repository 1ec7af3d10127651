"""Every private internal of Twisted, Autobahn and pyOpenSSL that shield relies on, in one place.

Each is used in one adapter module (named below) and pinned here: when an upgrade removes or
changes one, this file fails and names it, before a gateway misbehaves. setup.cfg bounds the
versions from above while they remain (docs/architecture.md, "Private internals").
"""

from __future__ import annotations

import inspect

import pytest


def source(obj: object) -> str:
    return inspect.getsource(obj)  # type: ignore[arg-type]


def test_twisted_tls_internals_used_by_shield_tls_transport() -> None:
    """shield/tls/transport.py (LinkTLSProtocol, handshake_pending, tls_layer)."""
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    for name in ("_flushSendBIO", "_flushReceiveBIO", "_bufferedWrite", "_tlsShutdownFinished", "_write"):
        assert callable(getattr(TLSMemoryBIOProtocol, name, None)), name
    init = source(TLSMemoryBIOProtocol)
    for attribute in ("self._tlsConnection", "self._handshakeDone"):
        assert attribute in init, attribute


def test_twisted_reactor_internals_used_by_shield_reactor() -> None:
    """shield/reactor.py: EagerWrites reads FileDescriptor's buffer state; forget_exit_signal
    clears what twistd re-raises after the reactor stops."""
    from twisted.internet import abstract, base

    fd = source(abstract.FileDescriptor)
    for attribute in ("_tempDataLen", "dataBuffer", "offset", "_writeDisconnecting", "_writeDisconnected"):
        assert attribute in fd, attribute
    assert "self._exitSignal" in source(base.ReactorBase)
    from twisted.application import app

    assert "reactor._exitSignal" in source(app), "twistd no longer re-raises the stopping signal that way"


def test_twisted_web_and_application_internals() -> None:
    """shield/ops/admin.py and shield/dmz/frontplane_ws.py override HTTPChannel's bad-request
    answer (one log line for it); shield/link/roles.py quiets ClientService's retry lines (the
    connector's pool and the cluster's member dials)."""
    from twisted.application.internet import ClientService
    from twisted.web.http import HTTPChannel

    assert callable(getattr(HTTPChannel, "_respondToBadRequestAndDisconnect", None))
    assert "_log" in source(ClientService) or hasattr(ClientService, "_log")


def test_autobahn_internals_used_by_the_ws_frontplane() -> None:
    """shield/dmz/frontplane_ws.py replaces the module's pformat (tests/dmz/test_autobahn_adapter.py
    pins how) and overrides sendHttpErrorResponse, onMessageEnd and sendData."""
    from autobahn.websocket import protocol

    assert callable(protocol.pformat)
    for name in ("sendHttpErrorResponse", "onMessageEnd", "sendData"):
        assert callable(getattr(protocol.WebSocketProtocol, name, None)) or callable(
            getattr(protocol.WebSocketServerProtocol, name, None)
        ), name


def test_autobahn_internals_used_by_the_wss_link() -> None:
    """shield/link/websocket.py replaces dataReceived and sendData (tests/link/test_autobahn_link_adapter.py
    pins how), reads why this end failed or dropped the WebSocket, and turns the upgrade timeout
    into a reason of its own."""
    from autobahn.twisted.websocket import WebSocketAdapterProtocol
    from autobahn.websocket.protocol import WebSocketProtocol

    assert "self._dataReceived(data)" in source(WebSocketAdapterProtocol.dataReceived)
    assert callable(getattr(WebSocketProtocol, "_dataReceived", None))
    assert "self.send_queue" in source(WebSocketProtocol.sendData)
    protocol = source(WebSocketProtocol)
    for attribute in (
        "self.failedByMe",
        "self.wasNotCleanReason",
        "self.localCloseReason",
        "self.openHandshakeTimeoutCall",
        "self.wasClean",
    ):
        assert attribute in protocol, attribute
    for name in ("dropConnection", "onOpenHandshakeTimeout", "onAutoPingTimeout"):
        assert callable(getattr(WebSocketProtocol, name, None)), name


def test_pyopenssl_binding_used_for_verify_error_texts() -> None:
    """shield/tls/contexts.py verify_error_text (with a fallback table if the binding goes)."""
    from OpenSSL._util import ffi, lib

    assert ffi.string(lib.X509_verify_cert_error_string(10)).decode() == "certificate has expired"


@pytest.mark.parametrize(
    ("distribution", "below"),
    [("twisted", 27), ("autobahn", 27), ("pyopenssl", 27)],
)
def test_the_installed_versions_are_within_the_bounds_setup_cfg_declares(distribution: str, below: int) -> None:
    from importlib.metadata import version

    assert int(version(distribution).split(".")[0]) < below
