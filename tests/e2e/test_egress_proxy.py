"""A connector whose only way to the DMZ is an HTTP CONNECT proxy (issue 14), with real processes:
``twistd -n shield-dmz``, ``twistd -n shield-internal``, and a proxy: the suite's own
(tests/e2e/fakes/connect_proxy.py), then Debian's tinyproxy.

The connector is given the DMZ by a name only the test proxy can resolve (``dmz.shield.test``),
so a client served end to end proves every link went through the proxy.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import HERE, Process, Topology, echo, http_get, iter_log_lines, wait_ready

DMZ_HOST = "dmz.shield.test"
USER, PASSWORD = "connector", "Corr3ct-h0rse"


def proxied_connector(topology: Topology, proxy_port: int, host: str = DMZ_HOST, auth: str | None = f"{USER}:{PASSWORD}") -> None:
    """internal1's config: the DMZ named ``host``, reached through the proxy on ``proxy_port``."""
    config = topology.internal_config("internal1", {"echo": f"tcp://127.0.0.1:{topology.port('backend')}"})
    backplane = topology.port("backplane")
    lines = [f'proxy = "http://127.0.0.1:{proxy_port}"']
    if auth is not None:
        (topology.folder / "proxy-auth").write_text(auth + "\n")
        lines.append('proxy-auth-file = "proxy-auth"')
    text = config.read_text().replace(f'connect = ["tls://127.0.0.1:{backplane}"]', f'connect = ["tls://{host}:{backplane}"]')
    text = text.replace("[internal.backplane]\n", "[internal.backplane]\n" + "\n".join(lines) + "\n")
    config.write_text(text)


def start_proxy(topology: Topology, *options: str) -> Process:
    argv = [sys.executable, str(HERE / "fakes" / "connect_proxy.py"), str(topology.port("proxy")), *options]
    process = Process("proxy", argv, topology.folder / "proxy.log", topology.folder).start()
    topology.processes.append(process)
    process.wait_for_log("listening")
    return process


def dmz_and_backend(topology: Topology) -> None:
    topology.certs(["internal1"])
    topology.start_backend()
    topology.dmz_config({"echo": {}}, {"internal1": ["echo"]})
    topology.start_dmz()


def served(topology: Topology, payload: bytes = b"through the proxy\n" * 100) -> str:
    with socket.create_connection(("127.0.0.1", topology.port("tcp-echo")), timeout=10) as client:
        return echo(client, payload)


def links_up(topology: Topology, endpoint: str) -> float:
    _, metrics = http_get(topology.url("admin-internal1", path="/metrics"))
    match = re.search(rf'^shield_links_up{{endpoint="{re.escape(endpoint)}"}} (\S+)$', metrics, re.MULTILINE)
    assert match is not None, metrics
    return float(match.group(1))


def test_clients_are_served_through_the_proxy_and_the_links_come_back_after_it_restarts(topology: Topology) -> None:
    dmz_and_backend(topology)
    options = ("--auth", f"{USER}:{PASSWORD}", "--map", f"{DMZ_HOST}=127.0.0.1")
    proxy = start_proxy(topology, *options)
    proxied_connector(topology, topology.port("proxy"))
    connector = topology.start_connector("internal1")
    endpoint = f"{DMZ_HOST}:{topology.port('backplane')}"

    assert served(topology) == "echoed"
    assert links_up(topology, endpoint) == 2
    connects = list(iter_log_lines(proxy, "CONNECT"))
    assert connects == [f"CONNECT {endpoint} auth=yes -> 200"] * 2, connects
    assert PASSWORD not in connector.log()

    # The proxy dies: the links drop (the DMZ's end and ours), the connector redials with its
    # backoff, failing while the proxy is away, and links again once it is back.
    proxy.kill()
    connector.wait_for_log(f"link to {endpoint}: lost after")
    connector.wait_for_log(f"link to {endpoint}: proxy 127.0.0.1:{topology.port('proxy')} unreachable: Connection was refused")
    status, body = http_get(topology.url("admin-internal1", path="/readyz"))
    assert status == 503 and f"endpoint {endpoint}: no live link" in body, body
    start_proxy(topology, *options)
    wait_ready(topology.url("admin-internal1"), process=connector)
    assert served(topology) == "echoed"
    assert connector.stop() == 0


def test_wrong_credentials_are_one_407_line_and_a_backoff(topology: Topology) -> None:
    dmz_and_backend(topology)
    proxy = start_proxy(topology, "--auth", f"{USER}:{PASSWORD}", "--map", f"{DMZ_HOST}=127.0.0.1")
    proxied_connector(topology, topology.port("proxy"), auth=f"{USER}:wrong-Passw0rd")
    connector = topology.start_connector("internal1", wait=False)
    endpoint = f"{DMZ_HOST}:{topology.port('backplane')}"
    refusal = (
        f"link to {endpoint}: proxy 127.0.0.1:{topology.port('proxy')} refused CONNECT {endpoint}: "
        "407 Proxy Authentication Required (the credentials of proxy-auth-file were refused); retrying in"
    )
    connector.wait_for_log(refusal)
    time.sleep(4.0)  # the backoff: 0.5, 1, 2 s at most between the dials of each slot
    attempts = list(iter_log_lines(proxy, f"CONNECT {endpoint} auth=yes -> 407"))
    assert 2 * 2 <= len(attempts) <= 2 * 10, attempts  # each of the 2 slots redials, and does not flood
    refusals = list(iter_log_lines(connector, "407 Proxy Authentication Required"))
    assert len(refusals) == 2, refusals  # one line per slot: the same reason is not logged again
    assert "wrong-Passw0rd" not in connector.log() and PASSWORD not in connector.log()
    status, body = http_get(topology.url("admin-internal1", path="/readyz"))
    assert status == 503 and f"endpoint {endpoint}: no live link" in body, body
    assert connector.stop() == 0


