"""The security keys of both files: client limits, public-client authentication, stream limits.

Every rule of docs/configuration.md for ``[dmz.limits]`` and the same five keys of a
``[[dmz.service]]``, for ``auth``, ``tokens`` and ``client-ca``, for ``max-streams`` of both
backplanes and for ``[internal] max-pending-opens``: what is accepted, the defaults and the
inheritance, and each refusal by the key path and problem a user sees. Also ``shield
hash-token``, which makes the ``tokens`` lines. Certificate files are empty placeholders, as in
test_loader.py: the loader checks that they exist, never what they contain.
"""

from __future__ import annotations

import copy
import hashlib
import io
import math
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shield import cli
from shield.config.errors import ConfigError
from shield.config.loader import load_config
from shield.config.model import ClientLimits, DmzConfig, DmzService, InternalConfig, Uri
from shield.config.mux import mux_config_for

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
SHIELD = Path(sys.executable).parent / "shield"
PLACEHOLDERS = ("dmz1.pem", "internal1.pem", "ca.pem", "public.pem", "other.pem", "clients-ca.pem",
                "other-ca.pem")  # fmt: skip

TOKEN = "s3cret-token"
HASH = "sha256:" + hashlib.sha256(TOKEN.encode()).hexdigest()
OTHER_HASH = "sha256:" + "ab" * 32
LIMIT_KEYS = ("max-connections", "max-connections-per-source", "handshake-timeout", "idle-timeout",
              "bytes-per-second")  # fmt: skip
GATEWAY_DEFAULTS = ClientLimits(50000, 256, 10.0, 0.0, 0)
SERVICE_DEFAULTS = ClientLimits(10000, 256, 10.0, 0.0, 0)

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
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def to_toml(doc: dict[str, Any]) -> str:
    """A document as top-level keys with inline values (tables inline, arrays of tables too)."""
    return "".join(f"{toml_string(key)} = {toml_value(value)}\n" for key, value in doc.items())


# --------------------------------------------------------------------------- fixtures


def dmz_doc(limits: dict[str, Any] | None = None, **service: Any) -> dict[str, Any]:
    """A minimal valid DMZ file with one ws:// service 'echo'. Keyword arguments set keys of
    'echo' (``client_ca`` stands for ``client-ca``; ``None`` removes a key); ``limits``, when
    given, is the ``[dmz.limits]`` table."""
    echo: dict[str, Any] = {"name": "echo", "accept": ["ws://127.0.0.1:8080/echo"]}
    for key, value in service.items():
        key = key.replace("_", "-")
        if value is None:
            echo.pop(key, None)
        else:
            echo[key] = value
    doc: dict[str, Any] = {
        "dmz": {
            "name": "dmz1",
            "backplane": {
                "accept": "tls://127.0.0.1:5941",
                "cert": "dmz1.pem",
                "ca": "ca.pem",
                "connectors": {"internal1": ["echo"]},
            },
            "service": [echo],
        }
    }
    if limits is not None:
        doc["dmz"]["limits"] = limits
    return doc


def wss(**service: Any) -> dict[str, Any]:
    """The minimal file whose 'echo' accepts on wss:// (with its cert) and sets these keys."""
    return dmz_doc(accept=["wss://127.0.0.1:8443/echo"], cert="public.pem", **service)


