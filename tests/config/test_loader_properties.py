"""More hypothesis properties of the configuration loader (issue 6, fuzzing).

tests/config/test_loader.py already feeds the loader random documents (random keys at the top),
valid documents with a few values replaced, removed or added, and random text over a small TOML
alphabet, all written as inline tables. This file adds:

- documents shaped like the real trees: every key the loader knows in ``[dmz]`` and
  ``[internal]`` (backplane, cluster, limits, connectors, services) present or not, each holding a
  plausible value for that key or any TOML value at all, plus the odd unknown key; written with
  real table headers (``[dmz.backplane]``, ``[[dmz.service]]``) so the parser sees them as a user
  would write them;
- arbitrary bytes, and arbitrary Unicode text, as the whole file.

The property is always the same: the loader returns a configuration or raises ``ConfigError``
(naming this file), never any other exception.
"""

from __future__ import annotations

import datetime
import math
import random
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shield.config import loader
from shield.config.errors import ConfigError
from shield.config.loader import load_config, load_dmz_config, load_internal_config
from shield.config.model import DmzConfig, InternalConfig

FILES = ("dmz1.pem", "ca.pem", "internal1.pem", "web.pem")

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- TOML writing (tables)


def toml_key(key: str) -> str:
    return toml_string(key)


def toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def inline(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(inline(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {inline(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)


def write_tables(doc: dict[str, Any], path: tuple[str, ...] = ()) -> str:
    """``doc`` with sub-tables as ``[a.b]`` headers and arrays of tables as ``[[a.b]]``."""
    lines = [f"{toml_key(k)} = {inline(v)}" for k, v in doc.items() if not (isinstance(v, dict) or _is_table_array(v))]
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value in doc.items():
        here = path + (key,)
        header = ".".join(toml_key(part) for part in here)
        if isinstance(value, dict):
            out += f"\n[{header}]\n" + write_tables(value, here)
        elif _is_table_array(value):
            for item in value:
                # Sub-tables of an array element are written inline: their header would need
                # the element's own path, which TOML spells only through the last [[...]].
                flat = {k: v for k, v in item.items()}
                body = "\n".join(f"{toml_key(k)} = {inline(v)}" for k, v in flat.items())
                out += f"\n[[{header}]]\n" + body + ("\n" if body else "")
    return out


# --------------------------------------------------------------------------- strategies

any_scalar = st.one_of(
    st.text(max_size=10),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, -1, 2**31, 2**32, 65535, 262144]),
    st.floats(allow_nan=False),
    st.booleans(),
    st.datetimes(timezones=st.sampled_from([None, datetime.timezone.utc])),
    st.dates(),
    st.times(),
)
any_value = st.recursive(
    any_scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
hosts = st.sampled_from(["127.0.0.1", "[::1]", "0.0.0.0", "localhost", "${ip}", "224.2.2.44", "", "h_x", "[::1"])
ports = st.sampled_from(["5941", "8080", "0", "65536", "x", "", "${port}"])
schemes = st.sampled_from(["ws", "wss", "tcp", "tls", "http", "https", "udp", "unix", "ftp"])


@st.composite
def bad_uris(draw: st.DrawFn) -> str:
    scheme = draw(schemes)
    if scheme == "unix":
        return "unix:" + draw(st.sampled_from(["/run/x.sock", "rel", "", "${p}"]))
    path = draw(st.sampled_from(["", "/", "/echo", "/a b", "?q=1", "#f"]))
    return f"{scheme}://{draw(hosts)}:{draw(ports)}{path}"


def listed(strategy: st.SearchStrategy[Any], max_size: int = 3) -> st.SearchStrategy[Any]:
    """One value, or an array of them (the loader takes a single string as a list of one)."""
    return st.one_of(strategy, st.lists(strategy, min_size=1, max_size=max_size, unique=True))


def port(low: int) -> st.SearchStrategy[int]:
    return st.integers(low, low + 9)


local_ip = st.sampled_from(["127.0.0.1", "${ip}", "127.0.0.2", "[::1]"])
public_accepts = st.one_of(
    st.builds("ws://{}:{}/echo".format, local_ip, port(8080)),
    st.builds("wss://{}:{}/".format, local_ip, port(8440)),
    st.builds("tcp://{}:{}".format, local_ip, port(9000)),
    st.builds("tls://{}:{}".format, local_ip, port(9440)),
)
seconds = st.sampled_from([0.05, 1, 5, 30, 2.5])
bad_seconds = st.one_of(st.sampled_from([0, -1, 0.01, 61, 1e309]), st.floats(allow_nan=False))
bad_counts = st.one_of(st.sampled_from([0, -1, 65, (1 << 20) + 1, 2**31, 2**63 - 1]), st.integers())
token = "sha256:" + "ab" * 32
SERVICE_NAMES = ["echo", "chat", "web"]

#: Valid values, by key path (``dmz.service.name``) or by key alone.
GOOD: dict[str, st.SearchStrategy[Any]] = {
    "dmz.name": st.just("dmz1"),
    "internal.name": st.just("internal1"),
    "name": st.sampled_from(SERVICE_NAMES),
    "dmz.cluster.name": st.just("c1"),
    "dmz.admin": st.just("http://127.0.0.1:9100"),
    "internal.admin": st.just("http://127.0.0.1:9101"),
    "dmz.backplane.accept": st.sampled_from(["tls://127.0.0.1:5941", "tls://${ip}:${port}"]),
    "dmz.cluster.accept": st.just("tls://127.0.0.1:5942"),
    "dmz.cluster.members": listed(st.sampled_from(["tls://127.0.0.2:5942", "tls://dmz2.example:5942"])),
    "dmz.cluster.connect": st.just("udp://224.2.2.44:44444"),
    "dmz.cluster.member-names": listed(st.sampled_from(["dmz2", "dmz3"])),
    "dmz.backplane.connectors": st.dictionaries(
        st.sampled_from(["internal1", "internal2"]), listed(st.sampled_from(SERVICE_NAMES)), max_size=2
    ),
    "dmz.service.accept": listed(public_accepts, 2),
    "dmz.service.balance": listed(st.builds("ws://{}:{}/echo".format, local_ip, port(8090)), 1),
    "allow-origin": listed(st.sampled_from(["*", "https://a.example", "http://b.example:8080"])),
    "type": st.sampled_from(["tunnel", "tunnel", "balancer"]),
    "mode": st.sampled_from(["proxy", "redirect"]),
    "auth": st.sampled_from(["none", "token", "mtls"]),
    "tokens": listed(st.just(token)),
    "cert": st.sampled_from(["dmz1.pem", "web.pem", "certs/../web.pem"]),
    "ca": st.just("ca.pem"),
    "client-ca": st.just("ca.pem"),
    "internal.backplane.cert": st.just("internal1.pem"),
    "internal.backplane.connect": listed(st.sampled_from(["tls://127.0.0.1:5941", "tls://dmz.example:5941"])),
    "server-name": st.sampled_from(["dmz1", "127.0.0.1", "backend.example"]),
    "internal.service.connect": st.sampled_from(
        ["tcp://127.0.0.1:7000", "unix:/run/echo.sock", "tls://127.0.0.1:7443", "tcp://backend.example:80"]
    ),
    "priority": st.sampled_from([0, 100, 2**31 - 1]),
    "links": st.sampled_from([1, 2, 64]),
    "max-streams": st.sampled_from([1, 1000, 1 << 20]),
    "max-pending-opens": st.sampled_from([1, 100]),
    "max-message-size": st.sampled_from([1, 131072]),
    "max-connections": st.sampled_from([1, 1000]),
    "max-connections-per-source": st.sampled_from([1, 10]),
    "bytes-per-second": st.sampled_from([0, 1, 10**6]),
    "keepalive-misses": st.sampled_from([1, 3]),
    "stream-window": st.sampled_from([262144, 4194304, 16777216]),
    "stream-window-max": st.just(16777216),
    "keepalive-interval": st.sampled_from([0, 1, 5]),
    "ws-ping-interval": st.sampled_from([0, 10]),
    "bytes": st.just(1),
}
NUMBER_KEYS = {
    "priority", "links", "max-streams", "max-pending-opens", "max-message-size", "max-connections",
    "max-connections-per-source", "bytes-per-second", "keepalive-misses", "stream-window",
    "stream-window-max",
}  # fmt: skip
BAD_NAMES = st.sampled_from(["", "-x", "a b", "x" * 65, "é", "${undefined}", "${"])
BAD_FILES = st.sampled_from(["missing.pem", "", "certs", "/nonexistent/x.pem", "${f}", "a\x00b"])
BAD_TOKENS = listed(st.sampled_from(["sha256:xyz", "plain-token", "sha256:" + "ab" * 31, ""]))


def good_for(path: str) -> st.SearchStrategy[Any]:
    key = path.rsplit(".", 1)[-1]
    if path in GOOD:
        return GOOD[path]
    if key in GOOD:
        return GOOD[key]
    return seconds  # every other key of the loader is a duration


def bad_for(path: str) -> st.SearchStrategy[Any]:
    key = path.rsplit(".", 1)[-1]
    if key in NUMBER_KEYS:
        special = bad_counts
    elif key in ("name", "member-names", "server-name"):
        special = listed(BAD_NAMES)
    elif key in ("cert", "ca", "client-ca"):
        special = BAD_FILES
    elif key == "tokens":
        special = BAD_TOKENS
    elif key in ("accept", "connect", "members", "balance", "admin"):
        special = listed(bad_uris())
    elif key in GOOD:
        special = st.one_of(st.text(max_size=8), st.sampled_from(["", "other"]))
    else:
        special = bad_seconds
    return st.one_of(special, special, any_value)


REQUIRED = {
    "dmz.name", "dmz.backplane", "dmz.service", "dmz.backplane.accept", "dmz.backplane.cert",
    "dmz.backplane.ca", "dmz.service.name", "dmz.service.accept", "internal.name",
    "internal.backplane", "internal.service", "internal.backplane.connect",
    "internal.backplane.server-name", "internal.backplane.cert", "internal.backplane.ca",
    "internal.service.name", "internal.service.connect", "dmz.cluster.name", "dmz.cluster.accept",
    "dmz.cluster.members",
}  # fmt: skip


@st.composite
def table_of(draw: st.DrawFn, path: str, keys: tuple[str, ...], nested: dict[str, Any], bad: int) -> dict[str, Any]:
    """Some of ``keys``: required ones nearly always, each value bad one time in ``bad``.

    The odds come from a Random seeded by a drawn integer: hypothesis's own draws favour their
    bounds, which would make "one time in N" far more often than that.
    """
    odds = random.Random(draw(st.integers(0, 2**32)))
    table: dict[str, Any] = {}
    for key in keys:
        here = f"{path}.{key}"
        wanted = here in REQUIRED or key in nested
        if odds.random() < (1 / (3 * bad) if wanted else 2 / 3):
            continue  # an optional key left out, or (rarely) a required one
        if odds.random() < 1 / bad:
            table[key] = draw(bad_for(here))
        elif key in nested:
            table[key] = draw(nested[key])
        else:
            table[key] = draw(good_for(here))
    if odds.random() < 1 / (10 * bad):
        table[draw(st.sampled_from(["nmae", "acept", "x", "limits", "", "a.b"]))] = draw(any_value)
    return table


def dmz_tree(bad: int) -> st.SearchStrategy[dict[str, Any]]:
    return table_of(
        "dmz",
        loader._DMZ_KEYS,
        {
            "backplane": table_of("dmz.backplane", loader._DMZ_BACKPLANE_KEYS, {}, bad),
            "cluster": table_of("dmz.cluster", loader._DMZ_CLUSTER_KEYS, {}, bad),
            "limits": table_of("dmz.limits", loader._LIMIT_KEYS, {}, bad),
            "service": st.lists(table_of("dmz.service", loader._DMZ_SERVICE_KEYS, {}, bad), min_size=1, max_size=3),
        },
        bad,
    )


def internal_tree(bad: int) -> st.SearchStrategy[dict[str, Any]]:
    return table_of(
        "internal",
        loader._INTERNAL_KEYS,
        {
            "backplane": table_of("internal.backplane", loader._INTERNAL_BACKPLANE_KEYS, {}, bad),
            "service": st.lists(
                table_of("internal.service", loader._INTERNAL_SERVICE_KEYS, {}, bad), min_size=1, max_size=3
            ),
        },
        bad,
    )


good_properties = st.fixed_dictionaries({"ip": st.just("127.0.0.1"), "port": st.just("5941")})
bad_properties = st.dictionaries(
    st.sampled_from(["ip", "port", "p", "f", "a.b", "bad key", ""]),
    st.one_of(st.sampled_from(["127.0.0.1", "${ip}", "${", "${nope}", "x" * 70000]), any_scalar),
    max_size=3,
)


@st.composite
def gateway_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A ``[dmz]`` or ``[internal]`` tree, mostly valid: ``bad`` sets how often a value is not."""
    bad = draw(st.sampled_from([3, 10, 30, 100]))
    odds = random.Random(draw(st.integers(0, 2**32)))
    doc: dict[str, Any] = {"properties": draw(bad_properties if odds.random() < 1 / bad else good_properties)}
    kind = odds.choice(["dmz", "internal"] * 10 + ["both", "neither"])
    if kind in ("dmz", "both"):
        doc["dmz"] = draw(dmz_tree(bad))
    if kind in ("internal", "both"):
        doc["internal"] = draw(internal_tree(bad))
    return doc


# --------------------------------------------------------------------------- the property


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config-properties")
    for name in FILES:
        (path / name).write_bytes(b"")
    (path / "certs").mkdir()
    return path


LOADERS = (load_config, load_dmz_config, load_internal_config)


def load_or_config_error(path: Path) -> None:
    for load in LOADERS:
        try:
            config = load(path)
        except ConfigError as error:
            assert error.file == path, error
            assert error.problem
            assert error.describe().startswith(f"{path}: ")
            continue
        assert isinstance(config, (DmzConfig, InternalConfig))


@PROPS
@given(gateway_documents())
def test_gateway_shaped_documents_load_or_raise_config_error(folder: Path, doc: dict[str, Any]) -> None:
    text = write_tables(doc)
    assert tomllib.loads(text) == doc, "the writer must produce the document drawn"
    path = folder / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    load_or_config_error(path)


@PROPS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_load_or_raise_config_error(folder: Path, data: bytes) -> None:
    path = folder / "bytes.toml"
    path.write_bytes(data)
    load_or_config_error(path)


@PROPS
@given(st.text(max_size=200))
def test_arbitrary_text_loads_or_raises_config_error(folder: Path, text: str) -> None:
    path = folder / "text.toml"
    path.write_text(text, encoding="utf-8")
    load_or_config_error(path)


@PROPS
@given(gateway_documents(), st.binary(min_size=1, max_size=4), st.data())
def test_damaged_gateway_files_load_or_raise_config_error(
    folder: Path, doc: dict[str, Any], junk: bytes, data: st.DataObject
) -> None:
    """A real-looking file with a few bytes overwritten: TOML syntax errors deep in a table."""
    raw = bytearray(write_tables(doc).encode("utf-8"))
    if raw:
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at : at + len(junk)] = junk
    path = folder / "damaged.toml"
    path.write_bytes(bytes(raw))
    load_or_config_error(path)


def test_the_writer_makes_real_tables() -> None:
    doc = {
        "dmz": {
            "name": "dmz1",
            "backplane": {"accept": "tls://127.0.0.1:5941", "connectors": {"internal1": ["echo"]}},
            "service": [{"name": "echo", "accept": ["ws://127.0.0.1:8080/echo"], "x": {"y": 1}}],
        }
    }
    text = write_tables(doc)
    assert '\n["dmz"."backplane"]\n' in text
    assert '\n["dmz"."backplane"."connectors"]\n' in text
    assert '\n[["dmz"."service"]]\n' in text
    assert tomllib.loads(text) == doc