# -- Debian's tinyproxy ------------------------------------------------------------------------------


def tinyproxy_binary() -> str:
    found = shutil.which("tinyproxy") or shutil.which("tinyproxy", path="/usr/sbin:/usr/bin")
    if found is None:
        pytest.fail("this test needs tinyproxy: run `make test`, which installs the Debian package tinyproxy", pytrace=False)
    return found


def start_tinyproxy(topology: Topology, binary: str) -> Process:
    config = topology.write("tinyproxy.conf", "\n".join([
        f"Port {topology.port('proxy')}", "Listen 127.0.0.1", "Timeout 60", "MaxClients 20",
        "Allow 127.0.0.1", f"ConnectPort {topology.port('backplane')}", f"BasicAuth {USER} {PASSWORD}",
        "LogLevel Connect",
    ]) + "\n")  # fmt: skip
    process = Process("tinyproxy", [binary, "-d", "-c", str(config)], topology.folder / "tinyproxy.log", topology.folder)
    process.start()
    topology.processes.append(process)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", topology.port("proxy")), timeout=1).close()
            return process
        except OSError:
            assert process.alive(), process.log()
            time.sleep(0.05)
    raise AssertionError(f"tinyproxy did not listen:\n{process.log()}")


def test_through_tinyproxy(topology: Topology) -> None:
    binary = tinyproxy_binary()
    dmz_and_backend(topology)
    start_tinyproxy(topology, binary)
    proxied_connector(topology, topology.port("proxy"), host="localhost")
    connector = topology.start_connector("internal1")
    assert served(topology) == "echoed"
    assert links_up(topology, f"localhost:{topology.port('backplane')}") == 2
    assert PASSWORD not in connector.log()
    assert connector.stop() == 0


def test_tinyproxy_refusing_the_credentials(topology: Topology) -> None:
    binary = tinyproxy_binary()
    dmz_and_backend(topology)
    start_tinyproxy(topology, binary)
    proxied_connector(topology, topology.port("proxy"), host="localhost", auth=f"{USER}:nope")
    connector = topology.start_connector("internal1", wait=False)
    # tinyproxy answers 401 where RFC 9110 says 407; the connector reads both as refused credentials.
    connector.wait_for_log(
        f"refused CONNECT localhost:{topology.port('backplane')}: 401 Unauthorized (the credentials of proxy-auth-file were refused)"
    )
    assert connector.stop() == 0


def test_a_proxy_answering_502_is_one_line_naming_it(topology: Topology) -> None:
    dmz_and_backend(topology)
    start_proxy(topology, "--refuse", "502")
    proxied_connector(topology, topology.port("proxy"), auth=None)
    connector = topology.start_connector("internal1", wait=False)
    endpoint = f"{DMZ_HOST}:{topology.port('backplane')}"
    connector.wait_for_log(f"link to {endpoint}: proxy 127.0.0.1:{topology.port('proxy')} refused CONNECT {endpoint}: 502 Bad Gateway; retrying in")
    assert connector.stop() == 0


def test_a_proxy_that_never_answers_is_one_line_after_ten_seconds(topology: Topology) -> None:
    dmz_and_backend(topology)
    start_proxy(topology, "--hang")
    proxied_connector(topology, topology.port("proxy"), auth=None)
    connector = topology.start_connector("internal1", wait=False)
    endpoint = f"{DMZ_HOST}:{topology.port('backplane')}"
    line = f"link to {endpoint}: proxy 127.0.0.1:{topology.port('proxy')} did not answer CONNECT {endpoint} within 10 s; retrying in"
    connector.wait_for_log(line, timeout=20)
    status, body = http_get(topology.url("admin-internal1", path="/readyz"))
    assert status == 503 and f"endpoint {endpoint}: no live link" in body, body
    assert connector.stop() == 0


def test_check_config_names_a_bad_proxy_key(topology: Topology) -> None:
    topology.certs(["internal1"])
    proxied_connector(topology, 3128)
    config = topology.folder / "internal1.toml"
    config.write_text(config.read_text().replace('proxy = "http://127.0.0.1:3128"', 'proxy = "https://127.0.0.1:3128"'))
    result = subprocess.run([str(Path(sys.executable).parent / "shield"), "check-config", str(config)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "internal.backplane.proxy: https:// proxies are not supported (expected http://host:port)" in result.stderr
