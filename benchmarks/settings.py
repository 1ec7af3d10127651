"""How big each scenario is: the full run, and QUICK for a fast smoke test of the whole chain."""

from __future__ import annotations

from dataclasses import asdict, dataclass

MIB = 1 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class Settings:
    reps: int  # repetitions of every scenario but the idle one
    idle_reps: int  # the idle scenario starts fresh processes for each repetition
    bulk_bytes: int  # one stream, each direction
    streams: int  # concurrent streams, half uploading and half downloading
    streams_bytes: int  # in all, over the concurrent streams
    latency_rate: float  # requests per second, on an absolute schedule
    latency_seconds: float  # counted, per repetition
    latency_warmup: float  # not counted
    latency_size: int
    conn_workers: int
    conn_seconds: float
    conn_size: int
    idle_clients: int
    idle_concurrency: int  # clients opening at once
    idle_settle: float  # seconds between the last client established and the reading
    bulk_timeout: float  # seconds for one transfer, at worst
    idle_timeout: float  # seconds to establish all idle clients, at worst
    watchdog: float  # seconds for the whole run, at worst: then everything is stopped

    def to_json(self) -> dict[str, object]:
        return asdict(self)


FULL = Settings(
    reps=5,
    idle_reps=3,
    bulk_bytes=GIB,
    streams=100,
    streams_bytes=GIB,
    latency_rate=1000.0,
    latency_seconds=10.0,
    latency_warmup=1.0,
    latency_size=1024,
    conn_workers=16,
    conn_seconds=5.0,
    conn_size=1024,
    idle_clients=10_000,
    idle_concurrency=32,
    idle_settle=2.0,
    bulk_timeout=240.0,
    idle_timeout=300.0,
    watchdog=40 * 60.0,
)

QUICK = Settings(
    reps=2,
    idle_reps=1,
    bulk_bytes=64 * MIB,
    streams=100,
    streams_bytes=64 * MIB,
    latency_rate=1000.0,
    latency_seconds=3.0,
    latency_warmup=0.5,
    latency_size=1024,
    conn_workers=16,
    conn_seconds=2.0,
    conn_size=1024,
    idle_clients=1_000,
    idle_concurrency=32,
    idle_settle=1.0,
    bulk_timeout=60.0,
    idle_timeout=120.0,
    watchdog=12 * 60.0,
)
