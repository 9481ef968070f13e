"""The residency state a decision is made from: every stored policy and group, parsed.

Pure data. `federation.store.policies` reads and writes it; evaluation, planning and
the API's views decide from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from federation.model.policy import Group, Policy
from federation.residency.evaluate import AnyPolicy

JSON = dict[str, Any]


@dataclass(frozen=True)
class StoredPolicy:
    """One `policies/{name}` key: the parsed policy (or why it is malformed) and its value."""

    name: str
    policy: AnyPolicy
    revision: int
    raw: JSON


@dataclass(frozen=True)
class StoredGroup:
    """One `groups/{name}` key: the parsed group, or None and the validation error."""

    name: str
    group: Group | None
    error: str | None
    revision: int
    raw: JSON


@dataclass(frozen=True)
class Snapshot:
    """All policies and groups, the fence revision they were read after, and the store
    revision of the read (for list answers)."""

    policies: dict[str, StoredPolicy] = field(default_factory=dict)
    groups: dict[str, StoredGroup] = field(default_factory=dict)
    fence: int = 0
    revision: int = 0

    def all_policies(self) -> list[AnyPolicy]:
        """Every stored policy, malformed ones included (evaluation must see them)."""
        return [p.policy for p in self.policies.values()]

    def valid_policies(self) -> list[Policy]:
        return [p.policy for p in self.policies.values() if isinstance(p.policy, Policy)]

    def valid_groups(self) -> dict[str, Group]:
        """NAME -> Group as evaluation takes it; malformed groups are left out."""
        return {n: g.group for n, g in self.groups.items() if g.group is not None}
