"""A configuration key is declared once, on the field of ``shield.config.model`` it fills.

Checks of ``shield.config.schema``: every field of every configuration dataclass has exactly one
TOML key (or is inline, or not in the file), no table declares a key twice, the loader accepts
exactly the declared keys (in the order its messages have always listed them), each of them is
read into the field that declares it, and the closed sets of strings are ``StrEnum`` classes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest

from shield.config import loader, model
from shield.config.errors import ConfigError
from shield.config.model import (
    AuthKind,
    BalancerMode,
    ClientLimits,
    DmzBackplane,
    DmzCluster,
    DmzConfig,
    DmzService,
    HealthCheck,
    InternalBackplane,
    InternalConfig,
    InternalService,
    KeepaliveSettings,
    ServiceType,
)
from shield.config.schema import Place, nested_class, table_entries, table_keys, toml_key

TABLES: dict[str, type] = {
    "dmz": DmzConfig,
    "dmz.backplane": DmzBackplane,
    "dmz.cluster": DmzCluster,
    "dmz.limits": ClientLimits,
    "dmz.service": DmzService,
    "internal": InternalConfig,
    "internal.backplane": InternalBackplane,
    "internal.service": InternalService,
}
#: What unknown-key messages have always listed ("expected one of ..."), table by table.
EXPECTED_KEYS = {
    "dmz": "name, admin, grace-period, open-timeout, buffer-budget, backplane, cluster, limits, service",
    "dmz.backplane": "accept, cert, ca, connectors, keepalive-interval, keepalive-misses, stream-window, "
    "stream-window-max, max-streams",
    "dmz.cluster": "name, accept, members, connect, heartbeat-interval, member-names, resolve-interval",
    "dmz.limits": "max-connections, max-connections-per-source, handshake-timeout, idle-timeout, bytes-per-second",
    "dmz.service": "name, accept, allow-origin, max-message-size, ws-ping-interval, open-timeout, cert, type, "
    "mode, balance, auth, tokens, client-ca, max-connections, max-connections-per-source, handshake-timeout, "
    "idle-timeout, bytes-per-second, proxy-protocol-from",
    "internal": "name, admin, priority, grace-period, max-pending-opens, buffer-budget, backplane, service",
    "internal.backplane": "connect, server-name, links, cert, ca, keepalive-interval, keepalive-misses, "
    "stream-window, stream-window-max, resolve-interval, max-streams, proxy, proxy-auth-file",
    "internal.service": "name, connect, connect-timeout, ca, server-name, health-check, health-interval, "
    "health-timeout, health-rise, health-fall, health-path, health-status, proxy-protocol",
}
PLACEHOLDERS = ("dmz1.pem", "internal1.pem", "ca.pem", "public.pem", "clients-ca.pem")
PROXY_AUTH = ("proxy-auth", b"connector:secret\n")  # a file whose content is checked
HASH = "sha256:" + hashlib.sha256(b"token").hexdigest()


def reachable(cls: type) -> Iterator[type]:
    """``cls`` and every dataclass its tables and inline fields hold."""
    yield cls
    for field in dataclasses.fields(cls):
        if toml_key(field)[1] in (Place.TABLE, Place.TABLES, Place.INLINE):
            yield from reachable(nested_class(cls, field))


CONFIG_CLASSES = sorted({c for root in (DmzConfig, InternalConfig) for c in reachable(root)}, key=lambda c: c.__name__)


# --------------------------------------------------------------------------- declarations


def test_every_config_dataclass_is_reached() -> None:
    """Each dataclass of model.py but Uri (a value, parsed from one string) and ProxyAuth (a value,
    read from the file a key names) is part of a file."""
    declared = {
        value for value in vars(model).values()
        if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == model.__name__
    }  # fmt: skip
    assert declared - set(CONFIG_CLASSES) == {model.Uri, model.ProxyAuth}
    assert KeepaliveSettings in CONFIG_CLASSES


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda cls: cls.__name__)
def test_every_field_has_exactly_one_key(cls: type) -> None:
    """Each field is filled by one key, by the keys of its inline dataclass, or is not in the file;
    each key fills one field; no key is declared twice (table_entries would raise)."""
    entries = table_entries(cls)
    keys = [entry.key for entry in entries]
    assert len(keys) == len(set(keys))
    by_field: dict[str, list[str]] = {}
    for entry in entries:
        by_field.setdefault(entry.path[0], []).append(entry.key)
    for field in dataclasses.fields(cls):
        name, place = toml_key(field)
        if place is Place.NONE:
            assert field.name not in by_field
        elif place is Place.INLINE:
            inner = table_keys(nested_class(cls, field))
            assert by_field[field.name] == [name + key for key in inner]
        else:
            assert by_field[field.name] == [name], field.name
    assert set(by_field) <= {field.name for field in dataclasses.fields(cls)}


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda cls: cls.__name__)
def test_every_key_names_a_field(cls: type) -> None:
    """Following an entry's field path from ``cls`` ends on a field (through inline dataclasses)."""
    for entry in table_entries(cls):
        holder = cls
        for step in entry.path[:-1]:
            holder = nested_class(holder, next(f for f in dataclasses.fields(holder) if f.name == step))
        assert entry.path[-1] in {field.name for field in dataclasses.fields(holder)}, entry


