"""Loading of the gateways' TOML files into the validated dataclasses of ``shield.config.model``.

A gateway must refuse a bad file before anything listens, with one message that names the key
and the problem. So everything a file can get wrong is checked here, once: unknown keys (with a
suggestion), types, ranges, URIs, names, listener conflicts, references between tables and the
existence of the certificate files. The rest of shield reads only the dataclasses.

``${name}`` in any string value is replaced by the property ``name`` of ``[properties]``;
a property may use properties defined before it. Keys (table names) are never expanded.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import ipaddress
import math
import os
import re
import stat
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from shield.config.errors import ConfigError
from shield.config.model import (
    BACKEND_SCHEMES,
    BACKPLANE_SCHEMES,
    PUBLIC_SCHEMES,
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
    ProxyAuth,
    ProxyProtocolVersion,
    ServiceType,
    Uri,
)
from shield.config.schema import table_keys
from shield.config.uris import is_host_name, parse_uri
from shield.mux.frames import INITIAL_WINDOW, MAX_WINDOW
from shield.names import NAME_RULE, is_name

__all__ = [
    "load_config",
    "load_dmz_config",
    "load_internal_config",
    "expand_properties",
    "MAX_LINKS",
    "MAX_PRIORITY",
    "MAX_MESSAGE_SIZE",
    "MIN_STREAM_WINDOW",
    "MAX_STREAM_WINDOW",
    "MAX_EXPANDED_LENGTH",
]

MAX_LINKS = 64
MAX_PRIORITY = 2**31 - 1
MAX_MESSAGE_SIZE = 64 * 1024 * 1024
#: Streams one link may carry at once (the yamux stream ids allow far more; memory does not).
MAX_STREAMS = 1 << 20
#: Smallest and largest ``buffer-budget``: one stream's base window, and 1 TiB.
MIN_BUFFER_BUDGET = 1 << 20
MAX_BUFFER_BUDGET = 1 << 40
#: The yamux window bounds, as in ``shield.mux.frames``: 256 KiB is the protocol's initial window.
MIN_STREAM_WINDOW = INITIAL_WINDOW  # the protocol's bounds (yamux: the initial and largest window)
MAX_STREAM_WINDOW = MAX_WINDOW
#: Longest string ``${}`` expansion may produce: properties built from properties could otherwise
#: double at each step and exhaust memory.
MAX_EXPANDED_LENGTH = 65536
#: Dotted property names have at most this many parts (``a.b.c`` has 3).
MAX_PROPERTY_DEPTH = 32

_PROPERTY_NAME = re.compile(r"[A-Za-z0-9._-]+")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})
_WS_SCHEMES = frozenset({"ws", "wss"})
_TLS_PUBLIC_SCHEMES = frozenset({"wss", "tls"})

#: The document's own keys: the gateway's table and [properties] (which has no dataclass).
_TOP_KEYS = ("properties", "dmz", "internal")
#: The keys each table accepts, from the fields of its dataclass (shield.config.schema): a key is
#: declared once, on the field it fills, in model.py.
_DMZ_KEYS = table_keys(DmzConfig)
_LIMIT_KEYS = table_keys(ClientLimits)
_DMZ_CLUSTER_KEYS = table_keys(DmzCluster)
_DMZ_BACKPLANE_KEYS = table_keys(DmzBackplane)
_DMZ_SERVICE_KEYS = table_keys(DmzService)
_INTERNAL_KEYS = table_keys(InternalConfig)
_INTERNAL_BACKPLANE_KEYS = table_keys(InternalBackplane)
_INTERNAL_SERVICE_KEYS = table_keys(InternalService)
_HEALTH_KEYS = tuple(key for key in _INTERNAL_SERVICE_KEYS if key.startswith("health-"))
_HEALTH_SETTINGS = tuple(key for key in _HEALTH_KEYS if key != "health-check")  # refused when off
#: Keys that only some services may have: each must be one of its table's keys above
#: (``_Table`` refuses to look up a key its dataclass does not declare).
_WS_ONLY_KEYS = ("allow-origin", "max-message-size", "ws-ping-interval")
_HTTP_HEALTH_KEYS = ("health-path", "health-status")
_TLS_BACKEND_KEYS = ("ca", "server-name")
_TOKEN_HASH = re.compile(r"sha256:([0-9a-fA-F]{64})")


# --------------------------------------------------------------------------- public API


def load_config(path: str | os.PathLike[str]) -> DmzConfig | InternalConfig:
    """Load either gateway's file, telling them apart by the ``[dmz]`` or ``[internal]`` table."""
    source, data = _read_document(path)
    with _located(source):
        kind = _gateway_kind(data)
        return _build_dmz(data, source) if kind == "dmz" else _build_internal(data, source)


def load_dmz_config(path: str | os.PathLike[str]) -> DmzConfig:
    """Load a DMZ gateway's file; an internal gateway's file is refused with a clear message."""
    source, data = _read_document(path)
    with _located(source):
        if _gateway_kind(data) != "dmz":
            raise ConfigError("", "this is an internal gateway's file ([internal]); expected [dmz]")
        return _build_dmz(data, source)


def load_internal_config(path: str | os.PathLike[str]) -> InternalConfig:
    """Load an internal gateway's file; a DMZ gateway's file is refused with a clear message."""
    source, data = _read_document(path)
    with _located(source):
        if _gateway_kind(data) != "internal":
            raise ConfigError("", "this is a DMZ gateway's file ([dmz]); expected [internal]")
        return _build_internal(data, source)


def build_internal(data: dict[str, Any], folder: Path) -> InternalConfig:
    """An internal gateway's configuration from a document that is not a file (relative paths are
    taken from ``folder``); nothing to reload, so ``source`` is None."""
    return dataclasses.replace(_build_internal(data, folder / "environment"), source=None)


