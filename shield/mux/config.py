"""Tunables of one mux session, validated once so the core can trust them."""

from __future__ import annotations

from dataclasses import dataclass

from shield.mux.frames import INITIAL_WINDOW, MAX_WINDOW


@dataclass(frozen=True, slots=True)
class MuxConfig:
    """Limits and timings of a yamux session.

    ``stream_window`` is the receive window each stream grants its peer (256 KiB to 16 MiB); a
    larger window lets one stream carry more over a long fat link at the cost of memory per
    stream. ``max_frame_length`` bounds a single Data frame (default: the stream window, the most
    a peer may ever legitimately send at once).
    """

    stream_window: int = INITIAL_WINDOW
    max_streams: int = 4096
    max_frame_length: int | None = None
    send_frame_size: int = 64 * 1024
    keepalive_interval: float = 5.0
    keepalive_missed_limit: int = 3
    stream_close_timeout: float = 30.0
    write_buffer_high_water: int = 256 * 1024

    def __post_init__(self) -> None:
        if not INITIAL_WINDOW <= self.stream_window <= MAX_WINDOW:
            raise ValueError(
                f"stream_window must be between {INITIAL_WINDOW} and {MAX_WINDOW} bytes, "
                f"got {self.stream_window}"
            )
        if self.max_streams < 1:
            raise ValueError(f"max_streams must be at least 1, got {self.max_streams}")
        if self.max_frame_length is not None and self.max_frame_length < self.stream_window:
            raise ValueError(
                f"max_frame_length ({self.max_frame_length}) must be at least the stream window "
                f"({self.stream_window}): a peer may send a whole window in one frame"
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
    def frame_length_limit(self) -> int:
        return self.max_frame_length if self.max_frame_length is not None else self.stream_window
