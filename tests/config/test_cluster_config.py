"""The high-availability keys of the DMZ file: ``[dmz.cluster]`` and the balancer services.

Every rule of docs/configuration.md for ``[dmz.cluster]`` and for the ``type``, ``mode`` and
``balance`` keys of ``[[dmz.service]]``: what is accepted, the defaults, and each refusal by the
key path and problem a user sees. Certificate files are empty placeholders, as in
test_loader.py: the loader checks that they exist, never what they contain.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shield.config.errors import ConfigError
from shield.config.loader import load_config, load_dmz_config
from shield.config.model import DmzCluster, DmzConfig, DmzService, Uri

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
PLACEHOLDERS = ("dmz1.pem", "dmz2.pem", "ca.pem", "public.pem", "web.pem")

# --------------------------------------------------------------------------- TOML writing


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + "}"
    raise TypeError(value)


def to_toml(doc: dict[str, Any]) -> str:
    return "".join(f'"{key}" = {toml_value(value)}\n' for key, value in doc.items())


# --------------------------------------------------------------------------- fixtures

OWN = "tls://10.0.0.5:5942"
OTHER = "tls://10.0.0.6:5942"


def dmz_doc() -> dict[str, Any]:
    """A minimal valid DMZ file without a cluster, to add to and break one key at a time."""
    return {
        "dmz": {
            "name": "dmz1",
            "backplane": {
                "accept": "tls://127.0.0.1:5941",
                "cert": "dmz1.pem",
                "ca": "ca.pem",
                "connectors": {"internal1": ["echo"]},
            },
            "service": [{"name": "echo", "accept": ["ws://127.0.0.1:8080/echo"]}],
        }
    }


def cluster_doc(**cluster: Any) -> dict[str, Any]:
    """The minimal file with a minimal ``[dmz.cluster]``; keyword arguments change its keys
    (``None`` removes one; ``heartbeat_interval`` stands for ``heartbeat-interval``)."""
    doc = dmz_doc()
    table: dict[str, Any] = {"name": "shield-east", "accept": OWN, "members": [OTHER]}
    for key, value in cluster.items():
        key = key.replace("_", "-")
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    doc["dmz"]["cluster"] = table
    return doc


def with_services(*services: dict[str, Any], cluster: bool = True) -> dict[str, Any]:
    """The minimal file (with a cluster unless told) and these services after 'echo'."""
    doc = cluster_doc() if cluster else dmz_doc()
    doc["dmz"]["service"] += [copy.deepcopy(service) for service in services]
    return doc


def balancer(**keys: Any) -> dict[str, Any]:
    service = {"name": "lb", "type": "balancer", "accept": ["ws://0.0.0.0:80/echo"]}
    service.update({key.replace("_", "-"): value for key, value in keys.items()})
    return service


def write_placeholders(folder: Path) -> None:
    for name in PLACEHOLDERS:
        (folder / name).write_bytes(b"")


Load = Callable[[dict[str, Any] | str], DmzConfig]
Refuse = Callable[[dict[str, Any] | str, str, str], ConfigError]


@pytest.fixture
def load(tmp_path: Path) -> Load:
    """Write a document (dict or TOML text) next to placeholder certs, and load it."""
    write_placeholders(tmp_path)

    def load_(doc: dict[str, Any] | str) -> DmzConfig:
        path = tmp_path / "dmz.toml"
        path.write_text(doc if isinstance(doc, str) else to_toml(doc), encoding="utf-8")
        return load_dmz_config(path)

    return load_


@pytest.fixture
def refuse(load: Load) -> Refuse:
    """Load a document that must be refused at ``key_path`` with ``problem`` in the message."""

    def refuse_(doc: dict[str, Any] | str, key_path: str, problem: str) -> ConfigError:
        with pytest.raises(ConfigError) as info:
            load(doc)
        error = info.value
        assert (error.key_path, problem in error.problem) == (key_path, True), str(error)
        return error

    return refuse_


# --------------------------------------------------------------------------- [dmz.cluster]: accepted


def test_no_cluster_by_default(load: Load) -> None:
    assert load(dmz_doc()).cluster is None


def test_minimal_cluster_and_its_defaults(load: Load) -> None:
    cluster = load(cluster_doc()).cluster
    assert cluster == DmzCluster(
        name="shield-east",
        accept=Uri("tls", "10.0.0.5", 5942),
        members=(Uri("tls", "10.0.0.6", 5942),),
        connect=None,
        heartbeat_interval=1.0,
        member_names=(),
        resolve_interval=30.0,
    )


@pytest.mark.parametrize(
    ("interval", "problem"),
    [(-1, "must be at least 0 (0 disables) seconds (got -1)"), ("5", "expected a number of seconds"), (math.inf, "finite")],
)
def test_resolve_interval_refused(refuse: Refuse, interval: Any, problem: str) -> None:
    refuse(cluster_doc(resolve_interval=interval), "dmz.cluster.resolve-interval", problem)


def test_resolve_interval_zero_resolves_once(load: Load) -> None:
    cluster = load(cluster_doc(resolve_interval=0)).cluster
    assert cluster is not None and cluster.resolve_interval == 0.0


def test_every_cluster_key_is_read(load: Load) -> None:
    doc = cluster_doc(
        name="east_1.shield-A",
        members=[OTHER, "tls://dmz3.example.com:5942", "tls://[fd00::7]:5942"],
        connect="udp://224.2.2.44:44444",
        heartbeat_interval=0.25,
        member_names=["dmz1", "dmz2", "dmz3"],
        resolve_interval=5,
    )
    cluster = load(doc).cluster
    assert cluster == DmzCluster(
        name="east_1.shield-A",
        accept=Uri("tls", "10.0.0.5", 5942),
        members=(
            Uri("tls", "10.0.0.6", 5942),
            Uri("tls", "dmz3.example.com", 5942),
            Uri("tls", "fd00::7", 5942),
        ),
        connect=Uri("udp", "224.2.2.44", 44444),
        heartbeat_interval=0.25,
        member_names=("dmz1", "dmz2", "dmz3"),
        resolve_interval=5.0,
    )


def test_members_may_include_this_members_own_accept(load: Load) -> None:
    """One list for every member: each recognises its own accept in it (and does not dial it)."""
    cluster = load(cluster_doc(members=[OWN, OTHER])).cluster
    assert cluster is not None
    assert cluster.members == (Uri("tls", "10.0.0.5", 5942), Uri("tls", "10.0.0.6", 5942))
    cluster = load(cluster_doc(members=[OWN])).cluster  # a cluster of one, for now
    assert cluster is not None and cluster.members == (Uri("tls", "10.0.0.5", 5942),)


def test_single_strings_count_as_lists(load: Load) -> None:
    cluster = load(cluster_doc(members=OTHER, member_names="dmz2")).cluster
    assert cluster is not None
    assert (cluster.members, cluster.member_names) == ((Uri("tls", "10.0.0.6", 5942),), ("dmz2",))


def test_discovery_alone_or_with_members(load: Load) -> None:
    cluster = load(cluster_doc(members=None, connect="udp://224.2.2.44:44444")).cluster
    assert cluster is not None
    assert (cluster.members, cluster.connect) == ((), Uri("udp", "224.2.2.44", 44444))
    both = load(cluster_doc(connect="udp://239.255.0.1:5000")).cluster
    assert both is not None and both.members == (Uri("tls", "10.0.0.6", 5942),)
    ipv6 = cluster_doc(members=None, accept="tls://[fd00::5]:5942", connect="udp://[ff15::44]:44444")
    cluster = load(ipv6).cluster
    assert cluster is not None
    assert (cluster.accept, cluster.connect) == (
        Uri("tls", "fd00::5", 5942), Uri("udp", "ff15::44", 44444)
    )  # fmt: skip


def test_without_discovery_the_accept_may_be_a_wildcard_or_a_name(load: Load) -> None:
    for accept in ("tls://0.0.0.0:5942", "tls://[::]:5942", "tls://dmz1.example.com:5942"):
        cluster = load(cluster_doc(accept=accept)).cluster
        assert cluster is not None and str(cluster.accept) == accept


def test_properties_expand_in_the_cluster(load: Load) -> None:
    doc = cluster_doc(name="${cluster}", accept="tls://${me}:5942", members=["tls://${peer}:5942"])
    doc["properties"] = {"cluster": "east", "me": "10.0.0.5", "peer": "10.0.0.6"}
    cluster = load(doc).cluster
    assert cluster is not None and cluster.name == "east"
    assert (cluster.accept, cluster.members) == (Uri("tls", "10.0.0.5", 5942), (Uri("tls", "10.0.0.6", 5942),))


@pytest.mark.parametrize("interval", [0.05, 0.5, 1, 2.5, 60, 60.0])
def test_heartbeat_interval_range(load: Load, interval: float) -> None:
    cluster = load(cluster_doc(heartbeat_interval=interval)).cluster
    assert cluster is not None and cluster.heartbeat_interval == float(interval)
    assert isinstance(cluster.heartbeat_interval, float)


# --------------------------------------------------------------------------- [dmz.cluster]: refused


def test_cluster_must_be_a_table_of_known_keys(refuse: Refuse) -> None:
    doc = dmz_doc()
    doc["dmz"]["cluster"] = "shield-east"
    refuse(doc, "dmz.cluster", "expected a table, got a string")
    doc = cluster_doc()
    doc["dmz"]["cluster"]["heartbeat_interval"] = 1
    refuse(doc, "dmz.cluster.heartbeat_interval", "unknown key (did you mean 'heartbeat-interval'?)")
    doc = cluster_doc()
    doc["dmz"]["cluster"]["member"] = [OTHER]
    refuse(doc, "dmz.cluster.member", "did you mean 'members'?")
    doc = cluster_doc()
    doc["dmz"]["cluster"]["cert"] = "dmz1.pem"  # member links use the backplane's cert and ca
    refuse(doc, "dmz.cluster.cert", "unknown key")
    doc = dmz_doc()
    doc["dmz"]["clusters"] = {}
    refuse(doc, "dmz.clusters", "did you mean 'cluster'?")


def test_cluster_name(refuse: Refuse) -> None:
    refuse(cluster_doc(name=None), "dmz.cluster.name", "missing required key")
    refuse(cluster_doc(name=""), "dmz.cluster.name", "bad cluster name ''")
    refuse(cluster_doc(name="east cluster"), "dmz.cluster.name", "bad cluster name 'east cluster'")
    refuse(cluster_doc(name="x" * 64), "dmz.cluster.name", "(1 to 63 letters, digits, '.', '_' or '-', starting")
    refuse(cluster_doc(name=1), "dmz.cluster.name", "expected a string, got an integer (1)")
    refuse(cluster_doc(name="${nope}"), "dmz.cluster.name", "undefined property 'nope'")


def test_cluster_accept(refuse: Refuse) -> None:
    refuse(cluster_doc(accept=None), "dmz.cluster.accept", "missing required key")
    refuse(cluster_doc(accept="tcp://10.0.0.5:5942"), "dmz.cluster.accept",
           "unsupported scheme 'tcp' (expected tls)")  # fmt: skip
    refuse(cluster_doc(accept="tls://10.0.0.5"), "dmz.cluster.accept", "missing port")
    refuse(cluster_doc(accept="tls://10.0.0.5:0"), "dmz.cluster.accept", "bad port '0'")
    refuse(cluster_doc(accept=["tls://10.0.0.5:5942"]), "dmz.cluster.accept", "expected a string")


def test_members(refuse: Refuse) -> None:
    refuse(cluster_doc(members=["udp://10.0.0.6:5942"]), "dmz.cluster.members[0]",
           "unsupported scheme 'udp' (expected tls)")  # fmt: skip
    refuse(cluster_doc(members=[OTHER, "ws://10.0.0.7:5942/"]), "dmz.cluster.members[1]",
           "unsupported scheme 'ws'")  # fmt: skip
    refuse(cluster_doc(members=[OTHER, "tls://10.0.0.6:5942"]), "dmz.cluster.members[1]",
           "tls://10.0.0.6:5942 is listed twice (also at dmz.cluster.members[0])")  # fmt: skip
    refuse(cluster_doc(members=[]), "dmz.cluster.members", "empty array")
    refuse(cluster_doc(members=5942), "dmz.cluster.members", "expected an array of strings")


def test_members_or_connect_is_required(refuse: Refuse) -> None:
    refuse(cluster_doc(members=None), "dmz.cluster.members",
           "missing: list the other members, or discover them with connect")  # fmt: skip


@pytest.mark.parametrize(
    ("connect", "problem"),
    [
        ("udp://10.0.0.1:44444", "'10.0.0.1' is not a multicast group address (e.g. udp://224.2.2.44:44444)"),
        ("udp://255.255.255.255:44444", "is not a multicast group address"),
        ("udp://[fd00::1]:44444", "'fd00::1' is not a multicast group address"),
        ("udp://group.example.com:44444", "'group.example.com' is not a multicast group address"),
        ("tls://224.2.2.44:44444", "unsupported scheme 'tls' (expected udp)"),
        ("udp://224.2.2.44", "missing port (expected udp://group:port)"),
        ("udp://224.2.2.44:44444/x", "path '/x' not allowed on udp://"),
        ("224.2.2.44:44444", "is not a URI (expected udp://group:port)"),
    ],
)
def test_connect_is_a_multicast_group(refuse: Refuse, connect: str, problem: str) -> None:
    refuse(cluster_doc(connect=connect), "dmz.cluster.connect", problem)


@pytest.mark.parametrize(
    "accept", ["tls://0.0.0.0:5942", "tls://[::]:5942", "tls://dmz1.example.com:5942", "tls://localhost:5942"]
)
def test_discovery_needs_a_concrete_accept_address(refuse: Refuse, accept: str) -> None:
    host = accept[len("tls://") : accept.rindex(":")].strip("[]")
    refuse(
        cluster_doc(accept=accept, connect="udp://224.2.2.44:44444"),
        "dmz.cluster.accept",
        f"discovery announces this address to the other members: give this member's own IP address, not {host!r}",
    )


@pytest.mark.parametrize(
    ("interval", "problem"),
    [
        (0.049, "must be between 0.05 and 60 seconds (got 0.049)"),
        (0.01, "must be between 0.05 and 60 seconds"),
        (60.5, "must be between 0.05 and 60 seconds (got 60.5)"),
        (3600, "must be between 0.05 and 60 seconds"),
        (0, "must be more than 0 seconds"),
        (-1, "must be more than 0 seconds"),
        (math.inf, "must be a finite number of seconds"),
        (math.nan, "must be a finite number of seconds"),
        ("1", "expected a number of seconds, got a string ('1')"),
        (True, "expected a number of seconds, got a boolean"),
    ],
)
def test_heartbeat_interval_refused(refuse: Refuse, interval: Any, problem: str) -> None:
    refuse(cluster_doc(heartbeat_interval=interval), "dmz.cluster.heartbeat-interval", problem)


def test_member_names(refuse: Refuse) -> None:
    refuse(cluster_doc(member_names=["dmz2", "dmz 3"]), "dmz.cluster.member-names[1]",
           "bad member identity 'dmz 3'")  # fmt: skip
    refuse(cluster_doc(member_names=[""]), "dmz.cluster.member-names[0]", "bad member identity ''")
    refuse(cluster_doc(member_names=[]), "dmz.cluster.member-names", "empty array")
    refuse(cluster_doc(member_names=[2]), "dmz.cluster.member-names[0]", "expected a string")


def test_a_connector_cannot_be_a_member(refuse: Refuse) -> None:
    refuse(cluster_doc(member_names=["dmz2", "internal1"]), "dmz.cluster.member-names[1]",
           "'internal1' is a connector identity, it cannot be a member")  # fmt: skip
    refuse(cluster_doc(member_names="internal1"), "dmz.cluster.member-names",
           "'internal1' is a connector identity")  # fmt: skip


def test_every_connector_is_refused_as_a_member(refuse: Refuse) -> None:
    doc = cluster_doc(member_names=["dmz2", "internal2"])
    doc["dmz"]["backplane"]["connectors"]["internal2"] = ["echo"]
    refuse(doc, "dmz.cluster.member-names[1]", "'internal2' is a connector identity")


# --------------------------------------------------------------------------- the cluster's port


def test_cluster_accept_is_a_listener(load: Load, refuse: Refuse) -> None:
    refuse(cluster_doc(accept="tls://127.0.0.1:5941"), "dmz.cluster.accept",
           "tls://127.0.0.1:5941 is already accepted by the backplane (dmz.backplane.accept)")  # fmt: skip
    refuse(cluster_doc(accept="tls://0.0.0.0:5941"), "dmz.cluster.accept",
           "overlaps tls://127.0.0.1:5941 of the backplane (dmz.backplane.accept)")  # fmt: skip
    doc = cluster_doc(accept="tls://127.0.0.1:9100")
    doc["dmz"]["admin"] = "http://127.0.0.1:9100"
    refuse(doc, "dmz.cluster.accept", "conflicts with http://127.0.0.1:9100 of the admin endpoint (dmz.admin)")
    doc = cluster_doc(accept="tls://127.0.0.1:8080")
    refuse(doc, "dmz.service[0].accept[0]",
           "ws://127.0.0.1:8080/echo conflicts with tls://127.0.0.1:8080 of the cluster "
           "(dmz.cluster.accept): they cannot share one port")  # fmt: skip
    doc = cluster_doc(accept="tls://0.0.0.0:8080")
    refuse(doc, "dmz.service[0].accept[0]", "of the cluster (dmz.cluster.accept)")
    # the same port on another address, and the members' ports, are not this gateway's listeners
    load(cluster_doc(accept="tls://10.0.0.5:5941", members=["tls://127.0.0.1:8080", "tls://127.0.0.1:5941"]))


def test_the_discovery_port_is_udp_and_takes_no_tcp_port(load: Load) -> None:
    cluster = load(cluster_doc(connect="udp://224.2.2.44:8080", accept="tls://10.0.0.5:5942")).cluster
    assert cluster is not None and cluster.connect == Uri("udp", "224.2.2.44", 8080)


# --------------------------------------------------------------------------- [[dmz.service]]: type, mode, balance


def test_service_defaults(load: Load) -> None:
    (echo,) = load(dmz_doc()).services
    assert (echo.type, echo.mode, echo.balance, echo.is_balancer) == ("tunnel", "proxy", (), False)
    (echo,) = load(cluster_doc()).services
    assert (echo.type, echo.mode, echo.balance, echo.is_balancer) == ("tunnel", "proxy", (), False)


def test_explicit_tunnel(load: Load) -> None:
    doc = dmz_doc()
    doc["dmz"]["service"][0]["type"] = "tunnel"
    assert load(doc).services[0] == DmzService("echo", (Uri("ws", "127.0.0.1", 8080, "/echo"),))


def test_balancer_defaults_to_proxy(load: Load, tmp_path: Path) -> None:
    config = load(with_services(balancer(accept=["ws://0.0.0.0:80/echo", "tcp://0.0.0.0:9000"])))
    lb = config.services[1]
    assert lb == DmzService(
        name="lb",
        accept=(Uri("ws", "0.0.0.0", 80, "/echo"), Uri("tcp", "0.0.0.0", 9000)),
        type="balancer",
        mode="proxy",
    )
    assert lb.is_balancer and lb.balance == ()
    tls = load(with_services(balancer(accept="tls://0.0.0.0:5432", cert="public.pem", open_timeout=2)))
    assert (tls.services[1].cert, tls.services[1].open_timeout) == (tmp_path / "public.pem", 2.0)


def test_balancer_modes(load: Load) -> None:
    proxy = load(with_services(balancer(mode="proxy", accept="tls://0.0.0.0:443", cert="public.pem")))
    assert proxy.services[1].mode == "proxy"
    redirect = load(
        with_services(balancer(mode="redirect", accept=["ws://0.0.0.0:80/echo", "wss://0.0.0.0:443/echo"],
                               cert="public.pem"))
    )  # fmt: skip
    assert redirect.services[1].mode == "redirect"


def test_type_and_mode_values(refuse: Refuse) -> None:
    refuse(with_services(balancer(type="loadbalancer")), "dmz.service[1].type",
           "must be one of 'tunnel', 'balancer' (got 'loadbalancer')")  # fmt: skip
    refuse(with_services(balancer(type="Balancer")), "dmz.service[1].type", "got 'Balancer'")
    refuse(with_services(balancer(type=1)), "dmz.service[1].type", "expected a string, got an integer")
    refuse(with_services(balancer(mode="forward")), "dmz.service[1].mode",
           "must be one of 'proxy', 'redirect' (got 'forward')")  # fmt: skip
    refuse(with_services(balancer(mode=["proxy"])), "dmz.service[1].mode", "expected a string, got an array")


def test_mode_is_for_balancers_only(refuse: Refuse) -> None:
    for tunnel in ({}, {"type": "tunnel"}):
        for mode in ("proxy", "redirect"):
            doc = cluster_doc()
            doc["dmz"]["service"][0].update(tunnel, mode=mode)
            refuse(doc, "dmz.service[0].mode", 'only used by a balancer (type = "balancer")')


@pytest.mark.parametrize(
    "accept",
    [["tcp://0.0.0.0:9000"], ["tls://0.0.0.0:9443"], ["ws://0.0.0.0:80/echo", "tcp://0.0.0.0:9000"],
     ["wss://0.0.0.0:443/echo", "tls://0.0.0.0:9443"]],
)  # fmt: skip
def test_redirect_needs_only_websocket_accepts(refuse: Refuse, accept: list[str]) -> None:
    refuse(with_services(balancer(mode="redirect", accept=accept, cert="public.pem")), "dmz.service[1].mode",
           "redirect needs ws:// or wss:// accepts only (tcp:// and tls:// clients cannot follow an "
           'HTTP redirect): use mode = "proxy"')  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("balance", ["ws://echo.example.com:80/echo"]),
        ("allow-origin", ["*"]),
        ("max-message-size", 131072),
        ("ws-ping-interval", 30),
    ],
)
def test_keys_a_balancer_does_not_use(refuse: Refuse, key: str, value: Any) -> None:
    refuse(with_services(balancer(**{key: value})), f"dmz.service[1].{key}",
           "not used by a balancer (the member that serves the client applies its own service's settings)")  # fmt: skip


def test_a_balancer_needs_a_cluster(refuse: Refuse) -> None:
    refuse(with_services(balancer(), cluster=False), "dmz.service[1].type",
           "a balancer needs a [dmz.cluster]: it sends clients to members")  # fmt: skip
    doc = dmz_doc()
    doc["dmz"]["service"][0]["type"] = "balancer"
    refuse(doc, "dmz.service[0].type", "a balancer needs a [dmz.cluster]")


def test_no_connector_offers_a_balancer(refuse: Refuse) -> None:
    doc = with_services(balancer())
    doc["dmz"]["backplane"]["connectors"]["internal1"] = ["echo", "lb"]
    refuse(doc, "dmz.backplane.connectors.internal1[1]",
           "service 'lb' is a balancer: it sends clients to members, no connector offers it")  # fmt: skip
    doc["dmz"]["backplane"]["connectors"] = {"internal1": ["echo"], "internal2": "lb"}
    refuse(doc, "dmz.backplane.connectors.internal2", "service 'lb' is a balancer")


def test_a_balancer_shares_ports_like_any_service(load: Load, refuse: Refuse) -> None:
    shared = with_services(balancer(accept="ws://127.0.0.1:8080/lb"))  # 'echo' has ws://127.0.0.1:8080/echo
    assert load(shared).services[1].accept == (Uri("ws", "127.0.0.1", 8080, "/lb"),)
    refuse(with_services(balancer(accept=["tcp://127.0.0.1:8080"])), "dmz.service[1].accept[0]",
           "conflicts with ws://127.0.0.1:8080/echo of service 'echo' (dmz.service[0].accept[0])")  # fmt: skip
    refuse(with_services(balancer(accept=["tcp://10.0.0.5:5942"])), "dmz.service[1].accept[0]",
           "of the cluster (dmz.cluster.accept)")  # fmt: skip
    refuse(with_services(balancer(accept=["ws://127.0.0.1:8080/echo"])), "dmz.service[1].accept[0]",
           "ws://127.0.0.1:8080/echo is already accepted by service 'echo'")  # fmt: skip
    refuse(with_services(balancer(accept="wss://0.0.0.0:443/")), "dmz.service[1].cert", "missing required key")


def test_balance_on_a_tunnel(load: Load) -> None:
    doc = cluster_doc()
    doc["dmz"]["service"][0].update(
        accept=["ws://127.0.0.1:8080/echo", "tcp://127.0.0.1:9000"],
        balance=["wss://echo.example.com:443/echo", "ws://echo.example.com:80/echo", "tls://echo.example.com:9443"],
    )
    assert load(doc).services[0].balance == (
        Uri("wss", "echo.example.com", 443, "/echo"),
        Uri("ws", "echo.example.com", 80, "/echo"),
        Uri("tls", "echo.example.com", 9443),
    )
    doc["dmz"]["service"][0]["balance"] = "ws://10.0.0.5:80"
    assert load(doc).services[0].balance == (Uri("ws", "10.0.0.5", 80, "/"),)


def test_balance_needs_no_cluster_and_no_balancer_in_this_file(load: Load) -> None:
    """The balancers may run on other members; a balance URI is not a listener of this gateway."""
    doc = dmz_doc()
    doc["dmz"]["service"][0]["balance"] = ["ws://127.0.0.1:5941/echo", "ws://127.0.0.1:8080/echo"]
    config = load(doc)
    assert config.cluster is None
    assert config.services[0].balance == (
        Uri("ws", "127.0.0.1", 5941, "/echo"), Uri("ws", "127.0.0.1", 8080, "/echo")
    )  # fmt: skip


@pytest.mark.parametrize(
    ("accept", "balance", "problem"),
    [
        ("tcp://127.0.0.1:9000", "ws://lb.example:80/echo",
         "a ws:// balancer sends ws clients, and this service has no ws:// or wss:// accept to serve them"),
        ("tls://127.0.0.1:9443", "wss://lb.example:443/echo",
         "a wss:// balancer sends wss clients, and this service has no ws:// or wss:// accept"),
        ("ws://127.0.0.1:8080/echo", "tcp://lb.example:9000",
         "a tcp:// balancer sends tcp clients, and this service has no tcp:// or tls:// accept to serve them"),
        ("wss://127.0.0.1:8443/echo", "tls://lb.example:9443",
         "a tls:// balancer sends tls clients, and this service has no tcp:// or tls:// accept"),
    ],
)  # fmt: skip
def test_balance_needs_an_accept_of_its_family(
    refuse: Refuse, accept: str, balance: str, problem: str
) -> None:
    """The first balance URI is of the service's own family and passes; the second does not."""
    fine = "tcp://lb.example:81" if accept.startswith(("tcp", "tls")) else "ws://lb.example:81/echo"
    doc = cluster_doc()
    doc["dmz"]["service"][0].update(accept=accept, balance=[fine, balance], cert="web.pem")
    if accept.startswith(("ws:", "tcp:")):
        del doc["dmz"]["service"][0]["cert"]
    refuse(doc, "dmz.service[0].balance[1]", problem)


