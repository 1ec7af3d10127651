"""Certificate refusals between real gateway processes: both ends log one line that says why.

tests/tls/test_hygiene.py checks the same refusals in memory, at the TLS layer; here the lines
are read from the logs of ``twistd`` processes. test_trust.py already covers a connector
certificate from another CA and an unknown connector identity.

- Backplane: the connector refuses the DMZ (expired certificate, certificate from another CA,
  wrong name) and the DMZ refuses an expired connector certificate.
- Cluster: a member whose certificate is expired, from another CA, or a connector's
  certificate, is refused by the good member in both directions (it dials, and it is dialled).
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest
from cluster import Cluster
from harness import Process, Topology, iter_log_lines

from shield.tls.devcerts import issue_certificate, leaf_pem, load_or_create_authority, new_authority

WAIT = 30.0


def wait_for_line(process: Process, *needles: str, timeout: float = WAIT) -> str:
    """The first line of ``process``'s log holding every one of ``needles``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in process.log().splitlines():
            if all(needle in line for needle in needles):
                return line
        time.sleep(0.05)
    raise AssertionError(f"{process.name}: no line with {needles!r} within {timeout} s:\n{process.log()[-4000:]}")


def replace_certificate(certs: Path, name: str, role: str, how: str) -> None:
    """Rewrite ``certs/name.pem``: "expired" (our CA, a month ago), "foreign" (another CA, valid),
    "valid" (our CA, valid: to give a name a certificate for the other ``role``)."""
    if how == "valid":
        authority = load_or_create_authority(certs)[0]
        cert, key = issue_certificate(authority, name, role)  # type: ignore[arg-type]
    elif how == "expired":
        authority = load_or_create_authority(certs)[0]
        past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
        cert, key = issue_certificate(
            authority, name, role, not_before=past, not_after=past + datetime.timedelta(days=1)  # type: ignore[arg-type]
        )
    else:
        authority = new_authority("some other CA")
        cert, key = issue_certificate(authority, name, role)  # type: ignore[arg-type]
    (certs / f"{name}.pem").write_bytes(leaf_pem(cert, key, [authority.certificate]))


# --- backplane --------------------------------------------------------------------------------

CONNECTOR_REFUSES = {
    # case: (how the DMZ certificate is made, server-name, connector line, DMZ line)
    "expired DMZ certificate": (
        "expired", "dmz1",
        "server certificate verify failed: certificate has expired (certificate 'dmz1', depth 0, expected name 'dmz1')",
        "peer refused our certificate: alert certificate expired",
    ),
    "DMZ certificate from another CA": (
        "foreign", "dmz1",
        "server certificate verify failed: unable to get local issuer certificate (certificate 'dmz1', depth 0,"
        " expected name 'dmz1')",
        "peer refused our certificate: alert unknown ca",
    ),
    "wrong host name": (
        "", "dmz2",
        "server certificate does not match the expected name 'dmz2' (it names DNS:dmz1, DNS:localhost,"
        " IP:127.0.0.1, IP:::1)",
        "peer sent alert internal error (a shield DMZ sends this when it refuses our certificate's identity,"
        " a connector when our certificate lacks the name it expects; its log says why)",
    ),
}


@pytest.mark.parametrize("case", CONNECTOR_REFUSES)
def test_connector_refuses_dmz_certificate(topology: Topology, case: str) -> None:
    how, server_name, connector_says, dmz_says = CONNECTOR_REFUSES[case]
    certs = topology.certs(["internal1"])
    if how:
        replace_certificate(certs, "dmz1", "server", how)
    _, backend_port = topology.start_backend("echo")
    topology.dmz_config({"echo": {}}, {"internal1": ["echo"]})
    config = topology.internal_config("internal1", {"echo": f"tcp://127.0.0.1:{backend_port}"})
    config.write_text(config.read_text().replace('server-name = "dmz1"', f'server-name = "{server_name}"'))
    dmz = topology.start_dmz()
    connector = topology.start_connector("internal1", wait=False)

    connector_line = wait_for_line(connector, "link to 127.0.0.1:", "TLS handshake failed: " + connector_says)
    dmz_line = wait_for_line(dmz, "closed before TLS completed: TLS handshake failed: " + dmz_says)
    assert "retrying in" in connector_line, connector_line
    assert "link from 127.0.0.1:" in dmz_line, dmz_line
    assert not list(iter_log_lines(dmz, "refused connector certificate"))  # the DMZ had nothing against it
    assert "up; DMZ" not in connector.log()
    print(f"\nconnector: {connector_line.strip()}\nDMZ: {dmz_line.strip()}")


