"""What the benchmarks share: a real etcd and a real `federation serve` process, the
machine line, and the results log at the end of docs/benchmarks.md."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from federation.client import ApiClient, ApiError
from federation.processes.certs import make_audit_key
from federation.processes.children import free_port, stop_processes, with_parent_death
from federation.processes.commands import ADMIN_TOKEN_ENV, serve_command
from federation.processes.local_etcd import LocalEtcd

# FEDERATION_BENCH_LOG sends the results log elsewhere (the test of the benchmarks).
DOCS = Path(
    os.environ.get("FEDERATION_BENCH_LOG")
    or Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
)
LOG_HEADING = "## Results log"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def record(bench: str, figures: str) -> None:
    """Append one dated line to the results log of docs/benchmarks.md."""
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if LOG_HEADING not in text:
        text = text.rstrip("\n") + (
            f"\n\n{LOG_HEADING}\n\nOne line per run, appended by the benchmarks themselves "
            "(`bench/*.py`).\n\n"
        )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = text.rstrip("\n")
    sep = "\n" if body.splitlines()[-1].startswith("- ") else "\n\n"
    text = body + sep + f"- {stamp} `{bench}` ({machine()}): {figures}\n"
    DOCS.write_text(text)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table, numbers right-aligned, for figures printed side by side."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class Server:
    url: str
    admin: str
    etcd: str
    pid: int
    identity: str = "bench-0"
    # Further replicas (`cluster(replicas=...)`): standbys while the first one leads.
    standbys: list[Server] = field(default_factory=list)


def _spawn(
    workdir: Path,
    etcd: LocalEtcd,
    admin: str,
    name: str,
    region_ttl: int,
    etcd_history: float | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - owned by the child
    command = serve_command(
        etcd=[etcd.endpoint],
        port=port,
        identity=name,
        region_ttl=region_ttl,
        etcd_history=etcd_history,
        log_level="warning",
        # Signed audit checkpoints and evidence reports (bench/evidence.py) need it.
        audit_key=make_audit_key(workdir / "audit.key"),
    )
    proc = subprocess.Popen(
        with_parent_death(command),
        env={**os.environ, ADMIN_TOKEN_ENV: admin},
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )
    log.close()
    return proc, port


async def _ready(url: str, admin: str, proc: subprocess.Popen[bytes]) -> None:
    async with ApiClient(url, admin, timeout=30) as api:
        end = time.monotonic() + 30
        while True:
            try:
                await api.request("GET", "/v1/ready")
                return
            except ApiError:
                if time.monotonic() > end or proc.poll() is not None:
                    raise
                await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def cluster(
    workdir: Path, *, region_ttl: int = 10, replicas: int = 1, etcd_history: float | None = None
) -> AsyncIterator[Server]:
    """A local etcd and `replicas` `federation serve` processes (stopped on the way
    out). The first one started leads (it is ready before the others start)."""
    etcd = LocalEtcd(workdir / "etcd")
    etcd.start()
    admin = "fed_bench-" + os.urandom(16).hex()  # FEDERATION_ADMIN_TOKEN: 32+ characters
    procs: list[subprocess.Popen[bytes]] = []
    try:
        servers = []
        for i in range(replicas):
            proc, port = _spawn(workdir, etcd, admin, f"bench-{i}", region_ttl, etcd_history)
            procs.append(proc)
            url = f"http://127.0.0.1:{port}"
            await _ready(url, admin, proc)
            servers.append(Server(url, admin, etcd.endpoint, proc.pid, f"bench-{i}"))
        servers[0].standbys = servers[1:]
        yield servers[0]
    finally:
        stop_processes(procs, timeout=15)
        etcd.stop()


@contextlib.asynccontextmanager
async def regions(
    api: ApiClient, names: dict[str, str], *, cpu: float = 100_000
) -> AsyncIterator[None]:
    """Register regions and keep them alive with heartbeats (no agent: nothing runs)."""
    tokens = {}
    for name, country in names.items():
        answer = await api.request("POST", "/v1/regions", body={"name": name, "country": country})
        tokens[name] = answer["token"]

    async def beat(name: str) -> None:
        async with ApiClient(api.url, tokens[name], timeout=30) as client:
            while True:
                with contextlib.suppress(ApiError):
                    await client.request(
                        "POST",
                        f"/v1/regions/{name}/heartbeat",
                        body={"capacity": {"cpu": cpu, "memory_mb": int(cpu * 1000)}},
                    )
                await asyncio.sleep(1.0)

    tasks = [asyncio.create_task(beat(n)) for n in names]
    try:
        while True:
            items = (await api.request("GET", "/v1/regions"))["items"]
            if all(i["state"] == "ready" for i in items):
                break
            await asyncio.sleep(0.1)
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=5)
