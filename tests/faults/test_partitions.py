"""Partitions between live processes (docs/reliability.md has the bounds and figures).

Every part runs in a network namespace of its own (`topology.py`); the faults take a
link down or blackhole the routes between two namespaces while everything stays up.
Who ran when is read from the instances' own log, never from the API; every client
operation goes into a history the checker holds to (`history.py`).

Scenarios 2 and 3 run in every test run, with shortened faults; 1, 4 and 5 are
marked `long_faults`, which the default run deselects. `tests/faults/run_all` runs
all five with the full durations (`FAULT_FULL=1`).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import pytest

from tests.conftest import TTL
from tests.faults.history import lost_writes, stale_reads, violations
from tests.faults.topology import (
    REGIONS,
    NetCluster,
    double_runs,
    lives,
    most_running,
    wait_regions_ready,
)

pytestmark = pytest.mark.slow

FULL = os.environ.get("FAULT_FULL") == "1"


def lasting(short: float, full: float) -> float:
    """A fault's duration: `full` under tests/faults/run_all, else `short`."""
    return full if FULL else short


MARGIN = TTL / 3  # the agent's fencing margin: one heartbeat interval (docs/agent.md)
FENCE_SLACK_S = 1.0  # a loaded 2-core machine: the fence loop and SIGTERM's delivery
MOVE_S = TTL + 10  # the singleton runs elsewhere within this of the cut
DRAIN_S = 20  # after healing, extra replicas are gone within this
DEADLINE_S = 5 + 3  # a server cut from etcd answers within its 5 s etcd deadline
HANDOVER_S = TTL + 3  # another server leads within this of the cut
LOST_LOGGED_S = TTL + 1.5  # the cut leader logs its loss when its local lease runs out
ETCD_ELECTION_S = 3  # the majority elects a leader within this, if etcd-0 led


@dataclass(frozen=True)
class RegionPartition:
    """What one run of scenario 2 measured (wall-clock seconds after the cut)."""

    fenced: float | None  # the cut-off singleton stopped
    replaced: float  # its replacement started in another region
    drained: float | None  # after the heal: extra web replicas gone
    double_runs: list[str]
    problems: list[str]


def partition_a_region(
    c: NetCluster, *, hold_s: float, agent_extra: tuple[str, ...] = ()
) -> RegionPartition:
    """Scenario 2: eu-de-1 runs a singleton and a 1-replica service; its link goes
    down for `hold_s` while clients write through both servers; then it heals."""
    for region in REGIONS:
        c.start_agent(region, *(agent_extra if region == "eu-de-1" else ()))
    wait_regions_ready(c, list(REGIONS))
    c.deploy_logged("ledger", singleton=True, placement={"prefer": ["eu-de-1"]})
    c.deploy_logged("web", replicas=1, placement={"prefer": ["eu-de-1"]})
    for name in ("ledger", "web"):
        c.wait_running_in(name, "eu-de-1", 30)
    c.start_workload(c.servers)
    time.sleep(1.5)
    cut_off = c.hosts["eu-de-1"]
    cut = time.time()
    c.net.isolate(cut_off)
    try:
        c.wait_running_in("ledger", "eu-fr-1", MOVE_S)
        time.sleep(max(0.0, cut + hold_s - time.time()))
    finally:
        c.net.rejoin(cut_off)
    healed = time.time()
    deadline = time.monotonic() + DRAIN_S + 10
    while most_running(c.instance_log, "web", time.time()) > 1:
        assert time.monotonic() < deadline, "extra web replicas never drained"
        time.sleep(0.2)
    time.sleep(1)
    c.stop_workload()

    problems = violations(c.history.snapshot(), c.final_values())
    log = c.instance_log
    de_ledger = [x for x in lives(log) if x.service == "ledger" and x.region == "eu-de-1"]
    fr_ledger = [x for x in lives(log) if x.service == "ledger" and x.region == "eu-fr-1"]
    first_de = de_ledger[0]
    fenced = first_de.stop - cut if first_de.stop and first_de.stop < healed else None
    replaced = fr_ledger[0].start - cut
    de_web = next(x for x in lives(log) if x.service == "web" and x.region == "eu-de-1")
    if de_web.stop is not None and de_web.stop < healed:
        problems.append(f"web in eu-de-1 stopped {de_web.stop - cut:.2f} s into the partition")
    drained = de_web.stop - healed if de_web.stop is not None else None
    if most_running(log, "web", healed + DRAIN_S) > 1:
        problems.append(f"web ran more replicas than asked {DRAIN_S} s after the heal")
    print(
        f"region partition: singleton fenced {fenced and round(fenced, 2)} s after the cut (bound "
        f"{TTL - MARGIN + FENCE_SLACK_S:.2f}), replacement started {replaced:.2f} s after, "
        f"extra web replica gone {drained and round(drained, 2)} s after the heal; "
        f"{len(c.history.snapshot())} client operations"
    )
    return RegionPartition(fenced, replaced, drained, double_runs(log, "ledger"), problems)