def test_dmz_refuses_expired_connector_certificate(topology: Topology) -> None:
    certs = topology.certs(["internal1"])
    replace_certificate(certs, "internal1", "client", "expired")
    _, backend_port = topology.start_backend("echo")
    topology.dmz_config({"echo": {}}, {"internal1": ["echo"]})
    topology.internal_config("internal1", {"echo": f"tcp://127.0.0.1:{backend_port}"})
    dmz = topology.start_dmz()
    connector = topology.start_connector("internal1", wait=False)

    dmz_line = wait_for_line(
        dmz, "refused connector certificate: certificate has expired (certificate 'internal1', depth 0) (peer 127.0.0.1:"
    )
    connector_line = wait_for_line(
        connector, "link to 127.0.0.1:", "TLS handshake failed: peer refused our certificate: alert certificate expired"
    )
    assert "up; DMZ" not in connector.log()
    # One line per refused link, as promised: the reason, not also a "closed before TLS" line.
    peer = dmz_line.rsplit("(peer ", 1)[1].split(")", 1)[0]
    time.sleep(1.0)  # whatever else the DMZ would log about that link is written by now
    about_peer = [line for line in dmz.log().splitlines() if peer in line]
    assert about_peer == [dmz_line], "\n".join(about_peer)
    print(f"\nDMZ: {dmz_line.strip()}\nconnector: {connector_line.strip()}")


# --- cluster ----------------------------------------------------------------------------------

MEMBER_REFUSALS = {
    # case: (how dmz2's certificate is made, role, what dmz1 logs after "refused cluster member certificate: ")
    "expired member certificate": ("expired", "server", "certificate has expired (certificate 'dmz2', depth 0)"),
    "member certificate from another CA": (
        "foreign", "server", "unable to get local issuer certificate (certificate 'dmz2', depth 0)"
    ),
}


def bad_member(topology: Topology, how: str, role: str) -> tuple[Process, Process]:
    """Members dmz1 (good) and dmz2 (its certificate made ``how``, for ``role``), both started."""
    cluster = Cluster(topology, ["dmz1", "dmz2"], ["internal1"])
    replace_certificate(topology.folder / "certs", "dmz2", role, how)
    for member in cluster.members:
        cluster.write_member(member)
    return cluster.start_member("dmz1", wait=False), cluster.start_member("dmz2", wait=False)


@pytest.mark.parametrize("case", ["expired member certificate", "member certificate from another CA"])
def test_good_member_refuses_bad_member_both_ways(topology: Topology, case: str) -> None:
    how, role, dmz1_says = MEMBER_REFUSALS[case]
    dmz1, dmz2 = bad_member(topology, how, role)
    refusal = "refused cluster member certificate: " + dmz1_says
    dialled_in = wait_for_line(dmz1, refusal, "(peer 127.0.0.2:")  # dmz1 dialled dmz2 and refused it
    accepted = wait_for_line(dmz1, refusal, "(peer 127.0.0.1:")  # dmz2 dialled dmz1 from 127.0.0.1
    assert not list(iter_log_lines(dmz1, "member dmz2 is alive"))
    print(f"\ndmz1: {dialled_in.strip()}\ndmz1: {accepted.strip()}")


def test_connector_certificate_cannot_be_a_member(topology: Topology) -> None:
    """dmz2 presents a valid certificate from the cluster's CA, but one made for a connector."""
    dmz1, _ = bad_member(topology, "valid", "client")
    refusal = "refused cluster member certificate: 'dmz2' is not a gateway certificate (no serverAuth usage)"
    dialled_in = wait_for_line(dmz1, refusal, "(peer 127.0.0.2:")
    accepted = wait_for_line(dmz1, refusal, "(peer 127.0.0.1:")
    assert not list(iter_log_lines(dmz1, "member dmz2 is alive"))
    print(f"\ndmz1: {dialled_in.strip()}\ndmz1: {accepted.strip()}")


def test_refused_member_says_why(topology: Topology) -> None:
    """The member whose expired certificate is refused must also log, once, that it was refused."""
    dmz1, dmz2 = bad_member(topology, "expired", "server")
    wait_for_line(dmz1, "refused cluster member certificate: certificate has expired")
    wait_for_line(dmz2, "peer refused our certificate: alert certificate expired", timeout=5)
