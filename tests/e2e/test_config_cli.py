"""A bad configuration stops a gateway before anything listens: exit 2, the key path and the problem.

``twistd -n shield-dmz/shield-internal --config FILE`` must refuse a broken file quickly with
``FILE: key.path: problem`` and status 2, having listened on none of the file's ports (watched
in /proc/net/tcp while the process runs); ``shield check-config FILE`` must say the same.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
from harness import SHIELD, TWISTD, Process, Topology, reserve_ports

#: "Quickly" with a generous bound: loading a file takes well under a second on an idle machine.
EXIT_TIMEOUT = 30.0
EXIT_BAD_CONFIG = 2


# -- helpers --------------------------------------------------------------------------------------


def listening_ports() -> set[int]:
    """Local TCP ports in LISTEN state on this machine (read from /proc: no probe connections)."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def run_gateway(topology: Topology, plugin: str, config: Path, watch: list[int]) -> tuple[int, str, set[int]]:
    """Run twistd on ``config`` until it exits; (status, output, ports of ``watch`` seen listening)."""
    argv = [TWISTD, "-n", "--pidfile=", plugin, "--config", str(config)]
    process = Process(f"{plugin}-{config.stem}", argv, topology.folder / f"{plugin}-{config.stem}.log", topology.folder)
    topology.processes.append(process)
    process.start()
    seen: set[int] = set()
    deadline = time.monotonic() + EXIT_TIMEOUT
    assert process.popen is not None
    while process.popen.poll() is None and time.monotonic() < deadline:
        seen |= listening_ports() & set(watch)
        time.sleep(0.05)
    if process.popen.poll() is None:
        process.kill()
        raise AssertionError(
            f"{plugin} with {config.name} still running after {EXIT_TIMEOUT} s (expected exit {EXIT_BAD_CONFIG});"
            f" output:\n{process.log()[-3000:]}"
        )
    return process.popen.returncode, process.log(), seen


def check_config(config: Path) -> tuple[int, str, str]:
    result = subprocess.run(
        [SHIELD, "check-config", str(config)], capture_output=True, text=True, timeout=EXIT_TIMEOUT
    )
    return result.returncode, result.stdout, result.stderr


def assert_ports_free(ports: list[int]) -> None:
    for port in ports:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as error:
                raise AssertionError(f"port {port} is not free after the gateway exited: {error}") from None


def assert_refused(
    topology: Topology, plugin: str, config: Path, ports: list[int], key_path: str, problem: str
) -> str:
    """The gateway and check-config both refuse ``config`` with ``FILE: key_path: ...problem...``."""
    status, output, seen = run_gateway(topology, plugin, config, ports)
    assert status == EXIT_BAD_CONFIG, f"exit status {status}; output:\n{output}"
    lines = [line for line in output.splitlines() if line.startswith(f"{config}: ")]
    assert len(lines) == 1, f"expected one 'FILE: key: problem' line; output:\n{output}"
    line = lines[0]
    assert line.startswith(f"{config}: {key_path}: "), line
    assert problem in line, f"{problem!r} not in {line!r}"
    assert not seen, f"listened on {sorted(seen)} before refusing the config"
    assert "listening on" not in output and "starting on" not in output, output
    assert_ports_free(ports)

    code, stdout, stderr = check_config(config)
    assert code == EXIT_BAD_CONFIG, f"check-config exit {code}: {stdout}{stderr}"
    assert stderr.strip() == line, f"check-config says {stderr.strip()!r}, the gateway said {line!r}"
    return line


# -- the DMZ gateway ------------------------------------------------------------------------------

DMZ_PORTS = ["backplane", "dmz-admin", "ws-echo", "tcp-echo"]


def dmz_files(topology: Topology) -> tuple[Path, list[int]]:
    """A good dmz.toml (checked) and its ports; tests derive broken files from its text."""
    reserve_ports(topology, DMZ_PORTS)
    topology.certs(["internal1"])
    good = topology.dmz_config({"echo": {}}, {"internal1": ["echo"]})
    code, stdout, stderr = check_config(good)
    assert code == 0, f"the good file is refused: {stdout}{stderr}"
    assert "ok" in stdout and "'dmz1'" in stdout, stdout
    return good, [topology.port(name) for name in DMZ_PORTS]


