"""What the clients connect to: shield (ws:// and tcp://), OpenSSH ``ssh -R``, and the backend directly.

A *deployment* is a set of running processes in front of the backend: a shield DMZ and connector
started through the end-to-end harness (tests/e2e/harness.py), an ``sshd`` and an ``ssh -N -R``,
or nothing at all (direct). All deployments of a run lead to the same backend process. A *target*
is one way in: a deployment plus an address and the kind of client it takes (``ws`` or ``tcp``).
One shield deployment gives two targets.

OpenSSH is deployed twice: ``ssh`` negotiates its default cipher (chacha20-poly1305 on OpenSSH 9,
which has no hardware help), ``ssh-aes`` is forced to AES-GCM (``-c aes128-gcm@openssh.com``),
which AES-NI makes cheap, as shield's TLS gets it. A user can choose either; the reports hold
shield to whichever of the two is faster on each metric.

Each deployment also names its *gateways*: the processes whose memory and descriptors the idle
scenario reads, each with the map from port to side used to classify its sockets.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from harness import Process, Topology, reserve_ports  # noqa: E402

from benchmarks.procstats import tree  # noqa: E402

SSHD = "/usr/sbin/sshd"
SERVICE = "bench"
START_TIMEOUT = 60.0
AES_CIPHER = "aes128-gcm@openssh.com"
#: The DMZ logs ``link from PEER: TLS up (TLSv1.3 TLS_AES_256_GCM_SHA384), connector identity 'NAME'``.
TLS_UP = re.compile(r"link from \S+: TLS up \(([^)]*)\)")
TLS_LOG_TIMEOUT = 10.0


def wait_port(port: int, timeout: float = START_TIMEOUT, process: Process | None = None) -> None:
    """Until 127.0.0.1:``port`` accepts a connection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            if process is not None and not process.alive():
                break
            time.sleep(0.05)
    log = process.log()[-3000:] if process is not None else ""
    raise RuntimeError(f"127.0.0.1:{port} did not accept connections within {timeout} s\n{log}")


def start_backend(topology: Topology, name: str = "backend") -> tuple[Process, int]:
    """The benchmark backend (benchmarks/backend.py) on a port of its own (kept on a restart)."""
    port = topology.port(name)
    process = Process(name, [sys.executable, str(HERE / "backend.py"), str(port)], topology.folder / f"{name}.log", topology.folder)
    process.start()
    topology.processes.append(process)
    process.wait_for_log("listening", timeout=START_TIMEOUT)
    return process, port


@dataclass
class Gateway:
    """A process (or a process tree) whose memory and descriptors are read; ``ports`` name sides."""

    name: str
    pid: int
    ports: dict[int, str]
    role: str  # "public" (the DMZ, sshd: where clients connect) or "inner" (the connector, ssh)
    tree: bool = False  # sum over the process and all its descendants (sshd forks per connection)
    admin: str = ""  # a shield gateway's admin URL: its /metrics say what it holds in stream buffers


@dataclass
class Deployment:
    kind: str
    topology: Topology
    backend_port: int
    gateways: list[Gateway] = field(default_factory=list)
    info: dict[str, object] = field(default_factory=dict)

    def alive(self) -> bool:
        return all(process.alive() for process in self.topology.processes)

    def close(self) -> None:
        # sshd's per-connection children live in sessions of their own: end them by pid first.
        for gateway in self.gateways:
            if gateway.tree and gateway.pid:
                for pid in tree(gateway.pid)[1:]:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
        self.topology.close()


@dataclass
class Target:
    """One way in: ``client`` is ``ws`` (``url``) or ``tcp`` (``port``)."""

    name: str
    label: str
    client: str
    deployment: Deployment
    url: str = ""
    port: int = 0


# -- shield ---------------------------------------------------------------------------------------


