"""A compromised DMZ against a real connector, next to a legitimate DMZ that must stay served.

The connector (``twistd -n shield-internal``) lists two backplane endpoints: a real DMZ gateway
(``twistd -n shield-dmz``) and a hostile one (tests/e2e/fakes/hostile_dmz.py) that speaks real TLS,
yamux and shield-link, is accepted like any DMZ (it holds a valid ``dmz1`` certificate: a
compromised member), and then misbehaves. For each misbehaviour the connector must refuse it,
stay up, keep serving a public client through the legitimate DMZ meanwhile, say what it refused
and why (one log line per bad peer or burst, not one per stream), and dial nothing but what its
own configuration lists: every outbound socket the connector opens during the test is sampled
from /proc and must lead to a configured endpoint or backend.

The connector offers two services: ``echo`` (the test backend) and ``slow``, whose backend is a
listening socket that never accepts (its one-place accept queue is taken by the test), so a dial
to it hangs until ``connect-timeout``: the "backend that never answers" the pending-open limit is
about.
"""

from __future__ import annotations

import asyncio
import re
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from harness import Process, Topology, http_get, iter_log_lines, rss_kib
from websockets.asyncio.client import connect

FAKES = Path(__file__).resolve().parent / "fakes"
WAIT = 30.0


# -- helpers -----------------------------------------------------------------------------------


def wait_until(what: str, condition: Callable[[], bool], timeout: float = WAIT, *logs: Process) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    tails = "\n".join(f"----- {p.name} -----\n{p.log()[-4000:]}" for p in logs)
    raise AssertionError(f"not within {timeout} s: {what}\n{tails}")


def connections(backend: Process) -> int:
    return sum(1 for _ in iter_log_lines(backend, "connection from"))


async def ws_echo(url: str, payload: bytes) -> bytes:
    async with connect(url, open_timeout=WAIT, close_timeout=10) as ws:
        await ws.send(payload)
        reply = await asyncio.wait_for(ws.recv(), WAIT)
    assert isinstance(reply, bytes)
    return reply


def metric(topology: Topology, name: str, **labels: str) -> float:
    """One sample of the connector's /metrics (0 when the series does not exist)."""
    status, body = http_get(f"{topology.url('admin-internal1')}/metrics")
    assert status == 200, body
    for line in body.splitlines():
        if line.startswith(name + "{"):
            series, value = line.rsplit(" ", 1)
            found = dict(re.findall(r'(\w+)="([^"]*)"', series))
            if found == labels:
                return float(value)
    return 0.0


def results(fake: Process) -> dict[str, str]:
    """case -> "OUTCOME rest" from the fake's RESULT lines."""
    found = {}
    for line in iter_log_lines(fake, "RESULT case="):
        match = re.search(r"RESULT case=(\S+) outcome=(\S+)(.*)", line)
        assert match, line
        found[match.group(1)] = f"{match.group(2)}{match.group(3)}"
    return found


def _hex_address(text: str) -> tuple[str, int]:
    host, port = text.split(":")
    if len(host) == 8:
        address = socket.inet_ntop(socket.AF_INET, bytes.fromhex(host)[::-1])
    else:
        raw = bytes.fromhex(host)
        address = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
    return address, int(port, 16)


def tcp_sockets(pid: int) -> list[tuple[tuple[str, int], tuple[str, int], str]]:
    """(local, remote, state) of every TCP socket the process holds (listening ones left out)."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        for fd in fd_dir.iterdir():
            try:
                target = fd.readlink().as_posix()
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        found = []
        for table in ("tcp", "tcp6"):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes and fields[3] != "0A":
                    found.append((_hex_address(fields[1]), _hex_address(fields[2]), fields[3]))
        return found
    except (FileNotFoundError, ProcessLookupError):
        return []


class DialWatch:
    """Samples the connector's sockets in the background: where did it connect to?"""

    def __init__(self, pid: int, inbound_ports: set[int]) -> None:
        self.pid = pid
        self.inbound_ports = inbound_ports  # its own listening ports (admin): peers come to it
        self.remotes: set[tuple[str, int]] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for local, remote, _state in tcp_sockets(self.pid):
                if local[1] not in self.inbound_ports:
                    self.remotes.add(remote)
            self.samples += 1
            self._stop.wait(0.02)

    def stop(self) -> set[tuple[str, int]]:
        self._stop.set()
        self._thread.join(5)
        return self.remotes


