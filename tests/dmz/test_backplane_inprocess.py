"""The DMZ backplane in process: a real connector link announcing itself to the real DMZ protocol.

The connector is ``ConnectorLinkEnd`` (what shield-internal runs), the DMZ side is what
``BackplaneFactory`` builds; iosim joins them, and the DMZ's transport presents the connector's
certificate identity as TLS would. What is checked is what an operator sees: the reply the
connector gets, the log lines on both sides, and the links the router can use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from twisted.internet.protocol import Protocol

from dmz_world_inprocess import Connector, Link, LogLines, World, capture_log, dmz_config
from shield.dmz.backplane import ANNOUNCE_TIMEOUT, known_identity_check
from shield.tls.contexts import backplane_client_options, backplane_server_context
from shield.tls.devcerts import generate_dev_certs
from shield.link.wire import Announce, encode


@pytest.fixture
def log() -> Iterator[LogLines]:
    yield from capture_log()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    generate_dev_certs(root, ["dmz1"], ["internal1", "internal2"])
    return root


def world(connectors: dict[str, tuple[str, ...]] | None = None, services: tuple[str, ...] = ("echo", "web")) -> World:
    return World(dmz_config({"internal1": ("echo",)} if connectors is None else connectors, services))


def test_an_announcement_is_accepted_for_the_listed_services_only(log: LogLines) -> None:
    w = world()
    connector = w.connector("internal1", offers=("echo", "web", "ghost"))
    link = w.link(connector)

    # The connector is told what it may serve, and counts the link as up.
    assert link.connector.accepted is True
    assert link.connector.dmz_name == "dmz1"
    assert link.connector.services == ("echo",)
    assert connector.up == [link.connector]
    # The router knows the link, for the accepted service only.
    (registered,) = w.registry.links
    assert registered is link.registered
    assert registered.connector == "internal1"
    assert registered.services == frozenset({"echo"})
    assert w.registry.pick("echo") is registered
    assert w.registry.pick("web") is None
    assert w.registry.offers() == {"echo": {"internal1"}}
    # Each refused service is one line at the DMZ and one at the connector, saying why.
    assert len(log.having("may not serve 'web': not listed for connector 'internal1' in dmz.backplane.connectors")) == 1
    assert len(log.having("may not serve 'ghost': DMZ 'dmz1' has no service 'ghost'")) == 1
    assert len(log.having("DMZ 'dmz1' refused service 'web'")) == 1
    assert len(log.having("DMZ 'dmz1' refused service 'ghost'")) == 1
    assert log.having("connector 'internal1' (priority 100, version") and log.having("serves echo")


def test_an_identity_not_in_the_connectors_list_is_refused_and_the_link_closed(log: LogLines) -> None:
    w = world()
    stranger = w.connector("stranger")
    link = w.link(stranger)

    assert link.connector.accepted is False
    assert w.registry.links == []
    refusal = "connector 'stranger' is not in dmz.backplane.connectors"
    assert log.having(f"refused connector announcement: {refusal}")
    assert log.having(f"DMZ 'dmz1' refused this connector: {refusal}")
    # Both ends are closed; the connector's pool hears the link is lost (and will back off).
    assert not link.dmz.mux.is_open and not link.connector.mux.is_open
    assert len(stranger.lost) == 1 and stranger.up == []


def test_a_name_that_is_not_the_certificate_identity_is_refused(log: LogLines) -> None:
    w = world({"internal1": ("echo",), "internal2": ("echo",)})
    # Its certificate says internal1, but it announces itself as internal2 (both are listed).
    impostor = w.connector("internal2")
    link = w.link(impostor, identity="internal1")

    assert link.connector.accepted is False
    assert w.registry.links == []
    assert log.having("announced name 'internal2' is not the certificate identity 'internal1'")
    assert not link.dmz.mux.is_open


def test_a_link_without_a_client_certificate_identity_is_refused(log: LogLines) -> None:
    w = world()
    link = w.link(w.connector("internal1"), identity=None)

    assert link.connector.accepted is False
    assert w.registry.links == []
    assert log.having("refused connector announcement: no client certificate identity")


def test_a_connector_with_nothing_allowed_is_linked_but_serves_nothing(log: LogLines) -> None:
    w = world({"internal1": ()})
    link = w.link(w.connector("internal1", offers=("echo",)))

    assert link.connector.accepted is True and link.connector.services == ()
    assert [l.services for l in w.registry.links] == [frozenset()]
    assert w.registry.pick("echo") is None
    assert log.having("serves nothing")


def test_a_lost_link_leaves_the_registry_and_the_router(log: LogLines) -> None:
    w = world()
    changes: list[int] = []
    w.registry.on_change(lambda: changes.append(len(w.registry.links)))
    first = w.link(w.connector("internal1"))
    second = w.link(w.connector("internal1"))
    assert changes == [1, 2]
    assert w.registry.links_per_connector() == {"internal1": 2}

    first.connector.mux.transport.loseConnection()  # the connector's end of the TCP link closes
    w.run()

    assert w.registry.links == [second.registered]
    assert changes == [1, 2, 1]
    assert w.registry.pick("echo") is second.registered
    assert len(log.having("connector 'internal1' link down")) == 1


def test_a_connector_going_away_is_counted_out_before_its_link_closes() -> None:
    w = world()
    changes: list[bool] = []
    link = w.link(w.connector("internal1"))
    registered = link.registered
    assert registered is not None
    w.registry.on_change(lambda: changes.append(registered.usable))

    link.connector.mux.go_away()  # drain: GoAway, no new streams; the link stays up meanwhile
    w.run()

    assert changes and changes[0] is False
    assert w.registry.pick("echo") is None
    assert w.registry.services_live() == set()


def test_no_announcement_within_the_timeout_closes_the_link(log: LogLines) -> None:
    w = world()
    link = w.link(w.connector("internal1"), announce=False)  # TLS up, but it never announces

    w.advance(ANNOUNCE_TIMEOUT - 0.5)
    assert link.dmz.mux.is_open
    assert not log.having("no announcement")
    w.advance(0.5)
    assert not link.dmz.mux.is_open
    assert log.having(f"no announcement within {ANNOUNCE_TIMEOUT:g} s; closed")
    assert w.registry.links == []


def test_no_tls_handshake_within_the_timeout_closes_the_link(log: LogLines) -> None:
    w = world()
    link = w.link(w.connector("internal1"), handshake=False)

    w.advance(ANNOUNCE_TIMEOUT)
    assert not link.dmz.mux.is_open
    assert log.having(f"no TLS handshake within {ANNOUNCE_TIMEOUT:g} s; closed")


def test_an_announcement_in_time_stops_the_timer() -> None:
    w = world()
    link = w.link(w.connector("internal1"))
    w.advance(ANNOUNCE_TIMEOUT * 3, step=ANNOUNCE_TIMEOUT)
    assert link.dmz.mux.is_open and w.registry.pick("echo") is link.registered


def test_a_second_stream_from_the_connector_is_refused(log: LogLines) -> None:
    w = world()
    link = w.link(w.connector("internal1"))
    extra = Protocol()
    stream = link.connector.mux.open_stream(extra)
    w.run()

    assert log.having("connector opened an extra stream; refused")
    assert not stream.connected  # reset by the DMZ
    assert link.dmz.mux.is_open and w.registry.pick("echo") is link.registered


def test_announcing_again_withdraws_and_offers_again_without_a_new_link(log: LogLines) -> None:
    w = world({"internal1": ("echo", "web")})
    connector = w.connector("internal1", offers=("echo", "web"))
    link = w.link(connector)
    registered = link.registered
    assert registered is not None and registered.services == {"echo", "web"}

    connector.offers = ("echo",)  # its health checks found the web backend down
    assert link.connector.announce_again()
    w.run()
    assert registered.services == {"echo"} and registered.withdrawn == {"web"}
    assert w.registry.pick("web") is None
    assert log.having("announced again (priority 100): serves echo (withdrew web)")

    connector.offers = ("echo", "web")
    assert link.connector.announce_again()
    w.run()
    assert registered.services == {"echo", "web"} and registered.withdrawn == frozenset()
    assert w.registry.pick("web") is registered
    assert log.having("(offers again web)")
    assert w.registry.links == [registered]


def test_announcing_again_under_another_name_is_refused(log: LogLines) -> None:
    w = world()
    link = w.link(w.connector("internal1"))
    control = link.connector.control
    assert control is not None
    control.write(encode(Announce(name="internal9", priority=100, version="x", services=("echo",))))
    w.run()

    assert log.having("announced name 'internal9' is not this link's connector")
    assert not link.dmz.mux.is_open
    assert w.registry.links == []


def test_a_dmz_draining_closes_the_control_stream_and_then_the_link() -> None:
    w = world()
    link = w.link(w.connector("internal1"))
    closed: list[str] = []
    link.dmz.mux.go_away().addCallback(closed.append)
    w.run()

    assert closed, "a link with no tunnels closes once the DMZ goes away"
    assert not link.connector.mux.is_open
    assert w.registry.links == []


# --- through the real TLS layer ------------------------------------------------------------------


def tls_link(w: World, pki: Path, name: str, certificate: str) -> tuple[Connector, Link]:
    """Links ``name`` (its configured name) presenting ``certificate``'s certificate, over real TLS."""
    connector = w.connector(name)
    server = backplane_server_context(pki / "dmz1.pem", pki / "ca.pem", known_identity_check(w.backplane))
    client = backplane_client_options(pki / f"{certificate}.pem", pki / "ca.pem", "dmz1")
    return connector, w.link_tls(connector, server, client)


def test_over_tls_the_identity_comes_from_the_certificate_and_the_link_is_registered(pki: Path, log: LogLines) -> None:
    w = world()
    connector, link = tls_link(w, pki, "internal1", "internal1")
    assert link.dmz.identity == "internal1"
    assert link.connector.accepted is True
    assert w.registry.pick("echo") is link.registered
    assert log.having("link from 198.18.0.2:40001: TLS up (TLSv1.3")
    assert log.having("connector identity 'internal1'")


def test_over_tls_a_refused_connector_s_link_is_closed(pki: Path, log: LogLines) -> None:
    w = world({"internal1": ("echo",), "internal2": ("echo",)})
    # Configured as internal2, but it presents internal1's certificate (both are listed).
    connector, link = tls_link(w, pki, "internal2", "internal1")
    assert log.having("announced name 'internal2' is not the certificate identity 'internal1'")
    assert w.registry.links == []

    w.advance(30.0, step=5.0)
    assert not link.dmz.mux.is_open and not link.connector.mux.is_open
    assert len(connector.lost) == 1
