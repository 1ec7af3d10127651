"""Public clients over TLS: ``wss://`` and ``tls://`` accepts with the service's certificate."""

from __future__ import annotations

import asyncio
import os
import ssl

from harness import Topology
from websockets.asyncio.client import connect


def test_wss_and_tls_clients_reach_the_backend(topology: Topology) -> None:
    certs = topology.certs(["internal1"], dmz_names=["dmz1", "public"])
    _, backend = topology.start_backend("echo")
    wss = topology.url("wss", "wss", "/echo")
    tls = f"tls://127.0.0.1:{topology.port('tls')}"
    topology.dmz_config(
        {"echo": {"accept": [wss, tls], "cert": "certs/public.pem"}},
        {"internal1": ["echo"]},
    )
    topology.internal_config("internal1", {"echo": f"tcp://127.0.0.1:{backend}"})
    topology.start_dmz()
    topology.start_connector("internal1")
    topology.dmz_ready()

    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    payload = os.urandom(3 * 1024 * 1024)

    async def clients() -> tuple[bytes, bytes, str]:
        async with connect(wss, ssl=context, server_hostname="public", max_size=None) as ws:
            for offset in range(0, len(payload), 65536):
                await ws.send(payload[offset : offset + 65536])
            received = bytearray()
            while len(received) < len(payload):
                received += await ws.recv()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", topology.port("tls"), ssl=context, server_hostname="public"
        )
        writer.write(payload)
        await writer.drain()
        echoed = await reader.readexactly(len(payload))
        version = writer.get_extra_info("ssl_object").version()
        writer.close()
        return bytes(received), echoed, version

    over_wss, over_tls, version = asyncio.run(clients())
    assert over_wss == payload
    assert over_tls == payload
    assert version in ("TLSv1.2", "TLSv1.3")


def test_tls_client_that_does_not_trust_the_certificate_is_refused(topology: Topology) -> None:
    topology.certs(["internal1"], dmz_names=["dmz1", "public"])
    _, backend = topology.start_backend("echo")
    tls = f"tls://127.0.0.1:{topology.port('tls')}"
    topology.dmz_config({"echo": {"accept": [tls], "cert": "certs/public.pem"}}, {"internal1": ["echo"]})
    topology.internal_config("internal1", {"echo": f"tcp://127.0.0.1:{backend}"})
    topology.start_dmz()
    topology.start_connector("internal1")
    topology.dmz_ready()

    async def client() -> None:
        await asyncio.open_connection(
            "127.0.0.1", topology.port("tls"), ssl=ssl.create_default_context(), server_hostname="public"
        )

    try:
        asyncio.run(client())
    except ssl.SSLCertVerificationError:
        pass
    else:
        raise AssertionError("a client without the CA must not accept the certificate")
    backend_log = topology.processes[0].log()
    assert "connection from" not in backend_log, "no tunnel may be opened before the TLS handshake"


def test_tls_client_that_never_handshakes_costs_no_tunnel(topology: Topology) -> None:
    topology.certs(["internal1"], dmz_names=["dmz1", "public"])
    backend, port = topology.start_backend("echo")
    tls = f"tls://127.0.0.1:{topology.port('tls')}"
    topology.dmz_config({"echo": {"accept": [tls], "cert": "certs/public.pem"}}, {"internal1": ["echo"]})
    topology.internal_config("internal1", {"echo": f"tcp://127.0.0.1:{port}"})
    topology.start_dmz()
    topology.start_connector("internal1")
    topology.dmz_ready()

    async def idle_clients() -> None:
        writers = []
        for _ in range(5):
            _, writer = await asyncio.open_connection("127.0.0.1", topology.port("tls"))
            writers.append(writer)
        await asyncio.sleep(1.0)
        for writer in writers:
            writer.close()

    asyncio.run(idle_clients())
    assert "connection from" not in backend.log()


def test_a_tls_client_gets_the_end_of_what_the_backend_sent(topology: Topology) -> None:
    """A backend that answers and closes (HTTP/1.0 style): the tls:// client reads the whole answer
    and then the end of the stream (TLS close_notify), every time, instead of waiting forever.
    It used to hang: the backend's EOF became a TCP half-close under the TLS layer, which sent
    the client neither the alert nor the FIN."""
    certs = topology.certs(["internal1"], dmz_names=["dmz1", "public"])
    _, backend = topology.start_backend("source")
    tls = f"tls://127.0.0.1:{topology.port('tls')}"
    topology.dmz_config({"source": {"accept": [tls], "cert": "certs/public.pem"}}, {"internal1": ["source"]})
    topology.internal_config("internal1", {"source": f"tcp://127.0.0.1:{backend}"})
    topology.start_dmz()
    topology.start_connector("internal1")
    topology.dmz_ready()
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))

    async def one(size: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", topology.port("tls"), ssl=context, server_hostname="public")
        writer.write(size.to_bytes(8, "big"))
        await writer.drain()
        received = await asyncio.wait_for(reader.read(), 10)  # to the end of the stream
        writer.close()
        return len(received)

    async def many() -> list[int]:
        return [await one(size) for size in (1, 5, 4096, 100_000, 1_000_000) * 6]

    assert asyncio.run(many()) == [1, 5, 4096, 100_000, 1_000_000] * 6