class LegitClients:
    """A public client through the legitimate DMZ, echoing again and again while a scenario runs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.done = 0
        self.failures: list[str] = []
        self.slowest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            payload = f"legit {self.done}".encode()
            started = time.monotonic()
            try:
                reply = asyncio.run(ws_echo(self.url, payload))
            except Exception as problem:  # noqa: BLE001 - every failure is a finding
                self.failures.append(f"{type(problem).__name__}: {problem}")
            else:
                if reply != payload:
                    self.failures.append(f"echo mismatch: {reply!r}")
                else:
                    self.done += 1
                    self.slowest = max(self.slowest, time.monotonic() - started)
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)


class Tarpit:
    """A backend that never answers: it listens but never accepts, and its accept queue is full."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.filler = socket.create_connection(("127.0.0.1", self.port))  # takes the one place

    def close(self) -> None:
        self.filler.close()
        self.listener.close()


class Scene:
    """The topology of one test: backend, tarpit, real DMZ, hostile DMZ, connector."""

    def __init__(
        self,
        topology: Topology,
        scenario: str,
        fake_args: list[str] | None = None,
        internal: str = "",
        backplane: str = "",
        slow_timeout: float = 2.0,
    ) -> None:
        self.topology = topology
        certs = topology.certs(["internal1"])
        self.backend, self.backend_port = topology.start_backend("echo")
        self.tarpit = Tarpit()
        # A canary: the address-shaped service names the hostile DMZ sends name it. A dial there
        # lands in its accept queue, where the test finds it (a sampled /proc can miss one).
        self.canary = socket.socket()
        self.canary.bind(("127.0.0.1", 0))
        self.canary.listen(16)
        self.canary.setblocking(False)
        topology.dmz_config({"echo": {}}, {"internal1": ["echo"]})  # "slow" is offered to the hostile DMZ only
        self.fake_port = topology.port("hostile-backplane")
        self.legit_port = topology.port("backplane")
        lines = [
            "[internal]",
            'name = "internal1"',
            f'admin = "{topology.url("admin-internal1")}"',
            "grace-period = 5",
            internal,
            "[internal.backplane]",
            f'connect = ["tls://127.0.0.1:{self.legit_port}", "tls://127.0.0.1:{self.fake_port}"]',
            f'server-name = "{topology.dmz_name}"',
            "links = 1",
            'cert = "certs/internal1.pem"',
            'ca = "certs/ca.pem"',
            "keepalive-interval = 1",
            backplane,
            "[[internal.service]]",
            'name = "echo"',
            f'connect = "tcp://127.0.0.1:{self.backend_port}"',
            "connect-timeout = 3",
            'health-check = "off"',  # what the connector dials here is what the hostile DMZ caused
            "[[internal.service]]",
            'name = "slow"',
            f'connect = "tcp://127.0.0.1:{self.tarpit.port}"',
            f"connect-timeout = {slow_timeout:g}",
            'health-check = "off"',
        ]
        topology.write("internal1.toml", "\n".join(lines) + "\n")
        self.dmz = topology.start_dmz()
        argv = [
            sys.executable, str(FAKES / "hostile_dmz.py"),
            "--port", str(self.fake_port),
            "--cert", str(certs / f"{topology.dmz_name}.pem"),  # a compromised member: a valid certificate
            "--ca", str(certs / "ca.pem"),
            "--name", topology.dmz_name,
            "--scenario", scenario,
            "--canary", str(self.canary.getsockname()[1]),
            *(fake_args or []),
        ]
        self.fake = Process("hostile-dmz", argv, topology.folder / "hostile-dmz.log", topology.folder).start()
        topology.processes.append(self.fake)
        self.fake.wait_for_log("listening")
        self.connector = topology.start_connector("internal1", wait=False)
        self.watch = DialWatch(self.connector.pid, {topology.port("admin-internal1")})
        self.fake.wait_for_log("LINK ACCEPTED n=1")
        topology.dmz_ready()
        self.legit: LegitClients | None = None

    @property
    def url(self) -> str:
        return self.topology.url("ws-echo", "ws", "/echo")

    def start_legit_clients(self) -> LegitClients:
        self.legit = LegitClients(self.url)
        return self.legit

    def hostile_lines(self) -> list[str]:
        """The connector's log lines about streams from the hostile DMZ."""
        return list(iter_log_lines(self.connector, f"stream from DMZ 127.0.0.1:{self.fake_port}"))

    def finish(self) -> set[tuple[str, int]]:
        """Common end of every scenario: the connector is up, served the legit client meanwhile,
        still serves it now, logged no traceback, and dialled only what its config lists."""
        if self.legit is not None:
            self.legit.stop()
            assert not self.legit.failures, self.legit.failures[:5]
            assert self.legit.done >= 3, f"the legitimate client got only {self.legit.done} echoes"
        assert self.connector.alive(), self.connector.log()[-4000:]
        assert asyncio.run(ws_echo(self.url, b"still served")) == b"still served"
        log = self.connector.log()
        assert "Traceback" not in log and "Unhandled" not in log, log[-6000:]
        remotes = self.watch.stop()
        allowed = {
            ("127.0.0.1", self.legit_port),
            ("127.0.0.1", self.fake_port),
            ("127.0.0.1", self.backend_port),
            ("127.0.0.1", self.tarpit.port),
        }
        assert self.watch.samples > 10
        assert remotes <= allowed, f"the connector dialled outside its config: {remotes - allowed}"
        return remotes

    def canary_dials(self) -> int:
        """Connections that reached the canary (each is taken off its queue)."""
        count = 0
        while True:
            try:
                sock, _ = self.canary.accept()
            except BlockingIOError:
                return count
            sock.close()
            count += 1

    def close(self) -> None:
        self.watch.stop()
        self.tarpit.close()
        self.canary.close()


