"""Property tests: random countries, groups, policies and instants against DESIGN section 5.

A small pool of countries (with the territories and neighbours that are easy to get
wrong) keeps collisions between allow, deny and exemptions frequent.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation.model.errors import ResidencyError
from federation.model.jurisdictions import COUNTRIES
from federation.model.policy import Exemption, Group, Mode, Policy
from federation.residency.evaluate import Evaluation, empty_data_classes, evaluate
from federation.residency.groups import resolve

# Applied per test rather than as a global profile, so other test modules keep theirs.
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=150)


@dataclass(frozen=True)
class Region:
    name: str
    country: str | None


POOL = ["DE", "FR", "DK", "FO", "GL", "CH", "NO", "GB", "GG", "US", "BR", "RU"]
BUILTIN_REFS = ["group:eu", "group:eea", "group:eu-adequacy"]
ADMIN = ["g0", "g1", "g2"]
INSTANTS = [
    datetime(2021, 1, 1, tzinfo=UTC),
    datetime(2024, 5, 1, tzinfo=UTC),
    datetime(2026, 1, 25, 23, 59, 59, tzinfo=UTC),
    datetime(2026, 3, 1, 12, tzinfo=UTC),
]
SERVICES = ["svc", "other"]
CLASSES = ["a", "b"]

nows = st.sampled_from(INSTANTS)
entries = st.sampled_from(POOL + BUILTIN_REFS + ["group:" + g for g in ADMIN])


@st.composite
def admin_groups(draw: st.DrawFn) -> dict[str, Group]:
    """g0..g2 where gN may only include earlier groups, so there is never a cycle."""
    result: dict[str, Group] = {}
    for i, name in enumerate(ADMIN):
        members = st.sampled_from(POOL + BUILTIN_REFS + ["group:" + g for g in ADMIN[:i]])
        result[name] = Group(name=name, countries=draw(st.lists(members, max_size=4)))
    return result


@st.composite
def exemptions(draw: st.DrawFn, now: datetime) -> Exemption:
    # Expiries cluster around `now` so the expiry second itself is exercised.
    offset = draw(st.sampled_from([-86400, -1, 0, 1, 86400]))
    return Exemption(
        service=draw(st.sampled_from(SERVICES)),
        allow=draw(st.lists(entries, min_size=1, max_size=3)),
        expires=now + timedelta(seconds=offset),
        reason="ticket SEC-1",
    )


@st.composite
def policies(
    draw: st.DrawFn, now: datetime, classes: Sequence[str] = CLASSES, min_size: int = 0
) -> list[Policy]:
    count = draw(st.integers(min_value=min_size, max_value=4))
    return [
        Policy(
            name=f"p{i}",
            data_classes=draw(st.lists(st.sampled_from(classes), min_size=1, unique=True)),
            allow=draw(st.lists(entries, max_size=4)),
            deny=draw(st.lists(entries, max_size=2)),
            mode=draw(st.sampled_from(list(Mode))),
            exemptions=draw(st.lists(exemptions(now), max_size=2)),
        )
        for i in range(count)
    ]


@st.composite
def regions(draw: st.DrawFn) -> list[Region]:
    countries = draw(st.lists(st.sampled_from(POOL), min_size=1, unique=True))
    result = [Region(f"r-{c.lower()}", c) for c in countries]
    if draw(st.booleans()):
        result.append(Region("r-none", None))
    return result


@st.composite
def worlds(draw: st.DrawFn) -> tuple[datetime, dict[str, Group], list[Policy], list[Region]]:
    now = draw(nows)
    return now, draw(admin_groups()), draw(policies(now)), draw(regions())


def run(
    now: datetime,
    groups: dict[str, Group],
    policy_list: Sequence[Policy],
    region_list: Sequence[Region],
    *,
    classes: Sequence[str] = ("a",),
    service: str | None = "svc",
) -> Evaluation:
    return evaluate(
        data_classes=classes,
        service=service,
        regions=region_list,
        policies=policy_list,
        groups=groups,
        now=now,
    )


def allowed(result: Evaluation) -> set[str]:
    return set(result.allowed_regions)


def reference_allowed(
    now: datetime,
    groups: dict[str, Group],
    policy_list: Sequence[Policy],
    region_list: Sequence[Region],
    classes: Sequence[str],
    service: str | None,
) -> set[str]:
    """DESIGN section 5, written as directly as possible."""
    wanted = set(classes) or {"public"}
    named = {c for p in policy_list for c in p.data_classes}
    if set(classes) - named - {"public"}:
        return set()
    bound = [p for p in policy_list if set(p.data_classes) & wanted and p.mode is Mode.ENFORCE]
    result = set()
    for region in region_list:
        if region.country is None:
            continue
        ok = True
        for p in bound:
            try:
                deny = resolve(p.deny, groups, now)
                allow = resolve(p.allow, groups, now)
                exempt: set[str] = set()
                for e in p.exemptions:
                    if e.service == service and now < e.expires:
                        exempt |= resolve(e.allow, groups, now)
            except ResidencyError:
                ok = False
                continue
            admitted = not p.allow or region.country in allow | exempt
            if region.country in deny or not admitted:
                ok = False
        if ok:
            result.add(region.name)
    return result


@PROPERTY
@given(
    worlds(),
    st.lists(st.sampled_from([*CLASSES, "public", "c"]), max_size=3),
    st.sampled_from([*SERVICES, None]),
)
def test_matches_the_reference_semantics(
    world: tuple[datetime, dict[str, Group], list[Policy], list[Region]],
    classes: list[str],
    service: str | None,
) -> None:
    now, groups, policy_list, region_list = world
    result = run(now, groups, policy_list, region_list, classes=classes, service=service)
    assert allowed(result) == reference_allowed(
        now, groups, policy_list, region_list, classes, service
    )
    for verdict in result.verdicts:
        assert verdict.reasons


@PROPERTY
@given(worlds(), st.sampled_from([*SERVICES, None]))
def test_an_enforce_deny_is_never_allowed(
    world: tuple[datetime, dict[str, Group], list[Policy], list[Region]], service: str | None
) -> None:
    now, groups, policy_list, region_list = world
    # Give every policy an active exemption naming what it denies: deny must still win.
    tempted = [
        p.model_copy(
            update={
                "exemptions": [
                    *p.exemptions,
                    Exemption(
                        service="svc",
                        allow=p.deny,
                        expires=now + timedelta(days=1),
                        reason="tempting",
                    ),
                ]
            }
        )
        if p.deny
        else p
        for p in policy_list
    ]
    result = run(now, groups, tempted, region_list, service=service)
    by_name = {r.name: r for r in region_list}
    for p in policy_list:
        if p.mode is Mode.ENFORCE and "a" in p.data_classes:
            denied = resolve(p.deny, groups, now)
            for name in result.allowed_regions:
                assert by_name[name].country not in denied


@PROPERTY
@given(st.data())
def test_several_policies_intersect(data: st.DataObject) -> None:
    now = data.draw(nows)
    groups = data.draw(admin_groups())
    # Every policy names `a`, so each alone also knows the class.
    policy_list = data.draw(policies(now, classes=["a"], min_size=1))
    region_list = data.draw(regions())
    together = allowed(run(now, groups, policy_list, region_list))
    alone = [allowed(run(now, groups, [p], region_list)) for p in policy_list]
    assert together == set.intersection(*alone)


@PROPERTY
@given(st.data())
def test_audit_mode_never_changes_the_allowed_set(data: st.DataObject) -> None:
    now = data.draw(nows)
    groups = data.draw(admin_groups())
    anchor = Policy(name="anchor", data_classes=["a", "b"])
    base = [anchor, *data.draw(policies(now))]
    audits = [
        p.model_copy(update={"name": f"audit-{p.name}", "mode": Mode.AUDIT})
        for p in data.draw(policies(now))
    ]
    region_list = data.draw(regions())
    classes = data.draw(st.lists(st.sampled_from(CLASSES), min_size=1, unique=True))

    plain = run(now, groups, base, region_list, classes=classes)
    with_audit = run(now, groups, [*base, *audits], region_list, classes=classes)
    assert allowed(with_audit) == allowed(plain)
    assert [f for f in plain.audit_findings if f.policy.startswith("audit-")] == []

    all_audit = [p.model_copy(update={"mode": Mode.AUDIT}) for p in base]
    everywhere = {r.name for r in region_list if r.country is not None}
    assert allowed(run(now, groups, all_audit, region_list, classes=classes)) == everywhere


@PROPERTY
@given(worlds(), st.sampled_from(SERVICES))
def test_an_expired_exemption_never_admits(
    world: tuple[datetime, dict[str, Group], list[Policy], list[Region]], service: str
) -> None:
    now, groups, policy_list, region_list = world

    def with_exemptions(expiry: datetime | None) -> list[Policy]:
        result = []
        for p in policy_list:
            kept = (
                []
                if expiry is None
                else [e.model_copy(update={"expires": expiry}) for e in p.exemptions]
            )
            result.append(p.model_copy(update={"exemptions": kept}))
        return result

    without = allowed(run(now, groups, with_exemptions(None), region_list, service=service))
    for expiry in (now, now - timedelta(seconds=1), now - timedelta(days=365)):
        expired = run(now, groups, with_exemptions(expiry), region_list, service=service)
        assert allowed(expired) == without


@PROPERTY
@given(worlds(), st.randoms(use_true_random=False), st.sampled_from([*SERVICES, None]))
def test_deterministic_and_independent_of_order(
    world: tuple[datetime, dict[str, Group], list[Policy], list[Region]],
    rnd: random.Random,
    service: str | None,
) -> None:
    now, groups, policy_list, region_list = world
    first = run(now, groups, policy_list, region_list, classes=["a", "b"], service=service)
    shuffled_policies = list(policy_list)
    shuffled_regions = list(region_list)
    rnd.shuffle(shuffled_policies)
    rnd.shuffle(shuffled_regions)
    shuffled_groups = dict(sorted(groups.items(), key=lambda _: rnd.random()))
    again = run(
        now,
        shuffled_groups,
        shuffled_policies,
        shuffled_regions,
        classes=["b", "a"],
        service=service,
    )
    assert again == first
    assert [v.region for v in first.verdicts] == sorted(v.region for v in first.verdicts)


@settings(PROPERTY, max_examples=40)
@given(worlds())
def test_empty_data_classes_agree_with_evaluation_over_the_whole_catalogue(
    world: tuple[datetime, dict[str, Group], list[Policy], list[Region]],
) -> None:
    now, groups, policy_list, _ = world
    catalogue = [Region(c.lower(), c) for c in sorted(COUNTRIES)]
    empty = {w.data_class for w in empty_data_classes(policy_list, groups, now)}
    for data_class in {c for p in policy_list for c in p.data_classes}:
        result = run(now, groups, policy_list, catalogue, classes=[data_class], service=None)
        assert (not result.allowed_regions) == (data_class in empty)
