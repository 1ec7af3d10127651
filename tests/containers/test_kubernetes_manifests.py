"""The Kubernetes manifests of deploy/kubernetes, checked offline (no cluster, no engine).

Every document is valid against the Kubernetes API schemas, the kustomization lists every file,
and what a user relies on holds: pods that run as 65532 on a read-only root, probes on the admin
port, a drain that ends before SIGKILL, the config checksum that rolls the DMZ pods, one
certificate per DMZ pod, DNS names that agree with dmz.toml, and connector variables that
shield/config/env.py knows. dmz.toml itself goes through the real loader.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shield.config import env as shield_env
from shield.config.loader import load_dmz_config


ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
DMZ_TOML = KUBE / "dmz.toml"
TLS_DIR = "/etc/shield/tls/"
UID = 65532
# Native sidecars (initContainers with restartPolicy: Always) are in the API from 1.29 on.
KUBERNETES_VERSION = "1.30.0"
HEADLESS = "shield-dmz-members"
NAMESPACE = "shield"


def manifest_files() -> list[Path]:
    return sorted(path for path in KUBE.glob("*.yaml") if path.name != "kustomization.yaml")


@lru_cache(maxsize=None)
def documents() -> tuple[dict[str, Any], ...]:
    docs: list[dict[str, Any]] = []
    for path in manifest_files():
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)
    return tuple(docs)


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def workloads() -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def pod_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def dmz_settings() -> dict[str, Any]:
    return tomllib.loads(DMZ_TOML.read_text())["dmz"]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def connector_containers() -> dict[str, dict[str, Any]]:
    """The connector container of each workload that has one: the sidecar and the adjacent one."""
    app = find("Deployment", "app")["spec"]["template"]["spec"]
    adjacent = find("Deployment", "shield-connector")["spec"]["template"]["spec"]
    return {
        "sidecar": next(c for c in app.get("initContainers", []) if c["name"] == "shield-connector"),
        "adjacent": next(c for c in adjacent["containers"] if c["name"] == "shield-connector"),
    }


def host_of(uri: str) -> str:
    return uri.split("://", 1)[1].rsplit(":", 1)[0]


# --------------------------------------------------------------------------- schemas, kustomize


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_every_document_is_valid_kubernetes(path: Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{path.name} has no documents"
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_the_config() -> None:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["namespace"] == NAMESPACE
    assert sorted(kustomization["resources"]) == sorted(p.name for p in manifest_files())
    (generator,) = kustomization["configMapGenerator"]
    assert generator["name"] == "shield-dmz-config"
    assert generator["options"]["disableNameSuffixHash"] is True
    for file in generator["files"]:
        assert (KUBE / file.split("=")[-1]).is_file(), file
    assert "Secret" not in {d["kind"] for d in documents()}, "never commit key material"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds() -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(KUBE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]
    config = next(d for d in built if d["kind"] == "ConfigMap")
    assert config["metadata"]["name"] == "shield-dmz-config"
    assert config["data"]["dmz.toml"] == DMZ_TOML.read_text()
    assert all(d["metadata"].get("namespace") == NAMESPACE for d in built if d["kind"] != "Namespace")


# --------------------------------------------------------------------------- every pod


@pytest.mark.parametrize("name", ["shield-dmz", "app", "shield-connector"])
def test_workload_exists(name: str) -> None:
    assert name in {d["metadata"]["name"] for d in workloads()}


@pytest.mark.parametrize("workload", workloads(), ids=lambda d: d["metadata"]["name"])
def test_pods_are_locked_down(workload: dict[str, Any]) -> None:
    pod = workload["spec"]["template"]["spec"]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == UID and security["runAsGroup"] == UID and security["fsGroup"] == UID
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    scratch = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    for container in pod_containers(pod):
        where = f"{workload['metadata']['name']}/{container['name']}"
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, where
        assert context["allowPrivilegeEscalation"] is False, where
        assert context["capabilities"]["drop"] == ["ALL"], where
        assert "add" not in context["capabilities"], where
        tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp and tmp[0]["name"] in scratch, f"{where}: no emptyDir at /tmp"
        assert container["image"] == "shield:0.1.0", where
        assert "limits" in container["resources"] and "requests" in container["resources"], where


@pytest.mark.parametrize("workload", workloads(), ids=lambda d: d["metadata"]["name"])
def test_selectors_match_the_pod_labels(workload: dict[str, Any]) -> None:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    selector = workload["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert labels["app.kubernetes.io/name"] == "shield"
    assert labels["app.kubernetes.io/component"] in ("dmz", "connector", "app")


# --------------------------------------------------------------------------- the DMZ


def dmz_pod() -> dict[str, Any]:
    return find("StatefulSet", "shield-dmz")["spec"]["template"]


def dmz_container() -> dict[str, Any]:
    (container,) = [c for c in dmz_pod()["spec"]["containers"] if c["name"] == "dmz"]
    return container


def test_dmz_is_a_statefulset_behind_the_headless_service() -> None:
    statefulset = find("StatefulSet", "shield-dmz")
    assert statefulset["spec"]["serviceName"] == HEADLESS
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    assert statefulset["spec"]["replicas"] == 2
    assert dmz_container()["args"] == [
        "twistd", "-n", "--pidfile=", "shield-dmz", "--config", "/etc/shield/dmz.toml",
    ]


def test_dmz_probes_use_the_admin_port() -> None:
    admin_port = int(dmz_settings()["admin"].rsplit(":", 1)[1])
    container = dmz_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        port = get["port"]
        assert (ports[port] if isinstance(port, str) else port) == admin_port, probe


def test_dmz_drain_ends_before_sigkill() -> None:
    grace = dmz_settings()["grace-period"]
    assert dmz_pod()["spec"]["terminationGracePeriodSeconds"] > grace


def test_checksum_annotation_matches_dmz_toml() -> None:
    expected = hashlib.sha256(DMZ_TOML.read_bytes()).hexdigest()
    actual = dmz_pod()["metadata"]["annotations"]["checksum/config"]
    assert actual == expected, (
        "checksum/config in deploy/kubernetes/dmz.yaml is stale: set it to the output of "
        f"`sha256sum deploy/kubernetes/dmz.toml` ({expected})"
    )


def test_dmz_mounts_its_config_and_one_certificate_per_pod() -> None:
    settings = dmz_settings()
    assert settings["name"] == "${env:POD_NAME}"
    assert settings["backplane"]["cert"] == TLS_DIR + "${env:POD_NAME}.pem"
    assert settings["backplane"]["ca"] == TLS_DIR + "ca.pem"
    container = dmz_container()
    downward = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e}
    assert downward == {"POD_NAME": "metadata.name", "POD_IP": "status.podIP"}
    volumes = {v["name"]: v for v in dmz_pod()["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    config = mounts["/etc/shield/dmz.toml"]
    assert volumes[config["name"]]["configMap"]["name"] == "shield-dmz-config"
    assert config["subPath"] == "dmz.toml"
    secret = volumes[mounts[TLS_DIR.rstrip("/")]["name"]]["secret"]
    assert secret["secretName"] == "shield-dmz-tls"
    assert secret["defaultMode"] & 0o007 == 0, "keys readable by others"
    assert secret["defaultMode"] & 0o040, "keys not readable by the fsGroup"


def test_headless_service_is_what_members_and_connectors_dial() -> None:
    service = find("Service", HEADLESS)["spec"]
    assert service["clusterIP"] == "None"
    assert service["publishNotReadyAddresses"] is True
    assert service["selector"].items() <= dmz_pod()["metadata"]["labels"].items()
    assert {p["port"] for p in service["ports"]} == {5941, 5951}
    dns = f"{HEADLESS}.{NAMESPACE}.svc.cluster.local"
    cluster = dmz_settings()["cluster"]
    assert [host_of(uri) for uri in cluster["members"]] == [dns]
    assert cluster["accept"] == "tls://${env:POD_IP}:5951"
    for which, container in connector_containers().items():
        dmz_uris = env_of(container)["SHIELD_DMZ"].split(",")
        assert [host_of(uri) for uri in dmz_uris] == [dns], which
        assert all(uri.endswith(":5941") for uri in dmz_uris), which


def test_public_service_reaches_the_service_listeners() -> None:
    service = find("Service", "shield-dmz-public")["spec"]
    assert service["type"] == "LoadBalancer"
    ports = {p["name"]: p["containerPort"] for p in dmz_container()["ports"]}
    targets = {p["port"]: ports[p["targetPort"]] for p in service["ports"]}
    assert targets == {80: 8080, 9000: 9000}
    (app,) = dmz_settings()["service"]
    assert sorted(int(uri.rsplit(":", 1)[1].split("/")[0]) for uri in app["accept"]) == [8080, 9000]


def test_disruption_budgets() -> None:
    dmz = find("PodDisruptionBudget", "shield-dmz")["spec"]
    assert dmz["maxUnavailable"] == 1
    assert dmz["selector"]["matchLabels"].items() <= dmz_pod()["metadata"]["labels"].items()
    connector = find("PodDisruptionBudget", "shield-connector")["spec"]
    assert connector["minAvailable"] == 1


# --------------------------------------------------------------------------- the connectors


def test_sidecar_is_a_native_sidecar() -> None:
    sidecar = connector_containers()["sidecar"]
    assert sidecar["restartPolicy"] == "Always"
    assert "args" not in sidecar and "command" not in sidecar, "the image's default command"


def test_adjacent_connector_is_a_lower_priority_standby() -> None:
    assert find("Deployment", "shield-connector")["spec"]["replicas"] == 2
    containers = connector_containers()
    assert int(env_of(containers["adjacent"])["SHIELD_PRIORITY"]) < int(env_of(containers["sidecar"])["SHIELD_PRIORITY"])
    backend = env_of(containers["adjacent"])["SHIELD_BACKEND"]
    assert host_of(backend) == f"app-backend.{NAMESPACE}.svc.cluster.local"
    assert find("Service", "app-backend")["spec"]["ports"][0]["port"] == int(backend.rsplit(":", 1)[1])


@pytest.mark.parametrize("which", ["sidecar", "adjacent"])
def test_connector_variables_are_the_ones_shield_knows(which: str) -> None:
    container = connector_containers()[which]
    names = {item["name"] for item in container["env"]}
    known = set(shield_env.REQUIRED) | set(shield_env.OPTIONAL)
    assert names <= known, f"unknown SHIELD_* variables: {sorted(names - known)}"
    assert set(shield_env.REQUIRED) <= names, f"missing: {sorted(set(shield_env.REQUIRED) - names)}"
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"]["path"] == path
    admin_port = int(env_of(container).get("SHIELD_ADMIN", "http://0.0.0.0:9101").rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[container["readinessProbe"]["httpGet"]["port"]] == admin_port


@pytest.mark.parametrize("which", ["sidecar", "adjacent"])
def test_connector_environment_loads(which: str, tmp_path: Path) -> None:
    """The variables go through the real loader, certificate paths moved to placeholders."""
    environ = env_of(connector_containers()[which])
    for name in ("SHIELD_CERT", "SHIELD_CA"):
        assert environ[name].startswith(TLS_DIR)
        environ[name] = str(tmp_path / environ[name].removeprefix(TLS_DIR))
        Path(environ[name]).touch()
    config = shield_env.internal_config_from_environment(environ)
    assert config.backplane.server_name == "shield-dmz"
    assert [service.name for service in config.services] == list(dmz_settings()["backplane"]["connectors"][config.name])


def test_dmz_toml_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real loader with the pod's environment; the loader checks only that the files exist."""
    text = DMZ_TOML.read_text()
    assert TLS_DIR in text
    config_file = tmp_path / "dmz.toml"
    config_file.write_text(text.replace(TLS_DIR, f"{tmp_path}/"))
    for name in ("shield-dmz-0.pem", "ca.pem"):
        (tmp_path / name).touch()
    monkeypatch.setenv("POD_NAME", "shield-dmz-0")
    monkeypatch.setenv("POD_IP", "10.0.0.7")
    config = load_dmz_config(config_file)
    assert config.name == "shield-dmz-0"
    assert config.backplane.cert == tmp_path / "shield-dmz-0.pem"
    assert config.grace_period == 30
    assert str(config.admin) == "http://0.0.0.0:9100"
    assert set(config.backplane.connectors) == {"app-sidecar", "shield-connector"}
    assert config.cluster is not None
    assert config.cluster.accept.host == "10.0.0.7" and config.cluster.accept.port == 5951
    assert [(m.host, m.port) for m in config.cluster.members] == [
        (f"{HEADLESS}.{NAMESPACE}.svc.cluster.local", 5951)
    ]
    assert config.cluster.resolve_interval == 10
    (service,) = config.services
    assert service.name == "app"
    assert sorted(uri.port for uri in service.accept) == [8080, 9000]