def _without_harness_tuning(path: Path) -> None:
    """The harness tunes timers for its failover tests (1 s pings and so on); benchmarks use the defaults."""
    text = path.read_text()
    for tuned in ("keepalive-interval = 1\n", "grace-period = 5\n", "connect-timeout = 3\n", 'health-check = "off"\n'):
        text = text.replace(tuned, "")
    path.write_text(text)


def _topology(folder: Path, backend_port: int, names: list[str]) -> Topology:
    folder.mkdir(parents=True, exist_ok=True)
    topology = Topology(folder)
    topology.ports["backend"] = backend_port  # not handed out again
    reserve_ports(topology, names)
    return topology


def start_shield(folder: Path, backend_port: int, link: str = "tls") -> Deployment:
    """A DMZ with one service reachable at ws://.../bench and tcp://..., one connector, defaults;
    its links over ``link`` (``tls``, or ``wss`` for the WebSocket backplane)."""
    backplane_port = "backplane" if link == "tls" else "backplane-wss"
    topology = _topology(folder, backend_port, [backplane_port, "dmz-admin", f"ws-{SERVICE}", f"tcp-{SERVICE}", "admin-internal1"])
    try:
        topology.certs(["internal1"])
        uri = topology.backplane_uri(link)
        _without_harness_tuning(topology.dmz_config({SERVICE: {}}, {"internal1": [SERVICE]}, backplane=[uri]))
        _without_harness_tuning(topology.internal_config("internal1", {SERVICE: f"tcp://127.0.0.1:{backend_port}"}, connect=[uri]))
        dmz = topology.start_dmz()
        connector = topology.start_connector("internal1")
        topology.dmz_ready()
    except BaseException:
        topology.close()
        raise
    backplane = topology.port(backplane_port)
    frontplane = {topology.port(f"ws-{SERVICE}"): "frontplane", topology.port(f"tcp-{SERVICE}"): "frontplane"}
    gateways = [
        Gateway("dmz", dmz.pid, {backplane: "backplane", **frontplane}, "public", admin=topology.url("dmz-admin")),
        Gateway(
            "connector", connector.pid, {backplane: "backplane", backend_port: "backend"}, "inner",
            admin=topology.url("admin-internal1"),
        ),
    ]
    kind = "shield" if link == "tls" else "shield-wss"
    return Deployment(kind, topology, backend_port, gateways, {"tls": backplane_suite(dmz)})


def start_shield_wss(folder: Path, backend_port: int) -> Deployment:
    """As ``start_shield``, with the links over the WebSocket backplane (wss://)."""
    return start_shield(folder, backend_port, "wss")


