"""A middlebox for end-to-end tests that cuts idle connections, as its own process on 127.0.0.1:

    python idle_cutter.py LISTEN_PORT TARGET_PORT IDLE_SECONDS

It relays each connection to 127.0.0.1:TARGET_PORT and closes both sides once no byte has
crossed in either direction for IDLE_SECONDS, as NAT gateways and firewalls do. It prints
``listening`` once ready and ``cut idle <peer>`` for each connection it cuts.
"""

from __future__ import annotations

import asyncio
import sys
import time


async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter, target: int, idle: float) -> None:
    peer = client_writer.get_extra_info("peername")
    server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
    last = [time.monotonic()]

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                last[0] = time.monotonic()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    tasks = [asyncio.ensure_future(pipe(client_reader, server_writer)), asyncio.ensure_future(pipe(server_reader, client_writer))]
    while not all(task.done() for task in tasks):
        await asyncio.sleep(0.2)
        if time.monotonic() - last[0] > idle:
            print(f"cut idle {peer}", flush=True)
            for writer in (client_writer, server_writer):
                writer.transport.abort()
            break
    await asyncio.gather(*tasks, return_exceptions=True)


async def main() -> None:
    listen, target, idle = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    server = await asyncio.start_server(lambda r, w: relay(r, w, target, idle), "127.0.0.1", listen)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