@pytest.fixture
def scenes(topology: Topology) -> Iterator[list[Scene]]:
    made: list[Scene] = []
    yield made
    for scene in made:
        scene.close()


def scene(scenes: list[Scene], *args: object, **kwargs: object) -> Scene:
    made = Scene(*args, **kwargs)  # type: ignore[arg-type]
    scenes.append(made)
    return made


# -- the scenarios -------------------------------------------------------------------------------


UNKNOWN = ["nosuch", "admin", "ECHO", "echo.internal", "name-63"]
INVALID = [
    "name-64", "name-255", "empty", "path", "host-port", "uri", "newline", "nul", "escape", "utf8",
    "bad-utf8", "length-lies",
]


def test_unlisted_and_malformed_service_names_dial_nothing(topology: Topology, scenes: list[Scene]) -> None:
    s = scene(scenes, topology, "unknown")
    legit = s.start_legit_clients()
    s.fake.wait_for_log("SCENARIO DONE n=1")
    time.sleep(1.5)  # the summary line of the burst

    found = results(s.fake)
    for case in UNKNOWN:
        assert found[case].startswith("UNKNOWN_SERVICE"), (case, found[case])
    for case in INVALID:
        assert found[case].startswith("RESET"), (case, found[case])
    assert found["echo"].startswith("OK") and "echoed=True" in found["echo"], found["echo"]

    # The backend saw the legitimate clients and the hostile DMZ's one valid echo: nothing else.
    s.finish()
    assert s.canary_dials() == 0, "the connector dialled an address a hostile DMZ named"
    socket.create_connection(s.canary.getsockname(), timeout=5).close()
    assert s.canary_dials() == 1, "the canary must see a dial (else its silence proves nothing)"
    assert connections(s.backend) == legit.done + 1 + 1, (connections(s.backend), legit.done)
    assert metric(topology, "shield_open_failures_total", service="", reason="unknown_service") == len(UNKNOWN)
    assert metric(topology, "shield_open_failures_total", service="", reason="bad_open") == len(INVALID)

    log = s.connector.log()
    lines = s.hostile_lines()
    first_unknown = next(line for line in lines if "no service" in line)
    assert "'nosuch'" in first_unknown and "nothing dialled" in first_unknown, first_unknown
    first_bad = next(line for line in lines if "bad open request" in line)
    assert "nothing dialled" in first_bad, first_bad
    # One line at once per kind and one summary each: not one per refused stream.
    assert len(lines) <= 6, "\n".join(lines)
    assert any(f"{len(UNKNOWN) - 1} more streams refused (unknown service)" in line for line in lines), lines
    assert any(f"{len(INVALID) - 1} more streams refused (bad OPEN)" in line for line in lines), lines
    assert "\x1b" not in log and "\x00" not in log, "a hostile name reached the log unescaped"
    assert "lost after" not in "".join(iter_log_lines(s.connector, f"127.0.0.1:{s.fake_port}"))
    print(f"\nconnector: {first_unknown.strip()}\nconnector: {first_bad.strip()}\n" + "\n".join(lines[2:]))