def backplane_suite(dmz: Process, timeout: float = TLS_LOG_TIMEOUT) -> str:
    """The TLS version and cipher suite of the backplane, as the DMZ logged them when a link came up.

    The suite decides much of what a byte costs on the backplane (AES-GCM with AES-NI, or
    ChaCha20 without), so the report records it next to ssh's cipher. The links come up just
    before the DMZ is ready; the line is waited for a little in case it is written later.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = TLS_UP.search(dmz.log())
        if found:
            return found.group(1)
        if time.monotonic() > deadline or not dmz.alive():
            return "? (no 'TLS up (...)' line in the DMZ's log)"
        time.sleep(0.1)


def shield_wss_targets(deployment: Deployment) -> list[Target]:
    return [Target("shield-tcp-wss", "shield tcp:// (wss:// links)", "tcp", deployment, port=deployment.topology.port(f"tcp-{SERVICE}"))]


def shield_targets(deployment: Deployment) -> list[Target]:
    topology = deployment.topology
    return [
        Target("shield-ws", "shield ws://", "ws", deployment, url=topology.url(f"ws-{SERVICE}", "ws", f"/{SERVICE}")),
        Target("shield-tcp", "shield tcp://", "tcp", deployment, port=topology.port(f"tcp-{SERVICE}")),
    ]


# -- OpenSSH --------------------------------------------------------------------------------------


def _ssh_base(key: Path, port: int) -> list[str]:
    return [
        "ssh", "-F", "/dev/null",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
        "-i", str(key), "-p", str(port),
    ]


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)


def ssh_unavailable(cipher: str | None = None) -> str | None:
    """Why ``ssh -R`` (forced to ``cipher``) cannot be measured here, or None if it can."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is missing: install Debian's openssh-server (make bench and make test do)"
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: install Debian's openssh-client (make bench and make test do)"
    if os.geteuid() != 0:
        return "sshd needs root here (its privilege-separation directory, logging in as the current user)"
    if cipher == AES_CIPHER and "aes" not in cpu_flags():
        return f"the CPU has no AES instructions (no 'aes' flag in /proc/cpuinfo): {AES_CIPHER} would only measure software AES"
    return None


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def start_ssh(folder: Path, backend_port: int, cipher: str | None = None) -> Deployment:
    """``sshd`` on 127.0.0.1 with generated keys, and ``ssh -N -R`` forwarding a port to the backend.

    ``cipher`` forces the ssh client's cipher (``-c``); None leaves OpenSSH's default
    negotiation. sshd runs as users run it: no TCP_NODELAY or other tuning.
    """
    reason = ssh_unavailable(cipher)
    if reason is not None:
        raise RuntimeError(reason)
    topology = _topology(folder, backend_port, ["sshd", "tunnel"])
    try:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        host_key, user_key = folder / "ssh_host_ed25519_key", folder / "id_ed25519"
        _keygen(host_key, "shield-bench-host")
        _keygen(user_key, "shield-bench-user")
        authorized = folder / "authorized_keys"
        shutil.copy(f"{user_key}.pub", authorized)
        user = getpass.getuser()
        sshd_port, tunnel_port = topology.port("sshd"), topology.port("tunnel")
        config = topology.write(
            "sshd_config",
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"Port {sshd_port}",
                    f"HostKey {host_key}",
                    f"AuthorizedKeysFile {authorized}",
                    f"PidFile {folder / 'sshd.pid'}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "GatewayPorts no",
                    "AllowTcpForwarding yes",
                    f"AllowUsers {user}",
                    "LogLevel ERROR",
                ]
            )
            + "\n",
        )
        sshd = Process("sshd", [SSHD, "-D", "-e", "-f", str(config)], folder / "sshd.log", folder).start()
        topology.processes.append(sshd)
        wait_port(sshd_port, process=sshd)
        base = _ssh_base(user_key, sshd_port) + (["-c", cipher] if cipher else [])
        info = _ssh_info(base, user)
        forward = f"127.0.0.1:{tunnel_port}:127.0.0.1:{backend_port}"
        argv = base + ["-N", "-o", "ExitOnForwardFailure=yes", "-R", forward, f"{user}@127.0.0.1"]
        ssh = Process("ssh", argv, folder / "ssh.log", folder).start()
        topology.processes.append(ssh)
        wait_port(tunnel_port, process=ssh)
    except BaseException:
        topology.close()
        raise
    gateways = [
        Gateway("sshd", sshd.pid, {sshd_port: "backplane", tunnel_port: "frontplane"}, "public", tree=True),
        Gateway("ssh", ssh.pid, {sshd_port: "backplane", backend_port: "backend"}, "inner"),
    ]
    return Deployment("ssh-aes" if cipher else "ssh", topology, backend_port, gateways, info)


def start_ssh_aes(folder: Path, backend_port: int) -> Deployment:
    return start_ssh(folder, backend_port, AES_CIPHER)


