"""Real processes on 127.0.0.1 for end-to-end tests: gateways under ``twistd -n``, a test backend.

Everything listens on ports the OS hands out, configs and dev certificates go to a per-test
folder, and every process is killed at the end whatever happened. Logs are kept per process so
tests can assert the one line a refusal must produce.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

VENV_BIN = Path(sys.executable).parent
TWISTD = str(VENV_BIN / "twistd")
SHIELD = str(VENV_BIN / "shield")
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

#: Generous bounds: tests must not flake on a busy 2-core machine.
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_certs(folder: Path, dmz_names: list[str], connectors: list[str]) -> Path:
    from shield.tls.devcerts import generate_dev_certs

    folder.mkdir(parents=True, exist_ok=True)
    generate_dev_certs(folder, dmz_names, connectors)
    return folder


def echo(sock: socket.socket, payload: bytes) -> str:
    """Send ``payload`` and read it back: "echoed", or what happened instead."""
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            return f"closed after {len(received)} of {len(payload)} bytes"
        received += chunk
    return "echoed" if received == payload else f"wrong echo {received[:80]!r}"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@dataclass
class Process:
    """A child process with its combined output in a log file."""

    name: str
    argv: list[str]
    log_path: Path
    cwd: Path
    popen: subprocess.Popen | None = None
    started_at: float = 0.0
    env: dict[str, str] = field(default_factory=dict)  # on top of this process's environment

    def start(self) -> "Process":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO), **self.env)
        self.started_at = time.monotonic()
        self.popen = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd, env=env, start_new_session=True
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = START_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            content = self.log()
            if text in content:
                return content
            if not self.alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: {text!r} not logged within {timeout} s; log:\n{self.log()[-4000:]}")

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self) -> None:
        if self.popen is None:
            return
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.popen is not None
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not exit within {timeout} s of SIGTERM:\n{self.log()[-4000:]}")


def twistd(name: str, plugin: str, config: Path, folder: Path) -> Process:
    argv = [TWISTD, "-n", "--pidfile=", "--logfile=-", plugin, "--config", str(config)]
    return Process(name, argv, folder / f"{name}.log", folder)


def wait_ready(admin: str, timeout: float = START_TIMEOUT, process: Process | None = None) -> None:
    """Poll ``admin``/readyz until it answers 200."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            status, body = http_get(f"{admin}/readyz", timeout=2.0)
            if status == 200:
                return
            last = f"{status} {body}"
        except OSError as error:
            last = str(error)
        if process is not None and not process.alive():
            break
        time.sleep(0.05)
    log = process.log()[-4000:] if process is not None else ""
    raise AssertionError(f"{admin}/readyz not ready within {timeout} s (last: {last})\n{log}")


def toml_list(items: list[str]) -> str:
    return json.dumps(items)


