"""Residency evidence over a long audit log: `GET /v1/residency/evidence` on a log of
1,000,000 entries (`--quick`: 50,000), target under a minute on this machine.

The log is written straight into etcd as the committer would write it (each entry
chained to the one before, the head moved at the end), so it verifies; it holds what
a busy federation's log holds: regions, policy changes, service writes and, mostly,
placement decisions for 1,000 services of ten data classes (one in ten carries the
class asked about) moving between DE, FR and NL, with times spread forward from now.
The report is then asked of a real `federation serve` (walked, verified and replayed
a page at a time) and timed end to end.

    .venv/bin/python bench/evidence.py [--quick] [--entries N]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cluster, cpu_seconds, record, rss_mb, table
from federation.client import ApiClient
from federation.store import Op, Store, keys
from federation.store.audit import Change, make_entry, read_head
from federation.store.audit.chain import entry_key, head_value

TARGET_S = 60.0
SERVICES = 1000
REGIONS = {"eu-de-1": "DE", "eu-fr-1": "FR", "eu-nl-1": "NL", "us-east-1": "US"}
BATCH = 100  # puts per txn, under etcd's default --max-txn-ops of 128
POLICY = {"name": "eu", "data_classes": ["phi-eu"], "allow": ["DE", "FR", "NL"]}


def changes(n: int, rng: random.Random) -> list[Change]:
    """What a busy log holds, in order: regions, a policy, services, then decisions
    (and now and then a policy or service write)."""
    out = [
        Change("region.create", keys.region(r), details={"country": c}) for r, c in REGIONS.items()
    ]
    out.append(Change("policy.put", keys.policy("eu"), details={"value": POLICY}))
    for i in range(SERVICES):
        classes = ["phi-eu"] if i % 10 == 0 else [f"pii-{i % 10}"]
        out.append(
            Change(
                "service.put",
                keys.service(f"svc-{i}"),
                details={"generation": 1, "data_classes": classes},
            )
        )
    eu = ["eu-de-1", "eu-fr-1", "eu-nl-1"]
    while len(out) < n:
        if rng.random() < 0.001:
            allow = sorted([*rng.sample(["DE", "FR", "NL"], 2), "DE"])
            value = {**POLICY, "allow": sorted(set(allow))}
            out.append(Change("policy.put", keys.policy("eu"), details={"value": value}))
            continue
        i = rng.randrange(SERVICES)
        if rng.random() < 0.1:
            region = rng.choice(list(REGIONS))
            out.append(Change("region.cordon", keys.region(region), details={"reason": "maint"}))
            continue
        pool = eu if i % 10 == 0 else [*eu, "us-east-1"]
        a, b = rng.sample(pool, 2)
        decision = {
            "regions": {a: 2, b: 1},
            "draining": [],
            "draining_replicas": {},
            "data_classes": ["phi-eu"] if i % 10 == 0 else [f"pii-{i % 10}"],
            "countries": {a: REGIONS[a], b: REGIONS[b]},
            "policies": {"eu": 1} if i % 10 == 0 else {},
            "reason": "Placed",
            "generation": 1,
            "placement_before": 0,
        }
        out.append(
            Change(
                "placement.decide",
                keys.PLACEMENTS,
                actor="controller:bench",
                details={"services": {f"svc-{i}": decision}},
            )
        )
    return out[:n]


async def load(endpoint: str, n: int) -> tuple[datetime, datetime, float]:
    """Write `n` chained entries after the current head; returns the period they span
    and the seconds the load took."""
    rng = random.Random(7)
    started = time.monotonic()
    async with Store([endpoint]) as store:
        head = await read_head(store)
        at = datetime.now(UTC)
        first = at
        ops: list[Op] = []
        for change in changes(n, rng):
            text, head = make_entry(head, change, at)
            ops.append(Op.put_raw(entry_key(head.seq), text))  # as the committer does
            at += timedelta(seconds=5)
            if len(ops) == BATCH:
                await store.txn([], ops)
                ops = []
        ops.append(Op.put_raw(keys.AUDIT_HEAD, head_value(head)))
        await store.txn([], ops)
    return first, at, time.monotonic() - started


async def run(n: int, workdir: Path) -> tuple[list[list[str]], str]:
    async with cluster(workdir) as server:
        first, last, load_s = await load(server.etcd, n)
        rss_before = rss_mb(server.pid)
        cpu_before = cpu_seconds(server.pid)
        query = f"data_class=phi-eu&from={first.isoformat()}&to={last.isoformat()}".replace(
            "+", "%2B"
        )
        async with ApiClient(server.url, server.admin, timeout=600) as api:
            started = time.monotonic()
            answer: Any = await api.request("GET", f"/v1/residency/evidence?{query}")
            wall = time.monotonic() - started
            health_started = time.monotonic()
            await api.request("GET", "/v1/health")
            health_ms = (time.monotonic() - health_started) * 1000
        cpu = cpu_seconds(server.pid) - cpu_before
        rss_after = rss_mb(server.pid)
    report = answer["report"]
    rows = [
        [
            f"{report['chain']['entries']:,}",
            f"{load_s:.1f}",
            f"{wall:.1f}",
            f"{cpu:.1f}",
            f"{report['chain']['entries'] / wall:,.0f}",
            f"{report['summary']['intervals']:,}",
            f"{report['summary']['not_allowed']}",
            f"{rss_before:.0f} → {rss_after:.0f}",
        ]
    ]
    verdict = "met" if wall < TARGET_S else "MISSED"
    summary = (
        f"evidence over {report['chain']['entries']:,} audit entries: {wall:.1f} s end to end "
        f"(target < {TARGET_S:.0f} s, {verdict}), {cpu:.1f} s server CPU, "
        f"{report['chain']['entries'] / wall:,.0f} entries/s, {report['summary']['intervals']:,} "
        f"intervals; server RSS {rss_before:.0f} → {rss_after:.0f} MiB; /v1/health after: "
        f"{health_ms:.0f} ms"
    )
    return rows, summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--entries", type=int, default=None)
    args = parser.parse_args(argv)
    n = args.entries or (50_000 if args.quick else 1_000_000)
    with tempfile.TemporaryDirectory(prefix="fed-bench-evidence-") as tmp:
        rows, summary = asyncio.run(run(n, Path(tmp)))
    headers = ["entries", "load s", "report s", "server cpu s", "entries/s", "intervals"]
    print(table([*headers, "violations", "rss MiB"], rows))
    print(summary)
    record("evidence.py" + (" --quick" if args.quick else ""), summary)


if __name__ == "__main__":
    main()