def test_naming_rule_and_its_exceptions() -> None:
    """Keys follow the field names, dashes for underscores, but where the field says otherwise."""
    exceptions = {}
    for cls in CONFIG_CLASSES:
        for entry in table_entries(cls):
            if entry.key != "-".join(entry.path).replace("_", "-"):
                exceptions[f"{cls.__name__}.{'.'.join(entry.path)}"] = entry.key
    assert exceptions == {
        "DmzConfig.services": "service",
        "InternalConfig.services": "service",
        "DmzService.token_hashes": "tokens",
        "InternalBackplane.proxy_auth": "proxy-auth-file",  # the credentials the file holds
        # inline ClientLimits: its keys, unprefixed, in the service's table
        "DmzService.limits.max_connections": "max-connections",
        "DmzService.limits.max_connections_per_source": "max-connections-per-source",
        "DmzService.limits.handshake_timeout": "handshake-timeout",
        "DmzService.limits.idle_timeout": "idle-timeout",
        "DmzService.limits.bytes_per_second": "bytes-per-second",
    }


@pytest.mark.parametrize("path", sorted(TABLES))
def test_loader_accepts_the_declared_keys_in_the_usual_order(path: str) -> None:
    assert ", ".join(table_keys(TABLES[path])) == EXPECTED_KEYS[path]


def test_loader_key_lists_come_from_the_model() -> None:
    assert loader._DMZ_KEYS == table_keys(DmzConfig)
    assert loader._DMZ_BACKPLANE_KEYS == table_keys(DmzBackplane)
    assert loader._DMZ_CLUSTER_KEYS == table_keys(DmzCluster)
    assert loader._LIMIT_KEYS == table_keys(ClientLimits)
    assert loader._DMZ_SERVICE_KEYS == table_keys(DmzService)
    assert loader._INTERNAL_KEYS == table_keys(InternalConfig)
    assert loader._INTERNAL_BACKPLANE_KEYS == table_keys(InternalBackplane)
    assert loader._INTERNAL_SERVICE_KEYS == table_keys(InternalService)
    assert set(loader._WS_ONLY_KEYS) <= set(loader._DMZ_SERVICE_KEYS)
    assert set(loader._HEALTH_KEYS) | set(loader._HTTP_HEALTH_KEYS) | set(loader._TLS_BACKEND_KEYS) <= set(
        loader._INTERNAL_SERVICE_KEYS
    )


def test_loader_cannot_read_an_undeclared_key(tmp_path: Path) -> None:
    """A getter for a key no field declares is a bug of the loader, not of the file."""
    table = loader._Table({}, "dmz.cluster", loader._Context({}, tmp_path), table_keys(DmzCluster))
    with pytest.raises(KeyError, match="no field of the model declares"):
        table.seconds("heartbeat", 1.0, zero_allowed=False)
    with pytest.raises(KeyError):
        table.has("heartbeat_interval")
    assert table.seconds("heartbeat-interval", 1.0, zero_allowed=False) == 1.0