def test_balance_family_not_scheme(load: Load) -> None:
    """ws and wss are one family, tcp and tls the other: TLS may end at the balancer or the member."""
    doc = cluster_doc()
    doc["dmz"]["service"][0].update(
        accept=["wss://127.0.0.1:8443/echo", "tls://127.0.0.1:9443"],
        cert="web.pem",
        balance=["ws://lb.example:80/echo", "tcp://lb.example:9000"],
    )
    assert [uri.scheme for uri in load(doc).services[0].balance] == ["ws", "tcp"]


def test_balance_uris(refuse: Refuse) -> None:
    doc = cluster_doc()
    doc["dmz"]["service"][0]["balance"] = ["ws://lb.example:80/echo", "ws://LB.example:80/echo"]
    refuse(doc, "dmz.service[0].balance[1]", "ws://lb.example:80/echo is listed twice (also at dmz.service[0].balance[0])")
    doc["dmz"]["service"][0]["balance"] = ["http://lb.example:80"]
    refuse(doc, "dmz.service[0].balance[0]", "unsupported scheme 'http' (expected one of ws, wss, tcp, tls)")
    doc["dmz"]["service"][0]["balance"] = []
    refuse(doc, "dmz.service[0].balance", "empty array")
    doc["dmz"]["service"][0]["balance"] = ["ws://lb.example/echo"]
    refuse(doc, "dmz.service[0].balance[0]", "missing port")


