"""The configuration loader: every rule of docs/configuration.md, by the key path and problem a
user sees, plus properties that no document can make the loader fail any other way.

Certificate files are written as empty placeholders: the loader checks that they exist and are
readable, never what they contain.
"""

from __future__ import annotations

import copy
import datetime
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shield.config.errors import ConfigError
from shield.config.loader import (
    MAX_STREAM_WINDOW,
    MIN_STREAM_WINDOW,
    expand_properties,
    load_config,
    load_dmz_config,
    load_internal_config,
)
from shield.config.model import (
    DmzConfig,
    DmzService,
    InternalConfig,
    InternalService,
    KeepaliveSettings,
    Uri,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
PLACEHOLDERS = (
    "dmz1.pem", "ca.pem", "internal1.pem", "web.pem", "other.pem", "backend-ca.pem", "public.pem",
    "db-ca.pem", "clients-ca.pem",
)  # fmt: skip

DMZ_EXAMPLE = """\
# dmz.toml
[properties]
"gateway.ip.address" = "127.0.0.1"

[dmz]
name = "dmz1"
admin = "http://127.0.0.1:9100"          # /healthz /readyz /metrics (off when absent)
grace-period = 30                         # seconds, on SIGTERM

[dmz.backplane]
accept = "tls://${gateway.ip.address}:5941"
cert = "certs-dev/dmz1.pem"               # certificate chain + private key, PEM
ca = "certs-dev/ca.pem"                   # CA that signs connector certificates
[dmz.backplane.connectors]                # connector identity -> services it may offer
internal1 = ["echo"]

[[dmz.service]]
name = "echo"
accept = ["ws://${gateway.ip.address}:8080/echo", "tcp://${gateway.ip.address}:9000"]
allow-origin = ["*"]
max-message-size = 131072
"""

INTERNAL_EXAMPLE = """\
# internal.toml
[internal]
name = "internal1"                        # must match the identity in its certificate
admin = "http://127.0.0.1:9101"
priority = 100

[internal.backplane]
connect = ["tls://127.0.0.1:5941"]
server-name = "dmz1"                      # name verified in the DMZ certificate
links = 2
cert = "certs-dev/internal1.pem"
ca = "certs-dev/ca.pem"

[[internal.service]]
name = "echo"
connect = "tcp://127.0.0.1:7000"
"""


# --------------------------------------------------------------------------- TOML writing


def toml_string(text: str) -> str:
    """A TOML basic string: escapes quotes, backslashes and every control character."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def to_toml(doc: dict[str, Any]) -> str:
    """A document as top-level keys with inline values (tables inline, arrays of tables too)."""
    return "".join(f"{toml_string(key)} = {toml_value(value)}\n" for key, value in doc.items())


# --------------------------------------------------------------------------- fixtures


def dmz_doc() -> dict[str, Any]:
    """A minimal valid DMZ file, to break one key at a time."""
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


def internal_doc() -> dict[str, Any]:
    """A minimal valid internal file, to break one key at a time."""
    return {
        "internal": {
            "name": "internal1",
            "backplane": {
                "connect": ["tls://127.0.0.1:5941"],
                "server-name": "dmz1",
                "cert": "internal1.pem",
                "ca": "ca.pem",
            },
            "service": [{"name": "echo", "connect": "tcp://127.0.0.1:7000"}],
        }
    }


def write_placeholders(folder: Path) -> None:
    for name in PLACEHOLDERS:
        (folder / name).write_bytes(b"")
    (folder / "certs-dev").mkdir(exist_ok=True)
    for name in PLACEHOLDERS:
        (folder / "certs-dev" / name).write_bytes(b"")


Load = Callable[..., Any]


@pytest.fixture
def load(tmp_path: Path) -> Load:
    """Write a document (dict or TOML text) next to placeholder certs, and load it."""
    write_placeholders(tmp_path)

    def load_(doc: dict[str, Any] | str, loader: Callable[[Path], Any] = load_config) -> Any:
        path = tmp_path / "gateway.toml"
        path.write_text(doc if isinstance(doc, str) else to_toml(doc), encoding="utf-8")
        return loader(path)

    return load_


@pytest.fixture
def refuse(load: Load) -> Callable[..., ConfigError]:
    """Load a document that must be refused; return the error."""

    def refuse_(doc: dict[str, Any] | str, key_path: str, problem: str) -> ConfigError:
        with pytest.raises(ConfigError) as info:
            load(doc)
        error = info.value
        assert (error.key_path, problem in error.problem) == (key_path, True), str(error)
        return error

    return refuse_


# --------------------------------------------------------------------------- errors


def test_config_error_text() -> None:
    error = ConfigError("dmz.service[0].accept[1]", "unsupported scheme 'htp'")
    assert str(error) == "dmz.service[0].accept[1]: unsupported scheme 'htp'"
    assert error.describe() == "dmz.service[0].accept[1]: unsupported scheme 'htp'"
    whole = ConfigError("", "TOML syntax error", Path("/etc/shield/dmz.toml"))
    assert str(whole) == "TOML syntax error"
    assert whole.describe() == "/etc/shield/dmz.toml: TOML syntax error"


def test_the_briefs_example_message(load: Load) -> None:
    doc = dmz_doc()
    doc["dmz"]["service"][0]["accept"] = ["ws://127.0.0.1:8080/echo", "htp://127.0.0.1:9000"]
    with pytest.raises(ConfigError) as info:
        load(doc)
    assert str(info.value) == (
        "dmz.service[0].accept[1]: unsupported scheme 'htp' (expected one of ws, wss, tcp, tls)"
    )
    assert info.value.file is not None and info.value.file.name == "gateway.toml"


# --------------------------------------------------------------------------- the examples


def check_examples(dmz: DmzConfig, internal: InternalConfig, folder: Path) -> None:
    assert dmz.name == "dmz1"
    assert dmz.admin == Uri("http", "127.0.0.1", 9100)
    assert dmz.grace_period == 30.0 and dmz.open_timeout == 10.0
    assert dmz.backplane.accept == (Uri("tls", "127.0.0.1", 5941),)
    assert dmz.backplane.cert == folder / "certs-dev" / "dmz1.pem"
    assert dmz.backplane.ca == folder / "certs-dev" / "ca.pem"
    assert dmz.backplane.connectors == {"internal1": ("echo",)}
    assert dmz.services == (
        DmzService(
            name="echo",
            accept=(Uri("ws", "127.0.0.1", 8080, "/echo"), Uri("tcp", "127.0.0.1", 9000)),
            allow_origin=("*",),
            max_message_size=131072,
        ),
    )
    assert dmz.source == folder / "dmz.toml"
    assert internal.name == "internal1" and internal.priority == 100
    assert internal.admin == Uri("http", "127.0.0.1", 9101)
    assert internal.backplane.connect == (Uri("tls", "127.0.0.1", 5941),)
    assert internal.backplane.server_name == "dmz1" and internal.backplane.links == 2
    assert internal.backplane.cert == folder / "certs-dev" / "internal1.pem"
    assert internal.services == (InternalService("echo", Uri("tcp", "127.0.0.1", 7000)),)


def test_design_examples_load(tmp_path: Path) -> None:
    write_placeholders(tmp_path)
    (tmp_path / "dmz.toml").write_text(DMZ_EXAMPLE)
    (tmp_path / "internal.toml").write_text(INTERNAL_EXAMPLE)
    dmz = load_dmz_config(tmp_path / "dmz.toml")
    internal = load_internal_config(str(tmp_path / "internal.toml"))
    check_examples(dmz, internal, tmp_path)
    assert load_config(tmp_path / "dmz.toml") == dmz
    assert load_config(tmp_path / "internal.toml") == internal


def documented_blocks() -> list[str]:
    """Every ```toml block of docs/configuration.md."""
    return re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.DOTALL)


def test_documented_examples_are_the_design_examples(tmp_path: Path) -> None:
    blocks = documented_blocks()
    assert DMZ_EXAMPLE in blocks and INTERNAL_EXAMPLE in blocks


def gateway_blocks() -> list[str]:
    return [b for b in documented_blocks() if "\n[dmz]" in "\n" + b or "\n[internal]" in "\n" + b]


@pytest.mark.parametrize("index", range(len(gateway_blocks())))
def test_every_documented_file_loads(tmp_path: Path, index: int) -> None:
    write_placeholders(tmp_path)
    (tmp_path / "doc.toml").write_text(gateway_blocks()[index])
    assert load_config(tmp_path / "doc.toml").name in ("dmz1", "internal1")


def test_documented_properties_snippet(load: Load) -> None:
    (snippet,) = [block for block in documented_blocks() if block not in gateway_blocks()]
    internal = load(
        snippet
        + """
[internal]
name = "gw-${public.port}"
[internal.backplane]
connect = "tls://${gateway.ip.address}:5941"
server-name = "dmz1"
cert = "internal1.pem"
ca = "ca.pem"
[[internal.service]]
name = "echo"
connect = "unix:${dmz-cert}"
"""
    )
    assert internal.name == "gw-8080"
    assert internal.backplane.connect == (Uri("tls", "192.0.2.10", 5941),)
    assert internal.services[0].connect == Uri("unix", path="/etc/shield/certs/dmz1.pem")


def test_defaults_match_the_model(load: Load, tmp_path: Path) -> None:
    dmz = load(dmz_doc())
    assert dmz.admin is None and dmz.grace_period == 30.0 and dmz.open_timeout == 10.0
    assert dmz.backplane.keepalive == KeepaliveSettings(5.0, 3)
    assert dmz.backplane.stream_window == 262144
    service = dmz.services[0]
    assert (service.allow_origin, service.max_message_size) == (("*",), 131072)
    assert (service.ws_ping_interval, service.open_timeout, service.cert) == (30.0, 10.0, None)
    internal = load(internal_doc())
    assert internal.admin is None and internal.priority == 100 and internal.grace_period == 30.0
    assert internal.backplane.links == 2
    assert internal.backplane.keepalive == KeepaliveSettings(5.0, 3)
    assert internal.backplane.stream_window == 262144
    assert internal.services[0] == InternalService("echo", Uri("tcp", "127.0.0.1", 7000))
    assert internal.source == tmp_path / "gateway.toml"


def test_every_extra_key_is_read(load: Load, tmp_path: Path) -> None:
    doc = dmz_doc()
    doc["dmz"]["open-timeout"] = 4
    doc["dmz"]["backplane"].update(
        {"keepalive-interval": 0, "keepalive-misses": 7, "stream-window": 1048576}
    )
    doc["dmz"]["service"][0].update({"ws-ping-interval": 0, "accept": "wss://0.0.0.0:8443/e"})
    doc["dmz"]["service"][0]["cert"] = "web.pem"
    doc["dmz"]["service"].append({"name": "raw", "accept": "tcp://127.0.0.1:9000", "open-timeout": 2.5})
    dmz = load(doc)
    assert dmz.open_timeout == 4.0
    assert dmz.backplane.keepalive == KeepaliveSettings(0.0, 7)
    assert dmz.backplane.stream_window == 1048576
    echo, raw = dmz.services
    assert (echo.ws_ping_interval, echo.open_timeout, echo.cert) == (0.0, 4.0, tmp_path / "web.pem")
    assert echo.accept == (Uri("wss", "0.0.0.0", 8443, "/e"),)
    assert raw.open_timeout == 2.5

    doc = internal_doc()
    doc["internal"]["backplane"].update(
        {"keepalive-interval": 1.5, "keepalive-misses": 1, "stream-window": 16777216, "links": 64}
    )
    doc["internal"]["service"][0] = {
        "name": "secure",
        "connect": "tls://backend.example:8443",
        "connect-timeout": 0.25,
        "ca": "backend-ca.pem",
        "server-name": "backend.internal",
    }
    internal = load(doc)
    assert internal.backplane.keepalive == KeepaliveSettings(1.5, 1)
    assert (internal.backplane.stream_window, internal.backplane.links) == (16777216, 64)
    assert internal.services[0] == InternalService(
        "secure",
        Uri("tls", "backend.example", 8443),
        0.25,
        tmp_path / "backend-ca.pem",
        "backend.internal",
    )


def test_single_strings_count_as_lists(load: Load) -> None:
    doc = dmz_doc()
    doc["dmz"]["service"][0]["accept"] = "ws://127.0.0.1:8080/echo"
    doc["dmz"]["service"][0]["allow-origin"] = "https://app.example"
    doc["dmz"]["backplane"]["connectors"] = {"internal1": "echo"}
    dmz = load(doc)
    assert dmz.services[0].accept == (Uri("ws", "127.0.0.1", 8080, "/echo"),)
    assert dmz.services[0].allow_origin == ("https://app.example",)
    assert dmz.backplane.connectors == {"internal1": ("echo",)}
    doc = internal_doc()
    doc["internal"]["backplane"]["connect"] = "tls://[::1]:5941"
    assert load(doc).backplane.connect == (Uri("tls", "::1", 5941),)


def test_unix_backend(load: Load) -> None:
    doc = internal_doc()
    doc["internal"]["service"][0]["connect"] = "unix:/run/echo.sock"
    assert load(doc).services[0].connect == Uri("unix", path="/run/echo.sock")


def test_dmz_without_connectors_is_allowed(load: Load) -> None:
    doc = dmz_doc()
    del doc["dmz"]["backplane"]["connectors"]
    assert load(doc).backplane.connectors == {}


# --------------------------------------------------------------------------- properties


def test_properties_quoted_and_dotted_keys_and_numbers(load: Load) -> None:
    text = """
[properties]
"gateway.ip.address" = "127.0.0.1"
ports.public = 8080
ratio = 1.5
base = "/srv"
sock = "${base}/echo.sock"
[internal]
name = "internal-${ports.public}"
[internal.backplane]
connect = "tls://${gateway.ip.address}:5941"
server-name = "dmz1"
cert = "internal1.pem"
ca = "ca.pem"
[[internal.service]]
name = "echo-${ratio}"
connect = "unix:${sock}"
"""
    internal = load(text)
    assert internal.name == "internal-8080"
    assert internal.backplane.connect == (Uri("tls", "127.0.0.1", 5941),)
    assert internal.services[0].name == "echo-1.5"
    assert internal.services[0].connect == Uri("unix", path="/srv/echo.sock")


def test_undefined_property_is_reported_where_used(refuse: Any) -> None:
    doc = dmz_doc()
    doc["properties"] = {"gateway.ip.address": "127.0.0.1"}
    doc["dmz"]["service"][0]["accept"] = ["ws://127.0.0.1:8080/a", "ws://${gateway.ip.adress}:1/"]
    refuse(
        doc,
        "dmz.service[0].accept[1]",
        "undefined property 'gateway.ip.adress' (did you mean 'gateway.ip.address'?)",
    )
    doc = dmz_doc()
    doc["dmz"]["name"] = "${nothing}"
    refuse(doc, "dmz.name", "undefined property 'nothing' (define it in [properties])")


def test_property_may_use_only_earlier_properties(refuse: Any) -> None:
    doc = internal_doc()
    doc["properties"] = {"a": "${b}", "b": "x"}
    refuse(doc, "properties.a", "undefined property 'b'")


def test_property_errors(refuse: Any) -> None:
    doc = internal_doc()
    doc["properties"] = {"flag": True}
    refuse(doc, "properties.flag", "expected a string or a number, got a boolean (True)")
    doc["properties"] = {"list": ["a"]}
    refuse(doc, "properties.list", "expected a string or a number, got an array")
    doc["properties"] = {"bad name": "x"}
    refuse(doc, 'properties."bad name"', "property names use only letters, digits")
    doc["properties"] = {"a.b": "x", "a": {"b": "y"}}
    refuse(doc, "properties.a.b", "property 'a.b' is defined twice")
    doc["properties"] = 5
    refuse(doc, "properties", "expected a table, got an integer (5)")


def test_unterminated_and_empty_references(refuse: Any) -> None:
    doc = internal_doc()
    doc["internal"]["name"] = "gw${oops"
    refuse(doc, "internal.name", "unterminated '${'")
    doc["internal"]["name"] = "gw${}"
    refuse(doc, "internal.name", "empty property name")


def test_a_lone_dollar_is_kept(load: Load) -> None:
    doc = dmz_doc()
    doc["properties"] = {"x": "$"}
    doc["dmz"]["service"][0]["allow-origin"] = ["$", "a$b", "end$", "${x}{", "$$${x}"]
    assert load(doc).services[0].allow_origin == ("$", "a$b", "end$", "${", "$$$")


def test_expansion_cannot_blow_up(refuse: Any) -> None:
    doc = internal_doc()
    doc["properties"] = {"p0": "xxxxxxxx"} | {f"p{i}": f"${{p{i - 1}}}${{p{i - 1}}}" for i in range(1, 64)}
    refuse(doc, "properties.p14", "expands to more than 65536 characters")


def test_environment_variables_expand_anywhere(load: Load, monkeypatch: pytest.MonkeyPatch) -> None:
    """``${env:NAME}``: a pod's IP or a mounted Secret's path arrive as environment variables."""
    monkeypatch.setenv("POD_IP", "10.1.2.3")
    monkeypatch.setenv("SHIELD_TEST_NAME", "internal-7")
    text = """
[properties]
"gateway.ip.address" = "${env:POD_IP}"
[internal]
name = "${env:SHIELD_TEST_NAME}"
[internal.backplane]
connect = "tls://${gateway.ip.address}:5941"
server-name = "dmz1"
cert = "internal1.pem"
ca = "ca.pem"
[[internal.service]]
name = "echo"
connect = "tcp://${env:POD_IP}:7000"
"""
    internal = load(text)
    assert internal.name == "internal-7"
    assert internal.backplane.connect == (Uri("tls", "10.1.2.3", 5941),)
    assert internal.services[0].connect == Uri("tcp", "10.1.2.3", 7000)


def test_environment_variable_errors(refuse: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHIELD_TEST_UNSET", raising=False)
    doc = internal_doc()
    doc["internal"]["name"] = "${env:SHIELD_TEST_UNSET}"
    refuse(doc, "internal.name", "environment variable SHIELD_TEST_UNSET is not set (${env:SHIELD_TEST_UNSET} in")
    doc["internal"]["name"] = "${env:2BAD}"
    refuse(doc, "internal.name", "'2BAD' is not an environment variable name")
    monkeypatch.setenv("SHIELD_TEST_EMPTY", "")
    doc["internal"]["name"] = "${env:SHIELD_TEST_EMPTY}"  # set but empty: a value, checked as any other
    refuse(doc, "internal.name", "bad gateway name ''")


def test_environment_values_are_not_expanded_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIELD_TEST_RAW", "${b}")
    assert expand_properties("${env:SHIELD_TEST_RAW}-${b}", {"b": "!"}, "k") == "${b}-!"


def test_a_connector_with_an_empty_list_is_known_and_allowed_nothing(load: Load) -> None:
    """``internal1 = []`` cuts a connector off (docs/security.md) without refusing the file."""
    doc = dmz_doc()
    doc["dmz"]["backplane"]["connectors"]["internal1"] = []
    assert load(doc).backplane.connectors["internal1"] == ()


def test_expand_properties_is_single_pass() -> None:
    assert expand_properties("${a}${b}", {"a": "${b}", "b": "!"}, "k") == "${b}!"


# --------------------------------------------------------------------------- unknown keys, types


@pytest.mark.parametrize(
    ("where", "key", "key_path", "hint"),
    [
        ((), "dmzz", "dmzz", "did you mean 'dmz'?"),
        (("dmz",), "grace_period", "dmz.grace_period", "did you mean 'grace-period'?"),
        (("dmz", "backplane"), "acept", "dmz.backplane.acept", "did you mean 'accept'?"),
        (("dmz", "service", 0), "origin", "dmz.service[0].origin", "did you mean 'allow-origin'?"),
        (("dmz",), "zzz", "dmz.zzz", "expected one of name, admin,"),
        (("dmz",), "a b", 'dmz."a b"', "expected one of"),
    ],
)
def test_unknown_keys_suggest_the_near_one(
    refuse: Any, where: tuple[Any, ...], key: str, key_path: str, hint: str
) -> None:
    doc = dmz_doc()
    table = doc
    for step in where:
        table = table[step]
    table[key] = "x"
    refuse(doc, key_path, f"unknown key ({hint}")


@pytest.mark.parametrize(
    ("where", "key", "key_path", "hint"),
    [
        (("internal", "backplane"), "server_name", "internal.backplane.server_name", "'server-name'"),
        (("internal", "service", 0), "conect", "internal.service[0].conect", "'connect'"),
        (("internal",), "prority", "internal.prority", "'priority'"),
    ],
)
def test_unknown_internal_keys(
    refuse: Any, where: tuple[Any, ...], key: str, key_path: str, hint: str
) -> None:
    doc = internal_doc()
    table = doc
    for step in where:
        table = table[step]
    table[key] = 1
    refuse(doc, key_path, f"unknown key (did you mean {hint}?)")


def test_the_briefs_unknown_key_message(load: Load) -> None:
    doc = dmz_doc()
    doc["dmz"]["backplane"]["acept"] = doc["dmz"]["backplane"].pop("accept")
    with pytest.raises(ConfigError) as info:
        load(doc)
    assert str(info.value) == "dmz.backplane.acept: unknown key (did you mean 'accept'?)"


def set_key(doc: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.0.c`` in a document (integers index arrays); ``...`` as value deletes."""
    *parents, last = [int(p) if p.isdigit() else p for p in dotted.split("/")]
    table = doc
    for step in parents:
        table = table[step]
    if value is ...:
        del table[last]
    else:
        table[last] = value


@pytest.mark.parametrize(
    ("setting", "value", "key_path", "problem"),
    [
        ("dmz/name", 5, "dmz.name", "expected a string, got an integer (5)"),
        ("dmz/name", ..., "dmz.name", "missing required key"),
        ("dmz", "x", "dmz", "expected a table, got a string ('x')"),
        ("dmz/backplane", ..., "dmz.backplane", "missing required key"),
        ("dmz/backplane", [1], "dmz.backplane", "expected a table, got an array"),
        ("dmz/backplane/accept", ..., "dmz.backplane.accept", "missing required key"),
        ("dmz/backplane/accept", [], "dmz.backplane.accept", "empty array"),
        ("dmz/backplane/accept", ["tls://a:1", 2], "dmz.backplane.accept[1]", "expected a string, got an integer"),
        ("dmz/backplane/cert", ..., "dmz.backplane.cert", "missing required key"),
        ("dmz/backplane/ca", 1.5, "dmz.backplane.ca", "expected a string, got a float (1.5)"),
        ("dmz/backplane/connectors", ["echo"], "dmz.backplane.connectors", "expected a table"),
        ("dmz/backplane/connectors/internal1", 3, "dmz.backplane.connectors.internal1", "expected an array of strings"),
        ("dmz/backplane/connectors/internal1", ["echo", 1], "dmz.backplane.connectors.internal1[1]", "expected a string, got an integer"),
        ("dmz/service", ..., "dmz.service", "missing required key (at least one [[dmz.service]] is needed)"),
        ("dmz/service", [], "dmz.service", "at least one [[dmz.service]] is needed"),
        ("dmz/service", {"name": "echo"}, "dmz.service", "expected an array of tables ([[dmz.service]]), got a table"),
        ("dmz/service/0", "echo", "dmz.service[0]", "expected a table, got a string"),
        ("dmz/service/0/name", ..., "dmz.service[0].name", "missing required key"),
        ("dmz/service/0/accept", ..., "dmz.service[0].accept", "missing required key"),
        ("dmz/service/0/accept", [], "dmz.service[0].accept", "empty array"),
        ("dmz/service/0/accept", ["ws://a:1/", True], "dmz.service[0].accept[1]", "expected a string, got a boolean"),
        ("dmz/service/0/allow-origin", [], "dmz.service[0].allow-origin", "empty array"),
        ("dmz/service/0/allow-origin", ["*", ""], "dmz.service[0].allow-origin[1]", "bad origin ''"),
        ("dmz/service/0/max-message-size", "1k", "dmz.service[0].max-message-size", "expected an integer, got a string ('1k')"),
        ("dmz/service/0/max-message-size", 1024.0, "dmz.service[0].max-message-size", "expected an integer, got a float"),
        ("dmz/grace-period", "30s", "dmz.grace-period", "expected a number of seconds, got a string ('30s')"),
        ("dmz/grace-period", True, "dmz.grace-period", "expected a number of seconds, got a boolean"),
        ("dmz/open-timeout", datetime.time(0, 0, 10), "dmz.open-timeout", "got a time (00:00:10)"),
        ("dmz/admin", 9100, "dmz.admin", "expected a string, got an integer"),
    ],
)
def test_dmz_types_and_required_keys(
    refuse: Any, setting: str, value: Any, key_path: str, problem: str
) -> None:
    doc = dmz_doc()
    set_key(doc, setting, value)
    refuse(doc, key_path, problem)


@pytest.mark.parametrize(
    ("setting", "value", "key_path", "problem"),
    [
        ("internal/name", ..., "internal.name", "missing required key"),
        ("internal/priority", "high", "internal.priority", "expected an integer, got a string"),
        ("internal/priority", False, "internal.priority", "expected an integer, got a boolean"),
        ("internal/backplane/connect", ..., "internal.backplane.connect", "missing required key"),
        ("internal/backplane/connect", [], "internal.backplane.connect", "empty array"),
        ("internal/backplane/connect", {"a": 1}, "internal.backplane.connect", "expected an array of strings, got a table"),
        ("internal/backplane/server-name", ..., "internal.backplane.server-name", "missing required key"),
        ("internal/backplane/server-name", "not a name", "internal.backplane.server-name", "bad server name 'not a name'"),
        ("internal/backplane/links", 2.0, "internal.backplane.links", "expected an integer, got a float (2.0)"),
        ("internal/backplane/cert", ..., "internal.backplane.cert", "missing required key"),
        ("internal/backplane/ca", ..., "internal.backplane.ca", "missing required key"),
        ("internal/service", ..., "internal.service", "at least one [[internal.service]] is needed"),
        ("internal/service", [], "internal.service", "at least one [[internal.service]] is needed"),
        ("internal/service/0/connect", ..., "internal.service[0].connect", "missing required key"),
        ("internal/service/0/connect", ["tcp://a:1"], "internal.service[0].connect", "expected a string, got an array"),
        ("internal/service/0/connect-timeout", "10", "internal.service[0].connect-timeout", "expected a number of seconds"),
    ],
)
def test_internal_types_and_required_keys(
    refuse: Any, setting: str, value: Any, key_path: str, problem: str
) -> None:
    doc = internal_doc()
    set_key(doc, setting, value)
    refuse(doc, key_path, problem)


# --------------------------------------------------------------------------- ranges


DMZ_RANGES = [
    ("dmz/grace-period", [0.001, 30, 1e6], [0, -1], "must be more than 0 seconds"),
    ("dmz/open-timeout", [0.5, 10], [0, -0.5], "must be more than 0 seconds"),
    ("dmz/service/0/open-timeout", [0.5], [0.0], "must be more than 0 seconds"),
    ("dmz/service/0/max-message-size", [1, 67108864], [0, 67108865, -5], "must be between 1 and 67108864 bytes"),
    ("dmz/service/0/ws-ping-interval", [0, 0.5, 300], [-1, -0.1], "must be at least 0 (0 disables) seconds"),
    ("dmz/backplane/stream-window", [262144, 16777216], [262143, 16777217, 0], "must be between 262144 and 16777216 bytes"),
    ("dmz/backplane/keepalive-interval", [0, 5, 0.1], [-1], "must be at least 0 (0 disables) seconds"),
    ("dmz/backplane/keepalive-misses", [1, 1000], [0, -3], "must be at least 1"),
]
INTERNAL_RANGES = [
    ("internal/priority", [0, 2**31 - 1], [-1, 2**31], "must be between 0 and 2147483647"),
    ("internal/grace-period", [0.1], [0, -2], "must be more than 0 seconds"),
    ("internal/backplane/links", [1, 64], [0, 65, -1], "must be between 1 and 64"),
    ("internal/backplane/stream-window", [262144, 16777216], [262143, 2**40], "must be between 262144 and 16777216"),
    ("internal/backplane/keepalive-interval", [0, 2.5], [-0.001], "must be at least 0"),
    ("internal/backplane/keepalive-misses", [1, 5], [0], "must be at least 1"),
    ("internal/service/0/connect-timeout", [0.01, 10], [0, -1], "more than 0 seconds"),
]


def range_cases(ranges: list[Any], make: Callable[[], dict[str, Any]]) -> list[Any]:
    cases = []
    for setting, good, bad, problem in ranges:
        key_path = setting.replace("/0/", "[0].").replace("/", ".")
        cases += [pytest.param(make, setting, value, None, None, id=f"{setting}={value}") for value in good]
        cases += [pytest.param(make, setting, value, key_path, problem, id=f"{setting}={value}") for value in bad]
    return cases


@pytest.mark.parametrize(
    ("make", "setting", "value", "key_path", "problem"),
    range_cases(DMZ_RANGES, dmz_doc) + range_cases(INTERNAL_RANGES, internal_doc),
)
def test_ranges(
    load: Load, refuse: Any, make: Callable[[], dict[str, Any]], setting: str, value: Any,
    key_path: str | None, problem: str | None,
) -> None:  # fmt: skip
    doc = make()
    set_key(doc, setting, value)
    if key_path is None:
        load(doc)
    else:
        assert f"(got {value})" in refuse(doc, key_path, problem).problem


def test_non_finite_seconds_are_refused(refuse: Any) -> None:
    doc = dmz_doc()
    doc["dmz"]["grace-period"] = math.inf
    refuse(doc, "dmz.grace-period", "must be a finite number of seconds (got inf)")
    doc["dmz"]["grace-period"] = math.nan
    refuse(doc, "dmz.grace-period", "must be a finite number of seconds (got nan)")
    doc = internal_doc()
    doc["internal"]["service"][0]["connect-timeout"] = -math.inf
    refuse(doc, "internal.service[0].connect-timeout", "must be a finite number of seconds")


def test_stream_window_bounds_are_the_multiplexers() -> None:
    from shield.mux.frames import INITIAL_WINDOW, MAX_WINDOW

    assert (MIN_STREAM_WINDOW, MAX_STREAM_WINDOW) == (INITIAL_WINDOW, MAX_WINDOW)


# --------------------------------------------------------------------------- URIs per key


@pytest.mark.parametrize(
    ("setting", "value", "key_path", "problem"),
    [
        ("dmz/admin", "https://127.0.0.1:9100", "dmz.admin", "unsupported scheme 'https' (expected http)"),
        ("dmz/admin", "http://127.0.0.1:9100/metrics", "dmz.admin", "path '/metrics' not allowed on http://"),
        ("dmz/admin", "http://127.0.0.1", "dmz.admin", "missing port"),
        ("dmz/backplane/accept", "tcp://127.0.0.1:5941", "dmz.backplane.accept", "unsupported scheme 'tcp' (expected one of tls, wss)"),
        ("dmz/service/0/accept", ["unix:/x"], "dmz.service[0].accept[0]", "unsupported scheme 'unix' (expected one of ws, wss, tcp, tls)"),
        ("dmz/service/0/accept", "ws://h:8080/a?b", "dmz.service[0].accept", "query string not allowed"),
        ("dmz/service/0/accept", ["ws://h:1/", "tcp://h:2/x"], "dmz.service[0].accept[1]", "path '/x' not allowed on tcp://"),
    ],
)
def test_dmz_uri_rules(refuse: Any, setting: str, value: Any, key_path: str, problem: str) -> None:
    doc = dmz_doc()
    set_key(doc, setting, value)
    refuse(doc, key_path, problem)


@pytest.mark.parametrize(
    ("setting", "value", "key_path", "problem"),
    [
        ("internal/admin", "tcp://127.0.0.1:9101", "internal.admin", "unsupported scheme 'tcp' (expected http)"),
        ("internal/backplane/connect", ["tls://a:1", "ws://a:2/"], "internal.backplane.connect[1]", "unsupported scheme 'ws' (expected one of tls, wss)"),
        ("internal/backplane/connect", ["tls://a:1", "tls://a:1"], "internal.backplane.connect[1]", "tls://a:1 is listed twice (also at internal.backplane.connect[0])"),
        ("internal/service/0/connect", "ws://a:1/", "internal.service[0].connect", "unsupported scheme 'ws' (expected one of tcp, tls, unix)"),
        ("internal/service/0/connect", "unix:relative.sock", "internal.service[0].connect", "must be absolute"),
        ("internal/service/0/connect", "tcp://a", "internal.service[0].connect", "missing port"),
    ],
)
def test_internal_uri_rules(refuse: Any, setting: str, value: Any, key_path: str, problem: str) -> None:
    doc = internal_doc()
    set_key(doc, setting, value)
    refuse(doc, key_path, problem)


# --------------------------------------------------------------------------- per-scheme keys


def test_cert_required_for_wss_and_tls_accepts(refuse: Any, load: Load) -> None:
    for accept in ("wss://127.0.0.1:8443/e", "tls://127.0.0.1:9443"):
        doc = dmz_doc()
        doc["dmz"]["service"][0]["accept"] = ["ws://127.0.0.1:8080/e", accept]
        error = refuse(doc, "dmz.service[0].cert", "missing required key (this service accepts on wss:// or tls://")
        assert "certificate chain and private key" in error.problem
        doc["dmz"]["service"][0]["cert"] = "web.pem"
        assert load(doc).services[0].cert is not None


def test_cert_refused_without_tls_accepts(refuse: Any) -> None:
    doc = dmz_doc()
    doc["dmz"]["service"][0]["cert"] = "web.pem"
    refuse(doc, "dmz.service[0].cert", "only used by wss:// and tls:// accepts")


@pytest.mark.parametrize("key", ["allow-origin", "max-message-size", "ws-ping-interval"])
def test_websocket_keys_refused_on_tcp_only_services(refuse: Any, key: str) -> None:
    doc = dmz_doc()
    service = doc["dmz"]["service"][0]
    service["accept"] = ["tcp://127.0.0.1:9000", "tls://127.0.0.1:9443"]
    service["cert"] = "web.pem"
    service[key] = ["*"] if key == "allow-origin" else 10
    refuse(doc, f"dmz.service[0].{key}", "only used by ws:// and wss:// accepts")


@pytest.mark.parametrize("connect", ["tcp://127.0.0.1:7000", "unix:/run/echo.sock"])
@pytest.mark.parametrize(("key", "value"), [("ca", "backend-ca.pem"), ("server-name", "backend")])
def test_backend_tls_keys_refused_on_other_schemes(
    refuse: Any, connect: str, key: str, value: str
) -> None:
    doc = internal_doc()
    doc["internal"]["service"][0].update({"connect": connect, key: value})
    refuse(doc, f"internal.service[0].{key}", "only used for tls:// backends")


def test_backend_tls_defaults(load: Load) -> None:
    doc = internal_doc()
    doc["internal"]["service"][0]["connect"] = "tls://backend.example:443"
    service = load(doc).services[0]
    assert (service.ca, service.server_name) == (None, None)


def test_backend_server_name_syntax(refuse: Any) -> None:
    doc = internal_doc()
    doc["internal"]["service"][0].update({"connect": "tls://b:443", "server-name": "a/b"})
    refuse(doc, "internal.service[0].server-name", "bad server name 'a/b'")


def test_server_name_may_be_an_ip_address(load: Load) -> None:
    doc = internal_doc()
    doc["internal"]["backplane"]["server-name"] = "::1"
    assert load(doc).backplane.server_name == "::1"


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["a", "Echo.v2_beta-1", "0", "x" * 63])
def test_good_service_names(load: Load, name: str) -> None:
    doc = internal_doc()
    doc["internal"]["service"][0]["name"] = name
    assert load(doc).services[0].name == name


@pytest.mark.parametrize("name", ["", "-echo", ".echo", "echo svc", "écho", "x" * 64, "echo\n"])
def test_bad_service_names(refuse: Any, name: str) -> None:
    doc = internal_doc()
    doc["internal"]["service"][0]["name"] = name
    refuse(doc, "internal.service[0].name", f"bad service name {name!r}")


def test_duplicate_service_names(refuse: Any) -> None:
    doc = internal_doc()
    doc["internal"]["service"].append({"name": "echo", "connect": "tcp://127.0.0.1:7001"})
    refuse(doc, "internal.service[1].name", "duplicate service name 'echo' (also at internal.service[0].name)")
    doc = dmz_doc()
    doc["dmz"]["service"].append({"name": "echo", "accept": "tcp://127.0.0.1:7001"})
    refuse(doc, "dmz.service[1].name", "duplicate service name 'echo'")


@pytest.mark.parametrize("name", ["", "dmz 1", "x" * 64, "dmz/1", "dmz1\n", "_conn", "-x", ".dmz"])
def test_bad_gateway_names(refuse: Any, name: str) -> None:
    doc = dmz_doc()
    doc["dmz"]["name"] = name
    refuse(doc, "dmz.name", f"bad gateway name {name!r} (1 to 63 letters, digits, '.', '_' or '-', "
                            "starting with a letter or digit)")
    doc = internal_doc()
    doc["internal"]["name"] = name
    refuse(doc, "internal.name", "bad gateway name")


@pytest.mark.parametrize("name", ["x" * 63, "a.b_c-d", "0-starts-with-a-digit", "dmz_1"])
def test_good_gateway_names(load: Load, name: str) -> None:
    doc = dmz_doc()
    doc["dmz"]["name"] = name
    assert load(doc).name == name


def test_bad_connector_identity(refuse: Any) -> None:
    doc = dmz_doc()
    doc["dmz"]["backplane"]["connectors"] = {"internal 1": ["echo"]}
    refuse(doc, 'dmz.backplane.connectors."internal 1"', "bad connector identity 'internal 1'")


def test_connectors_name_existing_services(refuse: Any) -> None:
    doc = dmz_doc()
    doc["dmz"]["backplane"]["connectors"] = {"internal1": ["echo"], "internal2": ["echo", "ecoh"]}
    refuse(doc, "dmz.backplane.connectors.internal2[1]", "unknown service 'ecoh' (did you mean 'echo'?)")
    doc["dmz"]["backplane"]["connectors"] = {"internal1": ["zzz"]}
    refuse(doc, "dmz.backplane.connectors.internal1[0]", "unknown service 'zzz' (no [[dmz.service]] of that name)")
    doc["dmz"]["backplane"]["connectors"] = {"internal1": "zzz"}
    refuse(doc, "dmz.backplane.connectors.internal1", "unknown service 'zzz'")
    doc["dmz"]["backplane"]["connectors"] = {"internal1": ["echo", "echo"]}
    refuse(doc, "dmz.backplane.connectors.internal1[1]", "service 'echo' is listed twice")


# --------------------------------------------------------------------------- listeners


def with_accepts(*services: list[str], cert: dict[int, str] | None = None) -> dict[str, Any]:
    doc = dmz_doc()
    doc["dmz"]["service"] = [
        {"name": f"s{index}", "accept": accepts} for index, accepts in enumerate(services)
    ]
    for index, name in (cert or {}).items():
        doc["dmz"]["service"][index]["cert"] = name
    doc["dmz"]["backplane"]["connectors"] = {}
    return doc


@pytest.mark.parametrize(
    "services",
    [
        [["ws://127.0.0.1:8080/a"], ["ws://127.0.0.1:8080/b"]],
        [["ws://127.0.0.1:8080/a", "ws://127.0.0.1:8080/b"]],
        [["tcp://127.0.0.1:9000"], ["tcp://127.0.0.2:9000"]],
        [["tcp://127.0.0.1:9000"], ["tcp://127.0.0.1:9001"]],
        [["ws://localhost:8080/a"], ["tcp://127.0.0.1:8080"]],  # no DNS: not known to overlap
        [["ws://[::1]:8080/a"], ["tcp://127.0.0.1:8080"]],
    ],
)
def test_listeners_that_coexist(load: Load, services: list[list[str]]) -> None:
    load(with_accepts(*services))


@pytest.mark.parametrize(
    ("services", "key_path", "problem"),
    [
        ([["ws://127.0.0.1:8080/a"], ["ws://127.0.0.1:8080/a"]], "dmz.service[1].accept[0]",
         "ws://127.0.0.1:8080/a is already accepted by service 's0' (dmz.service[0].accept[0])"),
        ([["tcp://127.0.0.1:9000"], ["tcp://127.0.0.1:9000"]], "dmz.service[1].accept[0]",
         "is already accepted by service 's0'"),
        ([["ws://127.0.0.1:8080/a", "ws://127.0.0.1:8080/a"]], "dmz.service[0].accept[1]",
         "ws://127.0.0.1:8080/a is listed twice (also at dmz.service[0].accept[0])"),
        ([["ws://127.0.0.1:8080/a"], ["tcp://127.0.0.1:8080"]], "dmz.service[1].accept[0]",
         "tcp://127.0.0.1:8080 conflicts with ws://127.0.0.1:8080/a of service 's0' (dmz.service[0].accept[0]): they cannot share one port"),
        ([["tcp://127.0.0.1:9000", "ws://127.0.0.1:9000/x"]], "dmz.service[0].accept[1]",
         "conflicts with tcp://127.0.0.1:9000"),
        ([["ws://127.0.0.1:8080/a"], ["ws://0.0.0.0:8080/b"]], "dmz.service[1].accept[0]",
         "overlaps ws://127.0.0.1:8080/a"),
        ([["tcp://[::]:9000"], ["ws://[::1]:9000/"]], "dmz.service[1].accept[0]", "overlaps"),
        ([["ws://127.0.0.1:5941/"]], "dmz.service[0].accept[0]",
         "conflicts with tls://127.0.0.1:5941 of the backplane (dmz.backplane.accept)"),
        ([["tcp://127.0.0.1:9100"]], "dmz.service[0].accept[0]", "of the admin endpoint (dmz.admin)"),
    ],
)
def test_listener_conflicts(
    refuse: Any, services: list[list[str]], key_path: str, problem: str
) -> None:
    doc = with_accepts(*services)
    doc["dmz"]["admin"] = "http://127.0.0.1:9100"
    refuse(doc, key_path, problem)


def test_tls_listener_conflicts(refuse: Any, load: Load) -> None:
    refuse(
        with_accepts(["tls://127.0.0.1:9443"], ["tcp://127.0.0.1:9443"], cert={0: "web.pem"}),
        "dmz.service[1].accept[0]", "conflicts with tls://127.0.0.1:9443",
    )  # fmt: skip
    refuse(
        with_accepts(["ws://127.0.0.1:8080/a"], ["wss://127.0.0.1:8080/b"], cert={1: "web.pem"}),
        "dmz.service[1].accept[0]", "conflicts with ws://127.0.0.1:8080/a",
    )  # fmt: skip
    refuse(
        with_accepts(["wss://127.0.0.1:8443/a"], ["wss://127.0.0.1:8443/b"],
                     cert={0: "web.pem", 1: "other.pem"}),
        "dmz.service[1].accept[0]", "names another cert",
    )  # fmt: skip
    load(
        with_accepts(["wss://127.0.0.1:8443/a"], ["wss://127.0.0.1:8443/b"],
                     cert={0: "web.pem", 1: "./web.pem"})
    )  # fmt: skip


def test_the_backplane_accepts_tls_and_wss_at_once_and_connectors_dial_either(load: Load, refuse: Any) -> None:
    doc = dmz_doc()
    doc["dmz"]["backplane"]["accept"] = ["tls://127.0.0.1:5941", "wss://0.0.0.0:8443/shield"]
    assert load(doc).backplane.accept == (Uri("tls", "127.0.0.1", 5941), Uri("wss", "0.0.0.0", 8443, "/shield"))
    doc["dmz"]["backplane"]["accept"] = "wss://127.0.0.1:8443"
    assert load(doc).backplane.accept == (Uri("wss", "127.0.0.1", 8443, "/"),)
    internal = internal_doc()
    internal["internal"]["backplane"]["connect"] = ["wss://dmz.example:443/shield", "tls://dmz.example:5941"]
    assert load(internal).backplane.connect == (Uri("wss", "dmz.example", 443, "/shield"), Uri("tls", "dmz.example", 5941))
    internal["internal"]["backplane"]["connect"] = ["ws://dmz.example:80/shield"]
    refuse(internal, "internal.backplane.connect[0]", "unsupported scheme 'ws' (expected one of tls, wss)")


def test_a_wss_backplane_shares_its_port_with_nothing(refuse: Any) -> None:
    doc = with_accepts(["wss://127.0.0.1:8443/app"], cert={0: "web.pem"})
    doc["dmz"]["backplane"]["accept"] = ["tls://127.0.0.1:5941", "wss://127.0.0.1:8443/shield"]
    refuse(
        doc, "dmz.service[0].accept[0]",
        "wss://127.0.0.1:8443/app conflicts with wss://127.0.0.1:8443/shield of the backplane "
        "(dmz.backplane.accept[1]): the backplane needs a port of its own",
    )  # fmt: skip


def test_admin_and_backplane_conflict(refuse: Any) -> None:
    doc = dmz_doc()
    doc["dmz"]["admin"] = "http://0.0.0.0:5941"
    refuse(doc, "dmz.backplane.accept", "overlaps http://0.0.0.0:5941 of the admin endpoint")


# --------------------------------------------------------------------------- files


def test_missing_cert_names_the_path_tried(refuse: Any, tmp_path: Path) -> None:
    doc = dmz_doc()
    doc["dmz"]["backplane"]["cert"] = "certs/none.pem"
    error = refuse(doc, "dmz.backplane.cert", f"file not found: {tmp_path / 'certs' / 'none.pem'}")
    assert f"relative paths start at the config file's folder, {tmp_path}" in error.problem
    doc["dmz"]["backplane"]["cert"] = "/nonexistent/dmz1.pem"
    error = refuse(doc, "dmz.backplane.cert", "file not found: /nonexistent/dmz1.pem")
    assert "relative" not in error.problem


def test_relative_paths_follow_the_file_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    write_placeholders(folder)
    (folder / "internal.toml").write_text(INTERNAL_EXAMPLE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_internal_config(Path("..") / "etc" / "internal.toml")
    assert config.backplane.cert == folder / "certs-dev" / "internal1.pem"
    assert config.backplane.cert.is_absolute() and config.source == folder / "internal.toml"


def test_absolute_and_dotted_paths_are_normalised(load: Load, tmp_path: Path) -> None:
    doc = internal_doc()
    doc["internal"]["backplane"]["cert"] = str(tmp_path / "certs-dev" / "internal1.pem")
    doc["internal"]["backplane"]["ca"] = "certs-dev/../ca.pem"
    backplane = load(doc).backplane
    assert backplane.cert == tmp_path / "certs-dev" / "internal1.pem"
    assert backplane.ca == tmp_path / "ca.pem"


def test_a_folder_is_not_a_cert(refuse: Any) -> None:
    doc = internal_doc()
    doc["internal"]["backplane"]["ca"] = "certs-dev"
    refuse(doc, "internal.backplane.ca", "is not a regular file")
    doc["internal"]["backplane"]["ca"] = ""
    refuse(doc, "internal.backplane.ca", "empty file path")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_cert(refuse: Any, tmp_path: Path) -> None:
    secret = tmp_path / "secret.pem"
    secret.write_bytes(b"")
    secret.chmod(0)
    doc = internal_doc()
    doc["internal"]["backplane"]["cert"] = "secret.pem"
    refuse(doc, "internal.backplane.cert", f"cannot read {secret}: Permission denied")


def test_unreadable_cert_simulated(refuse: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same as above for a root user, who can read anything: open() refuses as for others."""
    import shield.config.loader as loader

    def refusing_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(loader, "open", refusing_open, raising=False)
    doc = internal_doc()
    refuse(doc, "internal.backplane.cert", "internal1.pem: Permission denied")


def test_backend_ca_must_exist(refuse: Any) -> None:
    doc = internal_doc()
    doc["internal"]["service"][0].update({"connect": "tls://b:443", "ca": "missing-ca.pem"})
    refuse(doc, "internal.service[0].ca", "file not found")


# --------------------------------------------------------------------------- whole-file problems


def test_toml_syntax_error(load: Load, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load('[dmz]\nname = "dmz1"\nbroken =\n')
    error = info.value
    assert error.key_path == ""
    assert error.problem.startswith("TOML syntax error: ") and "line 3" in error.problem
    assert error.file == tmp_path / "gateway.toml"
    assert str(error) == error.problem


def test_duplicate_toml_key_is_a_syntax_error(load: Load) -> None:
    with pytest.raises(ConfigError, match="TOML syntax error"):
        load('[dmz]\nname = "a"\nname = "b"\n')


@pytest.mark.parametrize(
    ("text", "key_path"),
    [
        ("[internal]\ngrace-period = 1" + "0" * 30, "internal.grace-period"),
        ("[properties]\nport = -9223372036854775809", "properties.port"),
        ("x = [0x" + "f" * 4000 + "]", "x[0]"),
        ("x = " + "9" * 5000, ""),
    ],
)
def test_integers_beyond_64_bits(load: Load, text: str, key_path: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(text)
    assert info.value.key_path == key_path
    assert "does not fit in 64 bits" in info.value.problem


def test_deeply_dotted_keys(load: Load) -> None:
    """tomllib nests dotted keys without recursing; the loader must not recurse on them either."""
    with pytest.raises(ConfigError) as info:
        load("[properties]\n" + "a." * 2000 + "b = 1\n[internal]\n")
    assert info.value.key_path == "properties" + ".a" * 32
    assert info.value.problem == "properties nested more than 32 levels deep"
    with pytest.raises(ConfigError) as info:
        load("[internal]\n" + "a." * 2000 + "b = 1" + "0" * 30)
    assert info.value.key_path == "internal" + ".a" * 2000 + ".b"
    assert info.value.problem == "integer does not fit in 64 bits"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml")
    assert (info.value.key_path, info.value.file) == ("", tmp_path / "absent.toml")
    assert info.value.problem == f"no such file: {tmp_path / 'absent.toml'}"


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        load_dmz_config(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_bytes(b'[dmz]\nname = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "bad.toml")


def test_byte_order_mark_is_tolerated(tmp_path: Path) -> None:
    write_placeholders(tmp_path)
    (tmp_path / "dmz.toml").write_bytes(b"\xef\xbb\xbf" + DMZ_EXAMPLE.encode())
    assert load_dmz_config(tmp_path / "dmz.toml").name == "dmz1"


def test_gateway_kind(refuse: Any, tmp_path: Path) -> None:
    refuse({"properties": {}}, "", "expected a [dmz] or an [internal] table")
    refuse({**dmz_doc(), **internal_doc()}, "", "found both [dmz] and [internal]")
    refuse("", "", "expected a [dmz] or an [internal] table")
    write_placeholders(tmp_path)
    (tmp_path / "dmz.toml").write_text(DMZ_EXAMPLE)
    (tmp_path / "internal.toml").write_text(INTERNAL_EXAMPLE)
    with pytest.raises(ConfigError, match=r"this is a DMZ gateway's file \(\[dmz\]\); expected \[internal\]"):
        load_internal_config(tmp_path / "dmz.toml")
    with pytest.raises(ConfigError, match=r"this is an internal gateway's file"):
        load_dmz_config(tmp_path / "internal.toml")


# --------------------------------------------------------------------------- properties (hypothesis)

KEYS = [
    "properties", "dmz", "internal", "name", "admin", "grace-period", "open-timeout", "backplane",
    "service", "accept", "cert", "ca", "connectors", "keepalive-interval", "keepalive-misses",
    "stream-window", "allow-origin", "max-message-size", "ws-ping-interval", "connect",
    "server-name", "links", "priority", "connect-timeout", "internal1", "echo", "a.b",
]  # fmt: skip
STRINGS = [
    "dmz1", "echo", "internal1", "dmz1.pem", "ca.pem", "*", "", "$", "${", "${a.b}", "${x}",
    "tls://127.0.0.1:5941", "ws://127.0.0.1:8080/echo", "wss://[::1]:8443/", "tcp://h:9000",
    "tcp://h:0", "http://127.0.0.1:9100", "unix:/run/x.sock", "unix:rel", "htp://x:1", "certs-dev",
    "/nonexistent", "\x00", "tls://${a.b}:1",
]  # fmt: skip

scalars = st.one_of(
    st.sampled_from(STRINGS),
    st.text(max_size=12),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(),  # beyond 64 bits too, which tomllib lets through
    st.sampled_from([0, 1, 2, 64, 65, 262144, 2**31]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.datetimes(timezones=st.sampled_from([None, datetime.timezone.utc])),
    st.dates(),
    st.times(),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)
    ),
    max_leaves=25,
)
documents = st.dictionaries(keys, values, max_size=4)


@pytest.fixture(scope="module")
def fuzz_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    write_placeholders(folder)
    return folder


def load_or_refuse(folder: Path, text: str) -> None:
    """The property: a ``ConfigError`` or a configuration, never any other exception."""
    path = folder / "fuzz.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        config = load_config(path)
    except ConfigError as error:
        assert error.file == path
        assert str(error) == (f"{error.key_path}: {error.problem}" if error.key_path else error.problem)
        return
    assert isinstance(config, (DmzConfig, InternalConfig))


FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@FUZZ
@given(documents)
def test_random_documents_load_or_raise_config_error(fuzz_folder: Path, doc: dict[str, Any]) -> None:
    load_or_refuse(fuzz_folder, to_toml(doc))


def paths_in(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a document, as a tuple of keys and indexes."""
    found = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += paths_in(value, prefix + (key,))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            found += paths_in(value, prefix + (index,))
    return found


@st.composite
def mutated_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid document with a few values replaced, removed or added: errors deep inside."""
    doc = copy.deepcopy(draw(st.sampled_from([dmz_doc, internal_doc]))())
    doc["properties"] = {"a.b": "127.0.0.1"}
    for _ in range(draw(st.integers(1, 3))):
        places = paths_in(doc)
        if not places:
            break
        where = draw(st.sampled_from(places))
        parent = doc
        for step in where[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[where[-1]] = draw(values)
        elif action == "delete":
            del parent[where[-1]]
        elif isinstance(parent, dict):
            parent[draw(keys)] = draw(values)
        else:
            parent.append(draw(values))
    return doc


@FUZZ
@given(mutated_documents())
def test_mutated_documents_load_or_raise_config_error(
    fuzz_folder: Path, doc: dict[str, Any]
) -> None:
    load_or_refuse(fuzz_folder, to_toml(doc))


@FUZZ
@given(st.text(alphabet=st.sampled_from(list('[]{}="\'.,#\n abc-_01$\\')), max_size=60))
def test_random_text_loads_or_raises_config_error(fuzz_folder: Path, text: str) -> None:
    load_or_refuse(fuzz_folder, text)


property_names = st.from_regex(r"[A-Za-z0-9_-]{1,8}(\.[A-Za-z0-9_-]{1,8}){0,2}", fullmatch=True)
visible = st.characters(blacklist_categories=("Z", "C"))
property_values = st.text(visible, max_size=10).filter(lambda value: "${" not in value)
literals = st.text(visible.filter(lambda ch: ch != "{"), max_size=6)


@st.composite
def templates(draw: st.DrawFn) -> tuple[dict[str, str], str, str]:
    """Properties, a string using them between literal pieces, and what it must expand to."""
    names = draw(st.lists(property_names, min_size=1, max_size=5, unique=True))
    properties = {name: draw(property_values) for name in names}
    template = expected = draw(literals)
    for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=6)):
        literal = draw(literals)
        template += "${" + name + "}" + literal
        expected += properties[name] + literal
    return properties, template, expected


@settings(max_examples=300, deadline=None)
@given(templates())
def test_expansion_is_the_concatenation(case: tuple[dict[str, str], str, str]) -> None:
    properties, template, expected = case
    assert expand_properties(template, properties, "k") == expected


@FUZZ
@given(templates())
def test_expansion_round_trips_through_a_file(
    fuzz_folder: Path, case: tuple[dict[str, str], str, str]
) -> None:
    properties, template, expected = case
    doc = dmz_doc()
    doc["properties"] = properties
    doc["dmz"]["service"][0]["allow-origin"] = [template]
    path = fuzz_folder / "round-trip.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    if expected:
        assert load_config(path).services[0].allow_origin == (expected,)
    else:
        with pytest.raises(ConfigError, match="bad origin ''"):
            load_config(path)


def test_stream_window_max(load: Load, refuse: Any) -> None:
    dmz = load(dmz_doc())
    assert (dmz.backplane.stream_window, dmz.backplane.stream_window_max) == (262144, 4194304)
    doc = dmz_doc()
    doc["dmz"]["backplane"]["stream-window"] = 8388608
    assert load(doc).backplane.stream_window_max == 8388608  # never below the window
    doc = internal_doc()
    doc["internal"]["backplane"].update({"stream-window": 1048576, "stream-window-max": 1048576})
    assert load(doc).backplane.stream_window_max == 1048576  # growth disabled
    doc["internal"]["backplane"]["stream-window-max"] = 524288
    refuse(doc, "internal.backplane.stream-window-max", "must be between 1048576 and 16777216")
    doc = dmz_doc()
    doc["dmz"]["backplane"]["stream-window-max"] = 2**25
    refuse(doc, "dmz.backplane.stream-window-max", "must be between")