# --------------------------------------------------------------------------- every key is read


def every_key_dmz() -> dict[str, Any]:
    """A DMZ file with every key set, to a value that is not its default (over its two services)."""
    limits = {"max-connections": 7, "max-connections-per-source": 3, "handshake-timeout": 4.0,
              "idle-timeout": 9.0, "bytes-per-second": 8}  # fmt: skip
    tunnel = {
        "name": "echo", "accept": ["wss://127.0.0.1:8443/echo"], "allow-origin": ["https://a.example"],
        "max-message-size": 1000, "ws-ping-interval": 5, "open-timeout": 4, "cert": "public.pem",
        "balance": ["ws://127.0.0.1:8000/echo"], "auth": "token", "tokens": [HASH],
        "max-connections": 5, "max-connections-per-source": 2, "handshake-timeout": 3.0, "idle-timeout": 60,
        "bytes-per-second": 100, "proxy-protocol-from": ["10.0.0.0/8"],
    }  # fmt: skip
    balancer = {"name": "lb", "accept": ["wss://127.0.0.1:8444/lb"], "cert": "public.pem", "type": "balancer",
                "mode": "redirect", "auth": "mtls", "client-ca": "clients-ca.pem"}  # fmt: skip
    return {
        "dmz": {
            "name": "dmz1", "admin": "http://127.0.0.1:9000", "grace-period": 5, "open-timeout": 3,
            "buffer-budget": 2**21,
            "backplane": {
                "accept": "tls://127.0.0.1:5941", "cert": "dmz1.pem", "ca": "ca.pem",
                "connectors": {"internal1": ["echo"]}, "keepalive-interval": 1, "keepalive-misses": 5,
                "stream-window": 524288, "stream-window-max": 8388608, "max-streams": 100,
            },
            "cluster": {
                "name": "c1", "accept": "tls://127.0.0.1:5942", "members": ["tls://127.0.0.2:5942"],
                "connect": "udp://224.2.2.44:44444", "heartbeat-interval": 2, "member-names": ["dmz2"],
                "resolve-interval": 5,
            },
            "limits": limits,
            "service": [tunnel, balancer],
        }
    }  # fmt: skip


def every_key_internal(proxy: bool = False) -> dict[str, Any]:
    """A connector file with every key set; with ``proxy``, the proxy keys instead of
    resolve-interval (which a proxy makes pointless, so the loader refuses the two together)."""
    doc = {
        "internal": {
            "name": "internal1", "admin": "http://127.0.0.1:9001", "priority": 5, "grace-period": 4,
            "max-pending-opens": 9, "buffer-budget": 2**21,
            "backplane": {
                "connect": ["tls://dmz1.example:5941"], "server-name": "dmz1", "links": 3,
                "cert": "internal1.pem", "ca": "ca.pem", "keepalive-interval": 1, "keepalive-misses": 5,
                "stream-window": 524288, "stream-window-max": 8388608, "resolve-interval": 5,
                "max-streams": 100,
            },
            "service": [{
                "name": "web", "connect": "tls://backend.example:443", "connect-timeout": 1, "ca": "ca.pem",
                "server-name": "backend", "health-check": "http", "health-interval": 1, "health-timeout": 1,
                "health-rise": 4, "health-fall": 5, "health-path": "/health", "health-status": 204,
                "proxy-protocol": "v2",
            }],
        }
    }  # fmt: skip
    if proxy:
        backplane = doc["internal"]["backplane"]
        del backplane["resolve-interval"]
        backplane.update({"proxy": "http://10.0.0.5:3128", "proxy-auth-file": "proxy-auth"})
    return doc