def test_dmz_bad_accept_uri(topology: Topology) -> None:
    reserve_ports(topology, DMZ_PORTS)
    topology.certs(["internal1"])
    accepts = ["htp://127.0.0.1:1/x", topology.url("ws-echo", "ws", "/echo"), f"tcp://127.0.0.1:{topology.port('tcp-echo')}"]
    config = topology.dmz_config({"echo": {"accept": accepts}}, {"internal1": ["echo"]})
    ports = [topology.port(name) for name in DMZ_PORTS]
    assert_refused(topology, "shield-dmz", config, ports, "dmz.service[0].accept[0]", "unsupported scheme 'htp'")


def test_dmz_unknown_key(topology: Topology) -> None:
    good, ports = dmz_files(topology)
    text = good.read_text().replace('name = "echo"\n', 'name = "echo"\nmax-mesage-size = 1024\n')
    bad = topology.write("unknown-key.toml", text)
    line = assert_refused(topology, "shield-dmz", bad, ports, "dmz.service[0].max-mesage-size", "unknown key")
    assert "max-message-size" in line, f"the suggestion is missing: {line}"


def test_dmz_missing_required_key(topology: Topology) -> None:
    good, ports = dmz_files(topology)
    text = good.read_text()
    assert 'cert = "certs/dmz1.pem"\n' in text
    bad = topology.write("missing-key.toml", text.replace('cert = "certs/dmz1.pem"\n', ""))
    assert_refused(topology, "shield-dmz", bad, ports, "dmz.backplane.cert", "missing required key")


def test_dmz_cert_not_pem_exits_2_before_listening(topology: Topology) -> None:
    good, ports = dmz_files(topology)
    not_pem = topology.write("certs/not-a-pem.pem", "this is not a certificate\n")
    bad = topology.write("not-pem.toml", good.read_text().replace("certs/dmz1.pem", "certs/not-a-pem.pem"))
    status, output, seen = run_gateway(topology, "shield-dmz", bad, ports)
    assert status == EXIT_BAD_CONFIG, f"exit status {status}; output:\n{output}"
    lines = [line for line in output.splitlines() if line.startswith(f"{bad}: ")]
    assert len(lines) == 1, f"expected one 'FILE: ...' line; output:\n{output}"
    assert str(not_pem) in lines[0] and "PEM" in lines[0], lines[0]
    assert not seen, f"listened on {sorted(seen)} with an unusable certificate"
    assert_ports_free(ports)


# -- the internal gateway -------------------------------------------------------------------------

INTERNAL_PORTS = ["admin-internal1"]


def internal_files(topology: Topology) -> tuple[Path, list[int]]:
    reserve_ports(topology, ["backplane", "backend", *INTERNAL_PORTS])
    topology.certs(["internal1"])
    good = topology.internal_config("internal1", {"echo": f"tcp://127.0.0.1:{topology.port('backend')}"})
    code, stdout, stderr = check_config(good)
    assert code == 0, f"the good file is refused: {stdout}{stderr}"
    assert "ok" in stdout and "'internal1'" in stdout, stdout
    return good, [topology.port(name) for name in INTERNAL_PORTS]


def refused_without_dialling(
    topology: Topology, config: Path, ports: list[int], key_path: str, problem: str
) -> str:
    """Like ``assert_refused``, and the connector must not even dial the DMZ it is configured for."""
    with socket.socket() as backplane:
        backplane.bind(("127.0.0.1", topology.port("backplane")))
        backplane.listen(8)
        backplane.setblocking(False)
        line = assert_refused(topology, "shield-internal", config, ports, key_path, problem)
        with pytest.raises(BlockingIOError):
            backplane.accept()  # nobody dialled the backplane
    return line


