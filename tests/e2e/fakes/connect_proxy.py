"""An HTTP CONNECT proxy for end-to-end tests, as its own process on 127.0.0.1:

    python connect_proxy.py PORT [--auth USER:PASSWORD] [--refuse STATUS] [--hang]
                                 [--map HOST=ADDRESS ...]

- ``--auth``: a CONNECT without ``Proxy-Authorization: Basic`` of these credentials is answered
  407 with ``Proxy-Authenticate: Basic realm="test"``.
- ``--refuse STATUS``: every CONNECT is answered STATUS (403, 502, ...) and closed.
- ``--hang``: reads the CONNECT and never answers.
- ``--map``: the proxy resolves HOST to ADDRESS (the connector, which resolves nothing itself
  through a proxy, is given a name only this proxy knows: its only way to the DMZ is the proxy).

Otherwise it connects to the target and relays bytes both ways, reading nothing of them. It
prints ``listening`` once ready and one line per CONNECT, so tests can follow it:

    CONNECT dmz.test:5941 auth=yes -> 200
"""

from __future__ import annotations

import argparse
import asyncio
import base64

REASONS = {200: "Connection established", 403: "Forbidden", 407: "Proxy Authentication Required", 502: "Bad Gateway"}


def answer(status: int, extra: str = "") -> bytes:
    return f"HTTP/1.1 {status} {REASONS.get(status, 'Refused')}\r\n{extra}Content-Length: 0\r\n\r\n".encode()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--auth")
    parser.add_argument("--refuse", type=int)
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--map", action="append", default=[])
    args = parser.parse_args()
    expected = None if args.auth is None else "Basic " + base64.b64encode(args.auth.encode()).decode()
    hosts = dict(item.split("=", 1) for item in args.map)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        fields = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:] if line)}
        sent = fields.get("proxy-authorization")
        status = 200
        if method != "CONNECT":
            status = 403
        elif args.hang:
            print(f"CONNECT {target} auth={'yes' if sent else 'no'} -> (no answer)", flush=True)
            await asyncio.sleep(3600)
        elif expected is not None and sent != expected:
            status = 407
        elif args.refuse:
            status = args.refuse
        upstream = None
        if status == 200:
            host, _, port = target.rpartition(":")
            try:
                upstream = await asyncio.open_connection(hosts.get(host, host), int(port))
            except OSError:
                status = 502
        print(f"CONNECT {target} auth={'yes' if sent else 'no'} -> {status}", flush=True)
        if upstream is None:
            writer.write(answer(status, 'Proxy-Authenticate: Basic realm="test"\r\n' if status == 407 else ""))
            await writer.drain()
            writer.close()
            return
        writer.write(answer(200).replace(b"Content-Length: 0\r\n", b""))
        up_reader, up_writer = upstream
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", args.port, reuse_address=True)
        print("listening", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
