"""Cluster members found by DNS: a ``members`` host name that lists every member (a headless Service).

Three DMZ gateways on one switch, each with ``members = ["tls://members.test:5943"]`` and
``resolve-interval = 1``. Each namespace has its own /etc/hosts (``/etc/netns/<ns>/hosts``),
which the test rewrites in place, as DNS changes while a Deployment scales::

    dmz-a 10.231.7.1 --lan0---pa--+
    dmz-b 10.231.7.2 --lan0---pb--+ br0 (namespace lan)
    dmz-c 10.231.7.3 --lan0---pc--+

1. members.test names dmz-a and dmz-b (and, for dmz-c, dmz-c alone): a and b link, c is alone.
2. dmz-a's name gains dmz-c: dmz-a dials the new address, a and c are members of each other.
3. dmz-a's name loses dmz-c: the link that is up stays (a member leaving drains first); once
   dmz-c stops, dmz-a does not dial its address again.

Figures are printed (run with -s to see them).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pytest
from harness import twistd
from nstopology import Lab, Namespaces, Veth
from test_member_discovery import count_packets_to, until, watch_output, write_config

HOST = "members.test"
LAN = {"dmz-a": "10.231.7.1", "dmz-b": "10.231.7.2", "dmz-c": "10.231.7.3"}
CLUSTER_PORT = 5943
ADMIN = 9100
RESOLVE_INTERVAL = 1.0
WAIT = 30.0
#: Product expectation: a new address is dialled within one resolve interval; generous here.
JOIN_BOUND = 15.0


def hosts(*members: str) -> str:
    return "127.0.0.1 localhost\n" + "".join(f"{LAN[m]} {HOST}\n" for m in members)


def member_config(folder: Path, name: str) -> Path:
    return write_config(folder, name, [
        "[dmz]",
        f'name = "{name}"',
        f'admin = "http://127.0.0.1:{ADMIN}"',
        "grace-period = 2",
        "[dmz.backplane]",
        'accept = "tls://127.0.0.1:5941"',
        f'cert = "certs/{name}.pem"',
        'ca = "certs/ca.pem"',
        "[dmz.backplane.connectors]",
        'internal1 = ["echo"]',
        "[dmz.cluster]",
        'name = "k8s"',
        f'accept = "tls://{LAN[name]}:{CLUSTER_PORT}"',
        f'members = ["tls://{HOST}:{CLUSTER_PORT}"]',
        f"resolve-interval = {RESOLVE_INTERVAL:g}",
        "heartbeat-interval = 0.5",
        "[[dmz.service]]",
        'name = "echo"',
        'accept = ["tcp://127.0.0.1:9000"]',
    ])


def alive(lab: Lab, member: str) -> float | None:
    return lab.metrics(member, ADMIN).get("shield_cluster_members_alive")


def has_line(lab: Lab, member: str, line: str) -> Callable[[], bool]:
    return lambda: line in lab.process(member).log()


@pytest.mark.timeout(300)
def test_members_follow_dns_name(lab: Lab) -> None:
    ns: Namespaces = lab.ns
    folder = lab.folder
    members = list(LAN)
    ns.add("lan")
    for role in members:
        ns.add(role)
        ns.add_veth(Veth(role, "lan0", LAN[role], "lan", f"p{role[-1]}", None))
    ns.add_bridge("lan", "br0", [f"p{role[-1]}" for role in members])
    hosts_a = ns.hosts_file("dmz-a", hosts("dmz-a", "dmz-b"))
    ns.hosts_file("dmz-b", hosts("dmz-a", "dmz-b"))
    ns.hosts_file("dmz-c", hosts("dmz-c"))
    watch_output(ns, "dmz-a", [LAN["dmz-c"]])
    from shield.tls.devcerts import generate_dev_certs

    generate_dev_certs(folder / "certs", members, ["internal1"])
    for member in members:
        lab.start(member, twistd(member, "shield-dmz", member_config(folder, member), folder))
    for member in members:
        lab.process(member).wait_for_log("ready for connectors", WAIT)

    # -- 1. a and b are members of each other; c, whose name lists only itself, is alone ---------
    for me, other in (("dmz-a", "dmz-b"), ("dmz-b", "dmz-a")):
        until(f"{me} has {other} alive", has_line(lab, me, f"cluster k8s: member {other} is alive"), WAIT, lab)
    own = f"cluster k8s: members tls://{HOST}:{CLUSTER_PORT} now resolves to {LAN['dmz-c']}"
    assert own in lab.process("dmz-c").log(), lab.tails(["dmz-c"])  # its own accept: not dialled
    time.sleep(3 * RESOLVE_INTERVAL)
    assert alive(lab, "dmz-a") == 1.0 and alive(lab, "dmz-b") == 1.0
    assert alive(lab, "dmz-c") == 0.0
    assert count_packets_to(ns, "dmz-a", LAN["dmz-c"]) == 0, "dmz-a dialled dmz-c before its name listed it"

    # -- 2. dmz-a's name gains dmz-c: a dials it, a and c are members of each other -----------------
    inode = hosts_a.stat().st_ino
    ns.hosts_file("dmz-a", hosts("dmz-a", "dmz-b", "dmz-c"))
    assert hosts_a.stat().st_ino == inode
    changed = time.monotonic()
    resolves = (f"cluster k8s: members tls://{HOST}:{CLUSTER_PORT} now resolves to "
                f"{LAN['dmz-a']}, {LAN['dmz-b']}, {LAN['dmz-c']}")
    until("dmz-a logs the new addresses", has_line(lab, "dmz-a", resolves), JOIN_BOUND, lab)
    logged = time.monotonic() - changed
    until("dmz-a has dmz-c alive", has_line(lab, "dmz-a", "cluster k8s: member dmz-c is alive"), JOIN_BOUND, lab)
    joined = time.monotonic() - changed
    until("dmz-c has dmz-a alive", has_line(lab, "dmz-c", "cluster k8s: member dmz-a is alive"), JOIN_BOUND, lab)
    until("dmz-a counts two members alive", lambda: alive(lab, "dmz-a") == 2.0, JOIN_BOUND, lab)
    assert alive(lab, "dmz-b") == 1.0, "dmz-b's name does not list dmz-c: it must not have dialled it"
    print(f"\nmembers name gained dmz-c (resolve-interval {RESOLVE_INTERVAL:g} s): dmz-a logged it after "
          f"{logged:.2f} s, had dmz-c alive after {joined:.2f} s")

    # -- 3. dmz-a's name loses dmz-c: the live link stays until dmz-c goes; then no redial ----------
    ns.hosts_file("dmz-a", hosts("dmz-a", "dmz-b"))
    gone = f"cluster k8s: members tls://{HOST}:{CLUSTER_PORT} now resolves to {LAN['dmz-a']}, {LAN['dmz-b']}"
    until("dmz-a logs dmz-c's address removed", has_line(lab, "dmz-a", gone), JOIN_BOUND, lab)
    time.sleep(3 * RESOLVE_INTERVAL)
    assert alive(lab, "dmz-a") == 2.0, "the link to a member that left DNS was cut before it drained"
    assert "member dmz-c is gone" not in lab.process("dmz-a").log()
    c = lab.process("dmz-c")
    code = c.stop(timeout=WAIT)  # SIGTERM: it drains and exits
    assert code == 0, f"dmz-c exited {code}\n{lab.tails(['dmz-c'])}"
    until("dmz-a counts one member alive", lambda: alive(lab, "dmz-a") == 1.0, WAIT, lab)
    before = count_packets_to(ns, "dmz-a", LAN["dmz-c"])
    time.sleep(6.0)  # longer than the dialler's longest back-off (5 s): a redial would show
    after = count_packets_to(ns, "dmz-a", LAN["dmz-c"])
    assert after == before, f"dmz-a sent {after - before} packets to dmz-c's address after it left DNS and stopped"
