"""The public client's two ends, as OPEN metadata: where it came from, where the DMZ took it.

OPEN's ``client`` field is a label for logs (shield/addresses.py: labels are never parsed back).
For a connector that tells its backend who the client is (a PROXY protocol header), the DMZ
adds four metadata pairs (docs/protocol.md): ``client-ip`` and ``client-port`` (the public
client, as the DMZ saw it: behind a load balancer that sends the PROXY protocol, the header's
source), ``accepted-ip`` and ``accepted-port`` (the address the client connected to: the DMZ's
public port, or the load balancer's, as its header says). IPs are written as Python's
``ipaddress`` writes them (IPv6 compressed, no brackets, no scope), ports in decimal.

``ends_metadata`` writes them (only for an end that is an IP address and a port);
``client_ends`` reads them back into a ``ProxyHeader``, or says why it cannot (an OPEN from an
older DMZ has none). A client whose accepted end the DMZ does not know (one a balancer forwarded
from another member: the member sees a cluster stream) gets the unspecified address of its
family and port 0 as destination, so the backend still learns the client.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from ipaddress import ip_address

from shield.proxy_protocol.header import Endpoint, ProxyHeader

CLIENT_IP = "client-ip"
CLIENT_PORT = "client-port"
ACCEPTED_IP = "accepted-ip"
ACCEPTED_PORT = "accepted-port"

_PORT = re.compile(r"0|[1-9][0-9]{0,4}")


def endpoint_of(host: object, port: object) -> Endpoint | None:
    """An ``Endpoint`` from an address's host and port, if they are an IP address and a port."""
    if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        return None
    try:
        return Endpoint(ip_address(host), port)
    except ValueError:
        return None


def ends_metadata(client: Endpoint | None, accepted: Endpoint | None) -> tuple[tuple[str, str], ...]:
    pairs: tuple[tuple[str, str], ...] = ()
    if client is not None:
        pairs += ((CLIENT_IP, client.host), (CLIENT_PORT, str(client.port)))
    if accepted is not None:
        pairs += ((ACCEPTED_IP, accepted.host), (ACCEPTED_PORT, str(accepted.port)))
    return pairs


def client_ends(metadata: Iterable[tuple[str, str]]) -> ProxyHeader | str:
    """The header for the client's two ends, or why there is none (the problem, for a log)."""
    values = dict(metadata)
    missing = [key for key in (CLIENT_IP, CLIENT_PORT) if key not in values]
    if missing:
        return f"the OPEN has no {', '.join(missing)} (a DMZ older than these metadata, or a client that is not on IP)"
    client = _endpoint(values[CLIENT_IP], values[CLIENT_PORT])
    if client is None:
        return "the OPEN's client-ip and client-port are not an IP address and a port"
    if ACCEPTED_IP not in values and ACCEPTED_PORT not in values:
        return ProxyHeader(client, Endpoint(ip_address("0.0.0.0" if client.address.version == 4 else "::"), 0))
    accepted = _endpoint(values.get(ACCEPTED_IP, ""), values.get(ACCEPTED_PORT, ""))
    if accepted is None:
        return "the OPEN's accepted-ip and accepted-port are not an IP address and a port"
    return ProxyHeader(client, accepted)


def _endpoint(host: str, port: str) -> Endpoint | None:
    if _PORT.fullmatch(port) is None or "%" in host:
        return None
    return endpoint_of(host, int(port))
