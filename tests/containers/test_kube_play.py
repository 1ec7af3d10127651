"""The sidecar pod of deploy/kubernetes/app-with-sidecar.yaml, run by ``podman kube play``.

What podman (4.3) can run of it, and what the test changes for that, each for a stated reason:

- podman refuses probes on init containers and runs init containers to completion, so it cannot
  run a native sidecar (``restartPolicy: Always``). The connector moves to ``containers``: the
  same pod as Kubernetes before 1.29 runs it. Its probes become podman health checks that call
  ``curl`` on port 0 (podman does not resolve named ports, the image has no curl), so the test
  asks the probes' URLs itself, inside the container, with ``shield healthcheck``.
- There is no Secret store: the ``tls`` volume is a hostPath holding the same PEM files.
- There is no cluster DNS: ``hostAliases`` maps the headless Service's name to the host, where a
  DMZ gateway (a real ``twistd -n shield-dmz``) accepts the sidecar's links on 127.0.0.1:5941
  (slirp4netns with ``allow_host_loopback``: the pod reaches the host's loopback at 10.0.2.2).

Everything else is the manifest as committed: the image, the SHIELD_* variables, the security
context (uid 65532, read-only root, no capabilities), the app container and its port.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from engine import REPO, Engine

sys.path.insert(0, str(REPO / "tests" / "e2e"))
from harness import Process, echo, free_port, twistd  # noqa: E402

MANIFEST = REPO / "deploy" / "kubernetes" / "app-with-sidecar.yaml"
SLIRP_HOST = "10.0.2.2"  # the host's loopback as a slirp4netns pod sees it
BACKPLANE_PORT = 5941
WAIT = 120.0


def until(what: str, condition: Any, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.2)


def playable(certs: Path) -> dict[str, Any]:
    """The app Deployment, changed only as the module docstring says."""
    documents = list(yaml.safe_load_all(MANIFEST.read_text()))
    deployment = next(doc for doc in documents if doc["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    sidecars = spec.pop("initContainers")
    assert [container.get("restartPolicy") for container in sidecars] == ["Always"]
    for container in sidecars:
        container.pop("restartPolicy")
    spec["containers"] = sidecars + spec["containers"]
    for volume in spec["volumes"]:
        if "secret" in volume:
            del volume["secret"]
            volume["hostPath"] = {"path": str(certs), "type": "Directory"}
    members = next(
        env["value"] for env in sidecars[0]["env"] if env["name"] == "SHIELD_DMZ"
    ).removeprefix("tls://").rsplit(":", 1)[0]
    spec["hostAliases"] = [{"ip": SLIRP_HOST, "hostnames": [members]}]
    return deployment  # type: ignore[no-any-return]


@pytest.fixture
def podman(engine: Engine, image: str) -> Engine:
    if engine.name != "podman":
        pytest.skip("kube play is podman's; docker has no equivalent")
    engine.run("tag", image, "localhost/shield:0.1.0")  # the manifest's image, shield:0.1.0
    return engine


@pytest.fixture
def dmz(tmp_path: Path) -> Iterator[tuple[Process, int]]:
    """A DMZ gateway on the host for the sidecar to link to; its public tcp:// port."""
    from shield.tls.devcerts import generate_dev_certs

    certs = tmp_path / "certs"
    generate_dev_certs(certs, ["shield-dmz-0"], ["app-sidecar"], dmz_alt_names=["shield-dmz"])
    for path in certs.iterdir():  # what the Secret's defaultMode 0440 + fsGroup 65532 give the pod
        os.chown(path, 0, 65532)
        path.chmod(0o440)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", BACKPLANE_PORT)) != 0, f"port {BACKPLANE_PORT} is taken on 127.0.0.1"
    public, admin = free_port(), free_port()
    config = tmp_path / "dmz.toml"
    config.write_text("\n".join([
        "[dmz]", 'name = "shield-dmz-0"', f'admin = "http://127.0.0.1:{admin}"', "grace-period = 5",
        "[dmz.backplane]", f'accept = "tls://127.0.0.1:{BACKPLANE_PORT}"',
        'cert = "certs/shield-dmz-0.pem"', 'ca = "certs/ca.pem"',
        "[dmz.backplane.connectors]", 'app-sidecar = ["app"]',
        "[[dmz.service]]", 'name = "app"', f'accept = ["tcp://127.0.0.1:{public}"]',
    ]) + "\n")  # fmt: skip
    process = twistd("dmz", "shield-dmz", config, tmp_path).start()
    try:
        process.wait_for_log("ready for connectors")
        yield process, public
    finally:
        process.kill()


def test_sidecar_pod_serves_the_app_through_the_dmz(podman: Engine, dmz: tuple[Process, int], tmp_path: Path) -> None:
    process, public = dmz
    play = tmp_path / "app.yaml"
    play.write_text(yaml.safe_dump(playable(tmp_path / "certs")))
    podman.run("kube", "down", str(play), check=False)
    podman.run("kube", "play", "--network", "slirp4netns:allow_host_loopback=true", str(play), timeout=300)
    try:
        until("the DMZ accepts the sidecar's links", lambda: "connector 'app-sidecar' (priority 200" in process.log())
        with socket.create_connection(("127.0.0.1", public), timeout=10) as client:
            assert echo(client, b"to the app behind its sidecar\n") == "echoed"
        sidecar, app = "app-pod-0-shield-connector", "app-pod-0-app"
        for container in (sidecar, app):
            assert podman.run("exec", container, "id", "-u").stdout.strip() == "65532", container
            assert podman.inspect(container)["HostConfig"]["ReadonlyRootfs"] is True, container
        # The liveness and readiness probes' URLs, asked where the kubelet would ask them.
        for path in ("/healthz", "/readyz"):
            answer = podman.run("exec", sidecar, "shield", "healthcheck", f"http://127.0.0.1:9101{path}", check=False)
            assert answer.returncode == 0, answer
            assert answer.stdout.strip() == f"ready: http://127.0.0.1:9101{path}"
    finally:
        logs = podman.run("logs", "app-pod-0-shield-connector", check=False)
        print(f"\n----- sidecar -----\n{(logs.stdout + logs.stderr)[-3000:]}\n----- dmz -----\n{process.log()[-3000:]}")
        podman.run("kube", "down", str(play), check=False, timeout=120)
