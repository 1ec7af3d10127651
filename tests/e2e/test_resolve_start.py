"""A connector whose backplane host does not resolve at start runs on, retries, and says why.

The real ``twistd`` process and the real resolver (getaddrinfo in a thread): ``.invalid`` never
resolves (RFC 2606), so the connector must keep running with /readyz at 503 naming the host,
log one warning for the whole failure streak, and still drain and exit 0 on SIGTERM.
"""

from __future__ import annotations

import time

from harness import Topology, http_get, iter_log_lines


def test_an_unresolvable_connect_host_is_not_fatal(topology: Topology) -> None:
    topology.certs(["internal1"])
    host = "shield-no-such-dmz.invalid"
    config = topology.internal_config("internal1", {"echo": "tcp://127.0.0.1:7"})
    text = config.read_text()
    text = text.replace(f'connect = ["tls://127.0.0.1:{topology.port("backplane")}"]', f'connect = ["tls://{host}:5941"]')
    text = text.replace("[internal.backplane]\n", "[internal.backplane]\nresolve-interval = 0.5\n")
    config.write_text(text)

    connector = topology.start_connector("internal1", wait=False)
    connector.wait_for_log("does not resolve")
    admin = topology.url("admin-internal1")
    deadline = time.monotonic() + 30.0
    status, body = 0, ""
    while time.monotonic() < deadline:
        try:
            status, body = http_get(f"{admin}/readyz", timeout=2.0)
        except OSError:
            time.sleep(0.1)
            continue
        if host in body:
            break
        time.sleep(0.1)
    assert status == 503 and f"host {host} does not resolve" in body, body

    time.sleep(1.5)  # a few retries (every 0.5 s until the first answer)
    assert connector.alive()
    warnings = list(iter_log_lines(connector, "does not resolve"))
    assert len(warnings) == 1, warnings
    assert "no endpoints yet; retrying every 0.5 s" in warnings[0]

    assert connector.stop() == 0
