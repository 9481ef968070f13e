"""Scheduler: hypothesis properties of `place`/`place_all`, then named examples.

Scenarios come from a small pool of regions (DE, FR, US, CH; ready, unreachable,
cordoned; little capacity) so that rejections, full regions, grace periods and
explicit allow-lists collide often.
"""

from __future__ import annotations

import importlib
import math
import random
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from federation.model.allowlist import admits_command
from federation.model.service import ServiceSpec
from federation.scheduler import (
    COMMAND_NOT_ALLOWED,
    INSUFFICIENT_CAPACITY,
    NO_COMPLIANT_REGION,
    PLACED,
    SCALED_TO_ZERO,
    SPREAD_UNSATISFIED,
    Decision,
    RegionInfo,
    Verdict,
    place,
    place_all,
)

place_module: Any = importlib.import_module("federation.scheduler.place")

PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=120)
FLEET = settings(PROPERTY, max_examples=60)  # several services per example: fewer of them
EPS = 1e-6

NAMES = [f"r{i}" for i in range(10)]
COUNTRIES = ["DE", "FR", "US", "CH"]
YES = Verdict(True, ("allowed by test policy",))
NO = Verdict(False, ("test policy: country not allowed",))


# --- builders ---------------------------------------------------------------------------


def spec(name: str = "svc", **fields: Any) -> ServiceSpec:
    body: dict[str, Any] = {"name": name, "command": ["run"]}
    body.update(fields)
    return ServiceSpec.model_validate(body)


def region(
    name: str,
    country: str = "DE",
    *,
    state: str = "ready",
    cpu: float = 16.0,
    memory: int = 16384,
    labels: Mapping[str, str] | None = None,
    unreachable_for: float | None = None,
) -> RegionInfo:
    return RegionInfo(
        name,
        country,
        dict(labels or {}),
        state,  # type: ignore[arg-type]
        cpu,
        memory,
        unreachable_for,
    )


def net_of(
    regions: Sequence[RegionInfo], service: ServiceSpec, placement: Mapping[str, int]
) -> list[RegionInfo]:
    """The regions once `service` holds `placement` (free capacity is net of it)."""
    return [
        replace(
            r,
            cpu_free=r.cpu_free - placement.get(r.name, 0) * service.resources.cpu,
            memory_free=r.memory_free - placement.get(r.name, 0) * service.resources.memory_mb,
        )
        for r in regions
    ]


def fits(r: RegionInfo, s: ServiceSpec, current: Mapping[str, int]) -> int:
    """Independent count of the replicas of `s` that region `r` has room for."""
    here = current.get(r.name, 0)
    cpu = math.floor((r.cpu_free + here * s.resources.cpu) / s.resources.cpu + 1e-9)
    mem = (r.memory_free + here * s.resources.memory_mb) // s.resources.memory_mb
    room = max(0, min(cpu, mem))
    if s.placement.max_per_region is not None:
        room = min(room, s.placement.max_per_region)
    return room


def eligible(
    s: ServiceSpec,
    regions: Sequence[RegionInfo],
    verdicts: Mapping[str, Verdict],
    current: Mapping[str, int],
) -> dict[str, int]:
    """Regions that pass every filter, with their room (computed here, not by the scheduler)."""
    result = {}
    for r in regions:
        verdict = verdicts.get(r.name)
        if verdict is None or not verdict.allowed or r.state != "ready":
            continue
        if s.placement.regions and r.name not in s.placement.regions:
            continue
        room = fits(r, s, current)
        if room >= 1:
            result[r.name] = room
    return result


def within_grace(r: RegionInfo, s: ServiceSpec) -> bool:
    return not s.failover.enabled or (r.unreachable_for or 0.0) < s.failover.grace_s


def same(a: Decision, b: Decision) -> bool:
    return (a.placement, a.reason, a.message, a.regions) == (
        b.placement,
        b.reason,
        b.message,
        b.regions,
    )


# --- strategies -------------------------------------------------------------------------


@st.composite
def regions_st(draw: st.DrawFn, min_size: int = 1) -> list[RegionInfo]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=min_size, max_size=8, unique=True))
    result = []
    for name in names:
        state = draw(st.sampled_from(["ready", "ready", "ready", "unreachable", "cordoned"]))
        result.append(
            region(
                name,
                draw(st.sampled_from(COUNTRIES)),
                state=state,
                cpu=draw(st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 4.0, 100.0])),
                memory=draw(st.sampled_from([0, 128, 512, 1024, 100_000])),
                labels={"provider": draw(st.sampled_from(["onprem", "cloud"]))},
                unreachable_for=(
                    draw(st.sampled_from([0.0, 5.0, 60.0])) if state == "unreachable" else None
                ),
            )
        )
    return result