@dataclass
class Topology:
    """One DMZ gateway, connectors and backends on 127.0.0.1, described by their configs."""

    folder: Path
    dmz_name: str = "dmz1"
    ports: dict[str, int] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)

    def port(self, name: str) -> int:
        """A port of its own for ``name`` (the OS may hand a just-released port out twice)."""
        if name not in self.ports:
            taken = set(self.ports.values())
            port = free_port()
            while port in taken:
                port = free_port()
            self.ports[name] = port
        return self.ports[name]

    def url(self, name: str, scheme: str = "http", path: str = "") -> str:
        return f"{scheme}://127.0.0.1:{self.port(name)}{path}"

    def backplane_uri(self, scheme: str = "tls", path: str = "/shield") -> str:
        """The DMZ's backplane: tls:// on the port named "backplane", wss:// on "backplane-wss"."""
        if scheme == "tls":
            return f"tls://127.0.0.1:{self.port('backplane')}"
        return f"wss://127.0.0.1:{self.port('backplane-wss')}{path}"

    def certs(self, connectors: list[str], dmz_names: list[str] | None = None) -> Path:
        return make_certs(self.folder / "certs", dmz_names or [self.dmz_name], connectors)

    def write(self, name: str, text: str) -> Path:
        path = self.folder / name
        path.write_text(text)
        return path

    def dmz_config(
        self,
        services: dict[str, dict[str, object]],
        connectors: dict[str, list[str]],
        extra_dmz: str = "",
        backplane: list[str] | None = None,
    ) -> Path:
        """``services``: name -> extra keys; each gets ws (path /name) and tcp accepts by default.
        ``backplane``: its accept URIs (default: tls:// on the port named "backplane")."""
        lines = [
            "[dmz]",
            f'name = "{self.dmz_name}"',
            f'admin = "{self.url("dmz-admin")}"',
            "grace-period = 5",
            extra_dmz,
            "[dmz.backplane]",
            f"accept = {toml_list(backplane or [self.backplane_uri()])}",
            f'cert = "certs/{self.dmz_name}.pem"',
            'ca = "certs/ca.pem"',
            "keepalive-interval = 1",
            "[dmz.backplane.connectors]",
        ]
        for connector, allowed in connectors.items():
            lines.append(f"{connector} = {toml_list(allowed)}")
        for service, keys in services.items():
            keys = dict(keys)
            accept = keys.pop(
                "accept",
                [self.url(f"ws-{service}", "ws", f"/{service}"), f"tcp://127.0.0.1:{self.port(f'tcp-{service}')}"],
            )
            lines += ["[[dmz.service]]", f'name = "{service}"', f"accept = {toml_list(accept)}"]  # type: ignore[arg-type]
            for key, value in keys.items():
                lines.append(f"{key} = {json.dumps(value)}")
        return self.write("dmz.toml", "\n".join(lines) + "\n")

    def internal_config(
        self,
        name: str,
        services: dict[str, str],
        priority: int = 100,
        links: int = 2,
        extra: str = "",
        connect: list[str] | None = None,
    ) -> Path:
        """``services``: name -> backend URI; ``connect``: the DMZ URIs (default: the tls:// backplane).

        Backend health checks are off: many tests count the connections their backend saw, and a
        check is a connection of its own. tests/e2e/test_backend_health.py turns them on.
        """
        lines = [
            "[internal]",
            f'name = "{name}"',
            f'admin = "{self.url(f"admin-{name}")}"',
            f"priority = {priority}",
            "grace-period = 5",
            extra,
            "[internal.backplane]",
            f"connect = {toml_list(connect or [self.backplane_uri()])}",
            f'server-name = "{self.dmz_name}"',
            f"links = {links}",
            f'cert = "certs/{name}.pem"',
            'ca = "certs/ca.pem"',
            "keepalive-interval = 1",
        ]
        for service, target in services.items():
            lines += [
                "[[internal.service]]", f'name = "{service}"', f'connect = "{target}"', "connect-timeout = 3",
                'health-check = "off"',
            ]  # fmt: skip
        return self.write(f"{name}.toml", "\n".join(lines) + "\n")

    def start_dmz(self, wait: bool = True) -> Process:
        process = twistd("dmz", "shield-dmz", self.folder / "dmz.toml", self.folder).start()
        self.processes.append(process)
        if wait:
            process.wait_for_log("ready for connectors")
        return process

    def start_connector(self, name: str, wait: bool = True) -> Process:
        process = twistd(name, "shield-internal", self.folder / f"{name}.toml", self.folder).start()
        self.processes.append(process)
        if wait:
            wait_ready(self.url(f"admin-{name}"), process=process)
        return process

    def start_backend(self, mode: str = "echo", name: str = "backend") -> tuple[Process, int]:
        """The test backend (tests/e2e/backend.py) in ``mode``: echo, or source (see that file)."""
        port = self.port(name)
        return self._backend(mode, name, str(port)), port

    def start_unix_backend(self, mode: str = "echo", name: str = "backend") -> tuple[Process, Path]:
        path = self.folder / f"{name}.sock"
        return self._backend(mode, name, str(path)), path

    def _backend(self, mode: str, name: str, where: str) -> Process:
        argv = [sys.executable, str(HERE / "backend.py"), mode, where]
        process = Process(name, argv, self.folder / f"{name}.log", self.folder).start()
        self.processes.append(process)
        process.wait_for_log("listening")
        return process

    def dmz_ready(self, timeout: float = START_TIMEOUT) -> None:
        wait_ready(self.url("dmz-admin"), timeout)

    def close(self) -> None:
        for process in reversed(self.processes):
            process.kill()


def iter_log_lines(process: Process, needle: str) -> Iterator[str]:
    return (line for line in process.log().splitlines() if needle in line)


def reserve_ports(topology: Topology, names: list[str]) -> None:
    """Give each of ``names`` a port of its own in ``topology`` before any config is written.

    ``free_port()`` releases its probe socket, so two calls can return the same port (the kernel
    may hand a just-released port out again); two names on one port make a config the loader
    rightly refuses. Names that already have a port keep it.
    """
    for name in names:
        if name in topology.ports:
            continue
        taken = set(topology.ports.values())
        port = free_port()
        while port in taken:
            port = free_port()
        topology.ports[name] = port
