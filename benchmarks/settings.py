"""How big each scenario is: the full run, QUICK for a fast smoke test of the whole chain, and
SELFCHECK, the tiny run ``make test`` uses to prove the harness itself works (tests/bench)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30

#: Request/response combinations: clients at once x request size in bytes. Fixed, so that the
#: metric keys (``rr_c16_s1024`` ...) mean the same thing in every run and every results file.
RR_CLIENTS = (1, 16)
RR_SIZES = (16, 1024, 4096)


@dataclass(frozen=True)
class Settings:
    reps: int  # repetitions of every scenario but the idle and stall ones
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
    rr_seconds: float  # counted, per combination and repetition
    rr_warmup: float  # not counted: round trips before it are neither timed nor counted
    idle_clients: int
    idle_concurrency: int  # clients opening at once
    idle_settle: float  # seconds between the last client established and the reading
    idle_sources: int  # loopback source addresses the idle clients are spread over (round robin)
    stall_reps: int  # the stall scenario starts fresh processes for each repetition too
    stall_clients: int
    stall_fast_bytes: int  # each stalled client reads this much fast before it stops reading
    stall_settle: float  # seconds between the last client stopping and the reading
    stall_rcvbuf: int  # SO_RCVBUF of a stalled client: small, so the kernel holds little
    bulk_timeout: float  # seconds for one transfer, at worst
    idle_timeout: float  # seconds to establish all idle clients, at worst
    pause: float  # seconds between two measurements, for the gateways to settle
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
    rr_seconds=5.0,
    rr_warmup=0.5,
    idle_clients=10_000,
    idle_concurrency=32,
    idle_settle=2.0,
    idle_sources=64,
    stall_reps=3,
    stall_clients=100,
    stall_fast_bytes=16 * MIB,
    stall_settle=2.0,
    stall_rcvbuf=64 * KIB,
    bulk_timeout=240.0,
    idle_timeout=300.0,
    pause=0.5,
    watchdog=75 * 60.0,
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
    rr_seconds=1.5,
    rr_warmup=0.3,
    idle_clients=1_000,
    idle_concurrency=32,
    idle_settle=1.0,
    idle_sources=64,
    stall_reps=1,
    stall_clients=20,
    stall_fast_bytes=16 * MIB,
    stall_settle=2.0,
    stall_rcvbuf=64 * KIB,
    bulk_timeout=60.0,
    idle_timeout=120.0,
    pause=0.5,
    watchdog=20 * 60.0,
)

#: Every scenario once, as small as still exercises each code path: more idle clients than one
#: source address may open at the DMZ (256 by default), so the spreading over source addresses
#: is proven too. It measures nothing worth reading; it proves the harness runs end to end.
SELFCHECK = Settings(
    reps=1,
    idle_reps=1,
    bulk_bytes=4 * MIB,
    streams=10,
    streams_bytes=4 * MIB,
    latency_rate=200.0,
    latency_seconds=0.5,
    latency_warmup=0.2,
    latency_size=1024,
    conn_workers=4,
    conn_seconds=0.5,
    conn_size=1024,
    rr_seconds=0.5,
    rr_warmup=0.1,
    idle_clients=300,
    idle_concurrency=32,
    idle_settle=0.2,
    idle_sources=64,
    stall_reps=1,
    stall_clients=4,
    stall_fast_bytes=2 * MIB,
    stall_settle=0.5,
    stall_rcvbuf=64 * KIB,
    bulk_timeout=60.0,
    idle_timeout=60.0,
    pause=0.1,
    watchdog=5 * 60.0,
)
