"""Groups: resolving `group:NAME` to countries at a given `now`, and checking references.

Admin-defined groups are passed in as a mapping NAME -> Group (NAME without the
`group:` prefix). Resolution happens at evaluation time, never when a policy is
written, so editing a group changes every policy that uses it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from federation.model.errors import (
    BuiltinGroupConflictError,
    GroupCycleError,
    ResidencyError,
    UnknownGroupError,
)
from federation.model.jurisdictions import (
    BUILTIN_GROUPS,
    GROUP_PREFIX,
    check_country,
    check_entry,
    group_name,
)
from federation.model.policy import Group, Policy

__all__ = [
    "GroupReference",
    "ReferenceProblem",
    "find_group_cycle",
    "references_to_group",
    "resolve",
    "resolve_group",
    "resolve_sources",
    "suggest_group",
    "validate_group",
    "validate_references",
]

Loc = tuple[str | int, ...]


def suggest_group(ref: str, groups: Mapping[str, Group]) -> str | None:
    """The known `group:NAME` closest to `ref`, when close enough to be a typo."""
    known = sorted({GROUP_PREFIX + n for n in (*BUILTIN_GROUPS, *groups)})
    close = difflib.get_close_matches(ref, known, n=1, cutoff=0.75)
    return close[0] if close else None


def _admin_group(name: str, groups: Mapping[str, Group]) -> Group:
    group = groups.get(name)
    if group is None:
        raise UnknownGroupError(GROUP_PREFIX + name, suggest_group(GROUP_PREFIX + name, groups))
    if group.name != name:
        raise ResidencyError(f"group stored as {name!r} is named {group.name!r}")
    return group


def resolve_group(name: str, groups: Mapping[str, Group], now: datetime) -> frozenset[str]:
    """Countries in group NAME at `now`; raise a ResidencyError on any inconsistency."""
    return _resolve_group(name, groups, now, ())


def _resolve_group(
    name: str, groups: Mapping[str, Group], now: datetime, stack: tuple[str, ...]
) -> frozenset[str]:
    if name in stack:
        start = stack.index(name)
        raise GroupCycleError([GROUP_PREFIX + n for n in (*stack[start:], name)])
    builtin = BUILTIN_GROUPS.get(name)
    if builtin is not None:
        if name in groups:
            # Fail closed rather than pick one of two definitions.
            raise BuiltinGroupConflictError(name)
        return builtin.countries(now)
    group = _admin_group(name, groups)
    result: set[str] = set()
    for entry in group.countries:
        result |= _resolve_entry(entry, groups, now, (*stack, name))
    return frozenset(result)


def _resolve_entry(
    entry: str, groups: Mapping[str, Group], now: datetime, stack: tuple[str, ...]
) -> frozenset[str]:
    # Re-checked here because stored data may predate a catalogue update.
    check_entry(entry)
    name = group_name(entry)
    if name is None:
        return frozenset({check_country(entry)})
    return _resolve_group(name, groups, now, stack)


def resolve(entries: Iterable[str], groups: Mapping[str, Group], now: datetime) -> frozenset[str]:
    """Union of the countries named by `entries` (codes and `group:NAME`) at `now`."""
    return frozenset(resolve_sources(entries, groups, now))


def resolve_sources(
    entries: Iterable[str], groups: Mapping[str, Group], now: datetime
) -> dict[str, str]:
    """Country -> the first entry that contains it, so a reason can say "via group:eea"."""
    sources: dict[str, str] = {}
    for entry in entries:
        for country in sorted(_resolve_entry(entry, groups, now, ())):
            sources.setdefault(country, entry)
    return sources


@dataclass(frozen=True)
class ReferenceProblem:
    """A reference that cannot be resolved: where (`loc`, as in a pydantic error), what, why."""

    loc: Loc
    value: str
    message: str
    suggestion: str | None = None

    @property
    def field(self) -> str:
        """Dotted location, e.g. `allow.0` or `exemptions.1.allow.0`."""
        return ".".join(str(part) for part in self.loc)


def _entry_locations(policy: Policy) -> Iterable[tuple[Loc, str]]:
    for i, entry in enumerate(policy.allow):
        yield ("allow", i), entry
    for i, entry in enumerate(policy.deny):
        yield ("deny", i), entry
    for i, exemption in enumerate(policy.exemptions):
        for j, entry in enumerate(exemption.allow):
            yield ("exemptions", i, "allow", j), entry


def _check_ref(loc: Loc, entry: str, groups: Mapping[str, Group]) -> ReferenceProblem | None:
    name = group_name(entry)
    if name is None or name in BUILTIN_GROUPS or name in groups:
        return None
    suggestion = suggest_group(entry, groups)
    return ReferenceProblem(loc, entry, str(UnknownGroupError(entry, suggestion)), suggestion)


def validate_references(policy: Policy, groups: Mapping[str, Group]) -> list[ReferenceProblem]:
    """Unknown groups referenced by `policy` (allow, deny, exemptions), in field order."""
    problems = [_check_ref(loc, entry, groups) for loc, entry in _entry_locations(policy)]
    return [p for p in problems if p is not None]


def find_group_cycle(groups: Mapping[str, Group]) -> list[str] | None:
    """One cycle among admin-defined groups as `group:a -> group:b -> group:a`, or None."""
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> list[str] | None:
        if name in stack:
            return [GROUP_PREFIX + n for n in (*stack[stack.index(name) :], name)]
        if name in done or name not in groups:
            return None
        stack.append(name)
        for entry in groups[name].countries:
            ref = group_name(entry)
            if ref is not None:
                cycle = visit(ref, stack)
                if cycle is not None:
                    return cycle
        stack.pop()
        done.add(name)
        return None

    for name in sorted(groups):
        cycle = visit(name, [])
        if cycle is not None:
            return cycle
    return None


def validate_group(group: Group, groups: Mapping[str, Group]) -> list[ReferenceProblem]:
    """Problems with writing `group` given the other groups: unknown members and cycles.

    `groups` is the current set; the entry for `group.name`, if any, is replaced by `group`.
    """
    merged = {**groups, group.name: group}
    problems = [
        p
        for i, entry in enumerate(group.countries)
        if (p := _check_ref(("countries", i), entry, merged)) is not None
    ]
    cycle = find_group_cycle(merged)
    if cycle is not None and GROUP_PREFIX + group.name in cycle:
        problems.append(
            ReferenceProblem(("countries",), GROUP_PREFIX + group.name, str(GroupCycleError(cycle)))
        )
    return problems


@dataclass(frozen=True)
class GroupReference:
    """Who refers to a group: a policy or another group, and where (`loc`)."""

    kind: Literal["policy", "group"]
    name: str
    loc: Loc

    def __str__(self) -> str:
        return f"{self.kind} {self.name} ({'.'.join(str(p) for p in self.loc)})"


def references_to_group(
    name: str, *, policies: Iterable[Policy], groups: Mapping[str, Group]
) -> list[GroupReference]:
    """Every policy and group entry that names `group:NAME` (for a 409 on delete), sorted."""
    ref = GROUP_PREFIX + name
    found = [
        GroupReference("policy", policy.name, loc)
        for policy in policies
        for loc, entry in _entry_locations(policy)
        if entry == ref
    ]
    found += [
        GroupReference("group", group.name, ("countries", i))
        for group in groups.values()
        for i, entry in enumerate(group.countries)
        if entry == ref
    ]
    return sorted(found, key=lambda r: (r.kind, r.name, tuple(str(p) for p in r.loc)))