def internal_doc(**top: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
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
    doc["internal"].update({key.replace("_", "-"): value for key, value in top.items()})
    return doc


def with_cluster(doc: dict[str, Any], *services: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with a ``[dmz.cluster]`` and these services after 'echo'."""
    doc = copy.deepcopy(doc)
    doc["dmz"]["cluster"] = {"name": "east", "accept": "tls://10.0.0.5:5942", "members": ["tls://10.0.0.6:5942"]}
    doc["dmz"]["service"] += [copy.deepcopy(service) for service in services]
    return doc


def write_placeholders(folder: Path) -> None:
    for name in PLACEHOLDERS:
        (folder / name).write_bytes(b"")


Load = Callable[[dict[str, Any] | str], Any]
Refuse = Callable[[dict[str, Any] | str, str, str], ConfigError]


@pytest.fixture
def load(tmp_path: Path) -> Load:
    """Write a document (dict or TOML text) next to placeholder certs, and load it."""
    write_placeholders(tmp_path)

    def load_(doc: dict[str, Any] | str) -> Any:
        path = tmp_path / "gateway.toml"
        path.write_text(doc if isinstance(doc, str) else to_toml(doc), encoding="utf-8")
        return load_config(path)

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


# --------------------------------------------------------------------------- [dmz.limits]: accepted


def test_limit_defaults(load: Load) -> None:
    config = load(dmz_doc())
    assert config.limits == GATEWAY_DEFAULTS == DmzConfig.__dataclass_fields__["limits"].default
    assert config.services[0].limits == SERVICE_DEFAULTS == ClientLimits()
    assert load(dmz_doc(limits={})).limits == GATEWAY_DEFAULTS  # an empty table changes nothing
    assert load(dmz_doc(limits={})).services[0].limits == SERVICE_DEFAULTS


def test_every_gateway_limit_is_read(load: Load) -> None:
    limits = {"max-connections": 20000, "max-connections-per-source": 64, "handshake-timeout": 2.5,
              "idle-timeout": 600, "bytes-per-second": 1048576}  # fmt: skip
    config = load(dmz_doc(limits=limits))
    assert config.limits == ClientLimits(20000, 64, 2.5, 600.0, 1048576)
    assert isinstance(config.limits.idle_timeout, float) and isinstance(config.limits.handshake_timeout, float)


def test_a_service_inherits_every_gateway_limit_but_max_connections(load: Load) -> None:
    limits = {"max-connections": 20000, "max-connections-per-source": 64, "handshake-timeout": 5,
              "idle-timeout": 600, "bytes-per-second": 4096}  # fmt: skip
    assert load(dmz_doc(limits=limits)).services[0].limits == ClientLimits(10000, 64, 5.0, 600.0, 4096)
    # a gateway without a limit (0) still leaves each service its own default of 10000
    for gateway in (0, 5, 10000, 10**9):
        config = load(dmz_doc(limits={"max-connections": gateway}))
        assert (config.limits.max_connections, config.services[0].limits.max_connections) == (gateway, 10000)


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("max-connections", 0, "max_connections"),
        ("max-connections", 123456, "max_connections"),
        ("max-connections-per-source", 0, "max_connections_per_source"),
        ("max-connections-per-source", 1, "max_connections_per_source"),
        ("handshake-timeout", 0.001, "handshake_timeout"),
        ("handshake-timeout", 30, "handshake_timeout"),
        ("idle-timeout", 0, "idle_timeout"),
        ("idle-timeout", 3600, "idle_timeout"),
        ("bytes-per-second", 0, "bytes_per_second"),
        ("bytes-per-second", 1, "bytes_per_second"),
    ],
)
def test_service_overrides_each_limit(load: Load, key: str, value: Any, field: str) -> None:
    """A service's own value wins over [dmz.limits]; the others still come from there."""
    gateway = {"max-connections": 7, "max-connections-per-source": 3, "handshake-timeout": 4,
               "idle-timeout": 9, "bytes-per-second": 8}  # fmt: skip
    config = load(dmz_doc(limits=gateway, **{key: value}))
    inherited = ClientLimits(10000, 3, 4.0, 9.0, 8)
    assert config.services[0].limits == ClientLimits(**{**_fields(inherited), field: value})
    assert config.limits == ClientLimits(7, 3, 4.0, 9.0, 8)  # the gateway's own values do not change


def _fields(limits: ClientLimits) -> dict[str, Any]:
    return {name: getattr(limits, name) for name in ClientLimits.__dataclass_fields__}


def test_each_service_has_its_own_limits(load: Load) -> None:
    doc = dmz_doc(limits={"idle-timeout": 60}, max_connections=5, idle_timeout=0)
    doc["dmz"]["service"].append({"name": "chat", "accept": "tcp://127.0.0.1:9000", "bytes-per-second": 100})
    echo, chat = load(doc).services
    assert echo.limits == ClientLimits(5, 256, 10.0, 0.0, 0)
    assert chat.limits == ClientLimits(10000, 256, 10.0, 60.0, 100)


def test_every_kind_of_service_takes_limits(load: Load) -> None:
    """tcp, tls, wss and balancers: the limits are about clients, whatever they speak."""
    keys = {"max-connections": 1, "max-connections-per-source": 2, "handshake-timeout": 3,
            "idle-timeout": 4, "bytes-per-second": 5}  # fmt: skip
    expected = ClientLimits(1, 2, 3.0, 4.0, 5)
    assert load(dmz_doc(accept="tcp://127.0.0.1:9000", **keys)).services[0].limits == expected
    assert load(dmz_doc(accept="tls://127.0.0.1:9443", cert="public.pem", **keys)).services[0].limits == expected
    assert load(wss(**keys)).services[0].limits == expected
    lb = {"name": "lb", "type": "balancer", "accept": "ws://0.0.0.0:80/echo", **keys}
    assert load(with_cluster(dmz_doc(), lb)).services[1].limits == expected


# --------------------------------------------------------------------------- [dmz.limits]: refused


def test_limits_is_a_table_of_known_keys(refuse: Refuse) -> None:
    doc = dmz_doc()
    doc["dmz"]["limits"] = 50000
    refuse(doc, "dmz.limits", "expected a table, got an integer")
    refuse(dmz_doc(limits={"max_connections": 1}), "dmz.limits.max_connections",
           "unknown key (did you mean 'max-connections'?)")  # fmt: skip
    refuse(dmz_doc(limits={"handshake-timout": 1}), "dmz.limits.handshake-timout",
           "did you mean 'handshake-timeout'?")  # fmt: skip
    # the keys of a service and of a backplane are not limits of the gateway
    refuse(dmz_doc(limits={"auth": "token"}), "dmz.limits.auth", "unknown key")
    refuse(dmz_doc(limits={"max-message-size": 1}), "dmz.limits.max-message-size", "unknown key")
    refuse(dmz_doc(limits={"max-streams": 1}), "dmz.limits.max-streams", "unknown key")
    doc = dmz_doc()
    doc["dmz"]["limit"] = {}
    refuse(doc, "dmz.limit", "unknown key (did you mean 'limits'?)")


def test_limits_belong_to_the_dmz_only(refuse: Refuse) -> None:
    doc = internal_doc()
    doc["internal"]["limits"] = {"max-connections": 1}
    refuse(doc, "internal.limits", "unknown key")
    doc = internal_doc()
    doc["internal"]["service"][0]["max-connections"] = 1
    refuse(doc, "internal.service[0].max-connections", "unknown key")


def test_service_limit_keys_are_spelled_like_the_gateways(refuse: Refuse) -> None:
    refuse(dmz_doc(max_connection=1), "dmz.service[0].max-connection",
           "unknown key (did you mean 'max-connections'?)")  # fmt: skip
    doc = dmz_doc()
    doc["dmz"]["service"][0]["bytes_per_second"] = 1
    refuse(doc, "dmz.service[0].bytes_per_second", "did you mean 'bytes-per-second'?")
    doc = dmz_doc()
    doc["dmz"]["service"][0]["limits"] = {"max-connections": 1}  # no table: the keys sit in the service
    refuse(doc, "dmz.service[0].limits", "unknown key")


INTEGER_LIMITS = ("max-connections", "max-connections-per-source", "bytes-per-second")
BAD_LIMITS = [
    *[(key, -1, "must be at least 0 (got -1)") for key in INTEGER_LIMITS],
    *[(key, 1.5, "expected an integer, got a float (1.5)") for key in INTEGER_LIMITS],
    *[(key, 100.0, "expected an integer, got a float") for key in INTEGER_LIMITS],
    *[(key, "100", "expected an integer, got a string ('100')") for key in INTEGER_LIMITS],
    *[(key, True, "expected an integer, got a boolean") for key in INTEGER_LIMITS],
    *[(key, "${n}", "expected an integer, got a string") for key in INTEGER_LIMITS],  # numbers are never expanded
    ("handshake-timeout", 0, "must be more than 0 seconds (got 0)"),
    ("handshake-timeout", 0.0, "must be more than 0 seconds"),
    ("handshake-timeout", -1, "must be more than 0 seconds (got -1)"),
    ("handshake-timeout", math.inf, "must be a finite number of seconds"),
    ("handshake-timeout", math.nan, "must be a finite number of seconds"),
    ("handshake-timeout", "10", "expected a number of seconds, got a string ('10')"),
    ("handshake-timeout", False, "expected a number of seconds, got a boolean"),
    ("idle-timeout", -1, "must be at least 0 (0 disables) seconds (got -1)"),
    ("idle-timeout", -0.5, "must be at least 0 (0 disables) seconds"),
    ("idle-timeout", math.inf, "must be a finite number of seconds"),
    ("idle-timeout", [60], "expected a number of seconds, got an array"),
]  # fmt: skip


@pytest.mark.parametrize(("key", "value", "problem"), BAD_LIMITS)
def test_bad_gateway_limit(refuse: Refuse, key: str, value: Any, problem: str) -> None:
    refuse(dmz_doc(limits={key: value}), f"dmz.limits.{key}", problem)


@pytest.mark.parametrize(("key", "value", "problem"), BAD_LIMITS)
def test_bad_service_limit(refuse: Refuse, key: str, value: Any, problem: str) -> None:
    refuse(dmz_doc(**{key: value}), f"dmz.service[0].{key}", problem)


def test_a_bad_limit_in_a_later_service(refuse: Refuse) -> None:
    doc = dmz_doc()
    doc["dmz"]["service"].append({"name": "chat", "accept": "tcp://127.0.0.1:9000", "handshake-timeout": 0})
    refuse(doc, "dmz.service[1].handshake-timeout", "must be more than 0 seconds")


# --------------------------------------------------------------------------- auth: accepted


def test_auth_defaults_to_none(load: Load) -> None:
    echo = load(dmz_doc()).services[0]
    assert (echo.auth, echo.token_hashes, echo.client_ca) == ("none", (), None)
    assert load(dmz_doc(auth="none")).services[0] == echo
    tls = load(dmz_doc(accept="tls://127.0.0.1:9443", cert="public.pem", auth="none")).services[0]
    assert (tls.auth, tls.token_hashes, tls.client_ca) == ("none", (), None)


def test_token_auth(load: Load) -> None:
    echo = load(dmz_doc(auth="token", tokens=[HASH, OTHER_HASH])).services[0]
    assert echo.auth == "token" and echo.client_ca is None
    assert echo.token_hashes == (hashlib.sha256(TOKEN.encode()).digest(), bytes([0xAB]) * 32)
    assert all(len(digest) == 32 for digest in echo.token_hashes)


def test_tokens_forms(load: Load) -> None:
    digest = hashlib.sha256(TOKEN.encode()).digest()
    assert load(dmz_doc(auth="token", tokens=HASH)).services[0].token_hashes == (digest,)  # one string
    upper = "sha256:" + digest.hex().upper()
    assert load(dmz_doc(auth="token", tokens=[upper])).services[0].token_hashes == (digest,)
    doc = dmz_doc(auth="token", tokens=["${chat.token}"])
    doc["properties"] = {"chat.token": HASH}
    assert load(doc).services[0].token_hashes == (digest,)


@pytest.mark.parametrize(
    "accept",
    [["ws://127.0.0.1:8080/echo"], ["wss://127.0.0.1:8443/echo"],
     ["ws://127.0.0.1:8080/echo", "wss://127.0.0.1:8443/echo"]],
)  # fmt: skip
def test_tokens_on_websocket_accepts(load: Load, accept: list[str]) -> None:
    doc = dmz_doc(accept=accept, auth="token", tokens=[HASH])
    if any(uri.startswith("wss") for uri in accept):
        doc["dmz"]["service"][0]["cert"] = "public.pem"
    assert load(doc).services[0].auth == "token"


def test_a_balanced_tunnel_checks_tokens(load: Load) -> None:
    """The balancer passes the token on; the member's service behind it checks it."""
    doc = with_cluster(
        dmz_doc(auth="token", tokens=HASH, balance="ws://lb.example:80/echo"),
        {"name": "lb", "type": "balancer", "accept": "ws://0.0.0.0:80/echo"},
    )
    echo, lb = load(doc).services
    assert (echo.auth, lb.auth) == ("token", "none")


@pytest.mark.parametrize(
    "accept",
    [["wss://127.0.0.1:8443/echo"], ["tls://127.0.0.1:9443"],
     ["wss://127.0.0.1:8443/echo", "tls://127.0.0.1:9443"]],
)  # fmt: skip
def test_mtls_auth(load: Load, tmp_path: Path, accept: list[str]) -> None:
    echo = load(dmz_doc(accept=accept, cert="public.pem", auth="mtls", client_ca="clients-ca.pem")).services[0]
    assert (echo.auth, echo.client_ca, echo.token_hashes) == ("mtls", tmp_path / "clients-ca.pem", ())


def test_client_ca_paths(load: Load, tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "clients.pem").write_bytes(b"")
    relative = load(wss(auth="mtls", client_ca="pki/../pki/clients.pem")).services[0]
    assert relative.client_ca == tmp_path / "pki" / "clients.pem"  # from the file's folder, normalised
    absolute = load(wss(auth="mtls", client_ca=str(tmp_path / "clients-ca.pem"))).services[0]
    assert absolute.client_ca == tmp_path / "clients-ca.pem"
    doc = wss(auth="mtls", client_ca="${pki}/clients.pem")
    doc["properties"] = {"pki": str(tmp_path / "pki")}
    assert load(doc).services[0].client_ca == tmp_path / "pki" / "clients.pem"


def test_a_balancer_may_require_client_certificates(load: Load, tmp_path: Path) -> None:
    """Unlike tokens: a balancer that ends TLS is the only one that sees the certificate."""
    lb = {"name": "lb", "type": "balancer", "accept": "tls://0.0.0.0:5432", "cert": "public.pem",
          "auth": "mtls", "client-ca": "clients-ca.pem"}  # fmt: skip
    config = load(with_cluster(dmz_doc(), lb))
    assert (config.services[1].auth, config.services[1].client_ca) == ("mtls", tmp_path / "clients-ca.pem")


def test_services_choose_their_auth_independently(load: Load, tmp_path: Path) -> None:
    doc = dmz_doc(auth="token", tokens=HASH)
    doc["dmz"]["service"] += [
        {"name": "db", "accept": "tls://127.0.0.1:5432", "cert": "public.pem", "auth": "mtls",
         "client-ca": "clients-ca.pem"},
        {"name": "status", "accept": "tcp://127.0.0.1:9000"},
    ]  # fmt: skip
    echo, db, status = load(doc).services
    assert [s.auth for s in (echo, db, status)] == ["token", "mtls", "none"]
    assert (db.client_ca, status.client_ca, db.token_hashes) == (tmp_path / "clients-ca.pem", None, ())


# --------------------------------------------------------------------------- auth: refused


@pytest.mark.parametrize(
    ("auth", "problem"),
    [
        ("basic", "must be one of 'none', 'token', 'mtls' (got 'basic')"),
        ("Token", "(got 'Token')"),
        ("tls", "(got 'tls')"),
        ("", "(got '')"),
        (1, "expected a string, got an integer (1)"),
        (["token"], "expected a string, got an array"),
        (True, "expected a string, got a boolean"),
    ],
)
def test_auth_values(refuse: Refuse, auth: Any, problem: str) -> None:
    refuse(dmz_doc(auth=auth), "dmz.service[0].auth", problem)


def test_token_auth_needs_tokens(refuse: Refuse) -> None:
    refuse(dmz_doc(auth="token"), "dmz.service[0].tokens", "missing required key")
    refuse(dmz_doc(auth="token", tokens=[]), "dmz.service[0].tokens", "empty array")
    refuse(dmz_doc(auth="token", tokens=5), "dmz.service[0].tokens", "expected an array of strings")
    refuse(dmz_doc(auth="token", tokens=[HASH, 5]), "dmz.service[0].tokens[1]", "expected a string, got an integer")
    refuse(dmz_doc(auth="token", tokens=["${nope}"]), "dmz.service[0].tokens[0]", "undefined property 'nope'")


@pytest.mark.parametrize(
    "text",
    [
        TOKEN,  # the token itself
        HASH[len("sha256:"):],  # no prefix
        "SHA256:" + HASH[len("sha256:"):],
        "sha-256:" + HASH[len("sha256:"):],
        "sha512:" + HASH[len("sha256:"):],
        HASH[:-1],  # 63 hex digits
        HASH + "0",  # 65
        HASH[:-1] + "g",
        " " + HASH,
        HASH + "\n",
        "sha256:" + hashlib.sha512(b"x").hexdigest(),
        "sha256:",
        "",
    ],
)
def test_a_token_hash_is_sha256_and_64_hex_digits(refuse: Refuse, text: str) -> None:
    error = refuse(dmz_doc(auth="token", tokens=[HASH, text]), "dmz.service[0].tokens[1]",
                   "expected 'sha256:' and 64 hex digits, the SHA-256 of a token (shield hash-token "
                   "prints it); tokens themselves never go in the file")  # fmt: skip
    if len(text.strip()) > len("sha256:"):
        assert text.strip() not in error.problem  # a token put in the file by mistake is not echoed


@pytest.mark.parametrize(
    ("accept", "cert"),
    [("tcp://127.0.0.1:9000", None), ("tls://127.0.0.1:9443", "public.pem"),
     (["ws://127.0.0.1:8080/echo", "tcp://127.0.0.1:9000"], None),
     (["wss://127.0.0.1:8443/echo", "tls://127.0.0.1:9443"], "public.pem")],
)  # fmt: skip
def test_tokens_need_websocket_accepts_only(refuse: Refuse, accept: Any, cert: str | None) -> None:
    refuse(dmz_doc(accept=accept, cert=cert, auth="token", tokens=[HASH]), "dmz.service[0].auth",
           "tokens arrive in an HTTP header or query: only ws:// and wss:// accepts can carry them "
           '(use auth = "mtls" with tls://)')  # fmt: skip


def test_a_balancer_does_not_check_tokens(refuse: Refuse) -> None:
    lb = {"name": "lb", "type": "balancer", "accept": "ws://0.0.0.0:80/echo", "auth": "token", "tokens": [HASH]}
    refuse(with_cluster(dmz_doc(), lb), "dmz.service[1].auth",
           "a balancer passes tokens on: the member's service checks them")  # fmt: skip
    del lb["tokens"]
    refuse(with_cluster(dmz_doc(), lb), "dmz.service[1].auth", "a balancer passes tokens on")


@pytest.mark.parametrize("auth", [None, "none", "mtls"])
def test_tokens_only_with_token_auth(refuse: Refuse, auth: str | None) -> None:
    extra = {"client_ca": "clients-ca.pem"} if auth == "mtls" else {}
    refuse(wss(auth=auth, tokens=[HASH], **extra), "dmz.service[0].tokens", 'only used with auth = "token"')


@pytest.mark.parametrize("auth", [None, "none", "token"])
def test_client_ca_only_with_mtls(refuse: Refuse, auth: str | None) -> None:
    extra = {"tokens": [HASH]} if auth == "token" else {}
    refuse(wss(auth=auth, client_ca="clients-ca.pem", **extra), "dmz.service[0].client-ca",
           'only used with auth = "mtls"')  # fmt: skip


def test_mtls_needs_a_client_ca(refuse: Refuse, tmp_path: Path) -> None:
    refuse(wss(auth="mtls"), "dmz.service[0].client-ca",
           'missing required key (auth = "mtls": the CA that signs client certificates)')  # fmt: skip
    refuse(wss(auth="mtls", client_ca="missing.pem"), "dmz.service[0].client-ca",
           f"file not found: {tmp_path / 'missing.pem'} (relative paths start at the config file's folder")  # fmt: skip
    refuse(wss(auth="mtls", client_ca=""), "dmz.service[0].client-ca", "empty file path")
    refuse(wss(auth="mtls", client_ca=str(tmp_path)), "dmz.service[0].client-ca", "is not a regular file")
    refuse(wss(auth="mtls", client_ca=["clients-ca.pem"]), "dmz.service[0].client-ca", "expected a string, got an array")


@pytest.mark.parametrize(
    ("accept", "cert"),
    [("ws://127.0.0.1:8080/echo", None), ("tcp://127.0.0.1:9000", None),
     (["wss://127.0.0.1:8443/echo", "ws://127.0.0.1:8080/echo"], "public.pem"),
     (["tls://127.0.0.1:9443", "tcp://127.0.0.1:9000"], "public.pem")],
)  # fmt: skip
def test_mtls_needs_tls_accepts_only(refuse: Refuse, accept: Any, cert: str | None) -> None:
    refuse(dmz_doc(accept=accept, cert=cert, auth="mtls", client_ca="clients-ca.pem"), "dmz.service[0].auth",
           "client certificates need TLS: only wss:// and tls:// accepts can require them")  # fmt: skip


def test_mtls_still_needs_the_services_own_cert(refuse: Refuse) -> None:
    refuse(dmz_doc(accept="tls://127.0.0.1:9443", auth="mtls", client_ca="clients-ca.pem"),
           "dmz.service[0].cert", "missing required key")  # fmt: skip


# --------------------------------------------------------------------------- a shared wss:// listener


def two_wss_services(first: dict[str, Any], second: dict[str, Any], host: str = "0.0.0.0") -> dict[str, Any]:
    """'echo' and 'chat' on one wss:// host and port (other paths), with these extra keys."""
    doc = dmz_doc(accept=f"wss://{host}:8443/echo", cert="public.pem", **first)
    chat = {"name": "chat", "accept": f"wss://{host}:8443/chat", "cert": "public.pem"}
    chat.update({key.replace("_", "-"): value for key, value in second.items()})
    doc["dmz"]["service"].append(chat)
    return doc


MTLS = {"auth": "mtls", "client_ca": "clients-ca.pem"}


def test_a_shared_listener_with_one_client_check(load: Load, tmp_path: Path) -> None:
    echo, chat = load(two_wss_services(MTLS, MTLS)).services
    assert echo.client_ca == chat.client_ca == tmp_path / "clients-ca.pem"
    # tokens are checked after the handshake, per path: they may differ on one listener
    echo, chat = load(two_wss_services({"auth": "token", "tokens": HASH}, {})).services
    assert (echo.auth, chat.auth) == ("token", "none")
    echo, chat = load(two_wss_services({"auth": "token", "tokens": HASH}, {"auth": "token", "tokens": OTHER_HASH})).services
    assert echo.token_hashes != chat.token_hashes


@pytest.mark.parametrize(
    ("first", "second"),
    [(MTLS, {}), ({}, MTLS), (MTLS, {"auth": "token", "tokens": HASH}),
     (MTLS, {"auth": "mtls", "client_ca": "other-ca.pem"})],
)  # fmt: skip
def test_a_shared_listener_has_one_client_check(refuse: Refuse, first: dict[str, Any], second: dict[str, Any]) -> None:
    """One listener, one TLS handshake, and it asks for a client certificate before any path is known."""
    refuse(two_wss_services(first, second), "dmz.service[1].accept",
           "wss://0.0.0.0:8443/chat shares its listener with wss://0.0.0.0:8443/echo of service 'echo' "
           "(dmz.service[0].accept) but not its client certificate check (auth = \"mtls\" and client-ca "
           "must be the same")  # fmt: skip


def test_separate_listeners_may_check_clients_differently(load: Load) -> None:
    doc = dmz_doc(accept="wss://127.0.0.1:8443/echo", cert="public.pem", **MTLS)
    doc["dmz"]["service"] += [
        {"name": "chat", "accept": "wss://127.0.0.1:8444/chat", "cert": "public.pem"},  # another port
        {"name": "web", "accept": "wss://127.0.0.2:8443/web", "cert": "public.pem"},  # another address
    ]
    assert [s.auth for s in load(doc).services] == ["mtls", "none", "none"]


def test_a_balancer_on_a_shared_listener_has_the_same_client_check(load: Load, refuse: Refuse) -> None:
    lb = {"name": "lb", "type": "balancer", "accept": "wss://0.0.0.0:8443/lb", "cert": "public.pem"}
    tunnel = dmz_doc(accept="wss://0.0.0.0:8443/echo", cert="public.pem", **MTLS)
    refuse(with_cluster(tunnel, lb), "dmz.service[1].accept", "but not its client certificate check")
    lb.update({"auth": "mtls", "client-ca": "clients-ca.pem"})
    assert [s.auth for s in load(with_cluster(tunnel, lb)).services] == ["mtls", "mtls"]


# --------------------------------------------------------------------------- max-streams, max-pending-opens


def test_stream_limit_defaults(load: Load) -> None:
    dmz = load(dmz_doc())
    internal = load(internal_doc())
    assert dmz.backplane.max_streams == internal.backplane.max_streams == 16384
    assert internal.max_pending_opens == 256
    assert mux_config_for(dmz.backplane).max_streams == mux_config_for(internal.backplane).max_streams == 16384


@pytest.mark.parametrize("value", [1, 2, 1000, 16384, 1048576])
def test_max_streams_range(load: Load, value: int) -> None:
    doc = dmz_doc()
    doc["dmz"]["backplane"]["max-streams"] = value
    dmz = load(doc)
    assert dmz.backplane.max_streams == mux_config_for(dmz.backplane).max_streams == value
    doc = internal_doc()
    doc["internal"]["backplane"]["max-streams"] = value
    internal = load(doc)
    assert internal.backplane.max_streams == mux_config_for(internal.backplane).max_streams == value


@pytest.mark.parametrize("value", [1, 2, 256, 100000, 1048576])
def test_max_pending_opens_range(load: Load, value: int) -> None:
    config = load(internal_doc(max_pending_opens=value))
    assert isinstance(config, InternalConfig) and config.max_pending_opens == value


BAD_STREAM_COUNTS = [
    (0, "must be between 1 and 1048576 (got 0)"),
    (-1, "must be between 1 and 1048576 (got -1)"),
    (1048577, "must be between 1 and 1048576 (got 1048577)"),
    (2**63 - 1, "must be between 1 and 1048576"),
    (16384.0, "expected an integer, got a float (16384.0)"),
    ("16384", "expected an integer, got a string ('16384')"),
    (True, "expected an integer, got a boolean"),
]


@pytest.mark.parametrize(("value", "problem"), BAD_STREAM_COUNTS)
def test_bad_max_streams(refuse: Refuse, value: Any, problem: str) -> None:
    doc = dmz_doc()
    doc["dmz"]["backplane"]["max-streams"] = value
    refuse(doc, "dmz.backplane.max-streams", problem)
    doc = internal_doc()
    doc["internal"]["backplane"]["max-streams"] = value
    refuse(doc, "internal.backplane.max-streams", problem)


@pytest.mark.parametrize(("value", "problem"), BAD_STREAM_COUNTS)
def test_bad_max_pending_opens(refuse: Refuse, value: Any, problem: str) -> None:
    refuse(internal_doc(max_pending_opens=value), "internal.max-pending-opens", problem)


def test_stream_keys_in_the_right_tables_only(refuse: Refuse) -> None:
    doc = dmz_doc()
    doc["dmz"]["max-pending-opens"] = 256  # the connector holds pending opens, not the DMZ
    refuse(doc, "dmz.max-pending-opens", "unknown key")
    doc = dmz_doc()
    doc["dmz"]["max-streams"] = 1
    refuse(doc, "dmz.max-streams", "unknown key")
    refuse(internal_doc(max_streams=1), "internal.max-streams", "unknown key")
    doc = internal_doc()
    doc["internal"]["backplane"]["max-pending-opens"] = 1
    refuse(doc, "internal.backplane.max-pending-opens", "unknown key")
    doc = internal_doc()
    doc["internal"]["backplane"]["max_streams"] = 1
    refuse(doc, "internal.backplane.max_streams", "did you mean 'max-streams'?")
    refuse(internal_doc(max_pending_open=1), "internal.max-pending-open", "did you mean 'max-pending-opens'?")
    refuse(dmz_doc(max_streams=1), "dmz.service[0].max-streams", "unknown key")


# --------------------------------------------------------------------------- shield hash-token


def test_hash_token_command() -> None:
    result = subprocess.run([str(SHIELD), "hash-token"], input=TOKEN + "\n", capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, HASH + "\n", "")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", result.stdout)


@pytest.mark.parametrize("stdin", ["", "\n", "\r\n", "\n" + TOKEN + "\n"])
def test_hash_token_without_a_token(stdin: str) -> None:
    result = subprocess.run([str(SHIELD), "hash-token"], input=stdin, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "shield hash-token: no token on standard input\n"


def hash_token(stdin: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    status = cli.main(["hash-token"])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("stdin", [TOKEN, TOKEN + "\n", TOKEN + "\r\n", TOKEN + "\nsecond line\n"])
def test_hash_token_reads_the_first_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                         stdin: str) -> None:  # fmt: skip
    assert hash_token(stdin, monkeypatch, capsys) == (0, HASH + "\n", "")


def test_hash_token_hashes_the_line_as_it_is(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Spaces are part of the token, and the token is hashed as UTF-8."""
    for token in (" padded ", "tøken-€", "a" * 10000):
        status, out, _ = hash_token(token + "\n", monkeypatch, capsys)
        assert (status, out) == (0, "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest() + "\n")


def test_hash_token_never_prints_the_token(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = hash_token(TOKEN + "\n", monkeypatch, capsys)
    assert status == 0 and TOKEN not in out + err


def test_hash_token_takes_no_argument(capsys: pytest.CaptureFixture[str]) -> None:
    """The token never goes on the command line, where the shell history and ps keep it."""
    with pytest.raises(SystemExit) as info:
        cli.main(["hash-token", TOKEN])
    assert info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_hash_token_output_is_what_tokens_takes(
    load: Load, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = hash_token("correct horse battery staple\n", monkeypatch, capsys)
    echo = load(dmz_doc(auth="token", tokens=[out.strip()])).services[0]
    assert echo.token_hashes == (hashlib.sha256(b"correct horse battery staple").digest(),)


# --------------------------------------------------------------------------- docs/configuration.md


def documented_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.DOTALL)


def test_documented_security_example(tmp_path: Path) -> None:
    (block,) = [block for block in documented_blocks() if "\n[dmz.limits]" in block]
    write_placeholders(tmp_path)
    (tmp_path / "dmz.toml").write_text(block)
    config = load_config(tmp_path / "dmz.toml")
    assert isinstance(config, DmzConfig)
    assert config.limits == ClientLimits(20000, 64, 5.0, 600.0, 0)
    services = {service.name: service for service in config.services}
    chat, db, status = services["chat"], services["db"], services["status"]
    assert (chat.auth, len(chat.token_hashes)) == ("token", 2)
    assert chat.limits == ClientLimits(15000, 64, 5.0, 600.0, 0)
    assert (db.auth, db.client_ca) == ("mtls", tmp_path / "clients-ca.pem")
    assert db.client_ca != config.backplane.ca  # the example does not reuse the connectors' CA
    assert db.limits == ClientLimits(10000, 64, 5.0, 0.0, 1048576)
    assert status.auth == "none" and status.limits == ClientLimits(10000, 4, 5.0, 600.0, 0)
    assert status.accept == (Uri("ws", "0.0.0.0", 8080, "/status"),)
    assert config.backplane.max_streams == 16384


def test_documented_hash_token_output_is_a_valid_tokens_line() -> None:
    text = DOC.read_text()
    (line,) = re.findall(r"^\$ shield hash-token.*\n(sha256:.*)$", text, re.MULTILINE)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", line)
    assert f'"{line}"' in text  # and the example file lists it


@pytest.mark.parametrize(
    "key",
    [*LIMIT_KEYS, "auth", "tokens", "client-ca", "max-streams", "max-pending-opens", "[dmz.limits]"],
)
def test_every_security_key_is_documented(key: str) -> None:
    assert f"`{key}`" in DOC.read_text()


def test_documented_defaults_match_the_model() -> None:
    text = DOC.read_text()
    rows: dict[str, list[str]] = {}
    for key, default in re.findall(r"^\| `([a-z-]+)` \| [^|]+ \| ([^|]+) \|", text, re.MULTILINE):
        rows.setdefault(key, []).append(default.strip())
    assert rows["max-connections-per-source"] == ["`256`"]
    assert rows["handshake-timeout"] == ["`10`"]
    assert rows["idle-timeout"] == ["`0`"]
    assert rows["bytes-per-second"] == ["`0`"]
    assert rows["max-pending-opens"] == ["`256`"]
    assert rows["max-streams"] == ["`16384`", "`16384`"]  # both backplanes
    assert rows["max-connections"] == ["`50000` (a service: `10000`)", "`10000`"]  # [dmz.limits], a service
    assert rows["auth"] == ['`"none"`']


# --------------------------------------------------------------------------- no other exception

SECURITY_KEYS = [*LIMIT_KEYS, "auth", "tokens", "client-ca", "accept", "cert", "type"]
SECURITY_STRINGS = [
    "none", "token", "mtls", "balancer", HASH, OTHER_HASH, HASH.upper(), TOKEN, "", "${x}",
    "clients-ca.pem", "other-ca.pem", "missing.pem", "public.pem",
    "ws://127.0.0.1:8080/echo", "wss://127.0.0.1:8443/echo", "tcp://127.0.0.1:9000", "tls://127.0.0.1:9443",
]  # fmt: skip
security_scalars = st.one_of(
    st.sampled_from(SECURITY_STRINGS),
    st.sampled_from([0, 1, -1, 0.5, 10, 2**20, True, math.nan, math.inf]),
    st.floats(),
    st.integers(-(2**63), 2**63 - 1),
)
security_values = st.one_of(security_scalars, st.lists(security_scalars, max_size=3))


@st.composite
def mutated_security_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A file with a token service, an mtls service and limits, with a few keys changed."""
    doc = dmz_doc(limits={"max-connections": 100}, auth="token", tokens=[HASH])
    doc["dmz"]["service"].append(
        {"name": "db", "accept": "wss://0.0.0.0:8443/db", "cert": "public.pem", "auth": "mtls",
         "client-ca": "clients-ca.pem"}
    )  # fmt: skip
    doc["dmz"]["backplane"]["max-streams"] = 100
    tables = [doc["dmz"]["service"][0], doc["dmz"]["service"][1], doc["dmz"]["limits"], doc["dmz"]["backplane"]]
    for _ in range(draw(st.integers(1, 4))):
        table = draw(st.sampled_from(tables))
        key = draw(st.sampled_from([*SECURITY_KEYS, "max-streams"]))
        if draw(st.booleans()) and key in table:
            del table[key]
        else:
            table[key] = draw(security_values)
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_security_documents())
def test_mutated_security_documents_load_or_raise_config_error(
    tmp_path_factory: pytest.TempPathFactory, doc: dict[str, Any]
) -> None:
    folder = tmp_path_factory.getbasetemp() / "security-fuzz"
    folder.mkdir(exist_ok=True)
    write_placeholders(folder)
    path = folder / "dmz.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    try:
        config = load_config(path)
    except ConfigError as error:
        assert error.file == path and error.problem
        if ".tokens" in error.key_path:
            assert TOKEN not in error.problem  # a token put in tokens is never echoed back
        return
    assert isinstance(config, DmzConfig)
    for service in config.services:
        schemes = {uri.scheme for uri in service.accept}
        assert (service.auth == "token") == bool(service.token_hashes)
        assert (service.auth == "mtls") == (service.client_ca is not None)
        if service.auth == "token":
            assert schemes <= {"ws", "wss"} and not service.is_balancer
            assert all(len(digest) == 32 for digest in service.token_hashes)
        if service.auth == "mtls":
            assert schemes <= {"wss", "tls"}
        limits = service.limits
        assert min(limits.max_connections, limits.max_connections_per_source, limits.bytes_per_second) >= 0
        assert limits.handshake_timeout > 0 and limits.idle_timeout >= 0
        assert isinstance(service, DmzService)
    assert 1 <= config.backplane.max_streams <= 1048576


# --------------------------------------------------------------------------- buffer-budget


def test_buffer_budget_defaults_to_256_mib_on_both_gateways(load: Load) -> None:
    assert load(dmz_doc()).buffer_budget == 256 * 1024 * 1024
    assert load(internal_doc()).buffer_budget == 256 * 1024 * 1024


def test_buffer_budget_is_read_on_both_gateways(load: Load) -> None:
    doc = dmz_doc()
    doc["dmz"]["buffer-budget"] = 64 * 1024 * 1024
    assert load(doc).buffer_budget == 64 * 1024 * 1024
    assert load(internal_doc(buffer_budget=1 << 20)).buffer_budget == 1 << 20


@pytest.mark.parametrize(
    "value, problem",
    [(1048575, "must be between 1048576 and 1099511627776 bytes (got 1048575)"), (0, "must be between"),
     (-5, "must be between"), ("1GiB", "expected an integer, got a string"), (True, "expected an integer")],
)  # fmt: skip
def test_a_bad_buffer_budget_is_refused_at_its_key(refuse: Refuse, value: Any, problem: str) -> None:
    doc = dmz_doc()
    doc["dmz"]["buffer-budget"] = value
    refuse(doc, "dmz.buffer-budget", problem)
    refuse(internal_doc(buffer_budget=value), "internal.buffer-budget", problem)


# --------------------------------------------------------------------------- backend health keys


def health_doc(connect: str = "tcp://127.0.0.1:7000", **keys: Any) -> dict[str, Any]:
    doc = internal_doc()
    service = doc["internal"]["service"][0]
    service["connect"] = connect
    service.update({key.replace("_", "-"): value for key, value in keys.items()})
    return doc


def test_health_defaults_check_by_connecting(load: Load) -> None:
    (service,) = load(health_doc()).services
    assert (service.health_check, service.health_interval, service.health_timeout) == ("connect", 2.0, 2.0)
    assert (service.health_rise, service.health_fall, service.health_path, service.health_status) == (2, 3, "/", 200)


def test_every_health_key_is_read(load: Load) -> None:
    (service,) = load(health_doc(health_check="http", health_interval=0.5, health_timeout=1, health_rise=1,
                                 health_fall=5, health_path="/ready?deep=1", health_status=204)).services  # fmt: skip
    assert service.health_check == "http" and service.health_path == "/ready?deep=1"
    assert (service.health_interval, service.health_timeout, service.health_rise, service.health_fall, service.health_status) == (0.5, 1.0, 1, 5, 204)
    (tls,) = load(health_doc("tls://10.0.0.2:443", health_check="tls")).services
    assert tls.health_check == "tls"
    (off,) = load(health_doc(health_check="off")).services
    assert off.health_check == "off"


@pytest.mark.parametrize(
    "keys, key, problem",
    [
        ({"health_check": "ping"}, "health-check", "must be one of 'connect', 'tls', 'http', 'off' (got 'ping')"),
        ({"health_check": "tls"}, "health-check", "a tls check needs a tls:// backend, and this one is tcp:"),
        ({"health_path": "/x"}, "health-path", 'only used with health-check = "http"'),
        ({"health_status": 204}, "health-status", 'only used with health-check = "http"'),
        ({"health_check": "off", "health_interval": 1}, "health-interval", 'health checks are off'),
        ({"health_check": "http", "health_path": "healthz"}, "health-path", "must be a path starting with /"),
        ({"health_check": "http", "health_path": "/a b"}, "health-path", "without spaces"),
        ({"health_check": "http", "health_status": 99}, "health-status", "must be between 100 and 599"),
        ({"health_interval": 0}, "health-interval", "must be more than 0 seconds"),
        ({"health_timeout": -1}, "health-timeout", "must be more than 0 seconds"),
        ({"health_rise": 0}, "health-rise", "must be between 1 and 100"),
        ({"health_fall": 101}, "health-fall", "must be between 1 and 100"),
    ],
)
def test_a_bad_health_key_is_refused_at_its_path(refuse: Refuse, keys: dict[str, Any], key: str, problem: str) -> None:
    refuse(health_doc(**keys), f"internal.service[0].{key}", problem)