def test_oversized_and_unfinished_open_headers_cost_only_their_stream(
    topology: Topology, scenes: list[Scene]
) -> None:
    s = scene(scenes, topology, "oversized")
    s.start_legit_clients()
    s.fake.wait_for_log("LINK STILL UP n=1", timeout=WAIT)

    found = results(s.fake)
    assert found["max-size-long-name"].startswith("RESET"), found
    assert found["max-size-valid"].startswith("OK") and "echoed=True" in found["max-size-valid"], found
    assert found["wrong-version"].startswith("RESET"), found
    assert found["not-shield-300KiB"].startswith("RESET"), found
    assert found["unfinished-header"].startswith("RESET"), found
    assert found["echo"].startswith("OK") and "echoed=True" in found["echo"], found

    s.finish()
    lines = s.hostile_lines()
    timeout = next(line for line in lines if "no complete OPEN header" in line)
    assert "within 10 s" in timeout, timeout
    bad = next(line for line in lines if "bad open request" in line)
    assert "service name" in bad, bad
    assert metric(topology, "shield_refusals_total", service="", limit="open_header_timeout") == 1
    assert metric(topology, "shield_open_failures_total", service="", reason="bad_open") == 3
    # The link stayed up: a bad header is the stream's fault, not the link's.
    assert "LINK LOST" not in s.fake.log()
    assert "lost after" not in "".join(iter_log_lines(s.connector, f"127.0.0.1:{s.fake_port}"))
    print("\n" + "\n".join(line.strip() for line in lines))


def test_window_violation_closes_that_link_only(topology: Topology, scenes: list[Scene]) -> None:
    s = scene(scenes, topology, "window")
    s.start_legit_clients()
    s.fake.wait_for_log("LINK LOST n=1")
    s.fake.wait_for_log("LINK LOST n=2")
    s.fake.wait_for_log("LINK ACCEPTED n=3")
    time.sleep(2)  # link 3 behaves and stays

    fake_log = s.fake.log()
    assert "GOAWAY n=1 code=1" in fake_log and "GOAWAY n=2 code=1" in fake_log, fake_log
    assert "LINK LOST n=3" not in fake_log
    s.finish()
    lost = list(iter_log_lines(s.connector, f"link to 127.0.0.1:{s.fake_port}: lost after"))
    assert len(lost) == 2, lost
    assert all("exceed the receive window" in line for line in lost), lost
    # The legitimate DMZ's link never went down.
    assert not list(iter_log_lines(s.connector, f"link to 127.0.0.1:{s.legit_port}: lost"))
    print("\n" + "\n".join(line.strip() for line in lost))


def test_stream_id_reuse_is_a_protocol_error(topology: Topology, scenes: list[Scene]) -> None:
    s = scene(scenes, topology, "reuse")
    s.start_legit_clients()
    for n in (1, 2, 3):
        s.fake.wait_for_log(f"LINK LOST n={n}")
    s.fake.wait_for_log("LINK ACCEPTED n=4")
    time.sleep(2)

    fake_log = s.fake.log()
    for n in (1, 2, 3):
        assert f"GOAWAY n={n} code=1" in fake_log, fake_log
    assert "LINK LOST n=4" not in fake_log
    found = results(s.fake)
    assert found["open-before-reuse"].startswith("OK"), found
    assert found["closed-before-reuse"].startswith("UNKNOWN_SERVICE"), found
    s.finish()
    lost = list(iter_log_lines(s.connector, f"link to 127.0.0.1:{s.fake_port}: lost after"))
    assert len(lost) == 3, lost
    assert "while it is open" in lost[0], lost
    assert "which it used before" in lost[1], lost
    assert "an id of this side's parity" in lost[2], lost
    assert not list(iter_log_lines(s.connector, f"link to 127.0.0.1:{s.legit_port}: lost"))
    print("\n" + "\n".join(line.strip() for line in lost))


