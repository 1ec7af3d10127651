"""``python -m benchmarks [--quick | --selfcheck]``: every scenario against every target, in one invocation.

The targets run side by side for the whole run (shield's DMZ and connector, sshd with ``ssh -R``
twice: default cipher and AES-GCM, and the backend alone), all in front of one backend process.
Every repetition of a scenario visits every target, in an order that rotates from one repetition
to the next, so that a machine that gets busier or quieter during the run moves all targets alike
and the ratios hold. The idle-clients and stalled-readers scenarios come last and start fresh
processes for each of their repetitions (a gateway that has already carried gigabytes has memory
to reuse, which would hide what an idle or a stalled client costs).

Everything is bounded: each measurement has a timeout, the whole run has a watchdog that stops
every process it started, and every process is stopped at the end whatever happened. The exit
status is 1 when a measurement failed, fell short of its count or is missing: ``--selfcheck``
(a tiny run of every scenario, tests/bench) relies on it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable

from benchmarks import clients, rawclients, report
from benchmarks.procstats import Snapshot, cpu_seconds, snapshot, tree
from benchmarks.settings import FULL, MIB, QUICK, RR_CLIENTS, RR_SIZES, SELFCHECK, Settings
from benchmarks.targets import (
    ENV_PREFIX, LABELS, REPO, TARGETS, Deployment, Gateway, Process, Target, Topology, measured_in, start, start_backend,
    unavailable,
)  # fmt: skip

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = ["bulk", "latency", "conn_rate", "streams", "rr", "idle", "stall"]
#: Scenarios that start fresh processes for each repetition, after the others.
FRESH = ("idle", "stall")
#: What a stalled reader asks the backend for: more than it will ever be sent.
ENDLESS = 1 << 40
#: A fresh client's 1 KiB echo while readers are stalled: longer than this and it counts as stuck.
FRESH_TIMEOUT = 10.0


def rr_key(clients_: int, size: int) -> str:
    """``rr_c16_s1024``: the metric (round trips/s) and raw-data key of one rr combination."""
    return f"rr_c{clients_}_s{size}"


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def buffered_bytes(admin: str) -> float:
    """``shield_buffered_bytes`` of a shield gateway: tunnel data held in its stream buffers now."""
    import re
    import urllib.request

    with urllib.request.urlopen(f"{admin}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(r"^shield_buffered_bytes (\S+)$", text, re.M)
    if match is None:
        raise RuntimeError(f"{admin}/metrics has no shield_buffered_bytes")
    return float(match.group(1))


class Bench:
    def __init__(
        self, settings: Settings, quick: bool, name: str, work: Path, targets: list[str], scenarios: list[str], selfcheck: bool = False
    ) -> None:
        self.settings = settings
        self.quick = quick
        self.selfcheck = selfcheck
        self.name = name
        self.work = work
        self.target_names = targets
        self.scenarios = scenarios
        self.started = time.monotonic()
        self.live: list[Deployment] = []  # every deployment running, for the final clean-up
        self.shared: dict[str, tuple[Deployment, list[Target]]] = {}
        self.runs: dict[str, dict[str, list[float | None]]] = {}
        self.raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.idle_established: dict[str, list[int]] = {}
        self.env: dict[str, object] = {}
        self.lock = threading.Lock()
        self.backend: Process | None = None
        self.backend_port = 0
        self.backend_topology: Topology | None = None

    # -- output --------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        elapsed = int(time.monotonic() - self.started)
        print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {text}", flush=True)

    def record(self, metric: str, target: str, value: float | None) -> None:
        self.runs.setdefault(metric, {}).setdefault(target, []).append(value)

    def keep(self, scenario: str, target: str, rep: int, data: dict[str, Any]) -> None:
        self.raw.setdefault(scenario, {}).setdefault(target, []).append({"rep": rep + 1, **data})

    # -- processes -----------------------------------------------------------------------------

    def start_backend(self) -> None:
        """The one backend every target leads to (restarted on the same port if it dies)."""
        if self.backend is None:
            self.backend_topology = Topology(self.work / "backend")
            self.backend_topology.folder.mkdir(parents=True, exist_ok=True)
        else:
            self.backend.kill()
            self.backend_topology.processes.remove(self.backend)
        self.backend, self.backend_port = start_backend(self.backend_topology)

    def deploy(self, kind: str, folder: Path) -> tuple[Deployment, list[Target]]:
        if self.backend is None or not self.backend.alive():
            if self.backend is not None:
                self.say(f"the backend died; restarting it (log in {self.backend.log_path})")
            self.start_backend()
        deployment, targets = start(kind, folder, self.backend_port)
        with self.lock:
            self.live.append(deployment)
        # OpenSSH's version and negotiated algorithms per ssh target, shield's backplane TLS suite.
        for key, value in deployment.info.items():
            self.env[key if key == "openssh_version" else f"{ENV_PREFIX[kind]}{key}"] = value
        return deployment, targets

    def retire(self, deployment: Deployment) -> None:
        with self.lock:
            if deployment in self.live:
                self.live.remove(deployment)
        deployment.close()

    def close_all(self) -> None:
        with self.lock:
            live, self.live = list(self.live), []
        for deployment in live:
            try:
                deployment.close()
            except Exception as problem:  # noqa: BLE001
                print(f"closing {deployment.kind}: {problem!r}", flush=True)
        if self.backend_topology is not None:
            self.backend_topology.close()

    def kinds(self) -> list[str]:
        return list(dict.fromkeys(TARGETS[name] for name in self.target_names))

    def start_shared(self) -> None:
        for kind in self.kinds():
            self.say(f"starting {kind}")
            self.shared[kind] = self.deploy(kind, self.work / kind)

    def target(self, name: str) -> Target:
        """The shared target ``name``, restarting its deployment first if a process of it died."""
        kind = TARGETS[name]
        deployment, targets = self.shared[kind]
        if self.backend is not None and not self.backend.alive():
            self.say(f"the backend died; restarting it on the same port (log in {self.backend.log_path})")
            self.start_backend()
        if not deployment.alive():
            dead = [process.name for process in deployment.topology.processes if not process.alive()]
            self.say(f"{kind}: {', '.join(dead)} died; restarting it (logs in {deployment.topology.folder})")
            self.retire(deployment)
            self.shared[kind] = self.deploy(kind, self.work / f"{kind}-restart-{int(time.monotonic())}")
            deployment, targets = self.shared[kind]
        return next(target for target in targets if target.name == name)

    def order(self, rep: int, scenario: str) -> list[str]:
        """The targets ``scenario`` measures, in an order that rotates with ``rep``."""
        names = self.target_names
        shift = rep % len(names)
        return [name for name in names[shift:] + names[:shift] if measured_in(name, scenario)]

    # -- measuring -----------------------------------------------------------------------------

    async def attempt(self, what: str, coroutine: Callable[[], Awaitable[dict[str, Any]]], timeout: float) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(coroutine(), timeout)
        except asyncio.TimeoutError:
            self.say(f"  {what}: no result within {timeout:.0f} s")
            return {"error": f"timeout after {timeout:.0f} s"}
        except Exception as problem:  # noqa: BLE001
            self.say(f"  {what}: failed: {problem!r}")
            return {"error": repr(problem)}

    @staticmethod
    def opener(target: Target) -> clients.Opener:
        return clients.opener(target.client, target.url or target.port)

    async def each(
        self,
        scenario: str,
        reps: int,
        run: Callable[[Target], Awaitable[dict[str, Any]]],
        timeout: float,
        metrics: dict[str, str],
        show: Callable[[dict[str, Any]], str],
    ) -> None:
        for rep in range(reps):
            for name in self.order(rep, scenario):
                target = self.target(name)
                before = self.cpu(target.deployment)
                data = await self.attempt(f"{scenario} {name}", lambda: run(target), timeout)
                after = self.cpu(target.deployment)
                data["cpu_s"] = {process: round(after[process] - before[process], 3) for process in after}
                self.keep(scenario, name, rep, data)
                for metric, field in metrics.items():
                    self.record(metric, name, data.get(field) if "error" not in data else None)
                if "error" not in data:
                    self.say(f"{scenario} rep {rep + 1}/{reps} {LABELS[name]:<16} {show(data)}")
                await asyncio.sleep(self.settings.pause)  # let the gateways settle between measurements

    async def bulk(self) -> None:
        s = self.settings
        for direction, metric in (("up", "bulk_up"), ("down", "bulk_down")):
            await self.each(
                f"bulk_{direction}",
                s.reps,
                lambda target: clients.bulk(self.opener(target), direction, s.bulk_bytes),
                s.bulk_timeout,
                {metric: "mb_per_s"},
                lambda data: f"{data['mb_per_s']:8.1f} MB/s ({data['bytes'] / MIB:.0f} MiB in {data['seconds']:.2f} s)",
            )

    async def latency(self) -> None:
        s = self.settings
        await self.each(
            "latency",
            s.reps,
            lambda target: clients.latency(self.opener(target), s.latency_rate, s.latency_seconds, s.latency_warmup, s.latency_size),
            s.latency_seconds + s.latency_warmup + 60,
            {"latency_p50": "p50_ms", "latency_p99": "p99_ms", "latency_p999": "p999_ms"},
            lambda d: f"p50 {d['p50_ms']:.3f} ms  p99 {d['p99_ms']:.3f} ms  p99.9 {d['p999_ms']:.3f} ms  ({d['samples']} samples, {d['achieved_rate']:.0f}/s)",
        )

    async def conn_rate(self) -> None:
        s = self.settings
        await self.each(
            "conn_rate",
            s.reps,
            lambda target: clients.connection_rate(self.opener(target), s.conn_workers, s.conn_seconds, s.conn_size),
            s.conn_seconds + 60,
            {"conn_rate": "per_s"},
            lambda d: f"{d['per_s']:8.1f} connections/s ({d['connections']} in {d['seconds']:.1f} s, {d['errors']} errors)",
        )

    async def streams(self) -> None:
        s = self.settings
        await self.each(
            "streams",
            s.reps,
            lambda target: clients.streams(self.opener(target), s.streams, s.streams_bytes),
            s.bulk_timeout,
            {"streams": "mb_per_s"},
            lambda d: f"{d['mb_per_s']:8.1f} MB/s aggregate ({d['streams']} streams, {d['bytes'] / MIB:.0f} MiB in {d['seconds']:.2f} s)",
        )

    async def rr(self) -> None:
        """Closed-loop request/response, the shape of a database or RPC client: see rawclients.round_trips."""
        for count in RR_CLIENTS:
            for size in RR_SIZES:
                await self.rr_combination(count, size)

    async def rr_combination(self, count: int, size: int) -> None:
        s = self.settings
        key = rr_key(count, size)
        await self.each(
            key,
            s.reps,
            lambda target: rawclients.round_trips(self.channels(target), count, size, s.rr_seconds, s.rr_warmup),
            s.rr_warmup + s.rr_seconds + 60,
            {key: "per_s", f"{key}_p50": "p50_ms", f"{key}_p99": "p99_ms"},
            lambda d: f"{d['per_s']:8.0f} round trips/s  p50 {d['p50_ms']:.3f} ms  p99 {d['p99_ms']:.3f} ms  ({d['clients']} x {d['size']} B)",
        )

    @staticmethod
    def channels(target: Target, dial: clients.Dial = clients.PLAIN) -> rawclients.ChannelOpener:
        return rawclients.channel_opener(target.client, target.url or target.port, dial)

    # -- idle clients --------------------------------------------------------------------------

    async def idle(self) -> None:
        s = self.settings
        for rep in range(s.idle_reps):
            for name in self.order(rep, "idle"):
                data = await self.idle_once(name, rep)
                self.keep("idle", name, rep, data)
                failed = "error" in data
                complete = not failed and data["established"] == data["clients"]
                self.record("idle_established", name, None if failed else data["established"])
                self.record("idle_establish", name, data["establish_s"] if complete else None)
                self.idle_established.setdefault(name, []).append(data.get("established", 0))
                for role in ("public", "inner"):
                    gateway = data.get("gateways", {}).get(role)
                    if gateway is None:
                        continue
                    # Per established client, even when some were refused (the table says how many).
                    self.record(f"idle_rss_{role}", name, None if failed else gateway["rss_kib_per_client"])
                    self.record(f"idle_fds_{role}", name, None if failed else gateway["fds_per_client"])
                    if role == "public":
                        self.record("idle_backplane_fds_public", name, None if failed else gateway["backplane_fds_per_client"])

    async def idle_once(self, name: str, rep: int) -> dict[str, Any]:
        s = self.settings
        kind = TARGETS[name]
        deployment, targets = self.deploy(kind, self.work / f"idle-{name}-{rep + 1}")
        target = next(target for target in targets if target.name == name)
        held = clients.IdleClients()
        sources = clients.source_addresses(s.idle_sources)
        try:
            # Spread over many source addresses, for every target alike: the DMZ admits at most
            # 256 clients per source address by default, as a gateway facing the Internet should.
            open_conn = clients.opener(target.client, target.url or target.port, clients.Dial(sources))
            # Warm-up: the first clients load code and fill caches; they are not what is measured.
            warm = clients.IdleClients()
            await asyncio.wait_for(clients.open_idle(open_conn, 50, s.idle_concurrency, warm), 60)
            warm.abort_all()
            await asyncio.sleep(1.0)
            gateways = {gateway.role: gateway for gateway in deployment.gateways}
            before = {role: self.read(gateway) for role, gateway in gateways.items()}
            self.say(f"idle rep {rep + 1}/{s.idle_reps} {LABELS[name]:<16} opening {s.idle_clients:,} clients from {len(sources)} source addresses")

            def progress(count: int) -> None:
                if count % max(1000, s.idle_clients // 5) == 0:
                    self.say(f"  {count:,} established")

            start = time.perf_counter()
            try:
                await asyncio.wait_for(clients.open_idle(open_conn, s.idle_clients, s.idle_concurrency, held, progress), s.idle_timeout)
            except asyncio.TimeoutError:
                held.errors.append(f"timeout after {s.idle_timeout:.0f} s")
            establish = time.perf_counter() - start
            await asyncio.sleep(s.idle_settle)
            after = {role: self.read(gateway) for role, gateway in gateways.items()}
            result: dict[str, Any] = {
                "clients": s.idle_clients,
                "source_addresses": len(sources),
                "established": held.established,
                "errors": len(held.errors),
                "first_errors": [error[:300] for error in held.errors[:5]],
                "establish_s": establish,
                "gateways": {},
            }
            count = max(held.established, 1)
            for role, gateway in gateways.items():
                then, now = before[role], after[role]
                result["gateways"][role] = {
                    "process": gateway.name,
                    "before": then.to_json(),
                    "after": now.to_json(),
                    "rss_kib_per_client": (now.rss_kib - then.rss_kib) / count,
                    "fds_per_client": (now.fds - then.fds) / count,
                    "backplane_fds_per_client": (now.sides.get("backplane", 0) - then.sides.get("backplane", 0)) / count,
                    "frontplane_fds_per_client": (now.sides.get("frontplane", 0) - then.sides.get("frontplane", 0)) / count,
                }
            if held.established == 0:
                result["error"] = f"no client established; first errors: {held.errors[:3]}"
            elif held.established < s.idle_clients:
                result["incomplete"] = f"{held.established:,} of {s.idle_clients:,} established; first error: {held.errors[0][:300] if held.errors else '?'}"
                self.say(f"  {result['incomplete']}")
            line = f"idle rep {rep + 1}/{s.idle_reps} {LABELS[name]:<16} {held.established:,} in {establish:.2f} s"
            for role, gateway in result["gateways"].items():
                line += (
                    f"; {gateway['process']}: {gateway['rss_kib_per_client']:.1f} KiB, {gateway['fds_per_client']:.2f} fds"
                    f" ({gateway['backplane_fds_per_client']:.3f} backplane) per client"
                )
            self.say(line)
            return result
        except Exception as problem:  # noqa: BLE001
            self.say(f"  idle {name}: failed: {problem!r}")
            return {"error": repr(problem), "established": held.established}
        finally:
            held.abort_all()
            self.retire(deployment)

    # -- stalled readers -----------------------------------------------------------------------

    async def stall(self) -> None:
        s = self.settings
        for rep in range(s.stall_reps):
            for name in self.order(rep, "stall"):
                data = await self.stall_once(name, rep)
                self.keep("stall", name, rep, data)
                failed = "error" in data
                for role in ("public", "inner"):
                    gateway = data.get("gateways", {}).get(role)
                    if gateway is not None:
                        self.record(f"stall_rss_{role}", name, None if failed else gateway["rss_kib_per_client"])
                self.record("stall_fresh_ms", name, None if failed else data.get("fresh_ms"))
                for role in ("public", "inner"):
                    held = data.get("gateways", {}).get(role, {}).get("held_kib_per_client")
                    if held is not None or failed:
                        self.record(f"stall_held_{role}", name, None if failed else held)

    async def stall_once(self, name: str, rep: int) -> dict[str, Any]:
        """Clients that read fast, then stop reading while the backend keeps sending: what the gateways hold for them.

        A stream whose reader was fast has had its receive windows grown; when that reader stops,
        a gateway may be left holding up to a window's worth (or, unbounded, everything the
        backend sends). The readers' own receive buffers are small (SO_RCVBUF before connect),
        so what piles up is at the gateways, not in the readers' kernel. Meanwhile a fresh client
        must still get through.
        """
        s = self.settings
        kind = TARGETS[name]
        deployment, targets = self.deploy(kind, self.work / f"stall-{name}-{rep + 1}")
        target = next(target for target in targets if target.name == name)
        readers: list[rawclients.StalledReader] = []
        try:
            # Warm-up: downloads that complete load the code paths and fill caches; none is left stalled.
            open_conn = self.opener(target)
            await asyncio.wait_for(asyncio.gather(*(clients.bulk(open_conn, "down", MIB) for _ in range(2))), 60)
            await asyncio.sleep(1.0)
            gateways = {gateway.role: gateway for gateway in deployment.gateways}
            before = {role: self.read(gateway) for role, gateway in gateways.items()}
            self.say(f"stall rep {rep + 1}/{s.stall_reps} {LABELS[name]:<16} {s.stall_clients} clients read {s.stall_fast_bytes / MIB:.0f} MiB each, then stop")
            start = time.perf_counter()
            stalling = rawclients.stall(self.channels(target, clients.Dial(rcvbuf=s.stall_rcvbuf)), s.stall_clients, s.stall_fast_bytes, ENDLESS, readers)
            await asyncio.wait_for(stalling, s.bulk_timeout)
            fast = time.perf_counter() - start
            await asyncio.sleep(s.stall_settle)
            after = {role: self.read(gateway) for role, gateway in gateways.items()}
            result: dict[str, Any] = {
                "clients": s.stall_clients,
                "stalled": sum(1 for reader in readers if reader.stalled.done()),
                "fast_bytes": s.stall_fast_bytes,
                "fast_s": fast,
                "rcvbuf": s.stall_rcvbuf,
                "gateways": {role: self.growth(gateway, before[role], after[role], s.stall_clients) for role, gateway in gateways.items()},
            }
            result.update(await self.fresh_echo(target))
            line = f"stall rep {rep + 1}/{s.stall_reps} {LABELS[name]:<16} {fast:.2f} s to stall"
            for gateway in result["gateways"].values():
                line += f"; {gateway['process']}: {gateway['rss_kib_per_client']:,.0f} KiB per stalled client"
                if "held_kib_per_client" in gateway:
                    line += f" ({gateway['held_kib_per_client']:,.0f} KiB in stream buffers)"
            line += f"; fresh client: {result['fresh_ms']:.1f} ms" if result.get("fresh_ms") is not None else f"; {result['incomplete']}"
            self.say(line)
            return result
        except Exception as problem:  # noqa: BLE001
            self.say(f"  stall {name}: failed: {problem!r}")
            return {"error": repr(problem), "stalled": sum(1 for reader in readers if reader.stalled.done())}
        finally:
            for reader in readers:
                reader.channel.abort()
            self.retire(deployment)

    async def fresh_echo(self, target: Target) -> dict[str, Any]:
        """One new client, connect and a 1 KiB echo round trip, while others are stalled: how long it takes."""
        size = 1024
        start = time.perf_counter()
        try:
            conn = await asyncio.wait_for(self.opener(target)(), FRESH_TIMEOUT)
            try:
                await asyncio.wait_for(clients.echo_once(conn, size), FRESH_TIMEOUT)
            finally:
                conn.abort()
        except asyncio.TimeoutError:
            return {"fresh_ms": None, "incomplete": f"a fresh client's 1 KiB echo did not complete within {FRESH_TIMEOUT:.0f} s"}
        return {"fresh_ms": (time.perf_counter() - start) * 1000.0}

    @staticmethod
    def growth(gateway: Gateway, then: Snapshot, now: Snapshot, count: int) -> dict[str, Any]:
        return {
            "process": gateway.name,
            "before": then.to_json(),
            "after": now.to_json(),
            "rss_kib_per_client": (now.rss_kib - then.rss_kib) / max(count, 1),
            **({"held_kib_per_client": buffered_bytes(gateway.admin) / 1024 / max(count, 1)} if gateway.admin else {}),
        }

    def cpu(self, deployment: Deployment) -> dict[str, float]:
        """CPU seconds so far of this client process, each gateway and the backend."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        result = {"client": usage.ru_utime + usage.ru_stime}
        for gateway in deployment.gateways:
            result[gateway.name] = cpu_seconds(tree(gateway.pid) if gateway.tree else [gateway.pid])
        if self.backend is not None:
            result["backend"] = cpu_seconds([self.backend.pid])
        return result

    @staticmethod
    def read(gateway: Any) -> Snapshot:
        pids = tree(gateway.pid) if gateway.tree else [gateway.pid]
        return snapshot(pids, gateway.ports)

    # -- the run -------------------------------------------------------------------------------

    def environment(self) -> dict[str, object]:
        def version(module: str) -> str:
            try:
                from importlib.metadata import version as get

                return get(module)
            except Exception:  # noqa: BLE001
                return "?"

        cpu = "?"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "shield"], capture_output=True, text=True).stdout.strip()
        return {
            "cpus": os.cpu_count(),
            "cpu_model": cpu,
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "twisted": version("twisted"),
            "autobahn": version("autobahn"),
            "websockets": version("websockets"),
            "pyopenssl": version("pyopenssl"),
            "shield_commit": commit + (" (shield/ modified)" if dirty else ""),
            "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "loadavg_start": os.getloadavg(),
        }

    async def main(self) -> dict[str, object]:
        self.env = {**self.environment(), **self.env}
        started = datetime.now(timezone.utc)
        shared = [scenario for scenario in self.scenarios if scenario not in FRESH]
        if shared:
            self.start_shared()
            for scenario in shared:
                self.say(f"== {scenario}")
                await getattr(self, scenario)()
            for deployment, _ in self.shared.values():
                self.retire(deployment)
            self.shared.clear()
        if "idle" in self.scenarios:
            self.say(f"== idle ({self.settings.idle_clients:,} clients, fresh processes per repetition)")
            await self.idle()
        if "stall" in self.scenarios:
            self.say(f"== stall ({self.settings.stall_clients} stalled readers, fresh processes per repetition)")
            await self.stall()
        self.env["loadavg_end"] = os.getloadavg()
        summ, baselines = report.summary(self.runs, self.target_names)
        return {
            "name": self.name,
            "quick": self.quick,
            "selfcheck": self.selfcheck,
            "started": started.strftime("%Y-%m-%d %H:%M UTC"),
            "duration_s": time.monotonic() - self.started,
            "environment": self.env,
            "settings": {**self.settings.to_json(), "scenarios": self.scenarios, "rr_clients": list(RR_CLIENTS), "rr_sizes": list(RR_SIZES)},
            "targets": self.target_names,
            "summary": summ,
            "baselines": baselines,
            "goals": report.goals(summ, self.settings, self.idle_established),
            "runs": self.runs,
            "raw": self.raw,
        }

    def expected(self) -> list[str]:
        """The raw-data keys every target must have a result under, one per scenario (rr: one per combination)."""
        keys: list[str] = []
        for scenario in self.scenarios:
            if scenario == "bulk":
                keys += ["bulk_up", "bulk_down"]
            elif scenario == "rr":
                keys += [rr_key(count, size) for count in RR_CLIENTS for size in RR_SIZES]
            else:
                keys.append(scenario)
        return keys

    def problems(self) -> list[str]:
        """Every measurement that failed, fell short of its count, or is missing: each makes the exit status 1."""
        found: list[str] = []
        for key in self.expected():
            for name in self.target_names:
                if not measured_in(name, key):
                    continue
                reps = self.raw.get(key, {}).get(name, [])
                if not reps:
                    found.append(f"{key} {name}: no result")
                for rep in reps:
                    for kind in ("error", "incomplete"):
                        if kind in rep:
                            found.append(f"{key} {name} rep {rep['rep']}: {kind}: {str(rep[kind])[:300]}")
        return found


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", default=os.environ.get("QUICK", "") not in ("", "0"), help="the reduced run (also QUICK=1 in the environment)")
    parser.add_argument(
        "--selfcheck", action="store_true",
        help="a tiny run of every scenario that proves the harness works (tests/bench); results go to a temporary folder unless --out",
    )  # fmt: skip
    parser.add_argument("--name", help="results/<name>.{json,md,png} (default: latest, quick with --quick, selfcheck with --selfcheck)")
    parser.add_argument("--out", type=Path, help="where results go (default: benchmarks/results; a temporary folder with --selfcheck)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, from {','.join(SCENARIOS)}")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, from {','.join(TARGETS)}")
    parser.add_argument("--reps", type=int, help="repetitions (overrides the setting; idle and stall keep their own)")
    parser.add_argument("--idle-reps", type=int, help="repetitions of the idle scenario (overrides the setting)")
    parser.add_argument("--idle-clients", type=int, help="idle clients (overrides the setting)")
    parser.add_argument("--stall-reps", type=int, help="repetitions of the stall scenario (overrides the setting)")
    parser.add_argument("--stall-clients", type=int, help="stalled readers (overrides the setting)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (configurations and logs of every process)")
    return parser.parse_args(argv)