def expand_properties(text: str, properties: Mapping[str, str], key_path: str) -> str:
    """Replace each ``${name}`` in ``text`` by ``properties[name]``, in a single pass.

    Replacement text is not scanned again, and a ``$`` not followed by ``{`` is kept as is.
    An undefined or empty name, a ``${`` with no ``}``, or a result longer than
    ``MAX_EXPANDED_LENGTH`` is a ``ConfigError`` at ``key_path``.
    """
    out: list[str] = []
    pos = length = 0
    while (start := text.find("${", pos)) >= 0:
        end = text.find("}", start + 2)
        if end < 0:
            raise ConfigError(key_path, f"unterminated '${{' in {text!r} (write ${{name}})")
        name = text[start + 2 : end]
        if not name:
            raise ConfigError(key_path, f"empty property name '${{}}' in {text!r}")
        if name.startswith(ENV_PREFIX):
            value = _environment(name[len(ENV_PREFIX) :], text, key_path)
        elif name not in properties:
            raise ConfigError(key_path, _undefined_property(name, properties))
        else:
            value = properties[name]
        out += (text[pos:start], value)
        length += start - pos + len(value)
        if length > MAX_EXPANDED_LENGTH:
            raise ConfigError(key_path, f"expands to more than {MAX_EXPANDED_LENGTH} characters")
        pos = end + 1
    out.append(text[pos:])
    return "".join(out)


#: ``${env:NAME}`` in a string is the value of the environment variable NAME (containers,
#: Kubernetes: secrets and settings arrive as environment variables).
ENV_PREFIX = "env:"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _environment(variable: str, text: str, key_path: str) -> str:
    if not _ENV_NAME.fullmatch(variable):
        raise ConfigError(key_path, f"{variable!r} is not an environment variable name (in {text!r})")
    value = os.environ.get(variable)
    if value is None:
        raise ConfigError(key_path, f"environment variable {variable} is not set (${{env:{variable}}} in {text!r})")
    return value


def _undefined_property(name: str, properties: Mapping[str, str]) -> str:
    close = difflib.get_close_matches(name, list(properties), n=1)
    hint = f"did you mean {close[0]!r}?" if close else "define it in [properties]"
    return f"undefined property {name!r} ({hint})"


# --------------------------------------------------------------------------- the file


