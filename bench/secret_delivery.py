"""Secret delivery benchmark: what opening secrets adds to a region's assignment list.

No target of its own; it bounds what secrets add to a failover (the agents of the
target regions list or watch the assignments moved to them, each opened at delivery).

A real etcd and a real `federation serve` process with a KEK file; one region kept
alive by heartbeats, N services that each reference their own secret. The region's
list is read as the region's own token (every secret unwrapped, decrypted and checked
against residency) and as a viewer (references only); the difference per assignment
is the cost of delivery.

    .venv/bin/python bench/secret_delivery.py            # 1,000 services
    .venv/bin/python bench/secret_delivery.py --quick    # 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import _ready, machine, record, regions
from federation.client import ApiClient
from federation.processes.certs import make_kek_file
from federation.processes.children import free_port, stop_processes, with_parent_death
from federation.processes.commands import ADMIN_TOKEN_ENV, serve_command
from federation.processes.local_etcd import LocalEtcd

REGION = {"eu-de-1": "DE"}
ROUNDS = 5


async def run(services: int, workdir: Path) -> tuple[float, float]:
    etcd = LocalEtcd(workdir / "etcd")
    etcd.start()
    admin = "fed_bench-" + os.urandom(16).hex()
    port = free_port()
    command = serve_command(
        etcd=[etcd.endpoint],
        port=port,
        identity="bench-secrets",
        kek_file=make_kek_file(workdir / "kek"),
        log_level="warning",
    )
    proc = subprocess.Popen(
        with_parent_death(command),
        env={**os.environ, ADMIN_TOKEN_ENV: admin},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await _ready(url, admin, proc)
        async with ApiClient(url, admin, timeout=60) as api, regions(api, REGION):
            made = await api.request(
                "POST", "/v1/tokens", body={"role": "region", "region": "eu-de-1"}
            )
            viewer = await api.request("POST", "/v1/tokens", body={"role": "viewer"})
            for i in range(services):
                await api.put_secret(
                    f"s{i}", data_classes=["public"], data={"k": os.urandom(16).hex()}
                )
                await api.put_service(
                    f"svc{i}",
                    {
                        "command": ["true"],
                        "resources": {"cpu": 0.01, "memory_mb": 1},
                        "secrets": {"TOKEN": f"s{i}#k"},
                    },
                )
            path = "/v1/regions/eu-de-1/assignments"
            while len((await api.request("GET", path))["items"]) < services:
                await asyncio.sleep(0.2)
            timings: dict[str, list[float]] = {"region": [], "viewer": []}
            for who, token in (("region", made["token"]), ("viewer", viewer["token"])):
                async with ApiClient(url, token, timeout=60) as client:
                    for _ in range(ROUNDS):
                        started = time.perf_counter()
                        answer = await client.request("GET", path)
                        timings[who].append(time.perf_counter() - started)
                        if who == "region":
                            assert all("secret_env" in i for i in answer["items"])
            return statistics.median(timings["region"]), statistics.median(timings["viewer"])
    finally:
        stop_processes([proc], timeout=15)
        etcd.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    services = 200 if args.quick else 1000
    with tempfile.TemporaryDirectory() as tmp:
        region, viewer = asyncio.run(run(services, Path(tmp)))
    per = (region - viewer) / services * 1e6
    line = (
        f"secrets: list of {services} assignments, median of {ROUNDS}: region token "
        f"(values opened) {region * 1000:.0f} ms, viewer {viewer * 1000:.0f} ms; "
        f"delivery {per:.0f} us per assignment"
    )
    print(machine())
    print(line)
    record("secret_delivery.py" + (" --quick" if args.quick else ""), line)


if __name__ == "__main__":
    main()