@st.composite
def spec_st(draw: st.DrawFn, name: str = "svc", names: Sequence[str] = NAMES) -> ServiceSpec:
    placement: dict[str, Any] = {
        "min_regions": draw(st.integers(1, 4)),
        "max_per_region": draw(st.none() | st.integers(1, 4)),
        "prefer": draw(st.lists(st.sampled_from(names), max_size=2, unique=True)),
        "regions": draw(
            st.just([]) | st.lists(st.sampled_from(names), min_size=1, max_size=5, unique=True)
        ),
        "failback": draw(st.sampled_from(["manual", "auto"])),
    }
    if draw(st.booleans()):
        placement["prefer_labels"] = {"provider": "onprem"}
    return spec(
        name,
        replicas=draw(st.integers(0, 8)),
        resources={
            "cpu": draw(st.sampled_from([0.25, 0.5, 1.0])),
            "memory_mb": draw(st.sampled_from([64, 128, 256])),
        },
        placement=placement,
        failover={
            "enabled": draw(st.booleans()),
            "grace_s": draw(st.sampled_from([0.0, 10.0])),
        },
    )


@dataclass
class Scenario:
    spec: ServiceSpec
    regions: list[RegionInfo]
    verdicts: dict[str, Verdict]
    current: dict[str, int]
    rebalance: bool

    def decide(self) -> Decision:
        return place(self.spec, self.regions, self.verdicts, self.current, rebalance=self.rebalance)


@st.composite
def verdicts_st(draw: st.DrawFn, regions: Sequence[RegionInfo]) -> dict[str, Verdict]:
    # Some regions have no verdict at all: that must count as a rejection.
    choice = st.sampled_from([YES, YES, NO, None])
    drawn = {r.name: draw(choice) for r in regions}
    return {n: v for n, v in drawn.items() if v is not None}


@st.composite
def scenarios(draw: st.DrawFn, with_current: bool = True) -> Scenario:
    regions = draw(regions_st())
    current: dict[str, int] = {}
    if with_current:
        names = [r.name for r in regions] + ["gone"]  # a region that no longer exists
        current = draw(st.dictionaries(st.sampled_from(names), st.integers(1, 5), max_size=4))
    return Scenario(
        draw(spec_st(names=[r.name for r in regions])),
        regions,
        draw(verdicts_st(regions)),
        current,
        draw(st.booleans()),
    )


# --- properties: filters ----------------------------------------------------------------


@PROPERTY
@given(scenarios())
def test_residency_is_a_filter(sc: Scenario) -> None:
    decision = sc.decide()
    for name in decision.placement:
        verdict = sc.verdicts.get(name)
        assert verdict is not None and verdict.allowed, name


@PROPERTY
@given(scenarios())
def test_nothing_new_in_unreachable_or_cordoned_regions(sc: Scenario) -> None:
    decision = sc.decide()
    by_name = {r.name: r for r in sc.regions}
    for name, count in decision.placement.items():
        r = by_name[name]
        assert r.state != "cordoned", name
        if r.state == "unreachable":
            # Only replicas already there, left in place during the failover grace.
            assert within_grace(r, sc.spec), name
            assert count <= sc.current.get(name, 0), name


@PROPERTY
@given(scenarios())
def test_only_in_the_explicit_allow_list(sc: Scenario) -> None:
    decision = sc.decide()
    if sc.spec.placement.regions:
        assert set(decision.placement) <= set(sc.spec.placement.regions)
    assert set(decision.placement) <= {r.name for r in sc.regions}


@PROPERTY
@given(scenarios())
def test_max_per_region(sc: Scenario) -> None:
    decision = sc.decide()
    limit = sc.spec.placement.max_per_region
    assert all(count >= 1 for count in decision.placement.values())
    if limit is not None:
        assert max(decision.placement.values(), default=0) <= limit


@PROPERTY
@given(scenarios())
def test_free_capacity_counting_own_replicas(sc: Scenario) -> None:
    decision = sc.decide()
    res = sc.spec.resources
    for r in sc.regions:
        count = decision.placement.get(r.name, 0)
        here = sc.current.get(r.name, 0)
        if count <= here:
            continue  # nothing new there (e.g. kept in a lost region)
        assert count * res.cpu <= r.cpu_free + here * res.cpu + EPS, r.name
        assert count * res.memory_mb <= r.memory_free + here * res.memory_mb, r.name


@PROPERTY
@given(scenarios())
def test_never_more_than_replicas(sc: Scenario) -> None:
    decision = sc.decide()
    assert decision.placed <= sc.spec.replicas
    assert decision.desired == sc.spec.replicas


