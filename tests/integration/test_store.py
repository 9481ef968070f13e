"""The store contract, against a real etcd."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from federation.processes.local_etcd import LocalEtcd
from federation.store import AlreadyExists, Compacted, Cond, Conflict, Op, Store, StoreUnavailable
from federation.store.endpoints import resolve


async def test_create_is_create_if_absent(store: Store) -> None:
    rev = await store.create("things/a", {"v": 1})
    with pytest.raises(AlreadyExists):
        await store.create("things/a", {"v": 2})
    entry = await store.get("things/a")
    assert entry is not None
    assert entry.value == {"v": 1}
    assert entry.revision == rev


async def test_replace_compares_the_revision(store: Store) -> None:
    rev = await store.create("things/a", {"v": 1})
    new_rev = await store.replace("things/a", {"v": 2}, revision=rev)
    with pytest.raises(Conflict) as err:
        await store.replace("things/a", {"v": 3}, revision=rev)
    assert err.value.actual == new_rev
    entry = await store.get("things/a")
    assert entry is not None and entry.value == {"v": 2}


async def test_txn_is_all_or_nothing(store: Store) -> None:
    await store.put("things/a", {"v": 1})
    ok, _, _ = await store.txn(
        [Cond.absent("things/a")], [Op.put("things/b", {"v": 1}), Op.delete("things/a")]
    )
    assert not ok
    assert await store.get("things/b") is None
    assert await store.get("things/a") is not None


async def test_scan_revision_lets_a_watch_miss_nothing(store: Store) -> None:
    await store.put("things/a", {"v": 1})
    items, revision = await store.scan("things/")
    assert [e.key for e in items] == ["things/a"]
    await store.put("things/b", {"v": 2})  # written between the scan and the watch
    seen: list[str] = []

    async def watch() -> None:
        async for batch in store.watch("things/", start_revision=revision + 1):
            seen.extend(e.key for e in batch)
            if "things/c" in seen:
                return

    task = asyncio.create_task(watch())
    await store.put("things/c", {"v": 3})
    await asyncio.wait_for(task, 5)
    assert seen == ["things/b", "things/c"]


async def test_watch_from_a_compacted_revision_says_so(store: Store) -> None:
    first = await store.put("things/a", {"v": 1})
    latest = await store.put("things/a", {"v": 2})
    await store.put("things/a", {"v": 3})
    await store.compact(latest)
    with pytest.raises(Compacted):
        async for _ in store.watch("things/", start_revision=first):
            pass


async def test_lease_keys_vanish_when_the_lease_is_revoked(store: Store) -> None:
    lease = await store.grant(5)
    await store.put("alive/x", {}, lease=lease)
    assert await store.keepalive(lease) > 0
    await store.revoke(lease)
    assert await store.get("alive/x") is None
    assert await store.keepalive(lease) == 0


async def test_unreachable_etcd_is_store_unavailable_within_the_deadline(tmp_path: Path) -> None:
    lonely = LocalEtcd(tmp_path / "etcd")
    lonely.start()
    endpoint = lonely.endpoint
    lonely.stop()
    async with Store([endpoint], timeout=1.0) as store:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(StoreUnavailable):
            await store.get("anything")
        assert loop.time() - started < 3.0


def _a_host_name() -> str:
    """This machine's name when it resolves (it does where /etc/hosts names the host,
    as on CI runners and containers), else `localhost`."""
    name = socket.gethostname()
    try:
        socket.getaddrinfo(name, None, family=socket.AF_INET)
    except OSError:
        return "localhost"
    return name


async def test_an_endpoint_given_by_host_name_works(etcd: LocalEtcd) -> None:
    """Deploy files name etcd members (`etcd-1:2379`); gRPC's target takes addresses
    only, so the store resolves names before it connects."""
    async with Store([f"{_a_host_name()}:{etcd.client_port}"], prefix="/names/") as store:
        await store.put("x", {"v": 1})
        entry = await store.get("x")
        assert entry is not None and entry.value == {"v": 1}


async def test_host_names_resolve_and_addresses_stay_as_given() -> None:
    resolved, name = await resolve(["localhost:2379", "10.0.0.7:2380"])
    assert resolved == ["127.0.0.1:2379", "10.0.0.7:2380"]
    assert name == "localhost"
    assert await resolve(["10.0.0.7:2380"]) == (["10.0.0.7:2380"], None)


async def test_an_endpoint_that_does_not_resolve_is_unavailable_naming_it() -> None:
    with pytest.raises(StoreUnavailable, match=r"no-such-host\.invalid:2379"):
        await resolve(["no-such-host.invalid:2379"])


async def test_a_watch_from_far_behind_catches_up_past_grpcs_default_message_size(
    store: Store,
) -> None:
    """etcd sends a watch's backlog in responses of up to a thousand revisions; one can
    be far above gRPC's default 4 MiB limit on a received message. The mirror resumes
    from where it was after any stall, so such a response must be read, not refused
    (which left the watch failing on the same response for ever)."""
    value = {"blob": "x" * 100_000}
    first = await store.put("big/0", value)
    for i in range(1, 60):  # about 6 MB of events, one revision each
        await store.put(f"big/{i}", value)
    seen = 0
    async with asyncio.timeout(20):
        async for batch in store.watch("big/", start_revision=first):
            seen += len(batch)
            if seen >= 60:
                break
    assert seen == 60


async def test_a_strided_scan_reads_every_key_once_wherever_the_stride_guesses_wrong(
    store: Store,
) -> None:
    """Pages bounded by a stride (etcd counts a Range to its end, so an unbounded page
    of a long prefix costs the whole prefix) still read every key once: past a page
    holding more keys than the stride said, a gap, and keys the stride cannot name."""
    names = [f"log/{n:06d}" for n in range(1, 5001) if not 2200 < n <= 3300]  # a gap
    names += ["log/000005x", "log/-", "log/zzz", "log-head"]  # no stride names them
    for i in range(0, len(names), 100):
        await store.txn([], [Op.put(k, {"k": k}) for k in names[i : i + 100]])
    calls: list[str] = []

    def stride(last: str, n: int) -> str | None:
        calls.append(last)
        tail = last.removeprefix("log/")
        return f"log/{int(tail) + 1 + n:06d}" if tail.isdigit() else None

    got = [
        k for page in [p async for p in store.scan_pages("log", stride=stride)] for k, *_ in page
    ]
    assert got == sorted(names)
    assert len(calls) >= 4  # bounded pages were read, and past the gap again
