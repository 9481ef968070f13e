"""Hostile input benchmark: what a refused request costs the server's event loop.

Target (issue 15): a refused request costs the server less than 1 ms of loop time per
KiB of its body, a body under 1 KiB counted as 1 KiB (any request, even `{}`, costs the
loop ~0.3 ms); while it is refused, heartbeats and `/v1/health` keep being answered.

A real etcd and a real `federation serve` process (bench.common.cluster). Each body
below is sent one request at a time with a viewer's token to `POST
/v1/residency/evaluate`, which parses any body before it validates it. The loop's cost
is the server's main thread's CPU time (the event loop runs there), read in nanoseconds
from /proc/PID/task/PID/schedstat before and after the requests, less what the loop
spends idle in as long (the mirror, the election, the controller); the CPU of the
server's other threads (the thread that parses YAML bodies above 128 bytes, gRPC) is
shown apart. `/v1/health` is polled meanwhile, every 50 ms; its slowest answer is
shown, and its own loop time is counted in the figures (which it can only raise).
Last, 8 clients send 60,000-node bodies at once ("flood:"): how long `/v1/health` takes
while the parse thread is never idle.

    .venv/bin/python bench/hostile_input.py            # 40 requests per body
    .venv/bin/python bench/hostile_input.py --quick    # 8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cluster, record, table
from federation.api.body import YAML_ON_LOOP_BYTES as ON_LOOP

PATH = "/v1/residency/evaluate"
TARGET_MS_PER_KIB = 1.0
FLOOD_CLIENTS = 8


def billion_laughs() -> bytes:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    return ("\n".join(lines) + "\n").encode()


def dense_unclosed(size: int) -> bytes:
    """`size` bytes of a flow sequence of one-digit integers, never closed: refused at
    its very end, after every node was made (the densest YAML there is, 2 bytes a node)."""
    head = b"data_classes: ["
    return (head + b"1," * size)[:size]


def long_lines(size: int) -> bytes:
    line = b"- " + b"a" * 60 + b"\n"
    return b"data_classes:\n" + line * (size // len(line))


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    content_type: str = "application/yaml"


def cases() -> list[Case]:
    deep = 10_000
    return [
        Case("JSON {} (the fixed cost)", b"{}", "application/json"),
        Case("alias bomb (billion laughs)", billion_laughs()),
        Case("anchor at the end of 900 KiB", long_lines(900 * 1024) + b"- &a x\n"),
        Case("base-60 1:0:0:... 64 KiB", b"data_classes: [a]\nat: 1" + b":0" * 32_000),
        Case("base-60 1:0:0:... 900 KiB", b"data_classes: [a]\nat: 1" + b":0" * 460_000),
        Case("33 levels", b"data_classes: " + b"[" * 33 + b"]" * 33),
        Case(f"{deep} levels", b"data_classes: " + b"[" * deep + b"]" * deep),
        Case("5,000-digit integer", b"data_classes: [" + b"1" * 5000 + b"]"),
        Case(f"dense, unclosed, {ON_LOOP} B (on the loop)", dense_unclosed(ON_LOOP)),
        Case("dense, unclosed, 1 KiB", dense_unclosed(1024)),
        Case("dense, unclosed, 64 KiB", dense_unclosed(64 * 1024)),
        Case("60,000 nodes (over the cap)", b"data_classes: [" + b"a," * 60_000 + b"a]"),
        Case("invalid at the end of 900 KiB", long_lines(900 * 1024) + b"a: b: c\n"),
        Case("JSON nested 100,000 deep", b"[" * 100_000, "application/json"),
    ]


def thread_cpu_ns(pid: int, tid: int) -> int:
    return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])


def process_cpu_ns(pid: int) -> int:
    return sum(
        int((task / "schedstat").read_text().split()[0])
        for task in Path(f"/proc/{pid}/task").iterdir()
        if (task / "schedstat").exists()
    )


@dataclass
class Figures:
    status: int
    loop_ms: float  # per request
    other_ms: float  # per request, the server's other threads
    wall_ms: float  # per request, as the client saw it


async def idle_rate(pid: int) -> float:
    """The loop's CPU per second of wall time with no request: its background work."""
    start_ns, start = thread_cpu_ns(pid, pid), time.monotonic()
    await asyncio.sleep(1.0)
    return (thread_cpu_ns(pid, pid) - start_ns) / (time.monotonic() - start)


