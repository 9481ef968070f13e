"""The region master: heartbeats, the assignment watch, status reports, fencing.

Five loops, each guarded (a crash is logged and the loop restarts) and none of
which ever exits because the server or etcd blinked: every call to the server is
retried with capped exponential backoff (tenacity).

- heartbeat: at the pace the server asks for (TTL / 3), with the capacity offered.
- sync: list the region's assignments, hand them to the driver, then watch from the
  list's revision; after a disconnect resume from the last revision seen, and list
  again only when the server says that revision is gone.
- apply: hand the assignments to the driver whenever sync (or the end of a fence)
  asks; a burst of changes becomes a few applies, not one each.
- report: the driver's instances, whenever they change (and every few seconds).
- fence: stop the instances of `singleton` services one heartbeat interval before the
  region's lease can expire, and start them again only after listing the assignments
  afresh: once the lease is gone the federation may start them elsewhere.

The fencing bound. The server refreshes the lease while it answers a heartbeat, so the
lease lasts at least until the heartbeat's *send* time plus the TTL. The agent counts
from that send time (of the last heartbeat the server acknowledged), never from when
an answer arrived, so a slow or delayed answer cannot carry the agent past the lease.
It fences at `sent + ttl - interval` (the margin: one heartbeat interval, TTL/3): a
margin of two intervals would fence on every beat, since the next acknowledgement
arrives one interval and a round trip after the last send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_exponential_jitter,
)

from federation.agent.allow import allowed, reported
from federation.agent.drivers import DRIVERS, Desired, Driver
from federation.agent.tracing import ApplyTracer
from federation.client import ApiClient, ApiError, tls_context
from federation.model.allowlist import refusal
from federation.model.service import Assignment, InstanceReport
from federation.runtime import forever

log = logging.getLogger(__name__)

REPORT_EVERY_S = 5.0
SECRETS_RETRY_S = 5.0  # how often assignments whose secrets were withheld are asked again
WATCH_IDLE_S = 15.0  # the server sends progress lines every 5 s


@dataclass(frozen=True)
class AgentConfig:
    server: str
    region: str
    token: str
    cpu: float
    memory_mb: int
    state_dir: Path
    keep_instances: bool = False
    driver: str = "raw"  # a name in DRIVERS
    run_as: str | None = None  # the user instances run as (exec)
    allow_root_instances: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    # The region owner's --allow-exec patterns (agent.allow); None: no policy.
    allow_exec: tuple[str, ...] | None = None
    # False only in the fault suite, to show that its checker catches a double run.
    fence_singletons: bool = True


def local_capacity() -> tuple[float, int]:
    """CPU count and memory of this host, the default capacity a process region offers."""
    cpu = float(os.cpu_count() or 1)
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
        memory_mb = int(pages * page_size // (1024 * 1024))
    except (ValueError, OSError):
        memory_mb = 1024
    return cpu, memory_mb


def received(item: dict[str, Any], epoch: int) -> Desired:
    """An assignment as the server sent it: the secrets' values (or why they were
    withheld) are taken out of it, kept beside it in memory, never in the model."""
    values = item.pop("secret_env", None)
    withheld = item.pop("secrets_withheld", None)
    return Desired(
        Assignment.model_validate(item),
        epoch,
        secret_env={str(k): str(v) for k, v in values.items()} if isinstance(values, dict) else {},
        secrets_withheld=str(withheld) if withheld else None,
    )


def _log_retry(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if state.attempt_number in (1, 5) or state.attempt_number % 20 == 0:
            log.warning("%s failed (attempt %d): %s", what, state.attempt_number, exc)

    return before_sleep


def _retrying(what: str, *, max_wait: float = 5.0) -> AsyncRetrying:
    """Retry forever on any server error, backing off up to `max_wait` seconds."""
    return AsyncRetrying(
        retry=retry_if_exception_type(ApiError),
        stop=stop_never,
        wait=wait_exponential_jitter(multiplier=0.2, max=max_wait),
        before_sleep=_log_retry(what),
        reraise=True,
    )


class Agent:
    """One region master; see the module docstring."""

    def __init__(self, config: AgentConfig, *, driver: Driver | None = None) -> None:
        self.config = config
        self.driver: Driver = driver or DRIVERS[config.driver](
            region=config.region,
            state_dir=config.state_dir,
            run_as=config.run_as,
            allow_root_instances=config.allow_root_instances,
        )
        self.desired: dict[str, Desired] = {}
        self.interval = 1.0
        self.ttl = 10.0
        self.last_contact = time.monotonic()
        # Send time of the last heartbeat the server answered: the lease lasts past it.
        self.lease_from = self.last_contact
        self._changed = asyncio.Event()
        self._apply_wanted = asyncio.Event()
        self._fenced = False
        self._stale = False  # set after a silence > TTL until assignments are re-listed
        self._tracing = ApplyTracer(config.region)
        self._refused: dict[str, Desired] = {}  # assignments the allowlist keeps out

    def _admitted(self, desired: dict[str, Desired]) -> dict[str, Desired]:
        """`desired` without the assignments whose command `--allow-exec` does not
        admit: the driver never sees those, so no driver can start them (and one
        already running, from before the allowlist changed, is stopped)."""
        allow = self.config.allow_exec
        refused = {
            name: d
            for name, d in desired.items()
            if not allowed(d.assignment.runtime.command, allow, d.assignment.runtime.env)
        }
        for name in refused.keys() - self._refused.keys():
            command = refused[name].assignment.runtime.command
            log.warning("agent %s: %s", self.config.region, refusal(self.config.region, command))
        self._refused = refused
        return {name: d for name, d in desired.items() if name not in refused}

    def reports(self) -> list[InstanceReport]:
        """What the region reports: the driver's instances, and one failed instance
        per refused assignment, with reason `CommandNotAllowed`."""
        refused = [
            InstanceReport(
                service=name,
                instance=f"{name}-not-allowed",
                generation=d.assignment.runtime.generation,
                version=d.assignment.runtime.version,
                state="failed",
                ready=False,
                message=refusal(self.config.region, d.assignment.runtime.command),
                reason="CommandNotAllowed",
            )
            for name, d in sorted(self._refused.items())
        ]
        return [*self.driver.instances(), *refused]

    def _contact(self) -> bool:
        """Record a successful exchange with the server. True when it ends a silence
        longer than the TTL (the agent was cut off, or paused): then what it knows may
        be stale, so singletons are fenced and assignments listed afresh."""
        now = time.monotonic()
        gap = now - self.last_contact > self.ttl
        self.last_contact = now
        if gap:
            self._stale = True
        return gap

    async def run(self) -> None:
        """Run until cancelled; then stop the driver (and its instances, unless kept)."""
        tls = tls_context(self.config.ca, self.config.cert, self.config.key)
        async with ApiClient(
            self.config.server, self.config.token, timeout=10.0, ssl_context=tls
        ) as client:
            self.desired, revision = await self._list(client)
            for sentence in await self.driver.start(self._admitted(self.desired)):
                log.info("agent %s: %s", self.config.region, sentence)
            loops: dict[str, Callable[[], Awaitable[None]]] = {
                "heartbeat": lambda: self._heartbeat(client),
                "sync": lambda: self._sync(client, revision),
                "report": lambda: self._report(client),
                "fence": self._fence,
                "apply": self._applier,
                "secrets": lambda: self._redeliver(client),
            }
            if not self.config.fence_singletons:
                log.warning("agent %s: singleton fencing is OFF (test only)", self.config.region)
                del loops["fence"]
            tasks = [
                asyncio.create_task(forever(f"agent loop {name}", body, log))
                for name, body in loops.items()
            ]
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.wait(tasks, timeout=5)
                await self.driver.close(stop_instances=not self.config.keep_instances)

    # -- heartbeat --------------------------------------------------------------------

    async def _heartbeat(self, client: ApiClient) -> None:
        last = ""
        while True:
            allocated_cpu = sum(
                d.assignment.replicas * d.assignment.runtime.resources.cpu
                for d in self.desired.values()
            )
            allocated_mem = sum(
                d.assignment.replicas * d.assignment.runtime.resources.memory_mb
                for d in self.desired.values()
            )
            async for attempt in _retrying("heartbeat", max_wait=1.0):
                with attempt:
                    sent = time.monotonic()
                    answer = await client.heartbeat(
                        self.config.region,
                        capacity={"cpu": self.config.cpu, "memory_mb": self.config.memory_mb},
                        allocated={"cpu": allocated_cpu, "memory_mb": allocated_mem},
                        allow_exec=reported(self.config.allow_exec),
                    )
            self._contact()
            self.lease_from = max(self.lease_from, sent)
            pace = (self.ttl, self.interval)
            self.interval = float(answer.get("interval_s", self.interval))
            self.ttl = float(answer.get("ttl_s", self.ttl))
            if (self.ttl, self.interval) != pace or not last:
                log.info(
                    "agent %s: singletons are fenced %.2f s before the region's lease can "
                    "expire (TTL %.2f s less one heartbeat interval, counted from the send "
                    "of the last acknowledged heartbeat)",
                    self.config.region,
                    self.fence_margin,
                    self.ttl,
                )
            sentence = str(answer.get("result", ""))
            if sentence != last:
                log.info("agent %s: %s", self.config.region, sentence)
                last = sentence
            # Paced from the send: a slow answer does not push the next beat later.
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - sent)))

    # -- assignments ------------------------------------------------------------------

    async def _list(self, client: ApiClient) -> tuple[dict[str, Desired], int]:
        async for attempt in _retrying("list assignments"):
            with attempt:
                answer = await client.assignments(self.config.region)
        self._contact()
        desired = {}
        for item in answer["items"]:
            found = received(item, int(item.pop("epoch", 0)))
            desired[found.assignment.service] = found
        return desired, int(answer["revision"])

    async def _apply(self) -> None:
        """Ask for the driver to catch up with `desired`; a burst of watch events (a
        failover moving hundreds of services here) becomes a few applies, not one each."""
        self._apply_wanted.set()

    async def _applier(self) -> None:
        while True:
            await self._apply_wanted.wait()
            self._apply_wanted.clear()
            desired = self._admitted(dict(self.desired))
            with self._tracing.applying(desired):
                for sentence in await self.driver.apply(desired):
                    log.info("agent %s: %s", self.config.region, sentence)
            self._changed.set()

    async def _sync(self, client: ApiClient, revision: int) -> None:
        await self._apply()
        failures = 0
        while True:
            relist = False
            try:
                async for line in client.watch_assignments(
                    self.config.region, since=revision, idle_timeout=WATCH_IDLE_S
                ):
                    # Lines buffered while the agent was cut off are history, not news.
                    if self._contact() or self._stale:
                        relist = True
                        break
                    failures = 0
                    kind = line.get("type")
                    if kind == "relist":
                        relist = True
                        break
                    revision = max(revision, int(line.get("revision", revision)))
                    if kind == "put":
                        item: dict[str, Any] = line["assignment"]
                        found = received(item, int(item.pop("epoch", revision)))
                        self.desired[found.assignment.service] = found
                        await self._apply()
                    elif kind == "delete":
                        self.desired.pop(str(line["service"]), None)
                        await self._apply()
            except ApiError as exc:
                failures += 1
                if failures in (1, 5) or failures % 20 == 0:
                    log.warning("assignment watch: %s (attempt %d)", exc.message, failures)
                if exc.status == 422:
                    relist = True
                await asyncio.sleep(min(5.0, 0.2 * 2 ** min(failures, 5)))
            if relist or self._stale:
                log.info("agent %s: listing assignments again", self.config.region)
                self._stale = False
                self.desired, revision = await self._list(client)
                await self._apply()

    async def _redeliver(self, client: ApiClient) -> None:
        """Ask again for assignments whose secrets were withheld: what withheld them (a
        KEK the server lacked, a policy) may change without the assignment changing.
        Only the same assignment (same epoch), now with its values, is taken."""
        while True:
            await asyncio.sleep(SECRETS_RETRY_S)
            waiting = {n for n, d in self.desired.items() if d.secrets_missing()}
            if not waiting:
                continue
            listed, _ = await self._list(client)
            came = [
                name
                for name in waiting
                if (new := listed.get(name)) is not None
                and (held := self.desired.get(name)) is not None
                and new.epoch == held.epoch
                and new.secrets_missing() is None
            ]
            for name in came:
                self.desired[name] = listed[name]
            if came:
                log.info("agent %s: secrets delivered for %s", self.config.region, ", ".join(came))
                await self._apply()

    # -- status -----------------------------------------------------------------------

    async def _report(self, client: ApiClient) -> None:
        last: list[dict[str, Any]] | None = None
        last_sent = 0.0
        while True:
            # Woken by every apply; the timeout catches what the driver learns on its
            # own (an instance became healthy, or crashed).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self._changed.wait()
            self._changed.clear()
            current = [i.model_dump() for i in self.reports()]
            if current == last and time.monotonic() - last_sent < REPORT_EVERY_S:
                continue
            async for attempt in _retrying("status report"):
                with attempt:
                    await client.report_status(self.config.region, current)
            self._contact()
            last, last_sent = current, time.monotonic()

    # -- fencing ----------------------------------------------------------------------

    @property
    def fence_margin(self) -> float:
        """How long before the region's lease can expire singletons are stopped."""
        return self.interval

    def fence_at(self) -> float:
        """The monotonic time at which singletons are fenced unless a heartbeat is
        acknowledged before it."""
        return self.lease_from + self.ttl - self.fence_margin

    async def _fence(self) -> None:
        while True:
            wait = self.fence_at() - time.monotonic()
            await asyncio.sleep(min(0.25, wait) if wait > 0 else 0.25)
            lapsed = time.monotonic() >= self.fence_at()
            if (lapsed or self._stale) and not self._fenced:
                singletons = {
                    name for name, d in self.desired.items() if d.assignment.runtime.singleton
                }
                self._fenced = True
                # The lease may have lapsed meanwhile: list the assignments afresh
                # before a singleton may run here again.
                self._stale = True
                log.warning(
                    "agent %s: fencing singletons %.2f s after the send of the last "
                    "acknowledged heartbeat (bound %.2f s)",
                    self.config.region,
                    time.monotonic() - self.lease_from,
                    self.ttl - self.fence_margin,
                )
                for sentence in await self.driver.fence(singletons):
                    log.warning("agent %s: %s", self.config.region, sentence)
            elif not lapsed and self._fenced and not self._stale:
                self._fenced = False
                self.driver.unfence()
                log.info("agent %s: in contact again; singletons may run", self.config.region)
                await self._apply()
