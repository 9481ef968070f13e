"""The process driver: each instance a local OS process in its own process group.

`{port}` in the command becomes a free port (also `PORT`) and `{python}` the agent's
own interpreter; instances get
`FEDERATION_SERVICE`, `FEDERATION_REGION`, `FEDERATION_INSTANCE` and
`FEDERATION_EPOCH`. Health is an HTTP GET on the instance's port when the spec has
`health.http`, else "the process is alive". A crashed instance restarts with
exponential backoff. Stop is SIGTERM to the group, then SIGKILL after a timeout.

Every instance is recorded in `<state-dir>/instances.json` (0600, in a 0700
directory, like the logs: an instance's command line and env are nobody else's), so
an agent that died and restarts finds its previous life's processes: it adopts those
still wanted with the same runtime and stops the rest. No orphans either way.

Secrets' values (`Desired.secret_env`) are kept in memory only and given to the
process in its environment: never on a command line, never in the state file (which
holds the references). An assignment whose secrets the server withheld starts no
instance (reason `SecretWithheld`); one already running keeps running until the
federation stops it, but is not restarted with values it may no longer have.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from federation.agent.drivers import SECRET_WITHHELD, Desired
from federation.model.service import InstanceReport, Runtime
from federation.processes.children import free_port

log = logging.getLogger(__name__)

STATE_FILE = "instances.json"
MAX_BACKOFF_S = 30.0


def _proc_start_time(pid: int) -> str | None:
    """Kernel start time of `pid` (field 22 of /proc/pid/stat): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def _alive(pid: int, start_time: str | None) -> bool:
    current = _proc_start_time(pid)
    return current is not None and (start_time is None or current == start_time)


def _same_runtime(a: Runtime, b: Runtime) -> bool:
    """Whether an instance of `a` can serve as `b` without a restart (generation aside)."""
    return a.model_dump(exclude={"generation"}) == b.model_dump(exclude={"generation"})


@dataclass
class Instance:
    """One process of one service slot."""

    id: str
    service: str
    slot: int
    runtime: Runtime
    epoch: int
    port: int
    pid: int = 0
    start_time: str | None = None
    reason: str | None = None  # why it last failed, as the report says it: "OOMKilled"
    proc: asyncio.subprocess.Process | None = None
    state: str = "starting"
    ready: bool = False
    message: str = ""
    restarts: int = 0
    next_start: float = 0.0
    last_health: float = 0.0
    stopping: bool = False
    monitor: asyncio.Task[None] | None = field(default=None, repr=False)
    # The secrets' values for its next start, and why they are missing if they are.
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)
    withheld: str | None = None

    def take_secrets(self, want: Desired) -> None:
        """What the latest assignment delivers (nothing, when withheld)."""
        self.withheld = want.secrets_missing()
        self.secret_env = {} if self.withheld else dict(want.secret_env)

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "service": self.service,
            "slot": self.slot,
            "runtime": self.runtime.model_dump(mode="json"),
            "epoch": self.epoch,
            "port": self.port,
            "pid": self.pid,
            "start_time": self.start_time,
        }