async def measure(
    http: aiohttp.ClientSession, url: str, token: str, pid: int, case: Case, n: int, idle: float
) -> Figures:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": case.content_type}
    statuses = set()

    async def once() -> None:
        async with http.post(url + PATH, data=case.body, headers=headers) as resp:
            await resp.read()
            statuses.add(resp.status)

    await once()  # warm: the token is cached, the thread pool started
    loop0, all0, wall0 = thread_cpu_ns(pid, pid), process_cpu_ns(pid), time.monotonic()
    for _ in range(n):
        await once()
    loop1, all1, wall1 = thread_cpu_ns(pid, pid), process_cpu_ns(pid), time.monotonic()
    background = idle * (wall1 - wall0)
    loop = max(0.0, loop1 - loop0 - background)
    other = (all1 - all0) - (loop1 - loop0)
    assert len(statuses) == 1, statuses
    return Figures(statuses.pop(), loop / n / 1e6, other / n / 1e6, (wall1 - wall0) / n * 1e3)


@contextlib.asynccontextmanager
async def health_probe(http: aiohttp.ClientSession, url: str) -> AsyncIterator[list[float]]:
    latencies: list[float] = []

    async def poll() -> None:
        while True:
            start = time.monotonic()
            async with http.get(url + "/v1/health") as resp:
                await resp.read()
            latencies.append(time.monotonic() - start)
            await asyncio.sleep(0.05)

    task = asyncio.create_task(poll())
    try:
        yield latencies
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def flood(
    http: aiohttp.ClientSession, url: str, token: str, case: Case, clients: int, seconds: float
) -> tuple[int, float, float]:
    """`clients` senders of `case` at once for `seconds`: how many were refused, and the
    median and slowest `/v1/health` answer meanwhile."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": case.content_type}
    end = time.monotonic() + seconds
    sent = 0

    async def sender() -> None:
        nonlocal sent
        while time.monotonic() < end:
            async with http.post(url + PATH, data=case.body, headers=headers) as resp:
                await resp.read()
                assert resp.status == 400, resp.status
                sent += 1

    async with health_probe(http, url) as health:
        await asyncio.gather(*(sender() for _ in range(clients)))
    ordered = sorted(health)
    return sent, ordered[len(ordered) // 2] * 1e3, ordered[-1] * 1e3


async def run(n: int, workdir: Path) -> tuple[list[list[str]], str]:
    rows: list[list[str]] = []
    worst_per_kib = 0.0
    async with cluster(workdir) as server, aiohttp.ClientSession() as http:
        admin = {"Authorization": f"Bearer {server.admin}"}
        async with http.post(
            server.url + "/v1/tokens", json={"role": "viewer"}, headers=admin
        ) as r:
            viewer = (await r.json())["token"]
        idle = await idle_rate(server.pid)
        await measure(http, server.url, viewer, server.pid, cases()[0], n, idle)  # warm-up
        for case in cases():
            async with health_probe(http, server.url) as health:
                f = await measure(http, server.url, viewer, server.pid, case, n, idle)
            kib = len(case.body) / 1024
            per_kib = f.loop_ms / max(kib, 1.0)  # a body under 1 KiB counts as 1 KiB
            if case.content_type != "application/json" or kib >= 1:
                worst_per_kib = max(worst_per_kib, per_kib)
            rows.append(
                [
                    case.name,
                    f"{kib:.1f}",
                    str(f.status),
                    f"{f.loop_ms:.3f}",
                    f"{per_kib:.3f}",
                    f"{f.other_ms:.2f}",
                    f"{f.wall_ms:.1f}",
                    f"{max(health, default=0) * 1e3:.0f}",
                ]
            )
        flood_case = next(c for c in cases() if c.name.startswith("60,000 nodes"))
        refused, health_p50, health_max = await flood(
            http, server.url, viewer, flood_case, FLOOD_CLIENTS, 2.0 if n < 40 else 10.0
        )
    fixed = float(rows[0][3])
    verdict = "OK" if worst_per_kib < TARGET_MS_PER_KIB else "MISSED"
    summary = (
        f"{n} requests per body: a refused body costs at most {worst_per_kib:.3f} ms of "
        f"loop time per KiB, one under 1 KiB counted as 1 KiB (target < {TARGET_MS_PER_KIB}, "
        f"{verdict}); the fixed cost of a refused request (JSON {{}}) is {fixed:.3f} ms; "
        f"the alias bomb {rows[1][3]} ms; flood: {FLOOD_CLIENTS} clients sending 60,000-node "
        f"bodies at once, {refused} refused, /v1/health p50 {health_p50:.1f} ms, "
        f"max {health_max:.1f} ms"
    )
    return rows, summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    n = 8 if args.quick else 40
    with tempfile.TemporaryDirectory(prefix="fed-bench-hostile-") as tmp:
        rows, summary = asyncio.run(run(n, Path(tmp)))
    headers = ["body", "KiB", "status", "loop ms", "loop ms/KiB", "other ms", "wall ms"]
    print(table([*headers, "health max ms"], rows))
    print(summary)
    record("hostile_input.py" + (" --quick" if args.quick else ""), summary)


if __name__ == "__main__":
    main()
