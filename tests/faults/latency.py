"""A TCP relay that delays what it carries: WAN latency on a kernel without netem.

    python latency.py LISTEN_HOST:PORT TARGET_HOST:PORT DELAY_MS JITTER_MS LOSS

Run inside a region's namespace (`ip netns exec`), listening on its loopback, so the
agent's traffic to a server crosses it. In each direction, every chunk read is
delivered DELAY_MS (plus or minus up to JITTER_MS) after it was read, in order (TCP
never reorders a stream); with probability LOSS a chunk is held one retransmission
timeout longer (200 ms plus the round trip), which is what a lost segment costs a
TCP connection. The round trip through the relay is thus twice DELAY_MS.

Standalone (no imports from the project), so it runs by path in any namespace.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time

CHUNK = 65536
RTO_S = 0.2  # Linux's minimum retransmission timeout


async def pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay: float,
    jitter: float,
    loss: float,
) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    delivering = asyncio.create_task(deliver())
    last = 0.0
    try:
        while True:
            data = await reader.read(CHUNK)
            due = time.monotonic() + delay + random.uniform(-jitter, jitter)
            if data and random.random() < loss:
                due += RTO_S + 2 * delay
            last = max(last, due)
            await queue.put((last, data))
            if not data:
                break
        await delivering
    except (ConnectionError, OSError):
        delivering.cancel()


async def serve(listen: str, target: str, delay: float, jitter: float, loss: float) -> None:
    to_host, to_port = target.rsplit(":", 1)

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(to_host, int(to_port))
        except OSError:
            client_w.close()
            return
        try:
            await asyncio.gather(
                pipe(client_r, server_w, delay, jitter, loss),
                pipe(server_r, client_w, delay, jitter, loss),
            )
        finally:
            for w in (client_w, server_w):
                w.close()

    host, port = listen.rsplit(":", 1)
    server = await asyncio.start_server(relay, host, int(port))
    async with server:
        await server.serve_forever()


def main() -> None:
    listen, target, delay_ms, jitter_ms, loss = sys.argv[1:6]
    asyncio.run(serve(listen, target, float(delay_ms) / 1000, float(jitter_ms) / 1000, float(loss)))


if __name__ == "__main__":
    main()
