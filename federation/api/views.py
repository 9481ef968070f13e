"""Resources as the API shows them: plain JSON-ready dicts built from stored records.

A service's view is its spec with its generation, timestamps, revision and a status
derived (`model.status`) from what the mirror holds of its placement, assignments,
region reports and liveness. Policies and groups show their stored value, or, when it
no longer parses, why and the value as stored, so an operator can repair it.

Presentation only: reading and writing stay in `federation.store`, which never builds
an answer for a client.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from federation.model.jurisdictions import BuiltinGroup
from federation.model.service import Assignment, PlacementRecord, ServiceRecord, ServiceReport
from federation.model.status import service_status
from federation.residency.evaluate import MalformedPolicy
from federation.residency.snapshot import StoredGroup, StoredPolicy
from federation.store import keys
from federation.store.mirror import Mirror
from federation.store.services import ServiceNotFound

JSONDict = dict[str, Any]


# -- services -------------------------------------------------------------------------


def service(
    record: ServiceRecord,
    revision: int,
    placement: PlacementRecord | None,
    assignments: dict[str, Assignment],
    reports: dict[str, ServiceReport],
    alive: set[str],
) -> JSONDict:
    """A service as the API shows it: spec fields, generation, status, revision."""
    return {
        **record.spec.model_dump(mode="json"),
        "generation": record.generation,
        "created_at": record.created_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
        "status": service_status(record, placement, assignments, reports, alive),
        "revision": revision,
    }


def service_of(mirror: Mirror, name: str) -> JSONDict:
    """One service with its status, as the (synced) mirror holds it."""
    found = mirror.get(keys.SERVICES, name, ServiceRecord)
    if found is None:
        raise ServiceNotFound(name)
    return service_in(mirror, name, *found)


def services_of(mirror: Mirror, names: Iterable[str] | None = None) -> list[JSONDict]:
    """Every service (or those of `names`) with its status, as the mirror holds it
    (parses each one: call it in a worker thread for many)."""
    found = []
    for name in sorted(mirror.tails(keys.SERVICES)) if names is None else names:
        stored = mirror.get(keys.SERVICES, name, ServiceRecord)
        if stored is not None:
            found.append(service_in(mirror, name, *stored))
    return found


def service_in(mirror: Mirror, name: str, record: ServiceRecord, revision: int) -> JSONDict:
    """`record` (at `revision`) with its status from what the mirror holds."""
    got = mirror.get(keys.PLACEMENTS, name, PlacementRecord)
    placement = got[0] if got is not None else None
    assignments: dict[str, Assignment] = {}
    reports: dict[str, ServiceReport] = {}
    if placement is not None:
        for region in sorted(set(placement.regions) | set(placement.draining)):
            held = mirror.get(keys.ASSIGNMENTS, f"{region}/{name}", Assignment)
            if held is not None:
                assignments[region] = held[0]
            report = mirror.get(keys.REPORTS, f"{region}/{name}", ServiceReport)
            if report is not None:
                reports[region] = report[0]
    alive = set(mirror.tails(keys.ALIVE))
    return service(record, revision, placement, assignments, reports, alive)


# -- residency ------------------------------------------------------------------------


def policy(stored: StoredPolicy) -> JSONDict:
    """A stored policy with its revision; a malformed one says why and shows its value."""
    if isinstance(stored.policy, MalformedPolicy):
        classes = stored.policy.data_classes
        return {
            "name": stored.name,
            "malformed": True,
            "error": stored.policy.error,
            "data_classes": list(classes) if classes is not None else None,
            "stored": stored.raw,
            "revision": stored.revision,
        }
    return {**stored.policy.model_dump(mode="json"), "revision": stored.revision}


def group(stored: StoredGroup) -> JSONDict:
    """An admin-defined group with its revision; a malformed one says why."""
    if stored.group is None:
        return {
            "name": stored.name,
            "builtin": False,
            "malformed": True,
            "error": stored.error,
            "stored": stored.raw,
            "revision": stored.revision,
        }
    return {**stored.group.model_dump(mode="json"), "builtin": False, "revision": stored.revision}


def builtin_group(name: str, builtin: BuiltinGroup, now: datetime) -> JSONDict:
    """A built-in group with its members as in force at `now`: adequacy decisions come
    and go (see `federation.model.jurisdictions`)."""
    return {
        "name": name,
        "builtin": True,
        "countries": sorted(builtin.countries(now)),
        "description": builtin.description,
    }