# --------------------------------------------------------------------------- the documented example


def documented_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.DOTALL)


def cluster_example() -> str:
    (block,) = [block for block in documented_blocks() if "\n[dmz.cluster]" in block]
    return block


@pytest.mark.parametrize(("member", "address"), [("dmz1", "10.0.0.5"), ("dmz2", "10.0.0.6")])
def test_documented_two_member_example(tmp_path: Path, member: str, address: str) -> None:
    """The example is both members' file: the second differs only in its two properties."""
    write_placeholders(tmp_path)
    text = cluster_example()
    assert 'member = "dmz1"' in text and 'address = "10.0.0.5"' in text
    text = text.replace('member = "dmz1"', f'member = "{member}"')
    text = text.replace('address = "10.0.0.5"', f'address = "{address}"')
    (tmp_path / "dmz.toml").write_text(text)
    config = load_config(tmp_path / "dmz.toml")
    assert isinstance(config, DmzConfig) and config.name == member
    assert config.backplane.cert == tmp_path / f"{member}.pem"
    cluster = config.cluster
    assert cluster is not None
    assert cluster.accept == Uri("tls", address, 5942)
    assert cluster.accept in cluster.members  # one list for both; each member skips itself
    assert len(cluster.members) == 2
    balancers = [service for service in config.services if service.is_balancer]
    tunnels = [service for service in config.services if not service.is_balancer]
    assert balancers and tunnels
    assert not any(set(services) & {s.name for s in balancers} for services in config.backplane.connectors.values())
    # every balance URI of a tunnel matches a balancer accept here: scheme, port and path
    for tunnel in tunnels:
        for uri in tunnel.balance:
            assert any(
                (accept.scheme, accept.port, accept.path) == (uri.scheme, uri.port, uri.path)
                for lb in balancers
                for accept in lb.accept
            ), uri


