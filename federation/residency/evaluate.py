"""Evaluation: which regions may hold a service's data, and why (docs/residency.md).

Data flow: (data classes, service, regions, policies, groups, now) -> bound policies ->
each policy's references resolved at `now` -> a verdict per region with the reasons a
compliance officer reads, plus what audit-mode policies would have blocked.

Fail closed: a policy that cannot be evaluated (malformed when stored, unknown group,
group cycle, bad country) rejects every region for the services it binds, with the error
as the reason; it is never skipped. The result depends only on the inputs, not on their
order.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from federation.model.errors import ResidencyError, UnknownDataClassError
from federation.model.jurisdictions import COUNTRIES, country_label, utc_day
from federation.model.policy import Exemption, Group, Mode, Policy
from federation.residency.groups import resolve_sources

__all__ = [
    "PUBLIC",
    "AuditFinding",
    "EmptyDataClass",
    "Evaluation",
    "MalformedPolicy",
    "RegionLike",
    "RegionVerdict",
    "bound_policies",
    "check_data_classes",
    "empty_data_classes",
    "evaluate",
    "unknown_data_classes",
]

PUBLIC = "public"
"""The only data class that needs no policy. A service with no data classes counts as public."""


class RegionLike(Protocol):
    """What evaluation needs from a region (e.g. `federation.model.region.RegionRecord`)."""

    @property
    def name(self) -> str: ...

    @property
    def country(self) -> str | None: ...


@dataclass(frozen=True)
class MalformedPolicy:
    """A stored policy that could not be parsed. It binds `data_classes`, or every service
    when they are unknown (None), and rejects every region for what it binds."""

    name: str
    error: str
    data_classes: tuple[str, ...] | None = None


AnyPolicy = Policy | MalformedPolicy


class RegionVerdict(BaseModel):
    """One region: allowed or rejected, and every reason that decided it."""

    model_config = ConfigDict(frozen=True)

    region: str
    country: str | None
    allowed: bool
    reasons: list[str]


class AuditFinding(BaseModel):
    """A region an audit-mode policy would have rejected (it was not restricted by it)."""

    model_config = ConfigDict(frozen=True)

    policy: str
    region: str
    country: str | None
    reason: str


class Evaluation(BaseModel):
    """The result of `evaluate`: verdicts sorted by region name, findings, bound policies."""

    model_config = ConfigDict(frozen=True)

    data_classes: list[str]
    service: str | None
    at: datetime
    bound_policies: list[str]
    unknown_data_classes: list[str]
    verdicts: list[RegionVerdict]
    audit_findings: list[AuditFinding]

    @property
    def allowed_regions(self) -> list[str]:
        """Names of the allowed regions, sorted."""
        return [v.region for v in self.verdicts if v.allowed]


class EmptyDataClass(BaseModel):
    """A data class that no country satisfies under the enforce policies binding it."""

    model_config = ConfigDict(frozen=True)

    data_class: str
    policies: list[str]
    message: str


def _fmt_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _fmt_list(entries: Sequence[str]) -> str:
    return "[" + ", ".join(entries) + "]"


def _policy_classes(policy: AnyPolicy) -> frozenset[str] | None:
    if isinstance(policy, MalformedPolicy):
        return None if policy.data_classes is None else frozenset(policy.data_classes)
    return frozenset(policy.data_classes)


def _service_classes(data_classes: Iterable[str]) -> frozenset[str]:
    # `[]` means "no regulated data": bound like `public`, so a policy on `public` applies.
    return frozenset(data_classes) or frozenset({PUBLIC})


def _sorted_policies(policies: Iterable[AnyPolicy]) -> list[AnyPolicy]:
    def key(policy: AnyPolicy) -> tuple[str, int, str]:
        if isinstance(policy, MalformedPolicy):
            return (policy.name, 0, repr(policy))
        return (policy.name, 1, policy.model_dump_json())

    return sorted(policies, key=key)


def bound_policies(data_classes: Iterable[str], policies: Iterable[AnyPolicy]) -> list[AnyPolicy]:
    """Policies whose data classes meet the service's (malformed ones of unknown scope
    always), sorted by name."""
    classes = _service_classes(data_classes)
    bound = []
    for policy in policies:
        named = _policy_classes(policy)
        if named is None or named & classes:
            bound.append(policy)
    return _sorted_policies(bound)


def unknown_data_classes(data_classes: Iterable[str], policies: Iterable[AnyPolicy]) -> list[str]:
    """Data classes (other than `public`) that no policy names, sorted."""
    named: set[str] = set()
    for policy in policies:
        classes = _policy_classes(policy)
        if classes is None:
            # A malformed policy of unknown scope might name anything.
            return []
        named |= classes
    return sorted(set(data_classes) - named - {PUBLIC})


def check_data_classes(data_classes: Iterable[str], policies: Iterable[AnyPolicy]) -> None:
    """Raise UnknownDataClassError (a 422 at deploy) for data classes no policy names."""
    policies = list(policies)
    unknown = unknown_data_classes(data_classes, policies)
    if unknown:
        raise UnknownDataClassError(unknown, _class_suggestions(unknown, policies))


def _class_suggestions(unknown: Iterable[str], policies: Iterable[AnyPolicy]) -> dict[str, str]:
    known = sorted({c for p in policies for c in (_policy_classes(p) or ())} | {PUBLIC})
    suggestions = {}
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        if close:
            suggestions[name] = close[0]
    return suggestions


@dataclass
class _Rule:
    """One bound policy with its references resolved at `now` for one service."""

    name: str
    mode: Mode
    error: str | None = None
    allow_entries: list[str] = field(default_factory=list)
    allow: dict[str, str] | None = None  # country -> entry; None: anywhere
    deny_entries: list[str] = field(default_factory=list)
    deny: dict[str, str] = field(default_factory=dict)
    active: list[tuple[Exemption, dict[str, str]]] = field(default_factory=list)
    expired: list[tuple[Exemption, dict[str, str]]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"policy {self.name} ({self.mode.value})"


def _compile(
    policy: AnyPolicy, service: str | None, groups: Mapping[str, Group], now: datetime
) -> _Rule:
    if isinstance(policy, MalformedPolicy):
        # Unknown mode: assume the strictest.
        return _Rule(policy.name, Mode.ENFORCE, error=f"stored policy is malformed: {policy.error}")
    rule = _Rule(
        policy.name, policy.mode, allow_entries=list(policy.allow), deny_entries=list(policy.deny)
    )
    try:
        rule.allow = resolve_sources(policy.allow, groups, now) if policy.allow else None
        rule.deny = resolve_sources(policy.deny, groups, now)
        for exemption in policy.exemptions:
            if service is None or exemption.service != service:
                continue
            if now < exemption.expires:
                rule.active.append((exemption, resolve_sources(exemption.allow, groups, now)))
    except ResidencyError as exc:
        rule.error = str(exc)
        return rule
    # Expired exemptions never admit, so an error in one must not block placement;
    # they are resolved only to explain a rejection.
    for exemption in policy.exemptions:
        if service is not None and exemption.service == service and now >= exemption.expires:
            try:
                rule.expired.append((exemption, resolve_sources(exemption.allow, groups, now)))
            except ResidencyError:
                continue
    return rule


def _via(sources: Mapping[str, str], country: str) -> str:
    entry = sources[country]
    return "" if entry == country else f" via {entry}"


def _judge(rule: _Rule, country: str) -> tuple[bool, str]:
    """Does `rule` admit `country`, and the sentence that says why."""
    label = rule.label
    who = f"country {country_label(country)}"
    if rule.error is not None:
        return False, f"{label}: cannot be evaluated, rejected (fail closed): {rule.error}"
    if country in rule.deny:
        text = f"{label}: {who} is denied by deny {_fmt_list(rule.deny_entries)}"
        text += _via(rule.deny, country)
        overridden = [e for e, s in rule.active if country in s]
        if overridden:
            text += f" (deny wins over the exemption for service {overridden[0].service})"
        return False, text
    deny_text = (
        f"; deny {_fmt_list(rule.deny_entries)} does not name it" if rule.deny_entries else ""
    )
    if rule.allow is None:
        return True, f"{label}: allow is empty (any country){deny_text}"
    if country in rule.allow:
        allow_text = f"{who} is in allow {_fmt_list(rule.allow_entries)}"
        return True, f"{label}: {allow_text}{_via(rule.allow, country)}{deny_text}"
    not_in = f"{label}: {who} is not in allow {_fmt_list(rule.allow_entries)}"
    # The exemption that lasts longest explains best; ties broken for determinism.
    admitting = sorted(
        (e for e, s in rule.active if country in s),
        key=lambda e: (e.expires, e.reason, e.model_dump_json()),
        reverse=True,
    )
    if admitting:
        e = admitting[0]
        return True, (
            f"{not_in} but is allowed by exemption for service {e.service} "
            f"until {_fmt_time(e.expires)} ({e.reason})"
        )
    lapsed = sorted((e for e, s in rule.expired if country in s), key=lambda e: e.expires)
    if lapsed:
        e = lapsed[-1]
        return False, (
            f"{not_in}; the exemption for service {e.service} that admitted it "
            f"expired at {_fmt_time(e.expires)}"
        )
    return False, not_in


def _check_now(now: datetime) -> None:
    utc_day(now)


def evaluate(
    *,
    data_classes: Iterable[str],
    service: str | None,
    regions: Iterable[RegionLike],
    policies: Iterable[AnyPolicy],
    groups: Mapping[str, Group],
    now: datetime,
) -> Evaluation:
    """Verdict for every region (sorted by name) for a service with `data_classes`.

    `service` selects exemptions (None: none apply). `groups` maps NAME -> Group for
    admin-defined groups. `now` must be timezone-aware. Never raises for bad data:
    problems reject regions (fail closed); it raises ValueError only for a naive `now`.
    """
    _check_now(now)
    policies = list(policies)
    classes = sorted(set(data_classes))
    unknown = unknown_data_classes(classes, policies)
    rules = [_compile(p, service, groups, now) for p in bound_policies(classes, policies)]
    enforce = [r for r in rules if r.mode is Mode.ENFORCE]
    audit = [r for r in rules if r.mode is Mode.AUDIT]

    unknown_reason = ""
    if unknown:
        error = UnknownDataClassError(unknown, _class_suggestions(unknown, policies))
        unknown_reason = f"{error} (rejected, fail closed)"

    verdicts: list[RegionVerdict] = []
    findings: list[AuditFinding] = []
    for region in sorted(regions, key=lambda r: (r.name, r.country or "")):
        country = region.country
        failed: list[str] = []
        passed: list[str] = []
        if unknown_reason:
            failed.append(unknown_reason)
        if country is None:
            failed.append("region has no country: residency cannot be verified (fail closed)")
        elif country not in COUNTRIES:
            failed.append(
                f"region country {country!r} is not an ISO 3166-1 alpha-2 code (fail closed)"
            )
        else:
            for rule in enforce:
                ok, why = _judge(rule, country)
                (passed if ok else failed).append(why)
            for rule in audit:
                ok, why = _judge(rule, country)
                if not ok:
                    findings.append(
                        AuditFinding(
                            policy=rule.name, region=region.name, country=country, reason=why
                        )
                    )
            if not enforce:
                passed.append(_unrestricted_reason(classes, audit))
        verdicts.append(
            RegionVerdict(
                region=region.name,
                country=country,
                allowed=not failed,
                reasons=failed or passed,
            )
        )
    return Evaluation(
        data_classes=classes,
        service=service,
        at=now,
        bound_policies=sorted({r.name for r in rules}),
        unknown_data_classes=unknown,
        verdicts=verdicts,
        audit_findings=findings,
    )


def _unrestricted_reason(classes: Sequence[str], audit: Sequence[_Rule]) -> str:
    shown = _fmt_list(classes) if classes else f"[] (treated as {PUBLIC})"
    text = f"no enforce policy binds data classes {shown}"
    if audit:
        text += "; audit policies " + ", ".join(r.name for r in audit) + " only report"
    return text


def empty_data_classes(
    policies: Iterable[AnyPolicy], groups: Mapping[str, Group], now: datetime
) -> list[EmptyDataClass]:
    """Data classes left with no allowed country at all, over the whole catalogue.

    Each class is checked alone (a service with just that class, no exemptions): e.g.
    two enforce policies on `phi-eu` with disjoint allow lists. Sorted by class.
    """
    _check_now(now)
    policies = list(policies)
    named = sorted({c for p in policies for c in (_policy_classes(p) or ())})
    warnings: list[EmptyDataClass] = []
    for data_class in named:
        rules = [_compile(p, None, groups, now) for p in bound_policies([data_class], policies)]
        enforce = [r for r in rules if r.mode is Mode.ENFORCE]
        if not enforce or any(all(_judge(r, c)[0] for r in enforce) for c in COUNTRIES):
            continue
        names = [r.name for r in enforce]
        errors = [f"{r.name}: {r.error}" for r in enforce if r.error is not None]
        message = (
            f"data class {data_class!r} has no allowed country under enforce policies "
            f"{', '.join(names)}: services with it cannot be placed anywhere"
        )
        if errors:
            message += " (" + "; ".join(errors) + ")"
        warnings.append(EmptyDataClass(data_class=data_class, policies=names, message=message))
    return warnings
