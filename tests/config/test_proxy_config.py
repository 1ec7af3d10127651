"""``internal.backplane.proxy`` and ``proxy-auth-file`` (issue 14): what is accepted, what is
refused with which message, and that no message ever shows a password."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from shield.config import loader
from shield.config.env import internal_config_from_environment
from shield.config.errors import ConfigError
from shield.config.model import ProxyAuth, Uri

SECRET = "s3cr3t:with-colon"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name in ("internal1.pem", "ca.pem"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "proxy-auth").write_text(f"connector:{SECRET}\n")
    return tmp_path


def doc(**backplane: Any) -> dict[str, Any]:
    return {
        "internal": {
            "name": "internal1",
            "backplane": {
                "connect": ["tls://dmz.example:5941"], "server-name": "dmz1", "cert": "internal1.pem",
                "ca": "ca.pem", **backplane,
            },
            "service": [{"name": "echo", "connect": "tcp://127.0.0.1:7000"}],
        }
    }  # fmt: skip


def refused(folder: Path, key: str, **backplane: Any) -> str:
    with pytest.raises(ConfigError) as info:
        loader.build_internal(doc(**backplane), folder)
    assert info.value.key_path == f"internal.backplane.{key}", str(info.value)
    return info.value.problem


def test_no_proxy_by_default(folder: Path) -> None:
    backplane = loader.build_internal(doc(), folder).backplane
    assert (backplane.proxy, backplane.proxy_auth) == (None, None)


def test_a_proxy_with_credentials(folder: Path) -> None:
    backplane = loader.build_internal(doc(proxy="http://Proxy.Corp:3128", **{"proxy-auth-file": "proxy-auth"}), folder).backplane
    assert backplane.proxy == Uri("http", "proxy.corp", 3128)
    assert backplane.proxy_auth == ProxyAuth(folder / "proxy-auth", "connector", SECRET)
    assert SECRET not in repr(backplane) and "connector" not in repr(backplane.proxy_auth)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("https://proxy:3128", "https:// proxies are not supported (expected http://host:port)"),
        ("socks5://proxy:1080", "unsupported scheme 'socks5' (expected http)"),
        ("http://proxy:3128/path", "path '/path' not allowed on http:// (expected http://host:port)"),
        ("http://proxy:3128/", "path '/' not allowed on http://"),
        ("http://proxy", "missing port (expected http://host:port)"),
        ("proxy:3128", "has no scheme"),
        ("http://proxy:3128?x=1", "query string not allowed"),
    ],
)
def test_only_http_host_port_is_a_proxy(folder: Path, value: str, problem: str) -> None:
    assert problem in refused(folder, "proxy", proxy=value)


@pytest.mark.parametrize("value", ["http://user:hunter2@proxy:3128", "http://us er:hunter2@proxy:3128", "user:hunter2@proxy:3128"])
def test_credentials_in_the_url_are_refused_without_showing_them(folder: Path, value: str) -> None:
    problem = refused(folder, "proxy", proxy=value)
    assert "credentials do not belong in the proxy URL" in problem
    assert "internal.backplane.proxy-auth-file" in problem
    assert "hunter2" not in problem


def test_resolve_interval_is_refused_with_a_proxy(folder: Path) -> None:
    problem = refused(folder, "resolve-interval", proxy="http://proxy:3128", **{"resolve-interval": 5})
    assert problem == "not used with a proxy, which resolves the connect host names at every CONNECT"


def test_an_auth_file_without_a_proxy_is_refused(folder: Path) -> None:
    problem = refused(folder, "proxy-auth-file", **{"proxy-auth-file": "proxy-auth"})
    assert problem == "only used with a proxy, and internal.backplane.proxy is not set"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "no ':' between user and password"),
        (b"connector\n", "no ':' between user and password"),
        (b":" + SECRET.encode() + b"\n", "the user (before ':') is empty"),
        (b"connector:" + SECRET.encode() + b"\nother:line\n", "more than one line"),
        (b"connector:" + SECRET.encode() + b"\n\n", "more than one line"),
        (b"connector:\x00" + SECRET.encode(), "control characters in the user or the password"),
        (b"connector:\xff" + SECRET.encode(), "not UTF-8 text"),
        (b"connector:" + b"x" * 5000, "larger than 4096 bytes"),
    ],
)
def test_a_bad_auth_file_is_refused_without_showing_its_content(folder: Path, content: bytes, problem: str) -> None:
    (folder / "proxy-auth").write_bytes(content)
    found = refused(folder, "proxy-auth-file", proxy="http://proxy:3128", **{"proxy-auth-file": "proxy-auth"})
    assert found == f"{folder / 'proxy-auth'}: {problem} (expected one line user:password)"
    assert SECRET not in found and "connector" not in found


@pytest.mark.parametrize(("content", "password"), [(b"connector:pw\r\n", "pw"), (b"connector:pw", "pw"), (b"connector:", "")])
def test_line_endings_and_an_empty_password(folder: Path, content: bytes, password: str) -> None:
    (folder / "proxy-auth").write_bytes(content)
    auth = loader.build_internal(doc(proxy="http://proxy:3128", **{"proxy-auth-file": "proxy-auth"}), folder).backplane.proxy_auth
    assert auth is not None and (auth.user, auth.password) == ("connector", password)


def test_a_missing_or_unreadable_auth_file(folder: Path) -> None:
    missing = refused(folder, "proxy-auth-file", proxy="http://proxy:3128", **{"proxy-auth-file": "nope"})
    assert missing.startswith(f"file not found: {folder / 'nope'}")
    if os.geteuid() != 0:  # root reads any file
        (folder / "proxy-auth").chmod(0)
        unreadable = refused(folder, "proxy-auth-file", proxy="http://proxy:3128", **{"proxy-auth-file": "proxy-auth"})
        assert unreadable.startswith(f"cannot read {folder / 'proxy-auth'}")


# -- the sidecar's variables ---------------------------------------------------------------------


def sidecar(folder: Path, **more: str) -> dict[str, str]:
    return {
        "SHIELD_NAME": "internal1", "SHIELD_DMZ": "tls://dmz.example:5941", "SHIELD_SERVER_NAME": "dmz1",
        "SHIELD_CERT": str(folder / "internal1.pem"), "SHIELD_CA": str(folder / "ca.pem"),
        "SHIELD_SERVICE": "echo", "SHIELD_BACKEND": "tcp://127.0.0.1:7000", **more,
    }  # fmt: skip


def test_the_sidecar_takes_shield_proxy_and_never_https_proxy(folder: Path) -> None:
    plain = internal_config_from_environment(sidecar(folder, HTTPS_PROXY="http://other:8080", https_proxy="http://other:8080"))
    assert plain.backplane.proxy is None
    config = internal_config_from_environment(
        sidecar(folder, SHIELD_PROXY="http://10.0.0.5:3128", SHIELD_PROXY_AUTH_FILE=str(folder / "proxy-auth"))
    )
    assert config.backplane.proxy == Uri("http", "10.0.0.5", 3128)
    assert config.backplane.proxy_auth == ProxyAuth(folder / "proxy-auth", "connector", SECRET)


def test_the_sidecar_names_the_variable_in_errors(folder: Path) -> None:
    with pytest.raises(ConfigError) as info:
        internal_config_from_environment(sidecar(folder, SHIELD_PROXY="https://10.0.0.5:3128"))
    assert info.value.key_path == "SHIELD_PROXY"
    (folder / "proxy-auth").write_text("no-colon\n")
    with pytest.raises(ConfigError) as info:
        internal_config_from_environment(
            sidecar(folder, SHIELD_PROXY="http://10.0.0.5:3128", SHIELD_PROXY_AUTH_FILE=str(folder / "proxy-auth"))
        )
    assert info.value.key_path == "SHIELD_PROXY_AUTH_FILE"
