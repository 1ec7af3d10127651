"""docs/ha.md's example configurations are files the loader accepts, with what they describe."""

from __future__ import annotations

import re
from pathlib import Path

from shield.config.loader import load_dmz_config, load_internal_config

HA = Path(__file__).resolve().parents[2] / "docs" / "ha.md"


def test_ha_example_loads(tmp_path: Path) -> None:
    block, _ = re.findall(r"```toml\n(.*?)```", HA.read_text(), re.S)
    (tmp_path / "certs").mkdir()
    for name in ("dmz1.pem", "ca.pem"):
        (tmp_path / "certs" / name).write_text("checked for existence only\n")
    (tmp_path / "dmz1.toml").write_text(block)
    config = load_dmz_config(tmp_path / "dmz1.toml")
    assert config.cluster is not None and config.cluster.accept in config.cluster.members
    balancer = next(s for s in config.services if s.is_balancer)
    echo = next(s for s in config.services if not s.is_balancer)
    for uri in balancer.accept:
        assert any((b.scheme, b.port, b.path) == (uri.scheme, uri.port, uri.path) for b in echo.balance)


def test_ha_connector_example_loads_with_its_health_checks(tmp_path: Path) -> None:
    _, block = re.findall(r"```toml\n(.*?)```", HA.read_text(), re.S)
    (tmp_path / "certs").mkdir()
    for name in ("c1.pem", "ca.pem"):
        (tmp_path / "certs" / name).write_text("checked for existence only\n")
    (tmp_path / "c1.toml").write_text(block)
    (service,) = load_internal_config(tmp_path / "c1.toml").services
    assert (service.health_check, service.health_path, service.health_fall, service.health_rise) == ("http", "/healthz", 3, 2)