def test_a_partitioned_region_fences_its_singleton_before_it_moves(
    netcluster: NetCluster,
) -> None:
    got = partition_a_region(netcluster, hold_s=lasting(10, 30))
    said = (netcluster.tmp / "agent-eu-de-1.log").read_text()
    assert f"singletons are fenced {MARGIN:.2f} s before the region's lease can expire" in said
    assert "fencing singletons" in said
    assert got.double_runs == []
    assert got.problems == []
    assert got.fenced is not None, "the cut-off agent never fenced its singleton"
    assert got.fenced <= TTL - MARGIN + FENCE_SLACK_S
    assert got.fenced < got.replaced
    assert got.replaced <= MOVE_S


def test_without_fencing_the_checker_sees_the_singleton_run_twice(
    netcluster: NetCluster,
) -> None:
    # The hidden --unsafe-no-fencing turns the fence off in this agent only: the
    # scenario must fail, or it could not catch a broken fence.
    got = partition_a_region(
        netcluster, hold_s=lasting(10, 30), agent_extra=("--unsafe-no-fencing",)
    )
    assert got.fenced is None
    assert got.double_runs, "the checker missed a singleton running in two regions"
    assert "ran twice at once" in got.double_runs[0]


def test_a_server_cut_from_etcd_answers_503_and_hands_over(netcluster: NetCluster) -> None:
    """Scenario 3: the leading server loses etcd but not its clients."""
    c = netcluster
    deadline = time.monotonic() + 20
    while (leader := c.leader()) is None:
        assert time.monotonic() < deadline, "no leader"
        time.sleep(0.2)
    other = next(s for s in c.servers if s is not leader)
    c.start_workload(c.servers)
    time.sleep(2)
    members = [c.hosts[m.name] for m in c.etcd.members]
    cut = time.monotonic()
    log_before = leader.log.read_text()
    for member in members:
        c.net.cut(c.hosts[leader.identity], member)
    answers: list[tuple[int, float]] = []
    new_leader_after = lost_after = None
    hold = lasting(12, 30)

    def probe() -> None:  # a client of the cut server, all through the cut
        while time.monotonic() - cut < hold:
            t0 = time.monotonic()
            status, _ = c.call_one(leader, "GET", "/v1/services")
            answers.append((status, time.monotonic() - t0))

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        while time.monotonic() - cut < hold:
            if new_leader_after is None and c.is_leader(other):
                new_leader_after = time.monotonic() - cut
            said = leader.log.read_text()[len(log_before) :]
            if lost_after is None and "lost leadership" in said:
                lost_after = time.monotonic() - cut
            time.sleep(0.1)
        prober.join(DEADLINE_S + 5)
    finally:
        for member in members:
            c.net.heal(c.hosts[leader.identity], member)
    healed = time.monotonic()
    while c.call_one(leader, "GET", "/v1/services")[0] != 200:
        assert time.monotonic() - healed < 30, "the server never recovered"
        time.sleep(0.2)
    time.sleep(1)
    c.stop_workload()
    ops = c.history.snapshot()
    stale = stale_reads(ops)
    print(
        f"server cut from etcd: answers {sorted({s for s, _ in answers})}, slowest "
        f"{max(t for _, t in answers):.2f} s; lost leadership logged {_s(lost_after)} s, "
        f"{other.identity} leads {_s(new_leader_after)} s after the cut; {len(ops)} "
        f"operations; stale reads after the heal: "
        f"{[(r.via, round(r.end - healed, 2)) for r in stale]}"
    )
    assert lost_writes(ops, c.final_values()) == []
    # Reads through the cut server answer 503 while it is cut. Once healed, its copy
    # of the state lags until its etcd watch reconnects; a read waits for it to hold
    # the audit head etcd has (Mirror.catch_up), so none misses a write made through
    # the other server.
    assert stale == []
    assert 500 not in {op.status for op in ops}
    assert {s for s, _ in answers[1:]} <= {503}, answers
    assert max(t for _, t in answers) <= DEADLINE_S, answers
    assert new_leader_after is not None and new_leader_after <= HANDOVER_S
    assert lost_after is not None and lost_after <= LOST_LOGGED_S


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.2f}"


