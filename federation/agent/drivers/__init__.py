"""Drivers make assignments real on one kind of orchestrator.

The interface is deliberately small so the Marathon and Kubernetes drivers can
follow the process driver:

- `start()`: find what a previous life of the agent left running; adopt or stop it.
- `apply(desired)`: make the running instances match the desired assignments
  (service -> Desired); idempotent, called after every change and periodically.
- `instances()`: what runs now, as the agent reports it to the server.
- `fence(services)`: stop these services' instances now, and start none of them
  until `unfence()` (singleton fencing).
- `close(stop_instances)`: stop monitoring; with `stop_instances`, stop them too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from federation.model.service import Assignment, InstanceReport


@dataclass(frozen=True)
class Desired:
    """One assignment as the agent received it, with its epoch (etcd revision)."""

    assignment: Assignment
    epoch: int


class Driver(Protocol):
    """What the agent needs from an orchestrator."""

    async def start(self, desired: Mapping[str, Desired]) -> list[str]: ...

    async def apply(self, desired: Mapping[str, Desired]) -> list[str]: ...

    def instances(self) -> list[InstanceReport]: ...

    async def fence(self, services: set[str]) -> list[str]: ...

    def unfence(self) -> None: ...

    async def close(self, *, stop_instances: bool) -> None: ...