# --------------------------------------------------------------------------- no other exception
CLUSTER_KEYS = ["name", "accept", "members", "connect", "heartbeat-interval", "member-names", "resolve-interval",
                "type", "mode", "balance", "allow-origin", "cert", "cluster", "service"]  # fmt: skip
CLUSTER_STRINGS = [
    "balancer", "tunnel", "proxy", "redirect", "shield-east", "internal1", "dmz2", "", "${x}",
    OWN, OTHER, "tls://0.0.0.0:5942", "tls://[::]:5942", "tls://127.0.0.1:5941", "tls://h:1",
    "udp://224.2.2.44:44444", "udp://[ff15::1]:1", "udp://10.0.0.1:1", "udp://h:1",
    "ws://0.0.0.0:80/echo", "ws://127.0.0.1:8080/echo", "wss://x:443/", "tcp://0.0.0.0:9000",
    "tls://x:9443", "public.pem", "echo", "lb",
]  # fmt: skip
cluster_scalars = st.one_of(
    st.sampled_from(CLUSTER_STRINGS),
    st.sampled_from([0, 0.05, 0.049, 1, 60, 61, -1, True, math.nan, math.inf]),
    st.floats(),
    st.integers(-(2**63), 2**63 - 1),
)
cluster_values = st.one_of(cluster_scalars, st.lists(cluster_scalars, max_size=3))


