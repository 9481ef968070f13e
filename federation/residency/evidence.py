"""Residency evidence: where data of one class went over a period, from the audit log.

Pure. `Evidence` is fed the audit log's entries in order, from the first (the policies,
groups, regions and services in force at the start of the period are those the log
built up before it), and replays them: region countries (`region.create`), policies
and groups (`policy.put`, `group.put`, with their whole value), the data classes of
each service (`service.put`, `placement.decide`), and every placement decision. From
them it builds intervals: one service, one region, a constant number of replicas (or
a drain), under one set of policies. An interval ends when the replicas change, the
service goes, or a policy or group the class depends on changes (so each interval has
one set of rules in force).

Each interval is re-checked with `evaluate` against the policies, groups and
catalogue in force at that time: at its start and at its end (an exemption may expire
within it; the built-in groups, e.g. EU adequacy, are resolved as they stood on those
dates). An interval whose country was not allowed is a violation; a drain (replicas
kept in a region while their replacements start) in a country a policy change no
longer allows is counted apart, as what make-before-break costs.

What it cannot see: instances started outside the federation, and the time between a
decision and an agent acting on it (intervals are decisions, not process lifetimes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from federation.model.policy import Group, Policy
from federation.residency.evaluate import bound_policies, evaluate

JSON = dict[str, Any]
FORMAT = "federation-residency-evidence/1"
_INSTANT = timedelta(microseconds=1)


@dataclass(frozen=True)
class _Region:
    name: str
    country: str | None


@dataclass
class _Open:
    """An interval not yet ended."""

    service: str
    region: str
    country: str | None
    replicas: int | None
    draining: bool
    start: datetime
    decision: JSON


@dataclass
class Evidence:
    """The replay. `feed` every entry in order, then `report`."""

    data_class: str
    start: datetime
    end: datetime
    countries: dict[str, str] = field(default_factory=dict)
    policies: dict[str, tuple[Policy, int]] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    classes: dict[str, list[str] | None] = field(default_factory=dict)
    placed: dict[str, dict[tuple[str, bool], int | None]] = field(default_factory=dict)
    # The last decision of each service that does not carry the class, as logged.
    elsewhere: dict[str, Any] = field(default_factory=dict)
    open: dict[tuple[str, str, bool], _Open] = field(default_factory=dict)
    intervals: list[JSON] = field(default_factory=list)
    policy_changes: list[JSON] = field(default_factory=list)
    drills: dict[str, JSON] = field(default_factory=dict)
    moves: list[JSON] = field(default_factory=list)
    unclassified: set[str] = field(default_factory=set)
    first: JSON | None = None
    # The last entry in the period (its mark is `last`): kept whole, not copied each time.
    last_entry: Mapping[str, Any] | None = None
    entries: int = 0
    # Verdicts already computed, keyed by what decides them (see `_verdict`); the
    # version moves on every policy or group change, which is what empties it.
    version: int = 0
    verdicts: dict[tuple[Any, ...], tuple[bool, tuple[str, ...]]] = field(default_factory=dict)
    # The policies binding a set of classes, and their revisions, under the rules in
    # force (emptied with `verdicts`): every interval of the class asks the same.
    bindings: dict[tuple[str, ...], tuple[list[Policy], list[Policy], JSON]] = field(
        default_factory=dict
    )

    # -- the replay ------------------------------------------------------------------

    def feed(self, entry: Mapping[str, Any]) -> None:
        """One audit entry (as `GET /v1/audit` shows it), in sequence order."""
        at = datetime.fromisoformat(str(entry["at"]))
        self.entries += 1
        if at > self.end:
            return
        if at >= self.start:
            self.last_entry = entry
            if self.first is None:
                self.first = self._mark(entry)
        action = str(entry.get("action", ""))
        details = entry.get("details") or {}
        name = str(entry.get("resource", "")).rpartition("/")[2]
        if action == "placement.decide":
            self._decide(entry, at, details.get("services") or {})
        elif action == "service.put":
            self._classes(name, details.get("data_classes"), at, entry["seq"])
        elif action == "service.delete":
            self._place(name, {}, at, {"seq": entry["seq"], "reason": "ServiceDeleted"})
            self.classes.pop(name, None)
            self.elsewhere.pop(name, None)
        elif action in ("policy.put", "policy.delete", "group.put", "group.delete"):
            self._residency(entry, at, action, name, details)
        elif action == "region.create" and isinstance(details.get("country"), str):
            self.countries[name] = details["country"]
        elif action == "drill.create":
            self.drills[name] = {
                "id": name,
                "at": entry["at"],
                "by": entry.get("actor"),
                "mode": details.get("mode"),
                "regions": list(details.get("regions") or []),
                "ended_at": None,
                "outcome": None,
            }
        elif action in ("drill.abort", "drill.end") and name in self.drills:
            self.drills[name]["ended_at"] = entry["at"]
            self.drills[name]["outcome"] = details.get("state", "aborted")

    def _classes(self, service: str, classes: Any, at: datetime, seq: int) -> None:
        """Record the service's data classes; when they start or stop including the
        class, its intervals start or end here."""
        had = self.classes.get(service)
        was = had is not None and self.data_class in had
        if isinstance(classes, list):
            if classes != had:  # most decisions repeat the service's classes
                self.classes[service] = [str(c) for c in classes]
        elif service not in self.classes:
            self.classes[service] = None  # written before the log kept data classes
        now = self.data_class in (self.classes.get(service) or ())
        if now == was:
            return
        why = {"seq": seq, "reason": "DataClassesChanged"}
        if now and service in self.elsewhere:
            self._place(service, _wanted(self.elsewhere.pop(service)), at, why)
        elif not now and service in self.placed:
            for key in [k for k in self.open if k[0] == service]:
                self._close(key, at)
            held = self.placed.pop(service)
            self.elsewhere[service] = {
                "regions": {r: n for (r, drain), n in held.items() if not drain},
                "draining_replicas": {r: n for (r, drain), n in held.items() if drain},
            }

    def _carries(self, service: str) -> bool:
        classes = self.classes.get(service)
        if classes is None:
            if service in self.placed:
                self.unclassified.add(service)
            return False
        return self.data_class in classes

    def _decide(self, entry: Mapping[str, Any], at: datetime, services: Mapping[str, Any]) -> None:
        for service, d in services.items():
            if not isinstance(d, dict):
                continue
            self._classes(service, d.get("data_classes"), at, entry["seq"])
            for region, country in (d.get("countries") or {}).items():
                if isinstance(country, str):
                    self.countries.setdefault(region, country)
            if self.classes.get(service) is not None and not self._carries(service):
                # Most decisions are of other classes: kept as they came, looked at only
                # if the service's classes come to include this one.
                self.elsewhere[service] = d
                continue
            decision = {
                "seq": entry["seq"],
                "reason": d.get("reason"),
                "generation": d.get("generation"),
                "policies": d.get("policies") or {},
            }
            self._place(service, _wanted(d), at, decision)

    def _place(
        self,
        service: str,
        wanted: dict[tuple[str, bool], int | None],
        at: datetime,
        decision: JSON,
    ) -> None:
        had = self.placed.get(service, {})
        carries = self._carries(service)
        for key in sorted(set(had) | set(wanted), key=lambda k: (k[0], k[1])):
            if had.get(key) == wanted.get(key) and (key in had) == (key in wanted):
                continue
            region, draining = key
            if key in had:
                self._close((service, region, draining), at)
                before = had[key] or 0
                after = wanted.get(key) or 0
                if carries and not draining and after < before and at >= self.start:
                    self.moves.append(self._move(service, region, before, after, at, decision))
            if key in wanted and carries:
                self.open[(service, region, draining)] = _Open(
                    service,
                    region,
                    self.countries.get(region),
                    wanted[key],
                    draining,
                    at,
                    decision,
                )
        if wanted:
            self.placed[service] = wanted
        else:
            self.placed.pop(service, None)

    def _move(
        self, service: str, region: str, before: int, after: int, at: datetime, decision: JSON
    ) -> JSON:
        drill = next(
            (
                d["id"]
                for d in self.drills.values()
                if region in d["regions"]
                and datetime.fromisoformat(d["at"]) <= at
                and (d["ended_at"] is None or at <= datetime.fromisoformat(d["ended_at"]))
            ),
            None,
        )
        return {
            "at": at.isoformat(),
            "service": service,
            "region": region,
            "country": self.countries.get(region),
            "replicas": {"from": before, "to": after},
            "reason": decision.get("reason"),
            "decision_seq": decision.get("seq"),
            "drill": drill,
        }

    def _residency(
        self, entry: Mapping[str, Any], at: datetime, action: str, name: str, details: JSON
    ) -> None:
        kind, _, verb = action.partition(".")
        value = details.get("value") if verb == "put" else None
        before: JSON | None = None
        affects = kind == "group"  # a group may be named by any policy of the class
        if kind == "policy":
            old = self.policies.get(name)
            before = old[0].model_dump(mode="json") if old else None
            classes = set(old[0].data_classes) if old else set()
            if isinstance(value, dict):
                classes |= set(value.get("data_classes") or [])
            affects = self.data_class in classes
        elif name in self.groups:
            before = self.groups[name].model_dump(mode="json")
        if affects:
            # Every open interval of the class ends under the rules it began under.
            for key in [k for k in self.open]:
                opened = self.open[key]
                self._close(key, at)
                self.open[key] = _Open(
                    opened.service,
                    opened.region,
                    opened.country,
                    opened.replicas,
                    opened.draining,
                    at,
                    {**opened.decision, "split_by": entry["seq"]},
                )
        self.version += 1
        self.verdicts.clear()
        self.bindings.clear()
        try:
            if kind == "policy":
                if isinstance(value, dict):
                    self.policies[name] = (Policy.model_validate(value), entry["after_revision"])
                else:
                    self.policies.pop(name, None)
            elif isinstance(value, dict):
                self.groups[name] = Group.model_validate(value)
            else:
                self.groups.pop(name, None)
        except ValidationError:
            pass  # written through the validated API; a bad value changes nothing here
        if affects and self.start <= at:
            self.policy_changes.append(
                {
                    "at": entry["at"],
                    "seq": entry["seq"],
                    "by": entry.get("actor"),
                    "action": action,
                    "name": name,
                    "before": before,
                    "after": value,
                }
            )

    # -- intervals -------------------------------------------------------------------

    def _close(self, key: tuple[str, str, bool], at: datetime) -> None:
        opened = self.open.pop(key, None)
        if opened is None or at < self.start or opened.start > self.end:
            return
        self.intervals.append(self._judge(opened, at))

    def _binding(self, classes: list[str]) -> tuple[list[Policy], list[Policy], JSON]:
        """The policies in force, those binding `classes`, and the revisions of those."""
        found = self.bindings.get(tuple(classes))
        if found is None:
            policies = [p for p, _ in self.policies.values()]
            bound = [p for p in bound_policies(classes, policies) if isinstance(p, Policy)]
            revisions = {p.name: self.policies[p.name][1] for p in bound}
            found = self.bindings[tuple(classes)] = (policies, bound, revisions)
        return found

    def _judge(self, opened: _Open, end: datetime | None) -> JSON:
        classes = self.classes.get(opened.service) or [self.data_class]
        policies, bound, revisions = self._binding(classes)
        checks = [max(opened.start, self.start)]
        last = min(end, self.end) if end is not None else self.end
        if last - _INSTANT > checks[0]:
            checks.append(last - _INSTANT)
        exempt = any(e.service == opened.service for p in bound for e in p.exemptions)
        allowed, reasons = True, []
        for moment in checks:
            ok, why = self._verdict(opened, classes, policies, moment, exempt=exempt)
            allowed = allowed and ok
            reasons += [r for r in why if r not in reasons]
        exemptions = [
            {
                "policy": p.name,
                "allow": list(e.allow),
                "expires": e.expires.isoformat(),
                "reason": e.reason,
            }
            for p in bound
            for e in p.exemptions
            if e.service == opened.service and e.expires > checks[0]
        ]
        return {
            "service": opened.service,
            "region": opened.region,
            "country": opened.country,
            "replicas": opened.replicas,
            "draining": opened.draining,
            "from": max(opened.start, self.start).isoformat(),
            "to": last.isoformat(),
            "open_at_end": end is None or end > self.end,
            "data_classes": classes,
            "policies": dict(revisions),
            "decision": opened.decision,
            "allowed": allowed,
            "reasons": reasons,
            "exemptions": exemptions,
        }

    def _verdict(
        self,
        opened: _Open,
        classes: list[str],
        policies: list[Policy],
        moment: datetime,
        *,
        exempt: bool,
    ) -> tuple[bool, tuple[str, ...]]:
        """`evaluate` for one region at `moment`, remembered: without an exemption for
        the service, a verdict depends only on the classes, the country, the rules in
        force and the day (the catalogue's dated groups change by day); with one, also
        on the service and the exact moment (an exemption ends when it ends)."""
        when: Any = moment if exempt else moment.date()
        key = (
            tuple(classes),
            opened.service if exempt else None,
            opened.region,
            opened.country,
            when,
        )
        found = self.verdicts.get(key)
        if found is None:
            verdict = evaluate(
                data_classes=classes,
                service=opened.service,
                regions=[_Region(opened.region, opened.country)],
                policies=policies,
                groups=self.groups,
                now=moment,
            ).verdicts[0]
            found = self.verdicts[key] = (verdict.allowed, tuple(verdict.reasons))
        return found

    @property
    def last(self) -> JSON | None:
        """The last entry in the period: its seq, hash and time."""
        return self._mark(self.last_entry) if self.last_entry is not None else None

    @staticmethod
    def _mark(entry: Mapping[str, Any]) -> JSON:
        return {"seq": entry["seq"], "hash": entry["hash"], "at": entry["at"]}

    # -- the answer ------------------------------------------------------------------

    def report(self) -> JSON:
        """The report over [start, end]: intervals (violations first), the policy and
        group changes that affected the class, the drills and moves, and a summary."""
        intervals = self.intervals + [self._judge(o, None) for o in self.open.values()]
        intervals.sort(key=lambda i: (i["from"], i["service"], i["region"], i["draining"]))
        violations = [i for i in intervals if not i["allowed"] and not i["draining"]]
        drains = [i for i in intervals if not i["allowed"] and i["draining"]]
        drills = [
            d
            for d in self.drills.values()
            if self.start <= datetime.fromisoformat(d["at"]) <= self.end
            and any(m["drill"] == d["id"] for m in self.moves)
        ]
        return {
            "format": FORMAT,
            "data_class": self.data_class,
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "summary": {
                "services": sorted({i["service"] for i in intervals}),
                "countries": sorted({i["country"] or "?" for i in intervals}),
                "intervals": len(intervals),
                "not_allowed": len(violations),
                "drains_not_allowed": len(drains),
                "policy_changes": len(self.policy_changes),
                "drills": len(drills),
                "moves": len(self.moves),
            },
            "violations": violations,
            "drains_not_allowed": drains,
            "intervals": intervals,
            "policy_changes": self.policy_changes,
            "drills": drills,
            "moves": self.moves,
            "unclassified_services": sorted(self.unclassified),
        }


def _wanted(d: Mapping[str, Any]) -> dict[tuple[str, bool], int | None]:
    """(region, draining) -> replicas of one logged decision (None: a drain logged
    before its replica counts were)."""
    wanted: dict[tuple[str, bool], int | None] = {
        (r, False): int(n) for r, n in (d.get("regions") or {}).items() if n
    }
    drains = d.get("draining_replicas")
    if isinstance(drains, dict):
        wanted.update({(r, True): int(n) for r, n in drains.items()})
    else:
        wanted.update({(r, True): None for r in d.get("draining") or []})
    return wanted


def replay(data_class: str, start: datetime, end: datetime, entries: Iterable[JSON]) -> JSON:
    """`Evidence` fed `entries` in order: the report (for tests and one-shot use)."""
    evidence = Evidence(data_class, start, end)
    for entry in entries:
        evidence.feed(entry)
    return evidence.report()
