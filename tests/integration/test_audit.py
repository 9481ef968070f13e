"""The audit log's group commit, against a real etcd: concurrent audited writes share
transactions, yet each writer gets the answer it would have had alone, and the chain
stays whole (federation/store/audit/)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import grpc.aio
import pytest

from federation.processes.local_etcd import LocalEtcd
from federation.store import (
    AlreadyExists,
    Cond,
    CredentialRevoked,
    Op,
    Store,
    audit,
    fence_writes,
    keys,
)
from federation.store.audit import Change
from federation.store.etcd import Entry
from tests.conftest import lose_answers


@dataclass
class Sent:
    """One etcd txn as the audit committer sent it."""

    conditions: list[Cond]
    ops: list[Op]
    ok: bool | None = None


def record_txns(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[Sent]:
    """Every etcd txn `store` sends from now on (audited writes reach etcd as plain txns)."""
    sent: list[Sent] = []
    original = store.txn

    async def txn(
        conditions: Sequence[Cond], ops: Sequence[Op], *, read_on_failure: Sequence[str] = ()
    ) -> tuple[bool, int, list[Entry | None]]:
        sent.append(Sent(list(conditions), list(ops)))
        result = await original(conditions, ops, read_on_failure=read_on_failure)
        sent[-1].ok = result[0]
        return result

    monkeypatch.setattr(store, "txn", txn)
    return sent


def create(key: str, value: dict[str, Any] | None = None) -> tuple[list[Cond], list[Op], Change]:
    """An audited create-if-absent of `key`, as audit.txn takes it."""
    return [Cond.absent(key)], [Op.put(key, value or {"v": 1})], Change("thing.create", key)


async def log(store: Store) -> list[dict[str, Any]]:
    entries, _ = await audit.since(store, 0, limit=100_000)
    return entries


async def assert_whole_chain(store: Store, n: int) -> list[dict[str, Any]]:
    """The log verifies and holds entries 1..n, without a gap."""
    result = await audit.verify(store)
    assert result.ok, result
    assert result.entries == n
    entries = await log(store)
    assert [e["seq"] for e in entries] == list(range(1, n + 1))
    return entries


async def no_committer_left() -> bool:
    for _ in range(20):
        if not [t for t in asyncio.all_tasks() if t.get_name() == "audit-committer"]:
            return True
        await asyncio.sleep(0)
    return False


async def test_concurrent_audited_writes_all_land_in_far_fewer_txns(store: Store) -> None:
    n = 200
    before = await store.revision()
    revisions = await asyncio.gather(
        *(
            audit.create(
                store, f"things/{i:03d}", {"i": i}, change=Change("thing.create", f"things/{i:03d}")
            )
            for i in range(n)
        )
    )
    # etcd gives each txn one revision: 200 writes in a handful of txns.
    consumed = await store.revision() - before
    assert consumed < n // 10, consumed
    assert len(set(revisions)) == consumed
    entries = await assert_whole_chain(store, n)
    assert sorted(e["resource"] for e in entries) == [f"things/{i:03d}" for i in range(n)]
    # Each entry's "after" revision is the revision its change was written at.
    written = {f"things/{i:03d}": r for i, r in enumerate(revisions)}
    assert all(e["after_revision"] == written[e["resource"]] for e in entries)
    things, _ = await store.scan("things/")
    assert len(things) == n
    assert await no_committer_left(), "the committer task outlived its writes"


async def test_a_merged_txn_that_fails_on_one_writers_condition_fails_only_that_writer(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = await store.create("things/taken", {"v": 0})  # not audited: the log is empty
    sent = record_txns(store, monkeypatch)
    names = ["things/a", "things/taken", "things/b", "things/c"]
    results = await asyncio.gather(
        *(audit.txn(store, *create(k), read_on_failure=[k]) for k in names)
    )
    # They were tried together, in one txn, which failed on things/taken's condition.
    assert sent[0].ok is False
    assert {op.key for op in sent[0].ops} >= set(names)
    ok, _, read = results[1]
    assert ok is False
    assert len(read) == 1 and read[0] is not None
    assert (read[0].key, read[0].value, read[0].revision) == ("things/taken", {"v": 0}, taken)
    for ok, revision, read in (results[0], *results[2:]):
        assert ok is True and read == []
        assert revision > taken
    entries = await assert_whole_chain(store, 3)
    assert sorted(e["resource"] for e in entries) == ["things/a", "things/b", "things/c"]
    taken_now = await store.get("things/taken")
    assert taken_now is not None and taken_now.value == {"v": 0}


async def test_writers_of_the_same_key_are_never_merged(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = record_txns(store, monkeypatch)
    results = await asyncio.gather(
        audit.create(store, "things/x", {"by": 1}, change=Change("thing.create", "things/x")),
        audit.create(store, "things/x", {"by": 2}, change=Change("thing.create", "things/x")),
        audit.create(store, "things/y", {"by": 3}, change=Change("thing.create", "things/y")),
        return_exceptions=True,
    )
    assert isinstance(results[0], int)
    assert isinstance(results[1], AlreadyExists), results[1]
    assert isinstance(results[2], int)
    # The first in the queue won; the other writer of things/x waited for the next txn
    # rather than compare the key before its first writer's put.
    x = await store.get("things/x")
    assert x is not None and x.value == {"by": 1}
    for txn in sent:
        keys_put = [op.key for op in txn.ops]
        assert len(keys_put) == len(set(keys_put)), keys_put
    entries = await assert_whole_chain(store, 2)
    assert sorted(e["resource"] for e in entries) == ["things/x", "things/y"]


async def test_a_writer_comparing_a_key_another_writes_waits_for_it(store: Store) -> None:
    revision = await store.create("things/x", {"v": 1})
    # A blind put of things/x, then a write of things/y on condition that things/x is
    # unchanged, queued in this order. One after the other, the condition fails; in one
    # txn it would hold, since etcd evaluates every condition before any put.
    results = await asyncio.gather(
        audit.txn(store, [], [Op.put("things/x", {"v": 2})], Change("thing.put", "things/x")),
        audit.txn(
            store,
            [Cond.at_revision("things/x", revision)],
            [Op.put("things/y", {"v": 1})],
            Change("thing.put", "things/y"),
            read_on_failure=["things/x"],
        ),
    )
    assert results[0][0] is True
    assert results[1][0] is False
    current = results[1][2][0]
    assert current is not None and current.value == {"v": 2}
    assert await store.get("things/y") is None
    entries = await assert_whole_chain(store, 1)
    assert entries[0]["resource"] == "things/x"


async def test_two_stores_writing_at_once_keep_one_chain(etcd: LocalEtcd, store: Store) -> None:
    # Like two server replicas: each has its own committer and cached head, and they
    # race on the head.
    async with Store([etcd.endpoint], prefix=store.prefix) as other:

        async def writes(s: Store, who: str) -> None:
            for round_ in range(5):
                await asyncio.gather(
                    *(
                        audit.create(
                            s,
                            f"things/{who}-{round_}-{i}",
                            {},
                            change=Change("thing.create", f"things/{who}-{round_}-{i}"),
                        )
                        for i in range(10)
                    )
                )

        await asyncio.gather(writes(store, "a"), writes(other, "b"))
    entries = await assert_whole_chain(store, 100)
    assert len({e["resource"] for e in entries}) == 100


async def test_a_writer_cancelled_while_queued_leaves_the_others_and_the_log_whole(
    store: Store,
) -> None:
    # One key, so each write is its own txn and most of them wait in the queue.
    tasks = [
        asyncio.create_task(
            audit.txn(store, [], [Op.put("things/same", {"n": i})], Change("thing.put", str(i)))
        )
        for i in range(10)
    ]
    await asyncio.sleep(0)  # every write is queued
    for task in tasks[5:]:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, tuple) and r[0] is True for r in results[:5]), results
    assert all(isinstance(r, asyncio.CancelledError) for r in results[5:]), results
    # Writes of one key land in the order they were made.
    same = await store.get("things/same")
    assert same is not None and same.value == {"n": 4}
    entries = await assert_whole_chain(store, 5)
    assert [e["resource"] for e in entries] == ["0", "1", "2", "3", "4"]
    # The committer still serves later writes.
    ok, _, _ = await audit.txn(store, *create("things/after"))
    assert ok
    await assert_whole_chain(store, 6)


async def test_a_writer_etcd_rejects_does_not_sink_the_txn_it_shared(store: Store) -> None:
    results = await asyncio.gather(
        audit.txn(store, *create("things/a")),
        # No such lease: etcd refuses the whole txn this put is in.
        audit.txn(store, [], [Op.put("things/leased", {}, lease=424242)], Change("x", "y")),
        audit.txn(store, *create("things/b")),
        return_exceptions=True,
    )
    assert isinstance(results[1], grpc.aio.AioRpcError)
    assert results[1].code() == grpc.StatusCode.NOT_FOUND
    assert results[0][0] is True and results[2][0] is True  # type: ignore[index]
    entries = await assert_whole_chain(store, 2)
    assert sorted(e["resource"] for e in entries) == ["things/a", "things/b"]
    assert await store.get("things/leased") is None


async def test_merged_txns_stay_within_etcds_limits(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = record_txns(store, monkeypatch)

    def wide(w: int, n: int) -> tuple[list[Cond], list[Op], Change]:
        names = [f"things/{w}-{i}" for i in range(n)]
        conds = [Cond.absent(k) for k in names]
        return conds, [Op.put(k, {}) for k in names], Change("thing.create", f"things/{w}")

    # 30 writers of 10 keys each, and one of 118 (the controller's largest batch).
    results = await asyncio.gather(
        *(audit.txn(store, *wide(w, 10)) for w in range(30)), audit.txn(store, *wide(99, 118))
    )
    assert all(ok for ok, _, _ in results)
    assert len(sent) >= 4
    for txn in sent:
        assert len(txn.conditions) <= 120 and len(txn.ops) <= 120
    # The large writer's txn was its own.
    (large,) = [t for t in sent if any(op.key.startswith("things/99-") for op in t.ops)]
    writers = {op.key.split("-")[0] for op in large.ops if op.key.startswith("things/")}
    assert writers == {"things/99"}
    await assert_whole_chain(store, 31)
    assert await store.count("things/") == 30 * 10 + 118


async def test_large_writes_share_txns_only_within_etcds_request_size(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = record_txns(store, monkeypatch)
    big = {"pad": "x" * 200_000}
    # Eight of them in one txn would pass etcd's 1.5 MiB request limit.
    results = await asyncio.gather(
        *(audit.txn(store, *create(f"things/{i}", big)) for i in range(8))
    )
    assert all(ok for ok, _, _ in results)
    assert all(t.ok for t in sent), "no txn was refused"
    assert 1 < len(sent) < 8
    await assert_whole_chain(store, 8)


async def test_a_store_whose_cached_head_is_stale_reads_it_again(
    etcd: LocalEtcd, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await audit.txn(store, *create("things/a")))[0]
    async with Store([etcd.endpoint], prefix=store.prefix) as other:
        assert (await audit.txn(other, *create("things/b")))[0]
    sent = record_txns(store, monkeypatch)
    assert (await audit.txn(store, *create("things/c")))[0]
    # The first try chained onto the head this store had written; the second onto the
    # head its failure branch read.
    assert [t.ok for t in sent] == [False, True]
    entries = await assert_whole_chain(store, 3)
    assert [e["resource"] for e in entries] == ["things/a", "things/b", "things/c"]


# -- write fences (the API fences a request's writes with its caller's token) ----------


async def test_writes_fenced_by_a_revoked_token_do_not_land(store: Store) -> None:
    await store.put("tokens/abc", {"id": "tok-1"})
    token = await store.get("tokens/abc")
    assert token is not None

    async def as_the_request(write: Any) -> Any:
        # A task of its own, as a request is: the fence is the task's.
        async def run() -> Any:
            fence_writes(token.key, token.revision)
            return await write()

        return await asyncio.create_task(run())

    await as_the_request(lambda: store.put("things/before", {"v": 1}))
    await as_the_request(
        lambda: audit.create(store, "things/audited-before", {"v": 1}, change=thing())
    )
    await store.txn([], [Op.delete("tokens/abc")])  # revoked, by someone else

    writes = [
        lambda: store.put("things/after-put", {"v": 1}),
        lambda: store.txn([], [Op.put("things/after-txn", {"v": 1})]),
        lambda: store.create("things/after-create", {"v": 1}),
        lambda: audit.create(store, "things/after-audited", {"v": 1}, change=thing()),
    ]
    for write in writes:
        with pytest.raises(CredentialRevoked):
            await as_the_request(write)
    found, _ = await store.scan("things/")
    assert sorted(e.key for e in found) == ["things/audited-before", "things/before"]
    await assert_whole_chain(store, 1)
    # Writes of tasks that are not fenced (the controller's) are not affected.
    await store.put("things/unfenced", {"v": 1})


async def test_a_revoked_writer_merged_with_others_fails_alone(store: Store) -> None:
    await store.put("tokens/abc", {"id": "tok-1"})
    token = await store.get("tokens/abc")
    assert token is not None
    await store.txn([], [Op.delete("tokens/abc")])

    async def write(i: int, fenced: bool) -> int:
        if fenced:
            fence_writes(token.key, token.revision)
        return await audit.create(store, f"things/{i:02d}", {"i": i}, change=thing())

    results = await asyncio.gather(
        *(asyncio.create_task(write(i, fenced=i == 3)) for i in range(8)),
        return_exceptions=True,
    )
    assert isinstance(results[3], CredentialRevoked)
    assert all(isinstance(r, int) for i, r in enumerate(results) if i != 3), results
    found, _ = await store.scan("things/")
    assert len(found) == 7 and "things/03" not in {e.key for e in found}
    await assert_whole_chain(store, 7)


async def test_the_first_writer_of_a_shared_txn_lends_it_no_fence(store: Store) -> None:
    # The txn runs in its first writer's context (for its trace): that writer's fence,
    # revoked here, must still fail that writer alone.
    await store.put("tokens/abc", {"id": "tok-1"})
    token = await store.get("tokens/abc")
    assert token is not None
    await store.txn([], [Op.delete("tokens/abc")])

    async def write(i: int) -> int:
        if i == 0:
            fence_writes(token.key, token.revision)
        return await audit.create(store, f"things/{i:02d}", {"i": i}, change=thing())

    results = await asyncio.gather(
        *(asyncio.create_task(write(i)) for i in range(4)), return_exceptions=True
    )
    assert isinstance(results[0], CredentialRevoked)
    assert all(isinstance(r, int) for r in results[1:]), results
    await assert_whole_chain(store, 3)


def thing() -> Change:
    return Change("thing.create", "things/x")


async def test_entries_with_any_details_read_back_as_written_and_verify(store: Store) -> None:
    details = {"note": "Zürich → São Paulo", "nested": {"prev": "x", "seq": 9}, "n": 1}
    await audit.create(
        store, "things/a", {"v": 1}, change=Change("thing.create", "things/a", details=details)
    )
    [entry] = await assert_whole_chain(store, 1)
    assert entry["details"] == details
    assert entry["action"] == "thing.create" and entry["resource"] == "things/a"


async def test_an_audited_write_whose_answer_was_lost_is_known_to_have_landed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await audit.create(
        store, "things/before", {"v": 0}, change=Change("thing.create", "things/before")
    )
    lose_answers(store, monkeypatch, 1)
    # Sent again, the txn fails its own conditions; the committer finds the head it
    # wrote and answers success instead of "already exists".
    revision = await audit.create(
        store, "things/a", {"v": 1}, change=Change("thing.create", "things/a")
    )
    entry = await store.get("things/a")
    assert entry is not None and entry.revision == revision
    assert store.last_write >= revision  # so the mirror waits for it: read your writes
    entries = await assert_whole_chain(store, 2)
    assert entries[-1]["resource"] == "things/a"
    assert entries[-1]["after_revision"] == revision
    # The committer goes on from the head it recognised.
    await audit.create(store, "things/b", {"v": 2}, change=Change("thing.create", "things/b"))
    await assert_whole_chain(store, 3)


async def test_a_plain_write_whose_answer_was_lost_reports_the_conflict_it_meets(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    lose_answers(store, monkeypatch, 1)
    # Without an audit entry there is nothing to tell its own write from another's:
    # the compare-and-swap fails safe, and the value is the one written once.
    with pytest.raises(AlreadyExists):
        await store.create("things/a", {"v": 1})
    entry = await store.get("things/a")
    assert entry is not None and entry.value == {"v": 1}


# -- the committer's lifecycle (a server starts it, and stops it before the store) -------


async def test_a_started_committer_stays_until_stopped_and_commits_what_is_queued(
    store: Store,
) -> None:
    committer = audit.committer(store)

    async def as_a_fenced_request() -> None:
        # Started from a request: its task must not take the request's fence along.
        fence_writes("tokens/none", 1)
        committer.start()

    await asyncio.create_task(as_a_fenced_request())
    results = await asyncio.gather(*(audit.txn(store, *create(f"things/{i}")) for i in range(5)))
    assert all(ok for ok, _, _ in results)
    assert not await no_committer_left(), "a started committer waits for writes"
    queued = asyncio.create_task(audit.txn(store, *create("things/queued")))
    await asyncio.sleep(0)  # queued
    await committer.stop()
    assert (await queued)[0]
    assert await no_committer_left()
    # After stop, writes still land: the committer runs again while they wait.
    assert (await audit.txn(store, *create("things/later")))[0]
    assert await no_committer_left()
    await assert_whole_chain(store, 7)


async def test_stopping_a_committer_that_never_ran_is_harmless(store: Store) -> None:
    await audit.committer(store).stop()
    assert (await audit.txn(store, *create("things/a")))[0]
    await assert_whole_chain(store, 1)


async def _written(store: Store, n: int) -> list[str]:
    """`n` chained entries written straight into etcd, as the committer writes them
    (and the head moved last); their keys."""
    head, at = audit.Head(), datetime.now(UTC)
    written: list[str] = []
    for i in range(0, n, 100):
        ops = []
        for _ in range(min(100, n - i)):
            text, head = audit.make_entry(head, thing(), at)
            written.append(audit.entry_key(head.seq))
            ops.append(Op.put_raw(written[-1], text))
        await store.txn([], ops)
    await store.put(keys.AUDIT_HEAD, {"seq": head.seq, "hash": head.hash})
    return written


async def walked(store: Store) -> int:
    return sum([len(page) async for page in audit.walk(store)])


async def test_a_long_log_is_walked_whole_and_a_key_in_it_or_past_a_gap_breaks_it(
    store: Store,
) -> None:
    """The walk reads pages bounded by entry numbers (etcd would count the whole rest
    of the log for each open-ended page): it still sees every key under the log."""
    written = await _written(store, 2500)
    assert await walked(store) == 2500
    await store.put(audit.entry_key(4000), {"seq": 4000})  # past the head, after a gap
    with pytest.raises(audit.ChainBroken, match="entry 2501 is missing"):
        await walked(store)
    await store.delete(audit.entry_key(4000))
    await store.put(written[1499] + "x", {"seq": 1501})  # a key between two entries
    with pytest.raises(audit.ChainBroken, match="entry 1501 is missing"):
        await walked(store)


async def test_entries_since_a_sequence_number_are_read_from_it_on(store: Store) -> None:
    n = 1200  # more than a page of etcd's replies (1,000)
    await asyncio.gather(
        *(audit.create(store, f"things/{i:04d}", {"i": i}, change=thing()) for i in range(n))
    )
    entries, _ = await audit.since(store, 1100, limit=1000)
    assert [e["seq"] for e in entries] == list(range(1101, n + 1))
    entries, _ = await audit.since(store, 150, limit=1000)
    assert [e["seq"] for e in entries] == list(range(151, 1151))
    assert (await audit.since(store, n))[0] == []
    entries, _ = await audit.since(store, 0, limit=3)
    assert [e["seq"] for e in entries] == [1, 2, 3]
