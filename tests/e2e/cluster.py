"""A two-or-more-member DMZ cluster on 127.0.0.x for end-to-end tests, with a balancer on each.

Member i listens on 127.0.0.(i+1): its balancer accepts share one port number across members, as
a DNS name with one address per member would have it; clients try the addresses in order, as
clients of such a name do. Every member lists every other one in ``members``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness import Process, Topology, free_port, toml_list, twistd, wait_ready


@dataclass
class Cluster:
    topology: Topology
    members: list[str]
    connectors: list[str]
    mode: str = "proxy"
    heartbeat: float = 0.2
    processes: dict[str, Process] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.topology.certs(self.connectors, self.members)
        self.balancer_ws = free_port()
        self.balancer_tcp = free_port()

    @property
    def folder(self) -> Path:
        return self.topology.folder

    def host(self, member: str) -> str:
        return f"127.0.0.{self.members.index(member) + 1}"

    def port(self, name: str) -> int:
        return self.topology.port(name)

    def balancer_addresses(self, kind: str = "ws") -> list[tuple[str, int]]:
        port = self.balancer_ws if kind == "ws" else self.balancer_tcp
        return [(self.host(m), port) for m in self.members]

    def admin(self, name: str) -> str:
        return self.topology.url(f"admin-{name}")

    def write_member(self, member: str, extra_service: str = "", grace: float = 10) -> Path:
        host = self.host(member)
        peers = [f"tls://{self.host(m)}:{self.port(f'cluster-{m}')}" for m in self.members]
        lines = [
            "[dmz]",
            f'name = "{member}"',
            f'admin = "{self.admin(member)}"',
            f"grace-period = {grace}",
            "[dmz.backplane]",
            f'accept = "tls://127.0.0.1:{self.port(f"backplane-{member}")}"',
            f'cert = "certs/{member}.pem"',
            'ca = "certs/ca.pem"',
            "keepalive-interval = 1",
            "[dmz.backplane.connectors]",
        ]
        lines += [f'{c} = ["echo"]' for c in self.connectors]
        lines += [
            "[dmz.cluster]",
            'name = "c1"',
            f'accept = "tls://{host}:{self.port(f"cluster-{member}")}"',
            f"members = {toml_list(peers)}",
            f"heartbeat-interval = {self.heartbeat}",
            "[[dmz.service]]",
            'name = "echo"',
            f'accept = ["ws://127.0.0.1:{self.port(f"ws-{member}")}/echo", '
            f'"tcp://127.0.0.1:{self.port(f"tcp-{member}")}"]',
            f'balance = ["ws://front.test:{self.balancer_ws}/echo", "tcp://front.test:{self.balancer_tcp}"]',
            extra_service,
            "[[dmz.service]]",
            'name = "front"',
            'type = "balancer"',
            f'mode = "{self.mode}"',
        ]
        if self.mode == "proxy":
            lines.append(f'accept = ["ws://{host}:{self.balancer_ws}/echo", "tcp://{host}:{self.balancer_tcp}"]')
        else:
            lines.append(f'accept = ["ws://{host}:{self.balancer_ws}/echo"]')
        return self.topology.write(f"{member}.toml", "\n".join(lines) + "\n")

    def member_ws_url(self, member: str) -> str:
        """The member's own WebSocket accept of service echo (where a redirect sends clients)."""
        return f"ws://127.0.0.1:{self.port(f'ws-{member}')}/echo"

    def member_tcp(self, member: str) -> tuple[str, int]:
        """The member's own TCP accept of service echo."""
        return "127.0.0.1", self.port(f"tcp-{member}")

    def write_connector(
        self,
        name: str,
        backend: str,
        priority: int = 100,
        members: list[str] | None = None,
        grace: float = 10,
    ) -> Path:
        """``members``: the DMZ members whose backplanes it dials (default: all of them)."""
        dialled = self.members if members is None else members
        connect = [f"tls://127.0.0.1:{self.port(f'backplane-{m}')}" for m in dialled]
        lines = [
            "[internal]",
            f'name = "{name}"',
            f'admin = "{self.admin(name)}"',
            f"priority = {priority}",
            f"grace-period = {grace:g}",
            "[internal.backplane]",
            f"connect = {toml_list(connect)}",
            'server-name = "localhost"',
            "links = 1",
            f'cert = "certs/{name}.pem"',
            'ca = "certs/ca.pem"',
            "keepalive-interval = 1",
            "[[internal.service]]",
            'name = "echo"',
            f'connect = "{backend}"',
            'health-check = "off"',  # the tests count the backend's connections
        ]
        return self.topology.write(f"{name}.toml", "\n".join(lines) + "\n")

    def start(self, name: str, plugin: str, wait: bool = True) -> Process:
        process = twistd(name, plugin, self.folder / f"{name}.toml", self.folder).start()
        self.topology.processes.append(process)
        self.processes[name] = process
        if wait:
            wait_ready(self.admin(name), process=process)
        return process

    def start_member(self, member: str, wait: bool = True) -> Process:
        return self.start(member, "shield-dmz", wait)

    def start_connector(self, name: str, wait: bool = True) -> Process:
        return self.start(name, "shield-internal", wait)
