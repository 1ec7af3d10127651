"""What shield's WebSocket frontplane relies on in Autobahn, pinned for the installed version.

shield/dmz/frontplane_ws.py replaces ``pformat`` in Autobahn's protocol module with a lazy one
(Autobahn formats all its options into a debug line per connection) and overrides
``onMessageEnd`` and ``sendData`` for the open state. If Autobahn changes what these rely on,
these tests say so before users see it.
"""

from __future__ import annotations

import inspect
from pprint import pformat

from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.protocol import WebSocketProtocol

from shield.dmz import frontplane_ws
from shield.dmz.frontplane_ws import PublicWebSocketProtocol


def test_autobahn_formats_its_options_with_the_module_pformat_we_replace() -> None:
    source = inspect.getsource(WebSocketProtocol._connectionMade)
    assert "pformat(configAttrLog)" in source
    assert autobahn_protocol.pformat is frontplane_ws._LazyFormat


def test_the_lazy_format_renders_what_pformat_would() -> None:
    value = [("autoPingInterval", 30, "WebSocketServerFactory"), ("maxMessagePayloadSize", 131072, "x")]
    assert str(frontplane_ws._LazyFormat(value)) == pformat(value)
    assert "{attrs}".format(attrs=frontplane_ws._LazyFormat(value)) == pformat(value)


def test_the_message_and_send_paths_shield_overrides_are_still_autobahn_s() -> None:
    # onMessageEnd: Autobahn joins message_data and hands it to _onMessage -> onMessage.
    end = inspect.getsource(WebSocketProtocol.onMessageEnd)
    assert 'b"".join(self.message_data)' in end and "self._onMessage(" in end
    # sendData: a plain write when nothing is queued, sync not asked, no chopping.
    send = inspect.getsource(WebSocketProtocol.sendData)
    assert "self.send_queue" in send and "self.transport.write(data)" in send
    assert PublicWebSocketProtocol.onMessageEnd is not WebSocketProtocol.onMessageEnd
    assert PublicWebSocketProtocol.sendData is not WebSocketProtocol.sendData