# --- properties: assignment -------------------------------------------------------------


@PROPERTY
@given(scenarios(with_current=False))
def test_all_placed_and_spread_when_there_is_room(sc: Scenario) -> None:
    rooms = eligible(sc.spec, sc.regions, sc.verdicts, {})
    assume(sum(rooms.values()) >= sc.spec.replicas)
    decision = sc.decide()
    assert decision.placed == sc.spec.replicas
    assert len(decision.placement) >= min(
        sc.spec.placement.min_regions, len(rooms), sc.spec.replicas
    )


@PROPERTY
@given(scenarios(), st.randoms(use_true_random=False))
def test_deterministic_whatever_the_input_order(sc: Scenario, rnd: random.Random) -> None:
    first = sc.decide()
    shuffled = list(sc.regions)
    rnd.shuffle(shuffled)
    reordered = Scenario(
        sc.spec,
        shuffled,
        dict(reversed(list(sc.verdicts.items()))),
        dict(reversed(list(sc.current.items()))),
        sc.rebalance,
    )
    again = reordered.decide()
    assert same(first, again)
    assert same(first, sc.decide())


@PROPERTY
@given(scenarios(with_current=False), st.booleans())
def test_no_churn_when_nothing_changed(sc: Scenario, rebalance: bool) -> None:
    # Any failback mode, with or without a rebalance: deciding again on the state the
    # first decision produced gives the same placement.
    first = sc.decide()
    regions = net_of(sc.regions, sc.spec, first.placement)
    again = place(sc.spec, regions, sc.verdicts, first.placement, rebalance=rebalance)
    assert again.placement == first.placement
    assert again.reason == first.reason


@PROPERTY
@given(scenarios(with_current=False), st.data())
def test_a_valid_current_placement_is_kept(sc: Scenario, data: st.DataObject) -> None:
    rooms = eligible(sc.spec, sc.regions, sc.verdicts, {})
    assume(rooms)
    # Any placement the filters accept; the spec then asks for exactly that many
    # replicas and no more spread than it has.
    names = data.draw(st.lists(st.sampled_from(sorted(rooms)), min_size=1, unique=True))
    current = {n: data.draw(st.integers(1, rooms[n])) for n in names}
    placement = sc.spec.placement.model_copy(
        update={
            "failback": "manual",
            "min_regions": min(sc.spec.placement.min_regions, len(current)),
        }
    )
    s = sc.spec.model_copy(update={"replicas": sum(current.values()), "placement": placement})
    decision = place(s, net_of(sc.regions, s, current), sc.verdicts, current)
    assert decision.placement == current
    assert decision.reason == PLACED


@PROPERTY
@given(scenarios(with_current=False), st.data())
def test_a_region_coming_back_does_not_pull_replicas_back(
    sc: Scenario, data: st.DataObject
) -> None:
    ready = [r for r in sc.regions if r.state == "ready"]
    assume(ready)
    back = data.draw(st.sampled_from(ready))
    lost = [
        replace(r, state="unreachable", unreachable_for=1e6) if r is back else r for r in sc.regions
    ]
    during = place(sc.spec, lost, sc.verdicts, {})
    assert back.name not in during.placement
    after = net_of(sc.regions, sc.spec, during.placement)
    manual = place(sc.spec, after, sc.verdicts, during.placement)
    if sc.spec.placement.failback == "manual":
        # Nothing leaves the regions that took over; only missing replicas may go back.
        for name, count in during.placement.items():
            assert manual.placement.get(name, 0) >= count, name
        if during.placed == sc.spec.replicas:
            assert manual.placement == during.placement
    # failback: auto, or a rebalance: as if placed afresh on the recovered regions.
    fresh = place(sc.spec, sc.regions, sc.verdicts, {})
    rebalanced = place(sc.spec, after, sc.verdicts, during.placement, rebalance=True)
    assert rebalanced.placement == fresh.placement
    if sc.spec.placement.failback == "auto":
        assert manual.placement == fresh.placement


