"""The explanation of a placement: one line per region, saying why it was chosen,
kept, left eligible or rejected, in words an operator can act on.

Built after the decision, from a copy of the free capacity the decision saw, and only
when someone reads it (`Decision.regions`): it costs O(regions) per service, which a
controller pass over many services should not pay for nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from federation.model.service import ServiceSpec
from federation.scheduler.decision import RegionChoice, Verdict
from federation.scheduler.pool import Pool, ServiceFit


def explain(
    spec: ServiceSpec,
    pool: Pool,
    cpu_free: Sequence[float],
    memory_free: Sequence[int],
    verdicts: Mapping[str, Verdict],
    current: Mapping[str, int],
    fresh: bool,
    target: Mapping[str, int],
) -> list[RegionChoice]:
    """One line per region for a decision already taken, from the capacity it saw."""
    cpu = dict(zip(pool.info, cpu_free, strict=True))
    mem = dict(zip(pool.info, memory_free, strict=True))
    svc = ServiceFit(spec, pool, cpu, mem, current, fresh)
    res = spec.resources
    allow_list = set(spec.placement.regions)
    refusing = pool.refusing(spec.command) if pool.restricted else frozenset()
    shown = " ".join(spec.command) if spec.command else "(no command)"
    lines: dict[str, RegionChoice] = {}
    rooms: dict[str, int] = {}
    for name, region in pool.info.items():
        verdict = verdicts.get(name)

        def rejected(*why: str, compliant: bool = True) -> RegionChoice:
            return RegionChoice(name, region.country, "rejected", 0, why, compliant)  # noqa: B023

        if verdict is None or not verdict.allowed:
            why = verdict.reasons if verdict else ("no residency verdict for this region",)
            lines[name] = rejected("residency: " + "; ".join(why), compliant=False)
        elif allow_list and name not in allow_list:
            lines[name] = rejected("not in placement.regions")
        elif name in refusing:
            lines[name] = rejected(f"command not allowed in this region: {shown}")
        elif region.state == "unreachable":
            here = current.get(name, 0)
            grace = svc.grace(region) if here > 0 else None
            if grace is None:
                lines[name] = rejected("unreachable: region lease expired")
            elif target.get(name, 0) > 0:
                count = target[name]
                lines[name] = RegionChoice(
                    name,
                    region.country,
                    "kept",
                    count,
                    (f"unreachable; {count} replica(s) left in place: {grace}",),
                )
            else:
                lines[name] = rejected(
                    f"unreachable; its {here} replica(s) dropped by a scale-down"
                )
        elif region.state == "cordoned":
            lines[name] = rejected("cordoned")
        else:
            room = svc.room(name)
            if room < 1:
                lines[name] = rejected(
                    f"insufficient capacity: a replica needs cpu {res.cpu:g}, "
                    f"memory {res.memory_mb} MB; free cpu {cpu[name]:g}, memory {mem[name]} MB"
                )
            else:
                rooms[name] = room
    order = sorted(rooms, key=svc.rank)
    for position, name in enumerate(order, 1):
        country = pool.info[name].country
        if target.get(name, 0) > 0:
            chosen = f"allowed; rank {position}; room for {rooms[name]} replica(s)"
            lines[name] = RegionChoice(name, country, "chosen", target[name], (chosen,))
        else:
            spare = f"allowed; rank {position}; not needed"
            lines[name] = RegionChoice(name, country, "eligible", 0, (spare,))
    return [lines[name] for name in pool.info]
