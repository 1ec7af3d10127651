"""Tunables of one mux session, validated once so the core can trust them."""

from __future__ import annotations

from dataclasses import dataclass

from shield.mux.frames import INITIAL_WINDOW, MAX_WINDOW


@dataclass(frozen=True, slots=True)
class MuxConfig:
    """Limits and timings of a yamux session.

    ``stream_window`` is the receive window each stream grants its peer at first (256 KiB to
    16 MiB). ``max_stream_window`` (default: no growth) lets a stream whose reader keeps up grow
    its window, doubling each time it consumed half a window within ``window_growth_interval``
    seconds, so one bulk stream is not held to window/RTT; a slow or stalled reader never grows,
    so memory per stream stays bounded by the window it has. ``max_frame_length`` bounds a single
    Data frame (default: the largest window, the most a peer may ever legitimately send at once).
    """

    stream_window: int = INITIAL_WINDOW
    max_stream_window: int | None = None
    window_growth_interval: float = 0.05
    max_streams: int = 16384
    max_frame_length: int | None = None
    send_frame_size: int = 64 * 1024
    keepalive_interval: float = 5.0
    keepalive_missed_limit: int = 3
    stream_close_timeout: float = 30.0
    write_buffer_high_water: int = 128 * 1024  # with a 128 KiB read on top: 256 KiB held at most

    def __post_init__(self) -> None:
        if not INITIAL_WINDOW <= self.stream_window <= MAX_WINDOW:
            raise ValueError(
                f"stream_window must be between {INITIAL_WINDOW} and {MAX_WINDOW} bytes, "
                f"got {self.stream_window}"
            )
        if self.max_stream_window is not None and not self.stream_window <= self.max_stream_window <= MAX_WINDOW:
            raise ValueError(
                f"max_stream_window must be between stream_window ({self.stream_window}) and "
                f"{MAX_WINDOW} bytes, got {self.max_stream_window}"
            )
        if self.window_growth_interval < 0:
            raise ValueError("window_growth_interval must be >= 0")
        if self.max_streams < 1:
            raise ValueError(f"max_streams must be at least 1, got {self.max_streams}")
        if self.max_frame_length is not None and self.max_frame_length < self.window_limit:
            raise ValueError(
                f"max_frame_length ({self.max_frame_length}) must be at least the stream window "
                f"({self.window_limit}): a peer may send a whole window in one frame"
            )
        if self.send_frame_size < 1:
            raise ValueError(f"send_frame_size must be positive, got {self.send_frame_size}")
        if self.keepalive_interval < 0:
            raise ValueError("keepalive_interval must be >= 0 (0 disables keepalive)")
        if self.keepalive_missed_limit < 1:
            raise ValueError("keepalive_missed_limit must be at least 1")
        if self.stream_close_timeout <= 0:
            raise ValueError("stream_close_timeout must be positive")
        if self.write_buffer_high_water < 1:
            raise ValueError("write_buffer_high_water must be positive")

    @property
    def window_limit(self) -> int:
        """The largest window a stream can reach."""
        return self.max_stream_window if self.max_stream_window is not None else self.stream_window

    @property
    def frame_length_limit(self) -> int:
        return self.max_frame_length if self.max_frame_length is not None else self.window_limit