@PROPERTY
@given(scenarios(), st.data())
def test_replicas_in_a_lost_region_wait_for_the_grace(sc: Scenario, data: st.DataObject) -> None:
    held = sorted(n for n in sc.current if n in sc.verdicts and sc.verdicts[n].allowed)
    assume(held)
    lost_name = data.draw(st.sampled_from(held))
    lost_for = data.draw(st.sampled_from([0.0, 3.0, 9.9, 10.0, 30.0]))
    regions = [
        replace(r, state="unreachable", unreachable_for=lost_for) if r.name == lost_name else r
        for r in sc.regions
    ]
    s = sc.spec.model_copy(
        update={"failover": sc.spec.failover.model_copy(update={"grace_s": 10.0, "enabled": True})}
    )
    decision = place(s, regions, sc.verdicts, sc.current, rebalance=sc.rebalance)
    allow_list = s.placement.regions
    if lost_for >= 10.0 or (allow_list and lost_name not in allow_list):
        assert lost_name not in decision.placement
        return
    here = sc.current[lost_name]
    limit = s.placement.max_per_region
    if sum(sc.current.values()) <= s.replicas and (limit is None or here <= limit):
        assert decision.placement.get(lost_name) == here
    else:  # a scale-down or a lower max_per_region may take some of them
        assert decision.placement.get(lost_name, 0) <= here


# --- properties: many services ----------------------------------------------------------


@st.composite
def fleets(
    draw: st.DrawFn,
) -> tuple[
    list[ServiceSpec], list[RegionInfo], dict[str, dict[str, Verdict]], dict[str, dict[str, int]]
]:
    regions = draw(regions_st())
    names = [r.name for r in regions]
    specs = [draw(spec_st(f"s{i}", names)) for i in range(draw(st.integers(1, 4)))]
    verdicts = {s.name: draw(verdicts_st(regions)) for s in specs}
    # What the services hold is already net of the regions' free capacity.
    current: dict[str, dict[str, int]] = {}
    for s in specs:
        held = draw(st.dictionaries(st.sampled_from(names), st.integers(1, 3), max_size=3))
        if held:
            current[s.name] = held
    return specs, regions, verdicts, current


@FLEET
@given(fleets(), st.frozensets(st.sampled_from([f"s{i}" for i in range(4)])))
def test_place_all_never_overcommits_a_region(fleet: Any, rebalance: frozenset[str]) -> None:
    specs, regions, verdicts, current = fleet
    decisions = place_all(specs, regions, verdicts, current, rebalance=rebalance)
    assert set(decisions) == {s.name for s in specs}
    for r in regions:
        if r.state != "ready":
            continue
        cpu_before = sum(current.get(s.name, {}).get(r.name, 0) * s.resources.cpu for s in specs)
        mem_before = sum(
            current.get(s.name, {}).get(r.name, 0) * s.resources.memory_mb for s in specs
        )
        cpu_after = sum(decisions[s.name].placement.get(r.name, 0) * s.resources.cpu for s in specs)
        mem_after = sum(
            decisions[s.name].placement.get(r.name, 0) * s.resources.memory_mb for s in specs
        )
        assert cpu_after <= r.cpu_free + cpu_before + EPS, r.name
        assert mem_after <= r.memory_free + mem_before, r.name


@FLEET
@given(fleets())
def test_place_all_is_deterministic(fleet: Any) -> None:
    specs, regions, verdicts, current = fleet
    first = place_all(specs, regions, verdicts, current)
    again = place_all(list(reversed(specs)), list(reversed(regions)), verdicts, current)
    assert first.keys() == again.keys()
    assert all(same(first[n], again[n]) for n in first)


@FLEET
@given(fleets())
def test_place_all_is_stable(fleet: Any) -> None:
    # Placing the fleet again on the state the first pass left moves nothing.
    specs, regions, verdicts, current = fleet
    first = place_all(specs, regions, verdicts, current)
    cpu = {r.name: r.cpu_free for r in regions}
    mem = {r.name: r.memory_free for r in regions}
    for s in specs:
        for name in cpu:
            delta = first[s.name].placement.get(name, 0) - current.get(s.name, {}).get(name, 0)
            cpu[name] -= delta * s.resources.cpu
            mem[name] -= delta * s.resources.memory_mb
    after = [replace(r, cpu_free=cpu[r.name], memory_free=mem[r.name]) for r in regions]
    placed = {n: d.placement for n, d in first.items() if d.placement}
    again = place_all(specs, after, verdicts, placed)
    for s in specs:
        # A service that got all its replicas keeps them. (One that did not may get
        # more: capacity freed by a service placed after it reaches it only now.)
        if s.placement.failback == "manual" and first[s.name].placed == s.replicas:
            assert again[s.name].placement == first[s.name].placement, s.name