ROUNDS = 8
STREAMS = 400
MAX_PENDING = 8
MAX_STREAMS = 200


def test_flood_of_stream_opens_is_refused_with_flat_memory(topology: Topology, scenes: list[Scene]) -> None:
    s = scene(
        scenes,
        topology,
        "flood",
        ["--rounds", str(ROUNDS), "--streams", str(STREAMS), "--start-after", "4"],
        internal=f"max-pending-opens = {MAX_PENDING}",
        backplane=f"max-streams = {MAX_STREAMS}",
        slow_timeout=1.0,
    )
    legit = s.start_legit_clients()
    time.sleep(2)
    rss_before = rss_kib(s.connector.pid)
    rss_by_round: list[int] = []
    for round_ in range(1, ROUNDS + 1):
        s.fake.wait_for_log(f"ROUND {round_} ", timeout=WAIT)
        rss_by_round.append(rss_kib(s.connector.pid))
    s.fake.wait_for_log("SCENARIO DONE n=1")
    time.sleep(1.5)  # the last summary lines

    rounds = [line for line in s.fake.log().splitlines() if line.startswith("ROUND ")]
    totals = {"OVERLOADED": 0, "RESET": 0, "BACKEND_TIMEOUT": 0}
    for line in rounds:
        counts = dict(re.findall(r"(\w+)=(\d+)", line))
        assert set(counts) - {"streams", "OVERLOADED", "RESET", "BACKEND_TIMEOUT"} == set(), line
        for kind in totals:
            totals[kind] += int(counts.get(kind, 0))
        # At most max-pending-opens opens per round reached the dial; the rest were refused.
        assert int(counts.get("BACKEND_TIMEOUT", 0)) <= MAX_PENDING, line
    assert totals["OVERLOADED"] >= ROUNDS * (MAX_STREAMS - 1 - MAX_PENDING) // 2, totals
    assert totals["RESET"] >= ROUNDS * (STREAMS - MAX_STREAMS) // 2, totals
    assert results(s.fake)["echo"].startswith("OK"), results(s.fake)

    s.finish()
    overloaded = metric(topology, "shield_refusals_total", service="", limit="max_pending_opens")
    mux_refused = metric(topology, "shield_refusals_total", service="", limit="max_streams")
    assert overloaded == totals["OVERLOADED"], (overloaded, totals)
    assert mux_refused == totals["RESET"], (mux_refused, totals)

    lines = s.hostile_lines()
    pending_lines = [line for line in lines if "max-pending-opens" in line or "(max_pending_opens)" in line]
    stream_lines = [line for line in lines if "max-streams" in line or "(max_streams)" in line]
    # A burst gives a line at once and a count per second after it: a few lines per round at most.
    assert 1 <= len(pending_lines) <= 3 * ROUNDS, pending_lines
    assert 1 <= len(stream_lines) <= 3 * ROUNDS, stream_lines
    assert not list(iter_log_lines(s.connector, "refused stream")), "MuxProtocol logged per stream"
    # Memory: a run of 100 rounds (40,000 opens) grew ~4.4 MiB over the first ~40 rounds, then
    # stayed flat (allocator and TLS warm-up, not per-stream state); 8 rounds stay well under this.
    growth = rss_by_round[-1] - rss_by_round[0]
    print(
        f"\nflood: {ROUNDS} rounds x {STREAMS} opens: OVERLOADED {totals['OVERLOADED']},"
        f" RST by max-streams {totals['RESET']}, dialled {totals['BACKEND_TIMEOUT']};"
        f" log lines {len(pending_lines)} + {len(stream_lines)};"
        f" RSS before {rss_before} KiB, after round 1 {rss_by_round[0]} KiB, after round {ROUNDS}"
        f" {rss_by_round[-1]} KiB (growth {growth} KiB); legit echoes {legit.done},"
        f" slowest {legit.slowest * 1000:.0f} ms\n" + "\n".join(line.strip() for line in pending_lines[:3] + stream_lines[:3])
    )
    assert growth < 8 * 1024, rss_by_round
