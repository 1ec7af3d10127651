"""A connector's reload applies resolve-interval (it was accepted and silently not applied)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock

from shield.config.loader import load_internal_config
from shield.config.model import Uri
from shield.internal.gateway import InternalGateway
from shield.tls.devcerts import generate_dev_certs


def write(path: Path, interval: float) -> Path:
    path.write_text(
        "[internal]\nname = \"internal1\"\n[internal.backplane]\n"
        'connect = "tls://dmz.test:5941"\nserver-name = "dmz1"\ncert = "certs/internal1.pem"\n'
        f'ca = "certs/ca.pem"\nresolve-interval = {interval:g}\n'
        '[[internal.service]]\nname = "echo"\nconnect = "tcp://127.0.0.1:7000"\nhealth-check = "off"\n'
    )
    return path


def test_a_reloaded_resolve_interval_applies_from_the_next_lookup(tmp_path: Path) -> None:
    generate_dev_certs(tmp_path / "certs", ["dmz1"], ["internal1"])
    path = write(tmp_path / "internal.toml", 30)
    clock = MemoryReactorClock()
    lookups: list[float] = []

    def resolver(uri: Uri) -> Deferred[list[str]]:
        assert uri.host == "dmz.test"
        lookups.append(clock.seconds())
        return succeed(["127.0.0.1"])

    gateway = InternalGateway(load_internal_config(path), clock, resolver)
    gateway._start()
    clock.advance(30)
    assert lookups == [0, 30]
    write(path, 2)
    gateway.reload()
    assert gateway.config.backplane.resolve_interval == 2
    clock.advance(30)  # the look-up already scheduled keeps its time...
    clock.advance(2)  # ...and from then on every 2 s
    clock.advance(2)
    assert lookups == [0, 30, 60, 62, 64]