@PROPERTY
@given(
    st.sampled_from([1.0, 1.5, 2.0, 3.0]),
    st.sampled_from([1.0, 1.5, 2.0, 3.0]),
    st.integers(1, 3),
    st.integers(1, 3),
)
def test_place_all_two_services_that_do_not_fit_together(
    cpu_a: float, cpu_b: float, replicas_a: int, replicas_b: int
) -> None:
    free = max(cpu_a * replicas_a, cpu_b * replicas_b)
    assume(cpu_a * replicas_a + cpu_b * replicas_b > free)
    a = spec("a", replicas=replicas_a, resources={"cpu": cpu_a, "memory_mb": 64})
    b = spec("b", replicas=replicas_b, resources={"cpu": cpu_b, "memory_mb": 64})
    regions = [region("eu-de-1", cpu=free)]
    verdicts = {"a": {"eu-de-1": YES}, "b": {"eu-de-1": YES}}
    decisions = place_all([a, b], regions, verdicts, {})
    full = [d for d in decisions.values() if d.placed == d.desired]
    assert len(full) < 2
    assert any(d.reason == INSUFFICIENT_CAPACITY for d in decisions.values())


# --- properties: reason and explanation -------------------------------------------------


@PROPERTY
@given(scenarios())
def test_reason(sc: Scenario) -> None:
    decision = sc.decide()
    s = sc.spec
    allowed = [r for r in sc.regions if r.name in sc.verdicts and sc.verdicts[r.name].allowed]
    usable = [
        r
        for r in allowed
        if r.state == "ready" and (not s.placement.regions or r.name in s.placement.regions)
    ]
    if s.replicas == 0:
        assert decision.reason == SCALED_TO_ZERO
        assert decision.placement == {}
    elif not allowed:
        assert decision.reason == NO_COMPLIANT_REGION
        assert decision.placement == {}
    elif decision.placed < s.replicas:
        assert decision.reason == (INSUFFICIENT_CAPACITY if usable else NO_COMPLIANT_REGION)
    elif len(decision.placement) < min(s.placement.min_regions, s.replicas):
        assert decision.reason == SPREAD_UNSATISFIED
    else:
        assert decision.reason == PLACED
    assert decision.message


@PROPERTY
@given(scenarios())
def test_every_region_explained_once(sc: Scenario) -> None:
    decision = sc.decide()
    lines = decision.regions
    assert sorted(c.region for c in lines) == sorted(r.name for r in sc.regions)
    for line in lines:
        assert line.reasons and all(line.reasons), line
        assert line.replicas == decision.placement.get(line.region, 0), line
        assert (line.outcome in ("chosen", "kept")) == (line.region in decision.placement), line
        verdict = sc.verdicts.get(line.region)
        assert line.compliant == (verdict is not None and verdict.allowed), line
    assert decision.allowed_regions == sorted(
        n for n, v in sc.verdicts.items() if v.allowed and n in {r.name for r in sc.regions}
    )
    assert decision.allowed_regions == [c.region for c in lines if c.compliant]
    assert decision.kept == {c.region: c.replicas for c in lines if c.outcome == "kept"}


@PROPERTY
@given(scenarios(with_current=False))
def test_fresh_placement_takes_the_best_ranked_regions(sc: Scenario) -> None:
    decision = sc.decide()
    ranked = [c for c in decision.regions if c.outcome in ("chosen", "eligible")]
    ranks = sorted(int(c.reasons[0].split("rank ")[1].split(";")[0]) for c in ranked)
    assert ranks == list(range(1, len(ranked) + 1))
    chosen = sorted(
        int(c.reasons[0].split("rank ")[1].split(";")[0]) for c in ranked if c.outcome == "chosen"
    )
    assert chosen == list(range(1, len(chosen) + 1))


@PROPERTY
@given(scenarios(), st.sampled_from([0, 3, 1000]))
def test_shortcuts_do_not_change_decisions(sc: Scenario, threshold: int) -> None:
    # place.py sorts small candidate sets outright and walks a shared ranking for big
    # ones; both must give the same decision.
    saved = place_module._SORT_BELOW
    try:
        place_module._SORT_BELOW = threshold
        decision = sc.decide()
        place_module._SORT_BELOW = 0 if threshold else 1000
        other = sc.decide()
    finally:
        place_module._SORT_BELOW = saved
    assert same(decision, other)


# --- named examples ---------------------------------------------------------------------

PATIENT: dict[str, Any] = {
    "replicas": 6,
    "resources": {"cpu": 0.5, "memory_mb": 256},
    "data_classes": ["phi-eu"],
    "placement": {"min_regions": 2, "max_per_region": 4, "prefer": ["eu-de-1"]},
}
DEMO = [region("eu-de-1", "DE"), region("eu-fr-1", "FR"), region("us-east-1", "US")]
EU_ONLY = {
    "eu-de-1": YES,
    "eu-fr-1": YES,
    "us-east-1": Verdict(False, ("policy eu-patient-data: US not in allow [group:eea]",)),
}


def lines(decision: Decision) -> dict[str, tuple[str, int]]:
    return {c.region: (c.outcome, c.replicas) for c in decision.regions}