@st.composite
def mutated_cluster_documents(draw: st.DrawFn) -> dict[str, Any]:
    """The file with a cluster, a balancer and a balanced tunnel, with a few keys changed."""
    doc = with_services(balancer())
    doc["dmz"]["service"][0]["balance"] = ["ws://lb.example:80/echo"]
    doc["dmz"]["cluster"]["connect"] = "udp://224.2.2.44:44444"
    if draw(st.booleans()):
        del doc["dmz"]["cluster"]
    tables = [doc["dmz"]["service"][0], doc["dmz"]["service"][1], doc["dmz"].get("cluster", {})]
    for _ in range(draw(st.integers(1, 4))):
        table = draw(st.sampled_from(tables))
        key = draw(st.sampled_from(CLUSTER_KEYS))
        if draw(st.booleans()) and key in table:
            del table[key]
        else:
            table[key] = draw(cluster_values)
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_cluster_documents())
def test_mutated_cluster_documents_load_or_raise_config_error(
    tmp_path_factory: pytest.TempPathFactory, doc: dict[str, Any]
) -> None:
    folder = tmp_path_factory.getbasetemp() / "cluster-fuzz"
    folder.mkdir(exist_ok=True)
    write_placeholders(folder)
    path = folder / "dmz.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    try:
        config = load_config(path)
    except ConfigError as error:
        assert error.file == path and error.problem
        return
    assert isinstance(config, DmzConfig)
    if any(service.is_balancer for service in config.services):
        assert config.cluster is not None
    if config.cluster is not None and config.cluster.connect is not None:
        assert config.cluster.connect.host and config.cluster.accept.host not in ("0.0.0.0", "::")