def class_default(cls: type, path: tuple[str, ...]) -> Any:
    """The default of the field at ``path`` (through inline dataclasses), or MISSING."""
    field = next(f for f in dataclasses.fields(cls) if f.name == path[0])
    if len(path) > 1:
        return class_default(nested_class(cls, field), path[1:])
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def read_keys(cls: type, table: dict[str, Any], loaded: Any, where: str) -> Iterator[str]:
    """Each key of ``table`` whose value reached its field (the loaded value is not the default),
    and the same in its sub-tables; a key with no field is a test failure."""
    entries = {entry.key: entry for entry in table_entries(cls)}
    for key, value in table.items():
        entry = entries[key]
        field = next(f for f in dataclasses.fields(cls) if f.name == entry.path[0])
        held = loaded
        for step in entry.path:
            held = getattr(held, step)
        if entry.place is Place.TABLE:
            yield from read_keys(nested_class(cls, field), value, held, f"{where}.{key}")
        elif entry.place is Place.TABLES:
            assert len(held) == len(value)
            for item, item_loaded in zip(value, held):
                yield from read_keys(nested_class(cls, field), item, item_loaded, f"{where}.{key}")
        if held != class_default(cls, entry.path):
            yield f"{where}.{key}"


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    for name in PLACEHOLDERS:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / PROXY_AUTH[0]).write_bytes(PROXY_AUTH[1])
    return tmp_path


def all_keys(root: str) -> set[str]:
    return {f"{path}.{key}" for path, cls in TABLES.items() if path.split(".")[0] == root for key in table_keys(cls)}


def test_every_dmz_key_is_read_into_its_field(folder: Path) -> None:
    doc = every_key_dmz()
    config = loader._build_dmz(doc, folder / "dmz.toml")
    assert set(read_keys(DmzConfig, doc["dmz"], config, "dmz")) == all_keys("dmz")


def test_every_internal_key_is_read_into_its_field(folder: Path) -> None:
    read: set[str] = set()
    for doc in (every_key_internal(), every_key_internal(proxy=True)):
        config = loader.build_internal(doc, folder)
        read |= set(read_keys(InternalConfig, doc["internal"], config, "internal"))
    assert read == all_keys("internal")


# --------------------------------------------------------------------------- enumerations


def test_closed_sets_are_str_enums(folder: Path) -> None:
    config = loader._build_dmz(every_key_dmz(), folder / "dmz.toml")
    tunnel, balancer = config.services
    assert (tunnel.type, tunnel.mode, tunnel.auth) == (ServiceType.TUNNEL, BalancerMode.PROXY, AuthKind.TOKEN)
    assert (balancer.type, balancer.mode, balancer.auth) == ("balancer", "redirect", "mtls")
    for value in (tunnel.type, balancer.mode, balancer.auth):
        assert type(value).__mro__[1] is StrEnum
    assert balancer.is_balancer and not tunnel.is_balancer
    assert f"{balancer.mode}" == str(balancer.mode) == "redirect"
    internal = loader.build_internal(every_key_internal(), folder)
    check = internal.services[0].health_check
    assert check == "http"
    assert check is HealthCheck.HTTP
    # dataclasses built with plain strings (as other tests do) equal the loaded ones
    plain: dict[str, Any] = {"type": "balancer", "mode": "redirect"}
    assert DmzService("x", (), **plain) == DmzService("x", (), type=ServiceType.BALANCER, mode=BalancerMode.REDIRECT)


@pytest.mark.parametrize(
    ("table", "key", "enum"),
    [("service", "type", ServiceType), ("service", "mode", BalancerMode), ("service", "auth", AuthKind)],
)
def test_unknown_choice_lists_the_enum(folder: Path, table: str, key: str, enum: type[StrEnum]) -> None:
    doc = every_key_dmz()
    doc["dmz"]["service"][1][key] = "nope"
    with pytest.raises(ConfigError) as info:
        loader._build_dmz(doc, folder / "dmz.toml")
    listed = ", ".join(repr(member.value) for member in enum)
    assert str(info.value).endswith(f"dmz.service[1].{key}: must be one of {listed} (got 'nope')")


def test_unknown_health_check(folder: Path) -> None:
    doc = every_key_internal()
    doc["internal"]["service"][0]["health-check"] = "ping"
    with pytest.raises(ConfigError, match=r"must be one of 'connect', 'tls', 'http', 'off' \(got 'ping'\)"):
        loader.build_internal(doc, folder)