def test_patient_records_spreads_over_de_and_fr() -> None:
    decision = place(spec("patient-records", **PATIENT), DEMO, EU_ONLY, {})
    assert decision.placement == {"eu-de-1": 3, "eu-fr-1": 3}
    assert decision.reason == PLACED
    assert lines(decision) == {
        "eu-de-1": ("chosen", 3),
        "eu-fr-1": ("chosen", 3),
        "us-east-1": ("rejected", 0),
    }
    us = next(c for c in decision.regions if c.region == "us-east-1")
    assert not us.compliant
    assert us.reasons == ("residency: policy eu-patient-data: US not in allow [group:eea]",)
    assert decision.allowed_regions == ["eu-de-1", "eu-fr-1"]


def test_patient_records_when_de_is_lost() -> None:
    s = spec("patient-records", **PATIENT)
    current = {"eu-de-1": 3, "eu-fr-1": 3}
    regions = net_of(DEMO, s, current)
    regions[0] = replace(regions[0], state="unreachable", unreachable_for=30.0)
    decision = place(s, regions, EU_ONLY, current)
    assert decision.placement == {"eu-fr-1": 4}
    assert decision.reason == INSUFFICIENT_CAPACITY
    assert (
        decision.message == "4 of 6 replicas placed: allowed regions are full or at max_per_region"
    )
    assert next(c for c in decision.regions if c.region == "eu-de-1").reasons == (
        "unreachable: region lease expired",
    )


def test_patient_records_within_the_failover_grace() -> None:
    s = spec("patient-records", **PATIENT, failover={"grace_s": 60})
    current = {"eu-de-1": 3, "eu-fr-1": 3}
    regions = net_of(DEMO, s, current)
    regions[0] = replace(regions[0], state="unreachable", unreachable_for=30.0)
    decision = place(s, regions, EU_ONLY, current)
    assert decision.placement == current
    assert decision.kept == {"eu-de-1": 3}
    assert lines(decision)["eu-de-1"] == ("kept", 3)


def test_patient_records_when_de_comes_back() -> None:
    s = spec("patient-records", **PATIENT)
    current = {"eu-fr-1": 4}
    regions = net_of(DEMO, s, current)
    # Manual failback: FR keeps its 4; only the 2 missing replicas go to DE.
    assert place(s, regions, EU_ONLY, current).placement == {"eu-de-1": 2, "eu-fr-1": 4}
    # A rebalance, or failback: auto, places afresh.
    assert place(s, regions, EU_ONLY, current, rebalance=True).placement == {
        "eu-de-1": 3,
        "eu-fr-1": 3,
    }
    auto = spec(
        "patient-records", **{**PATIENT, "placement": {**PATIENT["placement"], "failback": "auto"}}
    )
    assert place(auto, regions, EU_ONLY, current).placement == {"eu-de-1": 3, "eu-fr-1": 3}


def test_policy_change_removing_fr() -> None:
    s = spec("patient-records", **PATIENT)
    current = {"eu-de-1": 3, "eu-fr-1": 3}
    verdicts = {**EU_ONLY, "eu-fr-1": Verdict(False, ("FR no longer allowed",))}
    decision = place(s, net_of(DEMO, s, current), verdicts, current)
    assert decision.placement == {"eu-de-1": 4}
    assert decision.reason == INSUFFICIENT_CAPACITY
    unlimited = spec("patient-records", **{**PATIENT, "placement": {"min_regions": 2}})
    decision = place(unlimited, net_of(DEMO, unlimited, current), verdicts, current)
    assert decision.placement == {"eu-de-1": 6}
    assert decision.reason == SPREAD_UNSATISFIED


def test_no_compliant_region_places_nothing() -> None:
    nothing = {
        name: Verdict(False, ("not allowed",)) for name in ("eu-de-1", "eu-fr-1", "us-east-1")
    }
    decision = place(spec("patient-records", **PATIENT), DEMO, nothing, {})
    assert decision.placement == {}
    assert decision.reason == NO_COMPLIANT_REGION
    assert (
        decision.message == "0 of 6 replicas placed: no region is allowed for data classes [phi-eu]"
    )
    # No verdict at all for a region is a rejection too.
    assert place(spec("patient-records", **PATIENT), DEMO, {}, {}).reason == NO_COMPLIANT_REGION


def test_allowed_regions_all_down_is_no_compliant_region() -> None:
    regions = [replace(DEMO[0], state="cordoned"), replace(DEMO[1], state="unreachable"), DEMO[2]]
    decision = place(spec("patient-records", **PATIENT), regions, EU_ONLY, {})
    assert decision.placement == {}
    assert decision.reason == NO_COMPLIANT_REGION
    assert lines(decision)["eu-de-1"] == ("rejected", 0)
    assert next(c for c in decision.regions if c.region == "eu-de-1").reasons == ("cordoned",)


