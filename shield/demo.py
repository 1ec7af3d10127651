"""``shield demo``: a DMZ gateway, a connector and an echo backend on 127.0.0.1, in the foreground.

The gateways run as real ``twistd -n`` processes with generated configs and dev certificates, so
the demo is the product, not a simulation. Ctrl-C stops all three.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

from typing import cast

from twisted.internet import protocol
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.web.client import Agent, readBody
from shield.transports import IGatewayReactor, IStreamTransport

reactor = cast(IGatewayReactor, _reactor)

DMZ_NAME = "dmz1"
CONNECTOR = "internal1"
PORTS = {"ws": 8080, "tcp": 9000, "backplane": 5941, "dmz-admin": 9100, "internal-admin": 9101, "echo": 7000}

DMZ_TOML = """\
[properties]
"gateway.ip.address" = "127.0.0.1"

[dmz]
name = "{dmz}"
admin = "http://${{gateway.ip.address}}:{dmz_admin}"
grace-period = 5

[dmz.backplane]
accept = "tls://${{gateway.ip.address}}:{backplane}"
cert = "certs/{dmz}.pem"
ca = "certs/ca.pem"

[dmz.backplane.connectors]
{connector} = ["echo"]

[[dmz.service]]
name = "echo"
accept = ["ws://${{gateway.ip.address}}:{ws}/echo", "tcp://${{gateway.ip.address}}:{tcp}"]
allow-origin = ["*"]
"""

INTERNAL_TOML = """\
[internal]
name = "{connector}"
admin = "http://127.0.0.1:{internal_admin}"
priority = 100
grace-period = 5

[internal.backplane]
connect = ["tls://127.0.0.1:{backplane}"]
server-name = "{dmz}"
links = 2
cert = "certs/{connector}.pem"
ca = "certs/ca.pem"

[[internal.service]]
name = "echo"
connect = "tcp://127.0.0.1:{echo}"
"""


class Echo(protocol.Protocol):
    transport: IStreamTransport  # connected before any event reaches the protocol

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class Child(protocol.ProcessProtocol):
    """A gateway process whose output is shown with a prefix."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        for line in data.decode(errors="replace").splitlines():
            print(f"[{self.name}] {line}", flush=True)

    errReceived = outReceived

    def processEnded(self, reason: object) -> None:
        self.ended.callback(None)


def _busy_ports() -> list[str]:
    busy = []
    for name, port in PORTS.items():
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                busy.append(f"{name} port {port}")
    return busy


def run_echo_backend(listen: str) -> int:
    """``shield echo-backend``: echo every byte back, until SIGINT or SIGTERM."""
    from shield.config.errors import ConfigError
    from shield.config.uris import parse_uri
    from shield.net import tcp_server_endpoint

    try:
        uri = parse_uri(listen, ("tcp",), "--listen")
    except ConfigError as error:
        print(f"shield echo-backend: {error}", file=sys.stderr)
        return 2
    failed: list[str] = []

    def listening(port: object) -> None:
        print(f"echo backend listening on {uri}", flush=True)

    def failure(reason: object) -> None:
        failed.append(str(getattr(reason, "value", reason)))
        print(f"shield echo-backend: cannot listen on {uri}: {failed[-1]}", file=sys.stderr, flush=True)
        reactor.stop()

    def start() -> None:
        tcp_server_endpoint(reactor, uri).listen(protocol.Factory.forProtocol(Echo)).addCallbacks(listening, failure)

    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.callWhenRunning(start)
    reactor.run()
    return 1 if failed else 0


def write_configs(folder: Path) -> tuple[Path, Path]:
    from shield.tls.devcerts import generate_dev_certs

    folder.mkdir(parents=True, exist_ok=True)
    generate_dev_certs(folder / "certs", [DMZ_NAME], [CONNECTOR])
    values = {
        "dmz": DMZ_NAME,
        "connector": CONNECTOR,
        "ws": PORTS["ws"],
        "tcp": PORTS["tcp"],
        "backplane": PORTS["backplane"],
        "dmz_admin": PORTS["dmz-admin"],
        "internal_admin": PORTS["internal-admin"],
        "echo": PORTS["echo"],
    }
    dmz = folder / "dmz.toml"
    internal = folder / "internal.toml"
    dmz.write_text(DMZ_TOML.format(**values))
    internal.write_text(INTERNAL_TOML.format(**values))
    return dmz, internal


def run_demo(folder: Path) -> int:
    busy = _busy_ports()
    if busy:
        print("shield demo: these ports are in use on 127.0.0.1: " + ", ".join(busy), file=sys.stderr)
        return 1
    folder = folder.resolve()
    dmz_config, internal_config = write_configs(folder)
    twistd = str(Path(sys.executable).with_name("twistd"))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    children: list[tuple[Child, IProcessTransport]] = []

    def spawn(name: str, plugin: str, config: Path) -> None:
        child = Child(name)
        transport = reactor.spawnProcess(
            child, twistd, [twistd, "-n", "--pidfile=", "--logfile=-", plugin, "--config", str(config)],
            env=env, path=str(folder),
        )
        children.append((child, transport))

    def start() -> None:
        TCP4ServerEndpoint(reactor, PORTS["echo"], interface="127.0.0.1").listen(
            protocol.Factory.forProtocol(Echo)
        )
        print(f"[demo] echo backend on tcp://127.0.0.1:{PORTS['echo']}", flush=True)
        spawn("dmz", "shield-dmz", dmz_config)
        spawn("internal", "shield-internal", internal_config)
        poll.start(0.5)

    agent = Agent(reactor)
    announced: list[bool] = []

    def check_ready() -> None:
        if announced:
            return
        url = f"http://127.0.0.1:{PORTS['dmz-admin']}/readyz".encode()
        d = agent.request(b"GET", url)
        d.addCallback(lambda response: readBody(response).addCallback(lambda body: (response.code, body)))
        d.addCallbacks(ready_answer, lambda _: None)

    def ready_answer(result: tuple[int, bytes]) -> None:
        code, _ = result
        if code == 200 and not announced:
            announced.append(True)
            poll.stop()
            ws = f"ws://127.0.0.1:{PORTS['ws']}/echo"
            tcp = f"tcp://127.0.0.1:{PORTS['tcp']}"
            print(
                "\n"
                "shield demo is up: a public client reaches the echo backend through the tunnel.\n"
                f"  WebSocket: {ws}\n"
                f"  TCP:       {tcp}\n"
                f"  admin:     http://127.0.0.1:{PORTS['dmz-admin']}/metrics (DMZ), "
                f"http://127.0.0.1:{PORTS['internal-admin']}/readyz (connector)\n"
                f"Try:  echo hello | .venv/bin/shield client {ws}\n"
                "Ctrl-C stops everything.\n",
                flush=True,
            )

    poll = LoopingCall(check_ready)

    def stop_children() -> object:
        from twisted.internet.defer import DeferredList

        waits = []
        for child, transport in children:
            try:
                transport.signalProcess("TERM")
            except Exception:
                continue
            waits.append(child.ended)
        print("[demo] stopping the gateways ...", flush=True)
        return DeferredList(waits)

    reactor.addSystemEventTrigger("before", "shutdown", stop_children)
    signal.signal(signal.SIGINT, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.callWhenRunning(start)
    reactor.run()
    print("[demo] stopped", flush=True)
    return 0
