"""A real public / DMZ / trusted network on one Linux machine: network namespaces, veth pairs, iptables.

Three namespaces per topology, named ``shn<pid>x<n>-public``, ``-dmz`` and ``-trusted`` (the pid
of the test run and a counter, so parallel runs and stale leftovers are told apart)::

    public 10.231.1.2 --pub0------dmz-pub-- 10.231.1.1  dmz  10.231.2.1 --dmz-a----trust-a-- 10.231.2.2 trusted
                                                             10.231.3.1 --dmz-b----trust-b-- 10.231.3.2

Path A and path B are two separate links between the DMZ and the trusted host, so two connectors
can reach the DMZ over different paths and one path can be cut on its own. The veth ends are
created directly inside their namespaces, so interface names never meet in the host's namespace
and the host gets no address or route of ours. There is no routing between the namespaces: each
one reaches only the subnets it is attached to.

The firewalls are iptables rules inside the namespaces (``firewall_trusted``, ``firewall_dmz``):
the trusted host accepts no inbound connection at all; the DMZ accepts the frontplane ports from
the public side and the backplane port from the trusted side, nothing else.

The test process itself can act as a host in any namespace: ``socket_in`` creates a socket in a
namespace (a socket belongs to the namespace it was created in, whatever thread uses it later), so
clients and probes need no extra process. Gateways and backends run under ``ip netns exec``.

Other tests build topologies of their own from the same pieces (``Namespaces.add``, ``add_veth``,
``add_bridge``, ``hosts_file``) and run their processes with ``Lab``. A namespace of any role
``shn<pid>x<n>-<role>`` is ours, and is deleted as stale once the run that made it is gone, with
its ``/etc/netns/<name>`` folder.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from harness import HERE, Process, make_certs, twistd

#: ``ip`` and ``iptables`` live in /usr/sbin, which a non-root PATH may lack.
_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
IP = shutil.which("ip", path=_SBIN_PATH)
IPTABLES = shutil.which("iptables", path=_SBIN_PATH)
NETNS_DIR = Path("/run/netns")
#: ``ip netns exec NAME`` bind-mounts every file of /etc/netns/NAME over the one of /etc.
ETC_NETNS = Path("/etc/netns")

PREFIX = "shn"
#: Every namespace this module creates: shn<pid>x<n>-<role>.
_OURS = re.compile(rf"^{PREFIX}(\d+)x(\d+)-([a-z][a-z0-9-]*)$")
_counter = itertools.count()

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

# The addresses: only ever configured inside namespaces this module created.
PUBLIC_IP = "10.231.1.2"
DMZ_PUBLIC_IP = "10.231.1.1"
DMZ_A_IP = "10.231.2.1"
TRUSTED_A_IP = "10.231.2.2"
DMZ_B_IP = "10.231.3.1"
TRUSTED_B_IP = "10.231.3.2"


@dataclass(frozen=True)
class Veth:
    """One veth pair: ``left_if`` in namespace role ``left`` and ``right_if`` in ``right``."""

    left: str
    left_if: str
    left_ip: str | None  # None: no address (a bridge port)
    right: str
    right_if: str
    right_ip: str | None
    prefix_len: int = 24


VETHS = {
    "public": Veth("public", "pub0", PUBLIC_IP, "dmz", "dmz-pub", DMZ_PUBLIC_IP),
    "a": Veth("dmz", "dmz-a", DMZ_A_IP, "trusted", "trust-a", TRUSTED_A_IP),
    "b": Veth("dmz", "dmz-b", DMZ_B_IP, "trusted", "trust-b", TRUSTED_B_IP),
}


class NetnsUnavailable(Exception):
    """Network namespaces (or iptables in them) cannot be used on this machine."""


def run(argv: list[str], input: bytes | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[bytes]:
    """Run a command, raising with its output when it fails."""
    done = subprocess.run(argv, input=input, capture_output=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.decode(errors='replace').strip()}"
        )
    return done


def list_namespaces() -> list[str]:
    assert IP is not None
    out = run([IP, "netns", "list"]).stdout.decode()
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete namespaces of ours whose test run (by pid) is gone: leftovers of a crashed run.

    The gateways and backends that run left inside them (they have sessions of their own, so they
    outlive a killed pytest) are killed first, by the pids ``ip netns pids`` names.
    """
    removed = []
    for name in list_namespaces():
        match = _OURS.match(name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            pids = subprocess.run([IP, "netns", "pids", name], capture_output=True)  # type: ignore[list-item]
            for pid in pids.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run([IP, "netns", "delete", name], capture_output=True)  # type: ignore[list-item]
            removed.append(name)
    # /etc/netns/<name> folders (hosts files) of runs that are gone, their namespace deleted or not.
    if ETC_NETNS.is_dir():
        for folder in ETC_NETNS.iterdir():
            match = _OURS.match(folder.name)
            if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
                shutil.rmtree(folder, ignore_errors=True)
                try:
                    ETC_NETNS.rmdir()  # only when empty
                except OSError:
                    pass
    return removed


def check_available() -> None:
    """Raise ``NetnsUnavailable`` saying why, unless namespaces and iptables in them work here."""
    if os.geteuid() != 0:
        raise NetnsUnavailable(f"network namespaces need root (running as uid {os.geteuid()})")
    if IP is None:
        raise NetnsUnavailable("no `ip` command (Debian package iproute2)")
    if IPTABLES is None:
        raise NetnsUnavailable("no `iptables` command (Debian package iptables)")
    probe = f"{PREFIX}{os.getpid()}x{next(_counter)}-probe"
    try:
        run([IP, "netns", "add", probe])
    except (RuntimeError, OSError) as problem:
        raise NetnsUnavailable(f"cannot create a network namespace: {problem}") from None
    try:
        run([IP, "netns", "exec", probe, IPTABLES, "-w", "-S", "INPUT"])
    except (RuntimeError, OSError) as problem:
        raise NetnsUnavailable(f"iptables does not work inside a network namespace: {problem}") from None
    finally:
        subprocess.run([IP, "netns", "delete", probe], capture_output=True)


def _enter_and_call(namespace: str, make):  # type: ignore[no-untyped-def]
    """Call ``make()`` on a short-lived thread that first joins ``namespace`` (setns)."""
    result: dict[str, object] = {}

    def work() -> None:
        try:
            fd = os.open(NETNS_DIR / namespace, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns({namespace}): {os.strerror(errno)}")
            finally:
                os.close(fd)
            result["value"] = make()
        except BaseException as problem:  # handed to the caller's thread
            result["error"] = problem

    thread = threading.Thread(target=work, name=f"setns-{namespace}")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]


@dataclass
class Namespaces:
    """The three namespaces of one topology, their veths and their firewalls."""

    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}x{next(_counter)}-")
    created: list[str] = field(default_factory=list)
    veths: list[Veth] = field(default_factory=list)
    etc_folders: list[Path] = field(default_factory=list)  # /etc/netns/<name> made by hosts_file

    def name(self, role: str) -> str:
        """The namespace name of ``role`` (public, dmz or trusted)."""
        return f"{self.tag}{role}"

    # -- set-up and tear-down -----------------------------------------------------------------

    def create(self) -> "Namespaces":
        """The public / DMZ / trusted topology of the module docstring."""
        for role in ("public", "dmz", "trusted"):
            self.add(role)
        for veth in VETHS.values():
            self.add_veth(veth)
        return self

    def add(self, role: str) -> str:
        """A new namespace for ``role``, its loopback up; returns its name."""
        assert IP is not None
        run([IP, "netns", "add", self.name(role)])
        self.created.append(self.name(role))
        self.ip(role, "link", "set", "lo", "up")
        return self.name(role)

    def add_veth(self, veth: Veth) -> None:
        """A veth pair between two namespaces of this topology, addressed (unless None) and up."""
        assert IP is not None
        left, right = self.name(veth.left), self.name(veth.right)
        run([IP, "link", "add", veth.left_if, "netns", left, "type", "veth",
             "peer", "name", veth.right_if, "netns", right])
        for role, interface, address in ((veth.left, veth.left_if, veth.left_ip),
                                         (veth.right, veth.right_if, veth.right_ip)):
            if address is not None:
                self.ip(role, "addr", "add", f"{address}/{veth.prefix_len}", "dev", interface)
            self.ip(role, "link", "set", interface, "up")
        self.veths.append(veth)

    def add_bridge(self, role: str, bridge: str, ports: list[str]) -> None:
        """A bridge in ``role`` (a switch) with ``ports`` (veth ends already in ``role``) enslaved.

        IGMP snooping is off: the bridge floods multicast to every port, as a plain switch
        does, whether or not some querier on the segment keeps group memberships fresh.
        """
        self.ip(role, "link", "add", bridge, "type", "bridge", "mcast_snooping", "0")
        for port in ports:
            self.ip(role, "link", "set", port, "master", bridge)
        self.ip(role, "link", "set", bridge, "up")

    def hosts_file(self, role: str, text: str) -> Path:
        """Write /etc/netns/<name>/hosts: the /etc/hosts of processes started in ``role`` from now on.

        ``ip netns exec`` bind-mounts the file over /etc/hosts when it starts a process, so
        the file must exist before the process starts. Later writes are made in place (truncate
        and write, one inode), so running processes see them at their next look-up: a new file
        renamed over it would leave them the old inode. ``delete`` removes the whole folder.
        """
        folder = ETC_NETNS / self.name(role)
        if folder not in self.etc_folders:
            for attempt in range(3):  # another run may remove an empty /etc/netns meanwhile (see delete)
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    break
                except FileNotFoundError:
                    if attempt == 2:
                        raise
            self.etc_folders.append(folder)
        path = folder / "hosts"
        with open(path, "w") as hosts:  # O_TRUNC: the same inode
            hosts.write(text)
        return path

    def delete(self) -> None:
        """Delete every namespace made here (their veths go with them) and its /etc/netns folder; never raises."""
        for name in reversed(self.created):
            subprocess.run([IP, "netns", "delete", name], capture_output=True)  # type: ignore[list-item]
        self.created.clear()
        for folder in self.etc_folders:
            shutil.rmtree(folder, ignore_errors=True)
        if self.etc_folders:
            try:
                ETC_NETNS.rmdir()  # only when empty: other runs' and the system's folders stay
            except OSError:
                pass
        self.etc_folders.clear()

    # -- commands inside a namespace ----------------------------------------------------------

    def ip(self, role: str, *args: str) -> str:
        assert IP is not None
        return run([IP, "-n", self.name(role), *args]).stdout.decode()

    def exec(self, role: str, *argv: str, input: bytes | None = None) -> str:
        assert IP is not None
        return run([IP, "netns", "exec", self.name(role), *argv], input=input).stdout.decode()

    def iptables(self, role: str, *args: str) -> str:
        assert IPTABLES is not None
        return self.exec(role, IPTABLES, "-w", *args)

    def rules(self, role: str) -> str:
        """``iptables -S`` with counters, for failure messages."""
        return self.iptables(role, "-S", "-v")

    def wrap(self, role: str, argv: list[str]) -> list[str]:
        """``argv`` run inside ``role``'s namespace."""
        assert IP is not None
        return [IP, "netns", "exec", self.name(role), *argv]

    def process(self, role: str, process: Process) -> Process:
        """``process`` (not started yet) made to run inside ``role``'s namespace."""
        process.argv = self.wrap(role, process.argv)
        return process

    # -- firewalls -----------------------------------------------------------------------------

    def firewall_trusted(self) -> None:
        """The trusted host accepts nothing: only loopback and answers to its own connections."""
        self._restore("trusted", [
            "-A INPUT -i lo -j ACCEPT",
            "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        ])

    def firewall_dmz(self, frontplane_ports: list[int], backplane_port: int) -> None:
        """Public side: TCP to the frontplane ports only. Trusted side (both paths): the backplane only."""
        rules = [
            "-A INPUT -i lo -j ACCEPT",
            "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        ]
        public_if = VETHS["public"].right_if
        for port in frontplane_ports:
            rules.append(f"-A INPUT -i {public_if} -p tcp -m tcp --dport {port} -j ACCEPT")
        for path in ("a", "b"):
            rules.append(f"-A INPUT -i {VETHS[path].left_if} -p tcp -m tcp --dport {backplane_port} -j ACCEPT")
        self._restore("dmz", rules)

    def _restore(self, role: str, rules: list[str]) -> None:
        """Replace the filter table of ``role`` at once: INPUT and FORWARD drop, OUTPUT accepts."""
        assert IPTABLES is not None
        table = "\n".join(["*filter", ":INPUT DROP [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]",
                           *rules, "COMMIT", ""])
        restore = str(Path(IPTABLES).with_name("iptables-restore"))
        self.exec(role, restore, "-w", input=table.encode())

    def partition(self, path: str) -> None:
        """Cut DMZ <-> trusted path ``path`` silently: DROP both ways in the DMZ, established traffic too."""
        interface = VETHS[path].left_if
        self.iptables("dmz", "-I", "INPUT", "1", "-i", interface, "-j", "DROP")
        self.iptables("dmz", "-I", "OUTPUT", "1", "-o", interface, "-j", "DROP")

    def heal(self, path: str) -> None:
        interface = VETHS[path].left_if
        self.iptables("dmz", "-D", "INPUT", "-i", interface, "-j", "DROP")
        self.iptables("dmz", "-D", "OUTPUT", "-o", interface, "-j", "DROP")

    # -- the test process as a host in a namespace ----------------------------------------------

    def socket(self, role: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A new socket in ``role``'s namespace."""
        return _enter_and_call(self.name(role), lambda: socket.socket(family, kind))

    def connect(self, role: str, host: str, port: int, timeout: float = 5.0) -> socket.socket:
        """A TCP connection from ``role`` to ``host:port`` (blocking, with ``timeout``)."""
        sock = self.socket(role)
        try:
            sock.settimeout(timeout)
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        self._check_source(role, sock)
        return sock

    def _check_source(self, role: str, sock: socket.socket) -> None:
        """Guard against a socket that is not where it should be (the host may answer any address)."""
        source = sock.getsockname()[0]
        mine = {"127.0.0.1"} | {
            address
            for veth in self.veths
            for side, address in ((veth.left, veth.left_ip), (veth.right, veth.right_ip))
            if side == role and address is not None
        }
        assert source in mine, f"socket of namespace {role} has source address {source}, not one of {sorted(mine)}"

    def try_connect(self, role: str, host: str, port: int, timeout: float = 2.0) -> str:
        """``connected``, ``timeout`` (dropped), ``refused`` (RST) or another error, from ``role``."""
        try:
            self.connect(role, host, port, timeout).close()
            return "connected"
        except socket.timeout:
            return "timeout"
        except ConnectionRefusedError:
            return "refused"
        except OSError as problem:
            return f"error: {problem}"

    def listen(self, role: str, host: str, port: int) -> socket.socket:
        """A listening TCP socket in ``role``; connections complete in its backlog, nobody accepts."""
        sock = self.socket(role)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(16)
        return sock

    def http_get(self, role: str, url: str, timeout: float = 5.0) -> tuple[int, str]:
        """A plain HTTP/1.0 GET from ``role`` (for the admin endpoints): (status, body)."""
        parts = urllib.parse.urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        with self.connect(role, parts.hostname, parts.port, timeout) as sock:
            sock.sendall(f"GET {parts.path or '/'} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode())
            chunks = []
            deadline = time.monotonic() + timeout
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"GET {url}: no end of answer within {timeout} s")
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return status, body.decode(errors="replace")


# -- shield on the namespaces --------------------------------------------------------------------

#: Fixed ports: every namespace is new, so nothing else can hold them.
WS_PORT = 8080
TCP_PORT = 9000
BACKPLANE_PORT = 5941
DMZ_ADMIN_PORT = 9100
WS_URL = f"ws://{DMZ_PUBLIC_IP}:{WS_PORT}/echo"
TCP_URL = f"tcp://{DMZ_PUBLIC_IP}:{TCP_PORT}"


@dataclass(frozen=True)
class Connector:
    """A connector in the trusted namespace, its path to the DMZ and its own echo backend."""

    name: str
    priority: int
    dmz_address: str  # the backplane address it dials: path A or path B
    admin_port: int
    backend_port: int


CONNECTORS = {
    "primary": Connector("primary", 200, DMZ_A_IP, 9101, 7001),
    "standby": Connector("standby", 100, DMZ_B_IP, 9102, 7002),
}


@dataclass
class ShieldNet:
    """A DMZ gateway in ``dmz``, connectors and echo backends in ``trusted``, clients in ``public``."""

    folder: Path
    ns: Namespaces
    links: int = 2
    keepalive_interval: float = 1.0
    keepalive_misses: int = 3
    processes: dict[str, Process] = field(default_factory=dict)

    # -- configs ----------------------------------------------------------------------------------

    def write_configs(self, connectors: list[str]) -> None:
        make_certs(self.folder / "certs", ["dmz1"], connectors)
        keepalive = [f"keepalive-interval = {self.keepalive_interval:g}", f"keepalive-misses = {self.keepalive_misses}"]
        dmz = [
            "[dmz]",
            'name = "dmz1"',
            # Every address: only the firewall keeps the public side away from it.
            f'admin = "http://0.0.0.0:{DMZ_ADMIN_PORT}"',
            "grace-period = 5",
            "[dmz.backplane]",
            f'accept = "tls://0.0.0.0:{BACKPLANE_PORT}"',
            'cert = "certs/dmz1.pem"',
            'ca = "certs/ca.pem"',
            *keepalive,
            "[dmz.backplane.connectors]",
            *(f'{name} = ["echo"]' for name in connectors),
            "[[dmz.service]]",
            'name = "echo"',
            f'accept = ["{WS_URL}", "{TCP_URL}"]',
        ]
        (self.folder / "dmz.toml").write_text("\n".join(dmz) + "\n")
        for name in connectors:
            connector = CONNECTORS[name]
            internal = [
                "[internal]",
                f'name = "{name}"',
                f'admin = "http://0.0.0.0:{connector.admin_port}"',
                f"priority = {connector.priority}",
                "grace-period = 5",
                "[internal.backplane]",
                f'connect = ["tls://{connector.dmz_address}:{BACKPLANE_PORT}"]',
                'server-name = "dmz1"',
                f"links = {self.links}",
                f'cert = "certs/{name}.pem"',
                'ca = "certs/ca.pem"',
                *keepalive,
                "[[internal.service]]",
                'name = "echo"',
                f'connect = "tcp://127.0.0.1:{connector.backend_port}"',
                "connect-timeout = 3",
                'health-check = "off"',  # the tests count the backend's connections
            ]
            (self.folder / f"{name}.toml").write_text("\n".join(internal) + "\n")

    # -- processes ----------------------------------------------------------------------------------

    def _start(self, role: str, process: Process) -> Process:
        self.processes[process.name] = self.ns.process(role, process).start()
        return self.processes[process.name]

    def start(self, connectors: list[str], timeout: float = 60.0) -> None:
        """Firewalls, backends, the DMZ and ``connectors``; returns once every link is announced."""
        self.ns.firewall_trusted()
        self.ns.firewall_dmz([WS_PORT, TCP_PORT], BACKPLANE_PORT)
        self.write_configs(connectors)
        for name in connectors:
            port = CONNECTORS[name].backend_port
            argv = [sys.executable, str(HERE / "backend.py"), "echo", str(port)]
            backend = self._start("trusted", Process(f"backend-{name}", argv, self.folder / f"backend-{name}.log", self.folder))
            backend.wait_for_log("listening", timeout)
        dmz = self._start("dmz", twistd("dmz", "shield-dmz", self.folder / "dmz.toml", self.folder))
        dmz.wait_for_log("ready for connectors", timeout)
        for name in connectors:
            self._start("trusted", twistd(name, "shield-internal", self.folder / f"{name}.toml", self.folder))
        for name in connectors:
            self.wait_announced(name, self.links, timeout)
            self.wait_http_ok("trusted", f"http://127.0.0.1:{CONNECTORS[name].admin_port}/readyz", timeout, name)
        self.wait_http_ok("dmz", f"http://127.0.0.1:{DMZ_ADMIN_PORT}/readyz", timeout, "dmz")

    def announced(self, connector: str) -> int:
        """How many links of ``connector`` the DMZ has accepted so far (from its log)."""
        return self.process("dmz").log().count(f"connector {connector!r} (priority")

    def wait_announced(self, connector: str, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.announced(connector) < count:
            if time.monotonic() > deadline or not self.process(connector).alive():
                raise AssertionError(
                    f"DMZ accepted {self.announced(connector)} of {count} links of {connector} within {timeout} s\n"
                    + self.tails(["dmz", connector])
                )
            time.sleep(0.05)

    def wait_http_ok(self, role: str, url: str, timeout: float, name: str) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                status, body = self.ns.http_get(role, url, timeout=2.0)
                if status == 200:
                    return
                last = f"{status} {body}"
            except OSError as problem:
                last = str(problem)
            time.sleep(0.1)
        raise AssertionError(f"{url} in {role}: not 200 within {timeout} s (last: {last})\n" + self.tails([name]))

    def process(self, name: str) -> Process:
        return self.processes[name]

    def connections(self, connector: str) -> int:
        """How many connections the echo backend of ``connector`` has had: who served a client."""
        return self.process(f"backend-{connector}").log().count("connection from")

    def tails(self, names: list[str] | None = None, size: int = 4000) -> str:
        return "\n".join(
            f"----- {name} log -----\n{process.log()[-size:]}"
            for name, process in self.processes.items()
            if names is None or name in names
        )

    def close(self) -> None:
        """Kill every process, then delete the namespaces. Never raises."""
        for process in reversed(list(self.processes.values())):
            try:
                process.kill()
            except Exception:  # noqa: BLE001 - keep cleaning up
                pass
        self.ns.delete()


# -- any topology: processes in namespaces ---------------------------------------------------------


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition: ``'name{labels}'`` (as written) -> value; comments skipped."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        values[series] = float(value)
    return values


@dataclass
class Lab:
    """Processes (gateways, backends) run in the namespaces of ``ns``; logs in ``folder``."""

    folder: Path
    ns: Namespaces
    processes: dict[str, Process] = field(default_factory=dict)

    def start(self, role: str, process: Process) -> Process:
        """``process`` started inside ``role``'s namespace, under its own name."""
        assert process.name not in self.processes, process.name
        self.processes[process.name] = self.ns.process(role, process).start()
        return self.processes[process.name]

    def process(self, name: str) -> Process:
        return self.processes[name]

    def metrics(self, role: str, port: int) -> dict[str, float]:
        """The /metrics of the admin endpoint on ``127.0.0.1:port`` in ``role``."""
        status, body = self.ns.http_get(role, f"http://127.0.0.1:{port}/metrics")
        assert status == 200, f"/metrics in {role}: {status} {body[:200]}"
        return parse_metrics(body)

    def tails(self, names: list[str] | None = None, size: int = 4000) -> str:
        return "\n".join(
            f"----- {name} log -----\n{process.log()[-size:]}"
            for name, process in self.processes.items()
            if names is None or name in names
        )

    def close(self) -> None:
        """Kill every process, then delete the namespaces and their /etc/netns folders. Never raises."""
        for process in reversed(list(self.processes.values())):
            try:
                process.kill()
            except Exception:  # noqa: BLE001 - keep cleaning up
                pass
        self.ns.delete()