def test_scale_down_keeps_the_spread() -> None:
    s = spec("patient-records", **{**PATIENT, "replicas": 2})
    current = {"eu-de-1": 3, "eu-fr-1": 3}
    decision = place(s, net_of(DEMO, s, current), EU_ONLY, current)
    assert decision.placement == {"eu-de-1": 1, "eu-fr-1": 1}
    assert decision.reason == PLACED


def test_scale_down_takes_from_a_lost_region_first() -> None:
    s = spec("patient-records", **{**PATIENT, "replicas": 3}, failover={"grace_s": 60})
    current = {"eu-de-1": 3, "eu-fr-1": 3}
    regions = net_of(DEMO, s, current)
    regions[1] = replace(regions[1], state="unreachable", unreachable_for=5.0)
    decision = place(s, regions, EU_ONLY, current)
    assert decision.placed == 3
    assert decision.placement == {"eu-de-1": 2, "eu-fr-1": 1}


def test_failback_auto_does_not_flip_flop() -> None:
    # Two equal regions: placing the one replica makes its region look fuller, which
    # must not send it to the other region on the next pass.
    s = spec(
        "web", replicas=1, resources={"cpu": 4, "memory_mb": 64}, placement={"failback": "auto"}
    )
    regions = [region("eu-de-1", cpu=10), region("eu-fr-1", "FR", cpu=10)]
    verdicts = {"eu-de-1": YES, "eu-fr-1": YES}
    first = place(s, regions, verdicts, {})
    again = place(s, net_of(regions, s, first.placement), verdicts, first.placement)
    assert first.placement == again.placement == {"eu-de-1": 1}


def test_prefer_labels_and_explicit_regions() -> None:
    regions = [
        region("eu-de-1", labels={"provider": "cloud"}),
        region("eu-de-2", labels={"provider": "onprem"}),
        region("eu-fr-1", "FR", labels={"provider": "onprem"}, cpu=64),
    ]
    verdicts = {r.name: YES for r in regions}
    s = spec("web", replicas=1, placement={"prefer_labels": {"provider": "onprem"}})
    assert place(s, regions, verdicts, {}).placement == {"eu-fr-1": 1}  # most free cpu
    pinned = spec("web", replicas=2, placement={"regions": ["eu-de-1"]})
    decision = place(pinned, regions, verdicts, {})
    assert decision.placement == {"eu-de-1": 2}
    assert lines(decision)["eu-fr-1"] == ("rejected", 0)


def test_scaled_to_zero() -> None:
    decision = place(spec("web", replicas=0), DEMO, EU_ONLY, {"eu-de-1": 2})
    assert decision.placement == {}
    assert decision.reason == SCALED_TO_ZERO


def test_place_all_existing_services_go_first() -> None:
    regions = [region("eu-de-1", cpu=1.0)]  # 3 cpu in total, 2 held by "zeta"
    verdicts = {"alpha": {"eu-de-1": YES}, "zeta": {"eu-de-1": YES}}
    alpha = spec("alpha", replicas=1, resources={"cpu": 2.0})
    zeta = spec("zeta", replicas=1, resources={"cpu": 2.0})
    decisions = place_all([alpha, zeta], regions, verdicts, {"zeta": {"eu-de-1": 1}})
    assert decisions["zeta"].placement == {"eu-de-1": 1}
    assert decisions["alpha"].placement == {}
    assert decisions["alpha"].reason == INSUFFICIENT_CAPACITY


def test_place_all_shares_capacity_and_explains_each_service() -> None:
    regions = [region("eu-de-1", cpu=2.0), region("eu-fr-1", "FR", cpu=1.0)]
    verdicts = {n: {"eu-de-1": YES, "eu-fr-1": YES} for n in ("a", "b")}
    a = spec("a", replicas=2, resources={"cpu": 1.0})
    b = spec("b", replicas=1, resources={"cpu": 1.0})
    decisions = place_all([a, b], regions, verdicts, {})
    assert decisions["a"].placement == {"eu-de-1": 2}
    assert decisions["b"].placement == {"eu-fr-1": 1}
    # b's explanation shows the capacity it saw: DE already full.
    assert lines(decisions["b"])["eu-de-1"] == ("rejected", 0)


