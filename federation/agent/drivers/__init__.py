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

`DRIVERS` names every driver an agent can run (`federation agent --driver NAME`);
a new driver is one more entry there. `exec` (isolated: bubblewrap and cgroups) is
what production runs; `raw` (plain processes with the agent's user and no limits) is
for development and `federation up`'s demo.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    # Types only: the CLI reads DRIVERS for its --driver choices, and need not load
    # the model (pydantic) to list them.
    from federation.model.service import Assignment, InstanceReport


SECRET_WITHHELD = "SecretWithheld"  # the reason an instance reports when it lacks its secrets


@dataclass(frozen=True)
class Desired:
    """One assignment as the agent received it, with its epoch (etcd revision), and the
    values of the secrets it references (in memory only: a driver passes them to the
    instance and never writes them down), or why the server withheld them."""

    assignment: Assignment
    epoch: int
    secret_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    secrets_withheld: str | None = None

    def secrets_missing(self) -> str | None:
        """Why this assignment's instances cannot start for want of secrets, or None."""
        wanted = self.assignment.runtime.secrets
        if not wanted:
            return None
        if self.secrets_withheld:
            return self.secrets_withheld
        if set(self.secret_env) != set(wanted):
            return "the server sent no values for its secrets"
        return None


class Driver(Protocol):
    """What the agent needs from an orchestrator."""

    async def start(self, desired: Mapping[str, Desired]) -> list[str]: ...

    async def apply(self, desired: Mapping[str, Desired]) -> list[str]: ...

    def instances(self) -> list[InstanceReport]: ...

    async def fence(self, services: set[str]) -> list[str]: ...

    def unfence(self) -> None: ...

    async def close(self, *, stop_instances: bool) -> None: ...


class DriverFactory(Protocol):
    """Builds the driver of an agent speaking for `region`, which keeps what it must
    remember across restarts (which instances it started) in `state_dir`; instances
    run as `run_as` where the driver can switch users."""

    def __call__(
        self,
        *,
        region: str,
        state_dir: Path,
        run_as: str | None = None,
        allow_root_instances: bool = False,
    ) -> Driver: ...


def _raw(
    *,
    region: str,
    state_dir: Path,
    run_as: str | None = None,
    allow_root_instances: bool = False,
) -> Driver:
    from federation.agent.drivers.process import ProcessDriver

    if run_as is not None:
        raise ValueError("--run-as needs the exec driver; raw runs as the agent's user")
    return ProcessDriver(region=region, state_dir=state_dir)


def _exec(
    *,
    region: str,
    state_dir: Path,
    run_as: str | None = None,
    allow_root_instances: bool = False,
) -> Driver:
    from federation.agent.drivers.exec import ExecDriver

    return ExecDriver(
        region=region,
        state_dir=state_dir,
        run_as=run_as,
        allow_root_instances=allow_root_instances,
    )


# Factories import their driver when called, so listing the names loads none of them.
DRIVERS: Mapping[str, DriverFactory] = {"raw": _raw, "exec": _exec}
