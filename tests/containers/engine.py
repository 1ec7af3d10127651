"""A real container engine for the tests: podman or docker, whichever is installed, and its compose.

Podman builds with ``--format docker`` (the OCI format drops HEALTHCHECK) and host networking;
without systemd its health timers never run, so ``healthy`` runs the check itself. Docker runs
health checks on its own; ``healthy`` reads the state it keeps.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: The compose file's image (deploy/compose.yaml: ${SHIELD_IMAGE:-localhost/shield:latest}).
IMAGE = "localhost/shield:latest"
PODMAN_COMPOSE = Path("/opt/podman-compose/bin/podman-compose")  # ../shared/tools/podman-setup.sh


class EngineMissing(Exception):
    """No usable container engine here; the message says what is missing."""


@dataclass(frozen=True)
class Engine:
    name: str  # "podman" or "docker"
    command: str
    compose: tuple[str, ...]

    def run(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([self.command, *args], capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{self.name} {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def compose_run(self, *args: str, timeout: float = 300.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [*self.compose, "-f", str(REPO / "deploy" / "compose.yaml"), *args]
        env = dict(os.environ, BUILDAH_FORMAT="docker", SHIELD_IMAGE=IMAGE)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def build(self) -> float:
        """Build the image from the repository's Dockerfile; seconds it took."""
        started = time.monotonic()
        args = ["build", "--network=host", "-t", IMAGE]
        if self.name == "podman":
            args += ["--format", "docker"]
        self.run(*args, str(REPO), timeout=1800)
        return time.monotonic() - started

    def inspect(self, what: str) -> dict:  # type: ignore[type-arg]
        return json.loads(self.run("inspect", what).stdout)[0]  # type: ignore[no-any-return]

    def container(self, service: str) -> str:
        """The id of compose service ``service``'s container (running or not)."""
        done = self.run(
            "ps", "-a", "--filter", "label=com.docker.compose.project=shield",
            "--filter", f"label=com.docker.compose.service={service}", "--format", "{{.ID}}",
        )  # fmt: skip
        ids = done.stdout.split()
        assert len(ids) == 1, f"compose service {service}: containers {ids}"
        return ids[0]

    def healthy(self, container: str) -> tuple[bool, str]:
        """Whether the image's HEALTHCHECK passes now, and what it printed."""
        if self.name == "podman":
            done = self.run("healthcheck", "run", container, check=False, timeout=60)
            state = self.inspect(container)["State"]
            log = (state.get("Health") or state.get("Healthcheck") or {}).get("Log") or [{}]
            return done.returncode == 0, (log[-1].get("Output") or done.stdout + done.stderr).strip()
        health = self.inspect(container)["State"].get("Health") or {}
        log = health.get("Log") or [{}]
        return health.get("Status") == "healthy", (log[-1].get("Output") or "").strip()

    def exit_code(self, container: str) -> int:
        return int(self.inspect(container)["State"]["ExitCode"])

    def logs(self, container: str) -> str:
        done = self.run("logs", container, check=False)
        return done.stdout + done.stderr


def find_engine() -> Engine:
    """podman (with the podman-compose that handles host networking) or docker (with compose v2)."""
    if shutil.which("podman"):
        compose = str(PODMAN_COMPOSE) if PODMAN_COMPOSE.exists() else shutil.which("podman-compose")
        if compose is None:
            raise EngineMissing("podman is installed but podman-compose is not (run ../shared/tools/podman-setup.sh)")
        probe = subprocess.run(["podman", "info"], capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            raise EngineMissing(f"podman does not work here: {probe.stderr.strip()[:300]}")
        return Engine("podman", "podman", (compose,))
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            raise EngineMissing("docker is installed but 'docker compose' is not")
        return Engine("docker", "docker", ("docker", "compose"))
    raise EngineMissing("no container engine: neither podman nor docker is installed "
                        "(../shared/tools/podman-setup.sh prepares podman)")