@pytest.mark.long_faults
def test_an_etcd_member_cut_from_its_peers_serves_no_stale_reads(netcluster: NetCluster) -> None:
    """Scenario 4: etcd-0 (the minority side) is cut from its two peers. server-1 talks
    to etcd-0 only, server-2 to the other two."""
    c = netcluster
    minority, *majority = c.etcd.members
    c.attach("server-1", [minority.endpoint])
    on_majority = c.attach("server-2", [m.endpoint for m in majority])
    c.start_workload([on_majority])  # it reads back through both servers
    time.sleep(2)
    cut = time.monotonic()
    for member in majority:
        c.net.cut(c.hosts[minority.name], c.hosts[member.name])
    try:
        time.sleep(lasting(10, 30))
    finally:
        for member in majority:
            c.net.heal(c.hosts[minority.name], c.hosts[member.name])
    healed = time.monotonic()
    time.sleep(3)
    c.stop_workload()
    ops = c.history.snapshot()
    during = [op for op in ops if op.start > cut + ETCD_ELECTION_S and op.end < healed]
    writes = [op for op in during if op.kind == "write"]
    minority_reads = [op for op in during if op.kind == "read" and op.via == "server-1"]
    stale = stale_reads(ops)
    print(
        f"etcd minority cut: {len(writes)} writes through the majority during the cut, "
        f"outcomes {sorted({w.status for w in writes})}; reads through the minority's "
        f"server: {sorted({r.status for r in minority_reads})}; stale reads after the "
        f"heal: {[(r.via, round(r.end - healed, 2)) for r in stale]}"
    )
    assert lost_writes(ops, c.final_values()) == []
    assert writes and all(w.outcome == "ok" for w in writes), writes
    assert {r.status for r in minority_reads} <= {503}
    # Also a read that waited out the cut, answered once etcd-0 is back: never from
    # the server's copy before its watch caught up (Mirror.catch_up).
    assert stale == []


