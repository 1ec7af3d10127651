"""The multiplexer: yamux (hashicorp/yamux spec.md) as a sans-IO core and a Twisted adapter.

- ``frames``: the 12-byte header and constants.
- ``session``: ``Session``, the protocol state machine (bytes in, events out).
- ``events`` / ``errors`` / ``config``: what the core says, raises and is tuned by.
- ``protocol`` / ``stream``: the Twisted adapter; every stream is an ordinary transport.
"""

from shield.mux.config import MuxConfig
from shield.mux.frames import GoAwayCode
from shield.mux.session import Session, StreamState

__all__ = ["GoAwayCode", "MuxConfig", "Session", "StreamState"]
