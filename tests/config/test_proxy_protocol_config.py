"""``[[dmz.service]] proxy-protocol-from`` and ``[[internal.service]] proxy-protocol`` (issue 14):
what is accepted, what is refused with which key path and message, and the listener rule that
services sharing a ws:// or wss:// port agree on the list."""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest

from shield.config.errors import ConfigError
from shield.config.model import ProxyProtocolVersion
from tests.config import test_loader
from tests.config.test_loader import Load, dmz_doc, internal_doc

# the loader tests' fixtures: write a document next to placeholder certificates, load or refuse it
load = test_loader.load
refuse = test_loader.refuse


def with_service(**keys: Any) -> dict[str, Any]:
    doc = dmz_doc()
    doc["dmz"]["service"][0].update(keys)
    return doc


def test_off_by_default(load: Load) -> None:
    assert load(dmz_doc()).services[0].proxy_protocol_from == ()
    assert load(internal_doc()).services[0].proxy_protocol is None


def test_networks_are_read(load: Load) -> None:
    service = load(with_service(**{"proxy-protocol-from": ["10.0.0.0/8", "127.0.0.1", "2001:db8::/32"]})).services[0]
    assert service.proxy_protocol_from == (ip_network("10.0.0.0/8"), ip_network("127.0.0.1/32"), ip_network("2001:db8::/32"))
    assert load(with_service(**{"proxy-protocol-from": []})).services[0].proxy_protocol_from == ()
    assert load(with_service(**{"proxy-protocol-from": "192.0.2.0/24"})).services[0].proxy_protocol_from == (
        ip_network("192.0.2.0/24"),
    )


@pytest.mark.parametrize(
    "value, problem",
    [
        (["10.0.0.0/33"], "bad CIDR '10.0.0.0/33': not an IPv4 or IPv6 network"),
        (["10.0.0.1/8"], "bad CIDR '10.0.0.1/8': host bits set"),
        (["lb.example"], "not an IPv4 or IPv6 network"),
        (["10.0.0.0/8", "10.0.0.0/8"], "10.0.0.0/8 is listed twice"),
    ],
)
def test_bad_networks_name_their_key(refuse: Any, value: list[str], problem: str) -> None:
    where = f"dmz.service[0].proxy-protocol-from[{len(value) - 1}]"
    refuse(with_service(**{"proxy-protocol-from": value}), where, problem)


def test_not_strings_are_refused(refuse: Any) -> None:
    refuse(with_service(**{"proxy-protocol-from": 10}), "dmz.service[0].proxy-protocol-from", "expected an array of strings")


def test_services_sharing_a_websocket_port_must_agree(refuse: Any, load: Load) -> None:
    doc = with_service(**{"proxy-protocol-from": ["10.0.0.0/8"]})
    doc["dmz"]["service"].append({"name": "chat", "accept": "ws://127.0.0.1:8080/chat"})
    doc["dmz"]["backplane"]["connectors"]["internal1"].append("chat")
    refuse(doc, "dmz.service[1].accept", "but not its proxy-protocol-from")
    doc["dmz"]["service"][1]["proxy-protocol-from"] = ["10.0.0.0/8"]
    assert len(load(doc).services) == 2


def test_the_connector_takes_v1_or_v2(load: Load, refuse: Any) -> None:
    for version in ("v1", "v2"):
        doc = internal_doc()
        doc["internal"]["service"][0]["proxy-protocol"] = version
        assert load(doc).services[0].proxy_protocol is ProxyProtocolVersion(version)
    doc = internal_doc()
    doc["internal"]["service"][0].update({"proxy-protocol": "v2", "connect": "unix:/run/app.sock"})
    assert load(doc).services[0].proxy_protocol is ProxyProtocolVersion.V2
    doc["internal"]["service"][0]["proxy-protocol"] = "v3"
    refuse(doc, "internal.service[0].proxy-protocol", "must be one of 'v1', 'v2' (got 'v3')")
    doc["internal"]["service"][0]["proxy-protocol"] = True
    with pytest.raises(ConfigError, match="internal.service.0..proxy-protocol: expected a string"):
        load(doc)


def test_an_error_exits_2_from_check_config(tmp_path: Path, load: Load, capsys: pytest.CaptureFixture[str]) -> None:
    from shield.cli import main

    with pytest.raises(ConfigError):
        load(with_service(**{"proxy-protocol-from": ["nope"]}))  # writes gateway.toml
    try:
        status = main(["check-config", str(tmp_path / "gateway.toml")])
    except SystemExit as exit:
        status = exit.code  # type: ignore[assignment]
    assert status == 2
    assert "dmz.service[0].proxy-protocol-from[0]: bad CIDR 'nope'" in capsys.readouterr().err