def test_internal_bad_backend_uri(topology: Topology) -> None:
    good, ports = internal_files(topology)
    text = good.read_text()
    backend = f'connect = "tcp://127.0.0.1:{topology.port("backend")}"'
    assert backend in text
    bad = topology.write("bad-uri.toml", text.replace(backend, 'connect = "htp://127.0.0.1:7000"'))
    refused_without_dialling(topology, bad, ports, "internal.service[0].connect", "unsupported scheme 'htp'")


def test_internal_unknown_key(topology: Topology) -> None:
    good, ports = internal_files(topology)
    bad = topology.write("unknown-key.toml", good.read_text().replace("links = 2\n", "linkz = 2\n"))
    line = refused_without_dialling(topology, bad, ports, "internal.backplane.linkz", "unknown key")
    assert "'links'" in line, f"the suggestion is missing: {line}"


def test_internal_missing_required_key(topology: Topology) -> None:
    good, ports = internal_files(topology)
    text = good.read_text()
    assert 'server-name = "dmz1"\n' in text
    bad = topology.write("missing-key.toml", text.replace('server-name = "dmz1"\n', ""))
    refused_without_dialling(topology, bad, ports, "internal.backplane.server-name", "missing required key")


def test_internal_cert_not_pem_exits_2_before_listening(topology: Topology) -> None:
    good, ports = internal_files(topology)
    not_pem = topology.write("certs/not-a-pem.pem", "this is not a certificate\n")
    bad = topology.write("not-pem.toml", good.read_text().replace("certs/internal1.pem", "certs/not-a-pem.pem"))
    with socket.socket() as backplane:
        backplane.bind(("127.0.0.1", topology.port("backplane")))
        backplane.listen(8)
        backplane.setblocking(False)
        status, output, seen = run_gateway(topology, "shield-internal", bad, ports)
        with pytest.raises(BlockingIOError):
            backplane.accept()
    assert status == EXIT_BAD_CONFIG, f"exit status {status}; output:\n{output}"
    lines = [line for line in output.splitlines() if line.startswith(f"{bad}: ")]
    assert len(lines) == 1, f"expected one 'FILE: ...' line; output:\n{output}"
    assert str(not_pem) in lines[0] and "PEM" in lines[0], lines[0]
    assert not seen, f"listened on {sorted(seen)} with an unusable certificate"
    assert_ports_free(ports)


# -- check-config and certificates ----------------------------------------------------------------


@pytest.mark.parametrize("gateway", ["dmz", "internal"])
def test_check_config_refuses_a_cert_that_is_not_pem(topology: Topology, gateway: str) -> None:
    # check-config promises to validate "exactly as twistd would": a file twistd refuses
    # (exit 2, see the tests above) must not be called ok.
    good, _ = dmz_files(topology) if gateway == "dmz" else internal_files(topology)
    own = "certs/dmz1.pem" if gateway == "dmz" else "certs/internal1.pem"
    not_pem = topology.write("certs/not-a-pem.pem", "this is not a certificate\n")
    bad = topology.write("not-pem.toml", good.read_text().replace(own, "certs/not-a-pem.pem"))
    code, stdout, stderr = check_config(bad)
    assert code == EXIT_BAD_CONFIG, f"check-config exit {code}: {stdout}{stderr}"
    assert str(not_pem) in stderr and "PEM" in stderr, stderr


pytestmark = pytest.mark.timeout(300)


def test_internal_name_that_is_not_the_certificate_identity(topology: Topology) -> None:
    """The DMZ would refuse every link of such a connector: check-config and the start say so."""
    good, ports = internal_files(topology)
    text = good.read_text()
    assert 'name = "internal1"\n' in text
    bad = topology.write("other-name.toml", text.replace('name = "internal1"\n', 'name = "internal2"\n', 1))
    refused_without_dialling(
        topology, bad, ports, "internal.name",
        "'internal2' is not the identity of the certificate internal.backplane.cert ('internal1'): "
        "every DMZ would refuse its links",
    )  # fmt: skip