def _read_document(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """Read and parse the TOML; every failure becomes a whole-file ``ConfigError``."""
    source = Path(os.path.abspath(os.fspath(path)))

    def fail(problem: str) -> ConfigError:
        return ConfigError("", problem, source)

    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        raise fail(f"no such file: {source}") from None
    except IsADirectoryError:
        raise fail(f"{source} is a folder, not a file") from None
    except OSError as exc:
        raise fail(f"cannot read {source}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 text (bad byte at offset {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise fail(f"TOML syntax error: {exc}") from None
    except RecursionError:
        raise fail("TOML syntax error: arrays or tables nested too deeply") from None
    except ValueError:  # tomllib lets int() refuse a decimal integer of over 4300 digits
        raise fail("TOML syntax error: an integer does not fit in 64 bits") from None
    _check_integers(data, source)
    return source, data


def _check_integers(data: dict[str, Any], source: Path) -> None:
    """TOML integers are 64-bit; tomllib accepts bigger ones, which nothing here could use.

    Iterative, and each key path is only spelled out for the error: dotted keys can nest
    thousands of levels deep without any recursion in tomllib.
    """
    _Trail = tuple[Any, str | int] | None  # (parent trail, key or index)
    pending: list[tuple[_Trail, Any]] = [(None, data)]
    while pending:
        trail, value = pending.pop()
        if isinstance(value, dict):
            pending += [((trail, key), item) for key, item in value.items()]
        elif isinstance(value, list):
            pending += [((trail, index), item) for index, item in enumerate(value)]
        elif isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise ConfigError(_spell(trail), "integer does not fit in 64 bits", source)


def _spell(trail: Any) -> str:
    steps: list[str | int] = []
    while trail is not None:
        trail, step = trail
        steps.append(step)
    path = ""
    for step in reversed(steps):
        path = f"{path}[{step}]" if isinstance(step, int) else _join(path, step)
    return path


@contextmanager
def _located(source: Path) -> Iterator[None]:
    """Attach the file to errors raised by code that does not know it."""
    try:
        yield
    except ConfigError as exc:
        if exc.file is None:
            exc.file = source
        raise


def _gateway_kind(data: dict[str, Any]) -> str:
    _reject_unknown_keys(data, "", _TOP_KEYS)
    present = [kind for kind in ("dmz", "internal") if kind in data]
    if not present:
        raise ConfigError("", "expected a [dmz] or an [internal] table")
    if len(present) == 2:
        raise ConfigError("", "found both [dmz] and [internal]: one file configures one gateway")
    return present[0]


# --------------------------------------------------------------------------- key paths


def _join(path: str, key: str) -> str:
    """``path.key``, quoting the key the TOML way when it is not a bare key."""
    if not _BARE_KEY.fullmatch(key):
        key = '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{path}.{key}" if path else key


def _reject_unknown_keys(data: Mapping[str, Any], path: str, known: tuple[str, ...]) -> None:
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "expected one of " + ", ".join(known)
            raise ConfigError(_join(path, key), f"unknown key ({hint})")


_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a float",
    bool: "a boolean",
    dict: "a table",
    list: "an array",
    datetime.datetime: "a date-time",
    datetime.date: "a date",
    datetime.time: "a time",
}


def _kind_of(value: Any) -> str:
    """How TOML calls the type of ``value``, with the value when short, for messages."""
    name = _TYPE_NAMES.get(type(value), type(value).__name__)
    if isinstance(value, (dict, list)):
        return name
    shown = repr(value) if isinstance(value, str) else str(value)
    return f"{name} ({shown})" if len(shown) <= 40 else name


def _default(cls: type, name: str) -> Any:
    """A field's default in ``model.py``: the one place defaults are written down."""
    for item in dataclasses.fields(cls):
        if item.name == name:
            return item.default
    raise KeyError(name)


# --------------------------------------------------------------------------- properties


def _read_properties(raw: Any) -> dict[str, str]:
    """Flatten ``[properties]`` into ``name -> text``; dotted TOML keys give dotted names."""
    properties: dict[str, str] = {}
    if raw is None:
        return properties
    if not isinstance(raw, dict):
        raise ConfigError("properties", f"expected a table, got {_kind_of(raw)}")
    for name, value, key_path in _flatten(raw, "", "properties", 0):
        if not _PROPERTY_NAME.fullmatch(name):
            raise ConfigError(
                key_path, "property names use only letters, digits, '.', '_' and '-'"
            )
        if name in properties:
            raise ConfigError(key_path, f"property {name!r} is defined twice")
        if isinstance(value, str):
            properties[name] = expand_properties(value, properties, key_path)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            properties[name] = str(value)
        else:
            raise ConfigError(key_path, f"expected a string or a number, got {_kind_of(value)}")
    return properties


def _flatten(
    table: dict[str, Any], prefix: str, path: str, depth: int
) -> Iterator[tuple[str, Any, str]]:
    if depth >= MAX_PROPERTY_DEPTH:
        raise ConfigError(path, f"properties nested more than {MAX_PROPERTY_DEPTH} levels deep")
    for key, value in table.items():
        name, key_path = prefix + key, _join(path, key)
        if isinstance(value, dict):
            yield from _flatten(value, name + ".", key_path, depth + 1)
        else:
            yield name, value, key_path


# --------------------------------------------------------------------------- typed reading


_MISSING: Any = object()


@dataclass(frozen=True)
class _Context:
    properties: Mapping[str, str]
    base: Path  # folder of the configuration file


class _Table:
    """One TOML table being read: typed getters that know their key path and expand ``${}``."""

    def __init__(self, data: Any, path: str, ctx: _Context, known: tuple[str, ...]) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, f"expected a table, got {_kind_of(data)}")
        _reject_unknown_keys(data, path, known)
        self.data: dict[str, Any] = data
        self.path = path
        self.ctx = ctx
        self.known = known

    def at(self, key: str) -> str:
        return _join(self.path, key)

    def has(self, key: str) -> bool:
        return self._declared(key) in self.data

    def _declared(self, key: str) -> str:
        """``key``, which the loader may only ask for if the table's dataclass declares it."""
        if key not in self.known:
            raise KeyError(f"the loader reads {self.at(key)}, which no field of the model declares")
        return key

    def _raw(self, key: str, default: Any, why_required: str = "") -> Any:
        if self._declared(key) in self.data:
            return self.data[key]
        if default is _MISSING:
            raise ConfigError(self.at(key), "missing required key" + why_required)
        return default

    def _expand(self, value: Any, key_path: str, what: str = "a string") -> str:
        if not isinstance(value, str):
            raise ConfigError(key_path, f"expected {what}, got {_kind_of(value)}")
        return expand_properties(value, self.ctx.properties, key_path)

    def string(self, key: str) -> str:
        """A required string, ``${}`` expanded."""
        return self._expand(self._raw(key, _MISSING), self.at(key))

    def strings(self, key: str, default: Any = _MISSING, empty: bool = False) -> list[tuple[str, str]]:
        """A list of strings (one string counts as a list of one), each with its key path;
        an empty array only where ``empty`` says it means something."""
        value = self._raw(key, default)
        if isinstance(value, str):
            return [(self._expand(value, self.at(key)), self.at(key))]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(self.at(key), f"expected an array of strings, got {_kind_of(value)}")
        if not value and not empty:
            raise ConfigError(self.at(key), "empty array (at least one value is required)")
        items = []
        for index, item in enumerate(value):
            item_path = f"{self.at(key)}[{index}]"
            items.append((self._expand(item, item_path), item_path))
        return items

    def integer(self, key: str, default: int, low: int, high: int | None, unit: str = "") -> int:
        value = self._raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.at(key), f"expected an integer, got {_kind_of(value)}")
        if high is None and value < low:
            raise ConfigError(self.at(key), f"must be at least {low}{unit} (got {value})")
        if high is not None and not low <= value <= high:
            raise ConfigError(
                self.at(key), f"must be between {low} and {high}{unit} (got {value})"
            )
        return value

    def seconds(self, key: str, default: float, *, zero_allowed: bool) -> float:
        """A duration in seconds, integer or float; negative never, zero only if allowed."""
        value = self._raw(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(self.at(key), f"expected a number of seconds, got {_kind_of(value)}")
        if not math.isfinite(value):
            raise ConfigError(self.at(key), f"must be a finite number of seconds (got {value})")
        if value < 0 or (value == 0 and not zero_allowed):
            bound = "at least 0 (0 disables)" if zero_allowed else "more than 0"
            raise ConfigError(self.at(key), f"must be {bound} seconds (got {value})")
        return float(value)

    def uri(self, key: str, schemes: tuple[str, ...]) -> Uri:
        return parse_uri(self.string(key), schemes, self.at(key))

    def optional_uri(self, key: str, schemes: tuple[str, ...]) -> Uri | None:
        return self.uri(key, schemes) if self.has(key) else None

    def uris(self, key: str, schemes: tuple[str, ...]) -> list[tuple[Uri, str]]:
        """A list of URIs, each with its key path; the same URI twice is an error."""
        parsed: list[tuple[Uri, str]] = []
        for text, path in self.strings(key):
            uri = parse_uri(text, schemes, path)
            for other, other_path in parsed:
                if other == uri:
                    raise ConfigError(path, f"{uri} is listed twice (also at {other_path})")
            parsed.append((uri, path))
        return parsed

    def file(self, key: str, why_required: str = "") -> Path:
        """A file that must exist and be readable, made absolute against the config's folder."""
        text = self._expand(self._raw(key, _MISSING, why_required), self.at(key))
        return _readable_file(text, self.ctx.base, self.at(key))

    def table(self, key: str, known: tuple[str, ...]) -> _Table:
        return _Table(self._raw(key, _MISSING), self.at(key), self.ctx, known)

    def tables(self, key: str, known: tuple[str, ...]) -> list[_Table]:
        """An array of tables (``[[key]]``), at least one."""
        path = self.at(key)
        value = self._raw(key, _MISSING, f" (at least one [[{path}]] is needed)")
        if not isinstance(value, list):
            raise ConfigError(
                path, f"expected an array of tables ([[{path}]]), got {_kind_of(value)}"
            )
        if not value:
            raise ConfigError(path, f"at least one [[{path}]] is needed")
        return [_Table(item, f"{path}[{i}]", self.ctx, known) for i, item in enumerate(value)]

    def reject_if_present(self, keys: tuple[str, ...], why: str) -> None:
        for key in keys:
            if self.has(key):
                raise ConfigError(self.at(key), why)


def _readable_file(text: str, base: Path, key_path: str) -> Path:
    if not text:
        raise ConfigError(key_path, "empty file path")
    given = Path(text)
    path = Path(os.path.normpath(given if given.is_absolute() else base / given))
    where = ""
    if not given.is_absolute():
        where = f" (relative paths start at the config file's folder, {base})"
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(key_path, f"{path} is not a regular file")
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise ConfigError(key_path, f"file not found: {path}{where}") from None
    except OSError as exc:
        raise ConfigError(key_path, f"cannot read {path}: {exc.strerror}") from None
    except ValueError:  # NUL byte or unencodable name
        raise ConfigError(key_path, f"bad file path {text!r}") from None
    return path


# --------------------------------------------------------------------------- names


def _identity(table: _Table, key: str, what: str) -> str:
    value = table.string(key)
    _check_identity(value, table.at(key), what)
    return value


def _check_identity(value: str, key_path: str, what: str) -> None:
    if not is_name(value):
        raise ConfigError(key_path, f"bad {what} {value!r} ({NAME_RULE})")


def _service_name(table: _Table, seen: dict[str, str]) -> str:
    """The service's name, checked for syntax and against the names ``seen`` so far."""
    name, path = table.string("name"), table.at("name")
    if not is_name(name):
        raise ConfigError(path, f"bad service name {name!r} ({NAME_RULE})")
    if name in seen:
        raise ConfigError(path, f"duplicate service name {name!r} (also at {seen[name]})")
    seen[name] = path
    return name


def _server_name(table: _Table, key: str) -> str:
    """A name to verify in a peer's certificate: a DNS name or an IP address."""
    value = table.string(key)
    if not (is_host_name(value) or _is_ip_address(value)):
        raise ConfigError(
            table.at(key), f"bad server name {value!r} (expected a DNS name or an IP address)"
        )
    return value


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _keepalive(table: _Table) -> KeepaliveSettings:
    return KeepaliveSettings(
        interval=table.seconds(
            "keepalive-interval", _default(KeepaliveSettings, "interval"), zero_allowed=True
        ),
        misses=table.integer("keepalive-misses", _default(KeepaliveSettings, "misses"), 1, None),
    )


def _buffer_budget(table: _Table, cls: type) -> int:
    """How much tunnel data the gateway may hold in stream buffers at once (bytes)."""
    return table.integer(
        "buffer-budget", _default(cls, "buffer_budget"), MIN_BUFFER_BUDGET, MAX_BUFFER_BUDGET, " bytes"
    )


def _stream_window(table: _Table, cls: type) -> int:
    return table.integer(
        "stream-window", _default(cls, "stream_window"), MIN_STREAM_WINDOW, MAX_STREAM_WINDOW,
        " bytes",
    )  # fmt: skip


def _stream_window_max(table: _Table, cls: type, stream_window: int) -> int:
    """How far a fast stream's window may grow; never below ``stream-window``."""
    default = max(_default(cls, "stream_window_max"), stream_window)
    return table.integer("stream-window-max", default, stream_window, MAX_STREAM_WINDOW, " bytes")


# --------------------------------------------------------------------------- DMZ gateway


def _build_dmz(data: dict[str, Any], source: Path) -> DmzConfig:
    ctx = _Context(_read_properties(data.get("properties")), source.parent)
    top = _Table(data["dmz"], "dmz", ctx, _DMZ_KEYS)
    name = _identity(top, "name", "gateway name")
    admin = top.optional_uri("admin", ("http",))
    grace = top.seconds("grace-period", _default(DmzConfig, "grace_period"), zero_allowed=False)
    open_timeout = top.seconds(
        "open-timeout", _default(DmzConfig, "open_timeout"), zero_allowed=False
    )
    budget = _buffer_budget(top, DmzConfig)
    backplane, connector_paths = _dmz_backplane(top.table("backplane", _DMZ_BACKPLANE_KEYS))
    cluster = None
    if top.has("cluster"):
        cluster = _dmz_cluster(top.table("cluster", _DMZ_CLUSTER_KEYS), name, backplane)
    limits = _limits(top.table("limits", _LIMIT_KEYS), _default(DmzConfig, "limits")) if top.has("limits") \
        else _default(DmzConfig, "limits")
    listeners = _fixed_listeners(top, admin, backplane, cluster)
    services: list[DmzService] = []
    seen: dict[str, str] = {}
    for table in top.tables("service", _DMZ_SERVICE_KEYS):
        service, accept_paths = _dmz_service(table, _service_name(table, seen), open_timeout, limits)
        if service.is_balancer and cluster is None:
            raise ConfigError(
                table.at("type"), "a balancer needs a [dmz.cluster]: it sends clients to members"
            )
        services.append(service)
        listeners += _service_listeners(service, accept_paths)
    balancers = {s.name for s in services if s.is_balancer}
    _check_connector_services(backplane.connectors, connector_paths, list(seen), balancers)
    _check_listeners(listeners)
    return DmzConfig(
        name=name,
        backplane=backplane,
        services=tuple(services),
        admin=admin,
        grace_period=grace,
        open_timeout=open_timeout,
        cluster=cluster,
        limits=limits,
        buffer_budget=budget,
        source=source,
    )


def _dmz_cluster(table: _Table, own_name: str, backplane: DmzBackplane) -> DmzCluster:
    """``[dmz.cluster]``: member links use the backplane's certificate and CA."""
    name = _identity(table, "name", "cluster name")
    accept = table.uri("accept", ("tls",))
    members = tuple(uri for uri, _ in table.uris("members", ("tls",))) if table.has("members") else ()
    connect = table.optional_uri("connect", ("udp",))
    if connect is not None:
        try:
            group = ipaddress.ip_address(connect.host)
        except ValueError:
            group = None
        if group is None or not group.is_multicast:
            raise ConfigError(
                table.at("connect"), f"{connect.host!r} is not a multicast group address "
                "(e.g. udp://224.2.2.44:44444)"
            )  # fmt: skip
        if accept.host in _WILDCARD_HOSTS or not _is_ip_address(accept.host):
            raise ConfigError(
                table.at("accept"), "discovery announces this address to the other members: "
                f"give this member's own IP address, not {accept.host!r}"
            )  # fmt: skip
    if not members and connect is None:
        raise ConfigError(
            table.at("members"), "missing: list the other members, or discover them with "
            "connect = \"udp://224.2.2.44:44444\""
        )  # fmt: skip
    interval = table.seconds(
        "heartbeat-interval", _default(DmzCluster, "heartbeat_interval"), zero_allowed=False
    )
    if interval < 0.05 or interval > 60:
        raise ConfigError(
            table.at("heartbeat-interval"), f"must be between 0.05 and 60 seconds (got {interval})"
        )
    names: tuple[str, ...] = ()
    if table.has("member-names"):
        names = tuple(text for text, _ in table.strings("member-names"))
        for text, path in table.strings("member-names"):
            _check_identity(text, path, "member identity")
            if text in backplane.connectors:
                raise ConfigError(path, f"{text!r} is a connector identity, it cannot be a member")
    return DmzCluster(
        name=name,
        accept=accept,
        members=members,
        connect=connect,
        heartbeat_interval=interval,
        member_names=names,
        resolve_interval=table.seconds(
            "resolve-interval", _default(DmzCluster, "resolve_interval"), zero_allowed=True
        ),
    )


def _dmz_backplane(table: _Table) -> tuple[DmzBackplane, dict[str, list[str]]]:
    """The backplane, and the key path of each name in each connector's list."""
    accept = tuple(uri for uri, _ in table.uris("accept", BACKPLANE_SCHEMES))
    cert = table.file("cert")
    ca = table.file("ca")
    connectors: dict[str, tuple[str, ...]] = {}
    paths: dict[str, list[str]] = {}
    if table.has("connectors"):
        raw = table.data["connectors"]
        if not isinstance(raw, dict):
            raise ConfigError(table.at("connectors"), f"expected a table, got {_kind_of(raw)}")
        listing = _Table(raw, table.at("connectors"), table.ctx, tuple(raw))
        for identity in raw:
            _check_identity(identity, listing.at(identity), "connector identity")
            offered = listing.strings(identity, empty=True)  # []: a known connector cut off
            connectors[identity] = tuple(name for name, _ in offered)
            paths[identity] = [path for _, path in offered]
    backplane = DmzBackplane(
        accept=accept,
        cert=cert,
        ca=ca,
        connectors=connectors,
        keepalive=_keepalive(table),
        stream_window=(window := _stream_window(table, DmzBackplane)),
        stream_window_max=_stream_window_max(table, DmzBackplane, window),
        max_streams=table.integer("max-streams", _default(DmzBackplane, "max_streams"), 1, MAX_STREAMS),
    )
    return backplane, paths


def _check_connector_services(
    connectors: Mapping[str, tuple[str, ...]],
    paths: Mapping[str, list[str]],
    names: list[str],
    balancers: set[str],
) -> None:
    for identity, offered in connectors.items():
        seen: dict[str, str] = {}
        for service, path in zip(offered, paths[identity]):
            if service in seen:
                also = seen[service]
                raise ConfigError(path, f"service {service!r} is listed twice (also at {also})")
            if service in balancers:
                raise ConfigError(
                    path, f"service {service!r} is a balancer: it sends clients to members, "
                    "no connector offers it"
                )  # fmt: skip
            if service not in names:
                close = difflib.get_close_matches(service, names, n=1)
                hint = f"did you mean {close[0]!r}?" if close else "no [[dmz.service]] of that name"
                raise ConfigError(path, f"unknown service {service!r} ({hint})")
            seen[service] = path


def _dmz_service(
    table: _Table, name: str, default_open_timeout: float, gateway_limits: ClientLimits
) -> tuple[DmzService, list[str]]:
    """The service, and the key path of each of its accept URIs."""
    accepts = table.uris("accept", PUBLIC_SCHEMES)
    schemes = {uri.scheme for uri, _ in accepts}
    kind: ServiceType = _choice(table, "type", _default(DmzService, "type"))
    if kind is ServiceType.BALANCER:
        table.reject_if_present(
            ("balance",) + _WS_ONLY_KEYS, "not used by a balancer (the member that serves the "
            "client applies its own service's settings)"
        )  # fmt: skip
        mode: BalancerMode = _choice(table, "mode", _default(DmzService, "mode"))
        if mode is BalancerMode.REDIRECT and schemes - _WS_SCHEMES:
            raise ConfigError(
                table.at("mode"), "redirect needs ws:// or wss:// accepts only (tcp:// and "
                "tls:// clients cannot follow an HTTP redirect): use mode = \"proxy\""
            )  # fmt: skip
        balance: tuple[Uri, ...] = ()
    else:
        table.reject_if_present(("mode",), "only used by a balancer (type = \"balancer\")")
        mode = _default(DmzService, "mode")
        balance = _balance(table, schemes)
    if not schemes & _WS_SCHEMES:
        table.reject_if_present(
            _WS_ONLY_KEYS, "only used by ws:// and wss:// accepts, and this service has none"
        )
    cert = None
    if schemes & _TLS_PUBLIC_SCHEMES:
        cert = table.file("cert", " (this service accepts on wss:// or tls://: give a PEM file "
                          "with its certificate chain and private key)")  # fmt: skip
    else:
        table.reject_if_present(
            ("cert",), "only used by wss:// and tls:// accepts, and this service has none"
        )
    service = DmzService(
        name=name,
        accept=tuple(uri for uri, _ in accepts),
        allow_origin=_origins(table),
        max_message_size=table.integer(
            "max-message-size", _default(DmzService, "max_message_size"), 1, MAX_MESSAGE_SIZE,
            " bytes (64 MiB)",
        ),  # fmt: skip
        ws_ping_interval=table.seconds(
            "ws-ping-interval", _default(DmzService, "ws_ping_interval"), zero_allowed=True
        ),
        open_timeout=table.seconds("open-timeout", default_open_timeout, zero_allowed=False),
        cert=cert,
        type=kind,
        mode=mode,
        balance=balance,
        limits=_limits(table, dataclasses.replace(gateway_limits, max_connections=_default(ClientLimits, "max_connections"))),
        **_auth(table, schemes, kind),
        proxy_protocol_from=_networks(table, "proxy-protocol-from"),
    )
    return service, [path for _, path in accepts]


def _limits(table: _Table, defaults: ClientLimits) -> ClientLimits:
    """Client limits of ``[dmz.limits]`` or of one service (which inherits the gateway's)."""
    return ClientLimits(
        max_connections=table.integer("max-connections", defaults.max_connections, 0, None),
        max_connections_per_source=table.integer(
            "max-connections-per-source", defaults.max_connections_per_source, 0, None
        ),
        handshake_timeout=table.seconds(
            "handshake-timeout", defaults.handshake_timeout, zero_allowed=False
        ),
        idle_timeout=table.seconds("idle-timeout", defaults.idle_timeout, zero_allowed=True),
        bytes_per_second=table.integer("bytes-per-second", defaults.bytes_per_second, 0, None),
    )


def _auth(table: _Table, schemes: set[str], kind: ServiceType) -> dict[str, Any]:
    """``auth`` with its ``tokens`` or ``client-ca``; each kind only where it can work."""
    auth: AuthKind = _choice(table, "auth", _default(DmzService, "auth"))
    found: dict[str, Any] = {"auth": auth}
    if auth is not AuthKind.TOKEN:
        table.reject_if_present(("tokens",), 'only used with auth = "token"')
    if auth is not AuthKind.MTLS:
        table.reject_if_present(("client-ca",), 'only used with auth = "mtls"')
    if auth is AuthKind.TOKEN:
        if kind is ServiceType.BALANCER:
            raise ConfigError(table.at("auth"), "a balancer passes tokens on: the member's service checks them")
        if schemes - _WS_SCHEMES:
            raise ConfigError(
                table.at("auth"), "tokens arrive in an HTTP header or query: only ws:// and "
                "wss:// accepts can carry them (use auth = \"mtls\" with tls://)"
            )  # fmt: skip
        hashes = []
        for text, path in table.strings("tokens", _MISSING):
            match = _TOKEN_HASH.fullmatch(text)
            if match is None:
                raise ConfigError(
                    path, "expected 'sha256:' and 64 hex digits, the SHA-256 of a token "
                    "(shield hash-token prints it); tokens themselves never go in the file"
                )  # fmt: skip
            hashes.append(bytes.fromhex(match.group(1)))
        found["token_hashes"] = tuple(hashes)
    if auth is AuthKind.MTLS:
        if schemes - _TLS_PUBLIC_SCHEMES:
            raise ConfigError(
                table.at("auth"), "client certificates need TLS: only wss:// and tls:// accepts "
                "can require them"
            )  # fmt: skip
        found["client_ca"] = table.file("client-ca", " (auth = \"mtls\": the CA that signs client certificates)")
    return found


_Choice = TypeVar("_Choice", bound=StrEnum)


def _choice(table: _Table, key: str, default: _Choice) -> _Choice:
    """One of the members of ``default``'s enumeration, given by its value."""
    if not table.has(key):
        return default
    value = table.string(key)
    choices = type(default)
    values = [member.value for member in choices]
    if value not in values:
        raise ConfigError(table.at(key), f"must be one of {', '.join(map(repr, values))} (got {value!r})")
    return choices(value)


def _balance(table: _Table, schemes: set[str]) -> tuple[Uri, ...]:
    """Balancer accepts that send clients here: each needs an accept this service can serve it on."""
    if not table.has("balance"):
        return ()
    found = []
    for uri, path in table.uris("balance", PUBLIC_SCHEMES):
        family = _WS_SCHEMES if uri.scheme in _WS_SCHEMES else frozenset({"tcp", "tls"})
        if not schemes & family:
            wanted = "ws:// or wss://" if uri.scheme in _WS_SCHEMES else "tcp:// or tls://"
            raise ConfigError(
                path, f"a {uri.scheme}:// balancer sends {uri.scheme} clients, and this service "
                f"has no {wanted} accept to serve them"
            )  # fmt: skip
        found.append(uri)
    return tuple(found)


def _networks(table: _Table, key: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """CIDRs (``10.0.0.0/8``, ``2001:db8::/32``; an address alone is one host); empty: none."""
    if not table.has(key):
        return ()
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for text, path in table.strings(key, empty=True):
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as error:
            why = "host bits set" if "has host bits set" in str(error) else "not an IPv4 or IPv6 network"
            raise ConfigError(path, f"bad CIDR {text!r}: {why} (expected e.g. '10.0.0.0/8' or '2001:db8::/32')") from None
        if network in networks:
            raise ConfigError(path, f"{network} is listed twice")
        networks.append(network)
    return tuple(networks)


def _proxy_protocol(table: _Table) -> ProxyProtocolVersion | None:
    """``proxy-protocol``: "v1" or "v2"; absent: no header toward the backend."""
    if not table.has("proxy-protocol"):
        return None
    return _choice(table, "proxy-protocol", ProxyProtocolVersion.V1)


def _origins(table: _Table) -> tuple[str, ...]:
    """Origins a browser may connect from: ``*``, or patterns like ``https://*.example.com``."""
    if not table.has("allow-origin"):
        return _default(DmzService, "allow_origin")
    origins = []
    for origin, path in table.strings("allow-origin"):
        if not origin or any(ch.isspace() for ch in origin):
            raise ConfigError(path, f"bad origin {origin!r} (expected '*' or scheme://host[:port])")
        origins.append(origin)
    return tuple(origins)


# --------------------------------------------------------------------------- listener conflicts


@dataclass(frozen=True)
class _Listener:
    uri: Uri
    key_path: str
    owner: str  # "service 'echo'", "the backplane", "the admin endpoint"
    cert: Path | None = None
    client_ca: Path | None = None  # auth = "mtls": the TLS handshake asks for a client certificate
    proxy_protocol_from: frozenset[ipaddress.IPv4Network | ipaddress.IPv6Network] = frozenset()


def _fixed_listeners(
    top: _Table, admin: Uri | None, backplane: DmzBackplane, cluster: DmzCluster | None
) -> list[_Listener]:
    """The DMZ's own ports: they may not be taken by a service either."""
    listeners = [] if admin is None else [_Listener(admin, top.at("admin"), "the admin endpoint")]
    accept_path = _join(top.at("backplane"), "accept")
    for index, uri in enumerate(backplane.accept):
        path = accept_path if len(backplane.accept) == 1 else f"{accept_path}[{index}]"
        listeners.append(_Listener(uri, path, "the backplane", backplane.cert))
    if cluster is not None:
        cluster_path = _join(top.at("cluster"), "accept")
        listeners.append(_Listener(cluster.accept, cluster_path, "the cluster", backplane.cert))
    return listeners


def _service_listeners(service: DmzService, paths: list[str]) -> list[_Listener]:
    owner = f"service {service.name!r}"
    return [
        _Listener(uri, path, owner, service.cert, service.client_ca, frozenset(service.proxy_protocol_from))
        for uri, path in zip(service.accept, paths)
    ]


def _check_listeners(listeners: list[_Listener]) -> None:
    """Refuse two listeners needing one port, except ws/wss paths that share a listener."""
    for index, current in enumerate(listeners):
        for earlier in listeners[:index]:
            problem = _conflict(current, earlier)
            if problem:
                raise ConfigError(current.key_path, problem)


def _conflict(current: _Listener, earlier: _Listener) -> str | None:
    a, b = current.uri, earlier.uri
    if a.port != b.port:
        return None
    same_host = a.host == b.host
    if not same_host and a.host not in _WILDCARD_HOSTS and b.host not in _WILDCARD_HOSTS:
        return None
    where = f"{earlier.owner} ({earlier.key_path})"
    if a == b:
        return f"{a} is already accepted by {where}"
    if not same_host:
        return f"{a} overlaps {b} of {where}: a wildcard address takes the port on every address"
    if "the backplane" in (current.owner, earlier.owner):
        return (
            f"{a} conflicts with {b} of {where}: the backplane needs a port of its own (its TLS "
            "asks every client for a connector certificate before any path is known)"
        )
    if a.scheme in _WS_SCHEMES and a.scheme == b.scheme:
        if a.scheme == "wss" and current.cert != earlier.cert:
            return (
                f"{a} shares its listener with {b} of {where} but names another cert "
                "(one listener has one certificate)"
            )
        if a.scheme == "wss" and current.client_ca != earlier.client_ca:
            return (
                f"{a} shares its listener with {b} of {where} but not its client certificate "
                "check (auth = \"mtls\" and client-ca must be the same: the TLS handshake "
                "comes before the path is known)"
            )
        if current.proxy_protocol_from != earlier.proxy_protocol_from:
            return (
                f"{a} shares its listener with {b} of {where} but not its proxy-protocol-from "
                "(the PROXY header is read before the request, so before the path is known: "
                "give both services the same list)"
            )
        return None
    return f"{a} conflicts with {b} of {where}: they cannot share one port"


# --------------------------------------------------------------------------- internal gateway


def _build_internal(data: dict[str, Any], source: Path) -> InternalConfig:
    ctx = _Context(_read_properties(data.get("properties")), source.parent)
    top = _Table(data["internal"], "internal", ctx, _INTERNAL_KEYS)
    name = _identity(top, "name", "gateway name")
    admin = top.optional_uri("admin", ("http",))
    priority = top.integer("priority", _default(InternalConfig, "priority"), 0, MAX_PRIORITY)
    grace = top.seconds(
        "grace-period", _default(InternalConfig, "grace_period"), zero_allowed=False
    )
    pending = top.integer(
        "max-pending-opens", _default(InternalConfig, "max_pending_opens"), 1, MAX_STREAMS
    )
    budget = _buffer_budget(top, InternalConfig)
    backplane = _internal_backplane(top.table("backplane", _INTERNAL_BACKPLANE_KEYS))
    seen: dict[str, str] = {}
    services = tuple(
        _internal_service(table, _service_name(table, seen))
        for table in top.tables("service", _INTERNAL_SERVICE_KEYS)
    )
    return InternalConfig(
        name=name,
        backplane=backplane,
        services=services,
        admin=admin,
        priority=priority,
        grace_period=grace,
        max_pending_opens=pending,
        buffer_budget=budget,
        source=source,
    )


def _internal_backplane(table: _Table) -> InternalBackplane:
    return InternalBackplane(
        connect=tuple(uri for uri, _ in table.uris("connect", BACKPLANE_SCHEMES)),
        server_name=_server_name(table, "server-name"),
        cert=table.file("cert"),
        ca=table.file("ca"),
        links=table.integer("links", _default(InternalBackplane, "links"), 1, MAX_LINKS),
        keepalive=_keepalive(table),
        stream_window=(window := _stream_window(table, InternalBackplane)),
        stream_window_max=_stream_window_max(table, InternalBackplane, window),
        resolve_interval=table.seconds(
            "resolve-interval", _default(InternalBackplane, "resolve_interval"), zero_allowed=True
        ),
        max_streams=table.integer(
            "max-streams", _default(InternalBackplane, "max_streams"), 1, MAX_STREAMS
        ),
        **_egress_proxy(table),
    )


#: A proxy-auth-file holds one short line; anything bigger is not one.
MAX_PROXY_AUTH_FILE = 4096


def _egress_proxy(table: _Table) -> dict[str, Any]:
    """``proxy`` (only ``http://host:port``) and ``proxy-auth-file`` (only with a proxy)."""
    proxy = None
    if table.has("proxy"):
        text, key_path = table.string("proxy"), table.at("proxy")
        if "@" in text:  # checked first: no message below may echo a password
            raise ConfigError(
                key_path,
                "credentials do not belong in the proxy URL (it is logged): put user:password in "
                f"{table.at('proxy-auth-file')} (expected http://host:port)",
            )
        if text.lower().startswith("https:"):
            raise ConfigError(
                key_path,
                "https:// proxies are not supported (expected http://host:port): the link's own TLS "
                "runs end to end through the proxy, which sees only the CONNECT target",
            )
        proxy = parse_uri(text, ("http",), key_path)
        table.reject_if_present(
            ("resolve-interval",), "not used with a proxy, which resolves the connect host names at every CONNECT"
        )
    auth = None
    if table.has("proxy-auth-file"):
        if proxy is None:
            raise ConfigError(table.at("proxy-auth-file"), f"only used with a proxy, and {table.at('proxy')} is not set")
        auth = read_proxy_auth(table.file("proxy-auth-file"), table.at("proxy-auth-file"))
    return {"proxy": proxy, "proxy_auth": auth}


def read_proxy_auth(path: Path, key_path: str) -> ProxyAuth:
    """``user:password`` from ``path``: one line (a final newline is fine), a non-empty user (which
    cannot hold ':', RFC 7617), UTF-8, no control characters. No message shows the content."""

    def fail(problem: str) -> ConfigError:
        return ConfigError(key_path, f"{path}: {problem} (expected one line user:password)")

    try:
        with open(path, "rb") as file:
            data = file.read(MAX_PROXY_AUTH_FILE + 1)
    except OSError as exc:
        raise ConfigError(key_path, f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_PROXY_AUTH_FILE:
        raise fail(f"larger than {MAX_PROXY_AUTH_FILE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise fail("not UTF-8 text") from None
    line = text.removesuffix("\n").removesuffix("\r")
    if "\n" in line or "\r" in line:
        raise fail("more than one line")
    user, colon, password = line.partition(":")
    if not colon:
        raise fail("no ':' between user and password")
    if not user:
        raise fail("the user (before ':') is empty")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in line):
        raise fail("control characters in the user or the password")
    return ProxyAuth(path, user, password)


def _internal_service(table: _Table, name: str) -> InternalService:
    connect = table.uri("connect", BACKEND_SCHEMES)
    if connect.scheme != "tls":
        table.reject_if_present(
            _TLS_BACKEND_KEYS, f"only used for tls:// backends, and this one is {connect.scheme}:"
        )
    return InternalService(
        name=name,
        connect=connect,
        connect_timeout=table.seconds(
            "connect-timeout", _default(InternalService, "connect_timeout"), zero_allowed=False
        ),
        ca=table.file("ca") if table.has("ca") else None,
        server_name=_server_name(table, "server-name") if table.has("server-name") else None,
        **_health(table, connect),
        proxy_protocol=_proxy_protocol(table),
    )


def _health(table: _Table, connect: Uri) -> dict[str, Any]:
    """The ``health-*`` keys of an ``[[internal.service]]`` (see shield/internal/health.py)."""
    check: HealthCheck = _choice(table, "health-check", _default(InternalService, "health_check"))
    if check is HealthCheck.TLS and connect.scheme != "tls":
        raise ConfigError(
            table.at("health-check"), f"a tls check needs a tls:// backend, and this one is {connect.scheme}:"
        )
    if check is not HealthCheck.HTTP:
        table.reject_if_present(_HTTP_HEALTH_KEYS, f"only used with health-check = \"http\" (this one is {check.value!r})")
    if check is HealthCheck.OFF:
        table.reject_if_present(_HEALTH_SETTINGS, "health checks are off (health-check = \"off\")")
    path = table.string("health-path") if table.has("health-path") else _default(InternalService, "health_path")
    if not path.startswith("/") or any(ch.isspace() or ord(ch) < 0x21 or ord(ch) == 0x7F for ch in path):
        raise ConfigError(table.at("health-path"), f"must be a path starting with / and without spaces (got {path!r})")
    return {
        "health_check": check,
        "health_interval": table.seconds("health-interval", _default(InternalService, "health_interval"), zero_allowed=False),
        "health_timeout": table.seconds("health-timeout", _default(InternalService, "health_timeout"), zero_allowed=False),
        "health_rise": table.integer("health-rise", _default(InternalService, "health_rise"), 1, 100),
        "health_fall": table.integer("health-fall", _default(InternalService, "health_fall"), 1, 100),
        "health_path": path,
        "health_status": table.integer("health-status", _default(InternalService, "health_status"), 100, 599),
    }