def test_decision_is_pure_data() -> None:
    a = place(spec("patient-records", **PATIENT), DEMO, EU_ONLY, {})
    b = place(spec("patient-records", **PATIENT), list(reversed(DEMO)), EU_ONLY, {})
    assert a == b
    assert "patient-records" in repr(a)
    # Built from a plain list of lines, as a caller may do, it answers the same.
    c = Decision(a.service, dict(a.placement), a.desired, a.reason, a.message, list(a.regions))
    assert c == a
    assert c.allowed_regions == a.allowed_regions == ["eu-de-1", "eu-fr-1"]
    assert c.kept == a.kept == {}


@pytest.mark.parametrize("threshold", [0, 1000])
def test_big_fleet_smoke(threshold: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(place_module, "_SORT_BELOW", threshold, raising=False)
    rnd = random.Random(7)
    regions = [
        region(f"r{i:02d}", COUNTRIES[i % 4], cpu=float(rnd.choice([2, 4, 8])), memory=4096)
        for i in range(30)
    ]
    specs = [
        spec(f"s{i:03d}", replicas=rnd.randint(1, 6), placement={"min_regions": rnd.randint(1, 3)})
        for i in range(200)
    ]
    verdicts = {
        s.name: {r.name: YES if (r.country != "US" or i % 2) else NO for r in regions}
        for i, s in enumerate(specs)
    }
    decisions = place_all(specs, regions, verdicts, {})
    for r in regions:
        used = sum(d.placement.get(r.name, 0) * 0.1 for d in decisions.values())
        assert used <= r.cpu_free + EPS


def test_explanation_is_taken_at_decision_time() -> None:
    current = {"eu-de-1": 3, "eu-fr-1": 3}
    s = spec("patient-records", **PATIENT)
    decision = place(s, net_of(DEMO, s, current), EU_ONLY, current)
    current.clear()
    decision.placement["us-east-1"] = 1  # a caller's change to the result
    assert lines(decision)["eu-de-1"] == ("chosen", 3)
    assert lines(decision)["us-east-1"] == ("rejected", 0)


def test_scheduler_does_no_io() -> None:
    # The scheduler is pure: importing it pulls in no HTTP, etcd or controller code.
    code = (
        "import sys, federation.scheduler; "
        "print(' '.join(m for m in sys.modules if m.split('.')[0] in "
        "('aiohttp', 'etcd3aio', 'grpc', 'tenacity') or m.startswith(('federation.store', "
        "'federation.api', 'federation.controller', 'federation.agent'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


# --- properties: the region owner's allowlist (--allow-exec) ----------------------------

COMMANDS = [["/usr/bin/python3", "-m", "app"], ["/opt/apps/web"], ["{python}", "x.py"], ["run"]]
ALLOWLISTS: list[tuple[str, ...] | None] = [
    None,
    (),
    ("/usr/bin/python3",),
    ("/opt/apps/*",),
    ("/usr/bin/*", "{python}"),
    ("*",),
]


@st.composite
def allowlist_scenarios(draw: st.DrawFn) -> Scenario:
    sc = draw(scenarios())
    regions = [replace(r, allow_exec=draw(st.sampled_from(ALLOWLISTS))) for r in sc.regions]
    command = draw(st.sampled_from(COMMANDS))
    return replace(sc, spec=sc.spec.model_copy(update={"command": command}), regions=regions)


@PROPERTY
@given(allowlist_scenarios())
def test_never_placed_where_the_allowlist_rejects_the_command(sc: Scenario) -> None:
    decision = sc.decide()
    by_name = {r.name: r for r in sc.regions}
    for name in decision.placement:
        assert admits_command(sc.spec.command, by_name[name].allow_exec), name
    # And the explanation says so for every such region.
    for line in decision.regions:
        if not admits_command(sc.spec.command, by_name[line.region].allow_exec):
            assert line.outcome == "rejected", line


def test_explain_rejects_a_region_whose_allowlist_excludes_the_command() -> None:
    s = spec(command=["/usr/local/bin/miner", "--fast"], replicas=1)
    regions = [
        replace(region("r1"), allow_exec=("/usr/bin/python3",)),
        replace(region("r2", cpu=1.0), allow_exec=("/usr/local/bin/*",)),
    ]
    decision = place(s, regions, {"r1": YES, "r2": YES}, {})
    assert decision.placement == {"r2": 1}
    lines = {line.region: line for line in decision.regions}
    assert lines["r1"].outcome == "rejected"
    assert lines["r1"].reasons == (
        "command not allowed in this region: /usr/local/bin/miner --fast",
    )
    # With no region that admits it, the service is pending with a reason that says why.
    alone = place(s, regions[:1], {"r1": YES}, {})
    assert alone.placement == {}
    assert alone.reason == COMMAND_NOT_ALLOWED
    assert "command not allowed in region(s) r1: /usr/local/bin/miner --fast" in alone.message