@pytest.mark.long_faults
def test_a_flapping_region_link_causes_no_failover_storm(netcluster: NetCluster) -> None:
    """Scenario 5: eu-de-1's link goes down 2 s, up 2 s, for FLAP_S."""
    c = netcluster
    for region in REGIONS:
        c.start_agent(region)
    wait_regions_ready(c, list(REGIONS))
    c.deploy_logged("ledger", singleton=True, placement={"prefer": ["eu-de-1"]})
    c.wait_running_in("ledger", "eu-de-1", 30)
    c.start_workload(c.servers)
    agent_log = c.tmp / "agent-eu-de-1.log"
    said_before = len(agent_log.read_text())
    flapping = lasting(16, 60)
    start = time.monotonic()
    host = c.hosts["eu-de-1"]
    try:
        while time.monotonic() - start < flapping:
            c.net.isolate(host)
            time.sleep(2)
            c.net.rejoin(host)
            time.sleep(2)
    finally:
        c.net.rejoin(host)
    time.sleep(10)
    c.stop_workload()
    losses = agent_log.read_text()[said_before:].count("new liveness lease")
    problems = violations(c.history.snapshot(), c.final_values())
    ran = [(x.region, x.stop and round(x.stop - x.start, 1)) for x in lives(c.instance_log)]
    print(
        f"flapping link: region lost and found {losses} times in {flapping:.0f} s "
        f"(bound {flapping / TTL:.0f}); singleton lives (region, seconds): {ran}"
    )
    assert double_runs(c.instance_log, "ledger") == []
    assert problems == []
    assert losses <= flapping / TTL


WAN_RTT_MS = {"eu-de-1": 40, "eu-fr-1": 90, "us-east-1": 180}  # to the federation
WAN_LOSS = 0.01


@pytest.mark.long_faults
def test_wan_latency_and_loss_leave_deploys_drills_and_failover_working(
    netcluster: NetCluster,
) -> None:
    """Scenario 1: each region's agent reaches the servers through a relay adding its
    round trip and 1% loss (`latency.py`); deploys, a live drill and a failover."""
    c = netcluster
    for region, rtt in WAN_RTT_MS.items():
        c.start_agent(region, servers=c.start_relays(region, rtt_ms=rtt, loss=WAN_LOSS))
    wait_regions_ready(c, list(REGIONS))
    c.deploy_logged("ledger", singleton=True, placement={"prefer": ["eu-de-1"]})
    c.deploy_logged("web", replicas=2, placement={"min_regions": 2})
    c.wait_running_in("ledger", "eu-de-1", 30)
    c.start_workload(c.servers)
    status, drill = c.call("POST", "/v1/drills", {"mode": "live", "regions": ["eu-fr-1"]})
    assert status in (200, 201, 202), drill
    started = time.monotonic()
    while (state := c.call("GET", f"/v1/drills/{drill['id']}")[1]["state"]) not in (
        "completed",
        "aborted",
        "failed",
    ):
        assert time.monotonic() - started < 120, "the drill never ended"
        time.sleep(0.5)
    drill_s = time.monotonic() - started
    time.sleep(lasting(3, 60))  # deploy traffic under WAN conditions
    log = c.tmp / "agent-eu-de-1.log"
    fences_before = log.read_text().count("fencing singletons")
    cut = time.time()
    c.net.isolate(c.hosts["eu-de-1"])
    try:
        c.wait_running_in("ledger", "eu-fr-1", MOVE_S)
    finally:
        c.net.rejoin(c.hosts["eu-de-1"])
    time.sleep(5)
    c.stop_workload()
    problems = violations(c.history.snapshot(), c.final_values())
    fr = [x for x in lives(c.instance_log) if x.service == "ledger" and x.region == "eu-fr-1"]
    replaced = fr[0].start - cut
    bound = TTL + 2 + WAN_RTT_MS["eu-fr-1"] / 1000
    print(
        f"WAN {WAN_RTT_MS} ms RTT, {WAN_LOSS:.0%} loss: live drill {state} in "
        f"{drill_s:.1f} s; failover: singleton started in eu-fr-1 {replaced:.2f} s after "
        f"the cut (bound {bound:.2f}); fences before the cut: {fences_before}; "
        f"{len(c.history.snapshot())} client operations"
    )
    assert state == "completed"
    assert problems == []
    assert double_runs(c.instance_log, "ledger") == []
    assert replaced <= bound
    assert fences_before == 0