def _ssh_info(base: list[str], user: str) -> dict[str, object]:
    """The OpenSSH version and the cipher, MAC and key exchange it really negotiates with ``base``'s options."""
    version = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    probe = subprocess.run(
        [part if part != "LogLevel=ERROR" else "LogLevel=DEBUG1" for part in base] + [f"{user}@127.0.0.1", "true"],
        capture_output=True, text=True, timeout=60,
    )
    if probe.returncode != 0:
        raise RuntimeError(f"ssh to the benchmark sshd failed ({probe.returncode}):\n{probe.stderr[-3000:]}")
    match = re.search(r"kex: server->client cipher: (\S+) MAC: (\S+) compression: (\S+)", probe.stderr)
    kex = re.search(r"kex: algorithm: (\S+)", probe.stderr)
    configured = subprocess.run(base + ["-G", f"{user}@127.0.0.1"], capture_output=True, text=True).stdout
    ciphers = next((line.split()[1] for line in configured.splitlines() if line.startswith("ciphers ")), "?")
    return {
        "openssh_version": version,
        "cipher": match.group(1) if match else "?",
        "mac": match.group(2) if match else "?",
        "compression": match.group(3) if match else "?",
        "kex": kex.group(1) if kex else "?",
        "ciphers_offered": ciphers,
    }


def ssh_targets(deployment: Deployment) -> list[Target]:
    name = deployment.kind
    return [Target(name, LABELS[name], "tcp", deployment, port=deployment.topology.port("tunnel"))]


# -- direct ---------------------------------------------------------------------------------------


def start_direct(folder: Path, backend_port: int) -> Deployment:
    """Nothing to start: the client connects to the backend."""
    return Deployment("direct", _topology(folder, backend_port, []), backend_port)


def direct_targets(deployment: Deployment) -> list[Target]:
    return [Target("direct", "direct", "tcp", deployment, port=deployment.backend_port)]


STARTERS = {
    "shield": (start_shield, shield_targets),
    "shield-wss": (start_shield_wss, shield_wss_targets),
    "ssh": (start_ssh, ssh_targets),
    "ssh-aes": (start_ssh_aes, ssh_targets),
    "direct": (start_direct, direct_targets),
}

#: Target name -> the deployment kind that serves it, in the order tables list them.
TARGETS = {
    "shield-ws": "shield", "shield-tcp": "shield", "shield-tcp-wss": "shield-wss",
    "ssh": "ssh", "ssh-aes": "ssh-aes", "direct": "direct",
}  # fmt: skip
LABELS = {
    "shield-ws": "shield ws://", "shield-tcp": "shield tcp://", "shield-tcp-wss": "shield tcp:// wss-link",
    "ssh": "ssh -R", "ssh-aes": "ssh -R aes-gcm", "direct": "direct",
}  # fmt: skip
#: Targets measured in some scenarios only: the WebSocket backplane is compared with the TLS one
#: where a link's cost shows (throughput and round trips), not in every scenario again.
ONLY_IN = {"shield-tcp-wss": frozenset({"bulk", "rr"})}


def measured_in(target: str, scenario: str) -> bool:
    """Whether ``target`` runs in ``scenario`` (``rr_c16_s1024`` and the like count as ``rr``,
    ``bulk_up`` and ``bulk_down`` as ``bulk``)."""
    only = ONLY_IN.get(target)
    return only is None or scenario.split("_")[0] in only
#: The ``ssh -R`` targets: the baseline of every ratio is the faster of them, metric by metric.
SSH_TARGETS = ("ssh", "ssh-aes")
#: Where a deployment's ``info`` goes in the report's environment: key prefix per kind.
ENV_PREFIX = {"shield": "shield_", "shield-wss": "shield_wss_", "ssh": "ssh_", "ssh-aes": "ssh_aes_", "direct": "direct_"}


def unavailable(name: str) -> str | None:
    """Why target ``name`` cannot run on this machine, or None."""
    if name == "ssh":
        return ssh_unavailable()
    if name == "ssh-aes":
        return ssh_unavailable(AES_CIPHER)
    return None


def start(kind: str, folder: Path, backend_port: int) -> tuple[Deployment, list[Target]]:
    starter, targets = STARTERS[kind]
    deployment = starter(folder, backend_port)
    return deployment, targets(deployment)