class ProcessDriver:
    """Runs instances as local processes; see the module docstring."""

    secret_files = False  # whether it can give secrets as files (exec: a sandbox tmpfs)

    def __init__(
        self,
        *,
        region: str,
        state_dir: Path,
        stop_timeout_s: float = 5.0,
        health_tick_s: float = 0.5,
    ) -> None:
        self.region = region
        self.state_dir = Path(state_dir)
        self.stop_timeout_s = stop_timeout_s
        self.health_tick_s = health_tick_s
        self._instances: dict[str, Instance] = {}
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._health: asyncio.Task[None] | None = None
        self._fenced: set[str] = set()

    # -- lifecycle --------------------------------------------------------------------

    async def start(self, desired: Mapping[str, Desired]) -> list[str]:
        """Adopt what a previous life left that is still wanted as-is; stop the rest."""
        for directory in (self.state_dir, self.state_dir / "logs"):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.chmod(0o700)  # also when an older agent made it 0755
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self._health = asyncio.create_task(self._health_loop(), name="driver-health")
        sentences = []
        for rec in self._load():
            pid = int(rec.get("pid", 0))
            start_time = rec.get("start_time")
            if not pid or not _alive(pid, start_time):
                continue
            runtime = Runtime.model_validate(rec["runtime"])
            want = desired.get(rec["service"])
            keep = (
                want is not None
                and int(rec["slot"]) < want.assignment.replicas
                and _same_runtime(runtime, want.assignment.runtime)
            )
            if keep:
                inst = Instance(
                    id=rec["id"],
                    service=rec["service"],
                    slot=int(rec["slot"]),
                    runtime=runtime,
                    epoch=int(rec["epoch"]),
                    port=int(rec["port"]),
                    pid=pid,
                    start_time=start_time,
                    state="running",
                )
                assert want is not None
                inst.take_secrets(want)
                inst.monitor = asyncio.create_task(self._watch_adopted(inst))
                self._instances[inst.id] = inst
                sentences.append(f"adopted {inst.id} (pid {pid}) from a previous agent")
            else:
                await self._kill_group(pid, start_time)
                self._released(rec["id"])
                sentences.append(f"stopped {rec['id']} (pid {pid}) left by a previous agent")
        self._save()
        return sentences

    async def close(self, *, stop_instances: bool) -> None:
        """Stop monitoring; with `stop_instances`, stop every instance first."""
        if stop_instances:
            async with self._lock:
                await asyncio.gather(*(self._stop(i) for i in list(self._instances.values())))
                self._instances.clear()
                self._save()
        if self._health is not None:
            self._health.cancel()
            await asyncio.wait([self._health], timeout=2)
        for inst in self._instances.values():
            if inst.monitor is not None:
                inst.monitor.cancel()
        if self._session is not None:
            await self._session.close()

    # -- reconcile --------------------------------------------------------------------

    async def apply(self, desired: Mapping[str, Desired]) -> list[str]:
        """Start, replace, relabel or stop instances until they match `desired`."""
        sentences: list[str] = []
        async with self._lock:
            for inst in list(self._instances.values()):
                want = desired.get(inst.service)
                if want is None or inst.slot >= want.assignment.replicas:
                    await self._stop(inst)
                    del self._instances[inst.id]
                    sentences.append(f"stopped {inst.id}: no longer assigned")
                elif not _same_runtime(inst.runtime, want.assignment.runtime):
                    await self._stop(inst)
                    del self._instances[inst.id]
                    sentences.append(
                        f"stopped {inst.id} (version {inst.runtime.version}) to run "
                        f"version {want.assignment.runtime.version}"
                    )
                else:
                    if inst.runtime.generation != want.assignment.runtime.generation:
                        inst.runtime = want.assignment.runtime
                        inst.epoch = want.epoch
                    inst.take_secrets(want)
                    if inst.reason == SECRET_WITHHELD and inst.withheld is None:
                        await self._launch(inst)  # its secrets have come
                        sentences.append(f"started {inst.id}: its secrets were delivered")
            for service, want in sorted(desired.items()):
                if service in self._fenced:
                    continue
                for slot in range(want.assignment.replicas):
                    iid = f"{service}-{slot}"
                    if iid not in self._instances:
                        inst = Instance(
                            id=iid,
                            service=service,
                            slot=slot,
                            runtime=want.assignment.runtime,
                            epoch=want.epoch,
                            port=free_port(),
                        )
                        inst.take_secrets(want)
                        self._instances[iid] = inst
                        await self._launch(inst)
                        sentences.append(
                            f"started {iid} version {inst.runtime.version} on port {inst.port}"
                        )
            self._save()
        return sentences

    async def fence(self, services: set[str]) -> list[str]:
        """Stop the instances of `services` now, and start none until unfenced."""
        sentences = []
        async with self._lock:
            self._fenced = set(services)
            for inst in list(self._instances.values()):
                if inst.service in services:
                    await self._stop(inst)
                    del self._instances[inst.id]
                    sentences.append(f"fenced {inst.id}: lost contact with the federation")
            self._save()
        return sentences

    def unfence(self) -> None:
        self._fenced = set()

    def instances(self) -> list[InstanceReport]:
        return [
            InstanceReport(
                service=i.service,
                instance=i.id,
                generation=i.runtime.generation,
                version=i.runtime.version,
                state=i.state,
                ready=i.ready,
                message=i.message[:1024],
                **self._measure(i),
            )
            for i in sorted(self._instances.values(), key=lambda i: i.id)
        ]

    # -- processes --------------------------------------------------------------------

    def _measure(self, inst: Instance) -> dict[str, Any]:
        """Optional report fields (reason, measured usage); a driver that measures more
        adds to them."""
        return {"reason": inst.reason} if inst.reason else {}

    def _command(self, inst: Instance) -> tuple[list[str], dict[str, str]]:
        """The instance's argv and environment: the agent's environment without its
        credentials, then the service's env and the instance variables."""
        env = {**os.environ, **self._instance_env(inst), **inst.secret_env}
        for secret in ("FEDERATION_REGION_TOKEN", "FEDERATION_TOKEN", "FEDERATION_ADMIN_TOKEN"):
            env.pop(secret, None)  # the agent's credentials are not the instance's
        return self._argv(inst), env

    def _argv(self, inst: Instance) -> list[str]:
        # {python} is this agent's interpreter, so demos run wherever the agent does.
        return [
            part.replace("{port}", str(inst.port)).replace("{python}", sys.executable)
            for part in inst.runtime.command or []
        ]

    def _instance_env(self, inst: Instance) -> dict[str, str]:
        return {
            **inst.runtime.env,
            "PORT": str(inst.port),
            "FEDERATION_SERVICE": inst.service,
            "FEDERATION_REGION": self.region,
            "FEDERATION_INSTANCE": inst.id,
            "FEDERATION_EPOCH": str(inst.epoch),
        }

    def _exit_reason(self, inst: Instance) -> str | None:
        """Why the instance exited, when the driver knows more than its exit code."""
        return None

    def _released(self, instance_id: str) -> None:
        """The instance's processes are gone for good: free what the driver held for it."""

    def _pass_fds(self, inst: Instance) -> tuple[int, ...]:
        """Descriptors `_command` opened for the child to read (closed once started)."""
        return ()

    async def _launch(self, inst: Instance) -> None:
        rt = inst.runtime
        if not rt.command:
            inst.state, inst.message = "failed", "the process driver needs a command"
            return
        if rt.secret_files and rt.secrets and not self.secret_files:
            inst.state, inst.ready, inst.reason = "failed", False, None
            inst.message = (
                "secret_files needs the exec driver: this driver writes no secret to a file"
            )
            return
        if rt.secrets and inst.withheld is not None:
            inst.state, inst.ready, inst.reason = "failed", False, SECRET_WITHHELD
            inst.message = f"not started, its secrets were withheld: {inst.withheld}"
            return
        log_path = self.state_dir / "logs" / f"{inst.id}.log"
        fds: tuple[int, ...] = ()
        try:
            try:
                argv, env = self._command(inst)
            finally:
                fds = self._pass_fds(inst)  # taken (and closed below) even if it failed
            fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            # A local append-only log file: opening it does not block the loop noticeably.
            with open(fd, "ab") as out:  # noqa: ASYNC230
                os.fchmod(fd, 0o600)  # a log an older agent made 0644
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    stdin=asyncio.subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                    pass_fds=fds,
                )
        except OSError as exc:
            inst.state, inst.ready, inst.message = "failed", False, f"cannot start: {exc}"
            self._schedule_restart(inst)
            return
        finally:
            for passed in fds:
                os.close(passed)
        inst.proc, inst.pid = proc, proc.pid
        inst.start_time = _proc_start_time(proc.pid)
        inst.state, inst.ready, inst.message, inst.reason = "starting", False, "", None
        inst.last_health = 0.0
        inst.monitor = asyncio.create_task(self._watch_child(inst, proc))

    def _schedule_restart(self, inst: Instance) -> None:
        delay = min(MAX_BACKOFF_S, 0.5 * 2**inst.restarts)
        inst.restarts += 1
        inst.next_start = time.monotonic() + delay

    async def _watch_child(self, inst: Instance, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if inst.stopping or inst.proc is not proc:
            return
        inst.state, inst.ready = "failed", False
        inst.reason = self._exit_reason(inst)
        because = f" ({inst.reason})" if inst.reason else ""
        inst.message = f"exited with {code}{because}; restart #{inst.restarts + 1} pending"
        log.warning("instance %s exited with %s%s", inst.id, code, because)
        self._schedule_restart(inst)

    async def _watch_adopted(self, inst: Instance) -> None:
        # Not our child any more, so nothing to wait() on or be signalled by: poll.
        while _alive(inst.pid, inst.start_time):  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        if not inst.stopping:
            inst.reason = self._exit_reason(inst)
            because = f" ({inst.reason})" if inst.reason else ""
            inst.state, inst.ready = "failed", False
            inst.message = f"adopted process exited{because}"
            self._schedule_restart(inst)

    async def _stop(self, inst: Instance) -> None:
        inst.stopping = True
        if inst.pid:
            await self._kill_group(inst.pid, inst.start_time)
        if inst.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                await inst.proc.wait()
        if inst.monitor is not None:
            inst.monitor.cancel()
        inst.state, inst.ready = "stopped", False
        self._released(inst.id)

    async def _kill_group(self, pid: int, start_time: str | None) -> None:
        """SIGTERM the instance's process group, SIGKILL it after the timeout."""
        if not _alive(pid, start_time):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        end = time.monotonic() + self.stop_timeout_s
        while time.monotonic() < end and _alive(pid, start_time):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    # -- health -----------------------------------------------------------------------

    async def _health_loop(self) -> None:
        while True:
            now = time.monotonic()
            checks = []
            async with self._lock:
                for inst in list(self._instances.values()):
                    if inst.state == "failed" and inst.next_start and now >= inst.next_start:
                        inst.next_start = 0.0
                        await self._launch(inst)
                        continue
                    if inst.state in ("starting", "running") and (
                        now - inst.last_health >= inst.runtime.health.interval_s
                    ):
                        inst.last_health = now
                        checks.append(self._check(inst))
            if checks:
                await asyncio.gather(*checks)
            await asyncio.sleep(self.health_tick_s)

    async def _check(self, inst: Instance) -> None:
        if not _alive(inst.pid, inst.start_time):
            return  # the monitor marks it failed
        path = inst.runtime.health.http
        if path is None:
            inst.state, inst.ready, inst.message = "running", True, ""
            inst.restarts = 0
            return
        assert self._session is not None
        try:
            async with asyncio.timeout(inst.runtime.health.timeout_s):
                async with self._session.get(f"http://127.0.0.1:{inst.port}{path}") as resp:
                    healthy = resp.status < 400
                    detail = f"health check answered {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            healthy, detail = False, f"health check failed: {type(exc).__name__}"
        inst.state = "running"
        inst.ready = healthy
        inst.message = "" if healthy else detail
        if healthy:
            inst.restarts = 0

    # -- state file -------------------------------------------------------------------

    def _load(self) -> list[dict[str, Any]]:
        path = self.state_dir / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return []
        return [r for r in data.get("instances", []) if isinstance(r, dict)]

    def _save(self) -> None:
        path = self.state_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        data = json.dumps({"instances": [i.record() for i in self._instances.values()]}, indent=1)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w") as out:
            os.fchmod(fd, 0o600)
            out.write(data)
        os.replace(tmp, path)  # atomic: a crash never leaves half a state file