def chosen_settings(args: argparse.Namespace) -> Settings:
    settings = SELFCHECK if args.selfcheck else QUICK if args.quick else FULL
    overrides = {
        "reps": args.reps, "idle_reps": args.idle_reps, "idle_clients": args.idle_clients,
        "stall_reps": args.stall_reps, "stall_clients": args.stall_clients,
    }  # fmt: skip
    overrides = {key: value for key, value in overrides.items() if value}
    return replace(settings, **overrides) if overrides else settings


def runnable(targets: list[str], selfcheck: bool) -> tuple[list[str], dict[str, str]]:
    """The targets this machine can run, and why the others are skipped.

    ``ssh-aes`` is skipped without AES instructions (software AES would say nothing about what
    users get). Without sshd (or root), the self-check skips both ssh targets; a real run stops
    instead, since its ratios are all against ssh.
    """
    kept, skipped = [], {}
    for name in targets:
        reason = unavailable(name)
        if reason is None:
            kept.append(name)
        elif name == "ssh-aes" or selfcheck:
            skipped[name] = reason
        else:
            raise SystemExit(f"cannot run target {name}: {reason} (leave it out with --targets)")
    return kept, skipped


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    settings = chosen_settings(args)
    scenarios = [name for name in args.scenarios.split(",") if name]
    targets = [name for name in args.targets.split(",") if name]
    for name in scenarios:
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name!r}; choose from {SCENARIOS}")
    for name in targets:
        if name not in TARGETS:
            raise SystemExit(f"unknown target {name!r}; choose from {list(TARGETS)}")
    targets, skipped = runnable(targets, args.selfcheck)
    for name, reason in skipped.items():
        print(f"skipping target {name}: {reason}", flush=True)
    if not targets:
        raise SystemExit("no target can run here")
    name = args.name or ("selfcheck" if args.selfcheck else "quick" if args.quick else "latest")
    out = args.out or (Path(tempfile.mkdtemp(prefix="shield-bench-selfcheck-")) if args.selfcheck else RESULTS)
    raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="shield-bench-"))
    bench = Bench(settings, args.quick, name, work, targets, scenarios, args.selfcheck)
    bench.env["skipped_targets"] = skipped
    mode = " (SELFCHECK)" if args.selfcheck else " (QUICK)" if args.quick else ""
    print(f"shield benchmarks{mode}: {', '.join(scenarios)} against {', '.join(targets)}; work folder {work}", flush=True)

    def watchdog() -> None:
        print(f"WATCHDOG: the run exceeded {settings.watchdog:.0f} s; stopping every process it started", flush=True)
        bench.close_all()
        os._exit(3)

    timer = threading.Timer(settings.watchdog, watchdog)
    timer.daemon = True
    timer.start()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    problems: list[str] = ["the run did not finish"]
    try:
        results = asyncio.run(bench.main())
        problems = bench.problems()
    finally:
        timer.cancel()
        bench.close_all()
        if not problems and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept the work folder (configurations and logs of every process): {work}", flush=True)
    paths = report.write(results, out, name)
    print()
    print(paths["md"].read_text())
    print(f"wrote {', '.join(str(path) for path in paths.values())} in {results['duration_s']:.0f} s", flush=True)
    if problems:
        print(f"{len(problems)} measurements failed, fell short or are missing (see 'error' and 'incomplete' in {paths['json']}):", flush=True)
        for problem in problems:
            print(f"  {problem}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
