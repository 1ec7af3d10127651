"""From a gateway's backplane settings to the multiplexer's: the one place the two meet."""

from __future__ import annotations

from shield.config.model import DmzBackplane, InternalBackplane
from shield.mux import MuxConfig


def mux_config_for(backplane: DmzBackplane | InternalBackplane) -> MuxConfig:
    """The multiplexer settings a gateway's backplane section asks for."""
    return MuxConfig(
        stream_window=backplane.stream_window,
        max_stream_window=backplane.stream_window_max,
        keepalive_interval=backplane.keepalive.interval,
        keepalive_missed_limit=backplane.keepalive.misses,
        max_streams=backplane.max_streams,
    )
