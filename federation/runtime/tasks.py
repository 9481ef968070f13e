"""The long-lived tasks of a process, started, guarded and stopped in one place, by name.

A server runs a few tasks for its whole life (the store mirror's watch, the election,
the controller's loop, the drill runner) and some for as long as a request lasts (an
agent's assignment watch). `Tasks` starts or adopts each under a name, so a crash, a
log line or a stuck shutdown says which one it was, and stops them in the order its
caller gives (kopf's orchestrator, `kopf/_cogs/aiokits/aiotasks.py`, does the same).

- An eternal task (`start`) runs until it is stopped. Should its body crash, the
  traceback is logged at once and the body started again after `restart_s`; should it
  return, that is logged as an error and it is started again likewise. Nothing that
  must keep running dies quietly.
- A tracked task (`track`) ends on its own (a request's stream); it gets a name and
  is stopped with the rest if it is still running.
- `stop(*names)`, for each name in order: the graceful stop (the task's `on_stop`
  hook asks its body to finish what it is doing and return), up to `grace` seconds
  for that, then cancellation, then up to `grace` seconds more. A task without the
  hook is cancelled at once: its own `finally` blocks are its graceful stop. One
  still running after that is logged and left behind, so that a stuck gRPC stream
  cannot hold a shutdown hostage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Body = Callable[[], Awaitable[None]]


@dataclass(eq=False)
class _Named:
    name: str
    on_stop: Callable[[], None] | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    stopping: bool = False

    def running(self) -> set[asyncio.Task[Any]]:
        return {task for task in self.tasks if not task.done()}


class Tasks:
    """The named long-lived tasks of one process (or of one component used alone)."""

    def __init__(self, *, logger: logging.Logger | None = None) -> None:
        self._log = logger or log
        self._named: dict[str, _Named] = {}

    def __contains__(self, name: object) -> bool:
        """Is a task of that name running?"""
        named = self._named.get(name) if isinstance(name, str) else None
        return named is not None and bool(named.running())

    @property
    def names(self) -> list[str]:
        """The names with a task running, oldest first."""
        return [name for name in self._named if name in self]

    def start(
        self,
        name: str,
        body: Body,
        *,
        on_stop: Callable[[], None] | None = None,
        restart_s: float = 1.0,
    ) -> asyncio.Task[None]:
        """Run `body` as the eternal task `name` until `stop(name)`. `on_stop`, if
        given, asks the body to return (the graceful stop)."""
        if name in self:
            raise ValueError(f"a task named {name!r} is already running")
        named = _Named(name, on_stop)
        self._named.pop(name, None)
        self._named[name] = named
        task = asyncio.create_task(self._guard(named, body, restart_s), name=name)
        self._add(named, task)
        return task

    def track(self, name: str, task: asyncio.Task[Any]) -> None:
        """Name a task that ends on its own (several may share a name), so that
        `stop(name)` or `stop_all()` ends it if it is still running then."""
        named = self._named.get(name)
        if named is None or named.stopping:
            named = self._named[name] = _Named(name)
        self._add(named, task)

    @staticmethod
    def _add(named: _Named, task: asyncio.Task[Any]) -> None:
        named.tasks.add(task)
        task.add_done_callback(named.tasks.discard)

    async def _guard(self, named: _Named, body: Body, restart_s: float) -> None:
        while True:
            try:
                await body()
            except asyncio.CancelledError:
                raise
            except Exception:
                if named.stopping:
                    self._log.exception("%s crashed while stopping", named.name)
                    return
                self._log.exception("%s crashed; restarting in %g s", named.name, restart_s)
            else:
                if named.stopping:
                    return
                self._log.error(
                    "%s returned, but it should run until stopped; restarting in %g s",
                    named.name,
                    restart_s,
                )
            await asyncio.sleep(restart_s)

    async def stop(self, *names: str, grace: float = 2.0) -> None:
        """Stop the tasks of each name, one name after the other, in the order given."""
        for name in names:
            named = self._named.pop(name, None)
            if named is not None:
                await self._stop(named, grace)

    async def stop_all(self, *, grace: float = 2.0) -> None:
        """Stop every task still known, newest name first."""
        await self.stop(*reversed(self._named), grace=grace)

    async def _stop(self, named: _Named, grace: float) -> None:
        named.stopping = True
        running = named.running()
        if not running:
            return
        if named.on_stop is not None:
            named.on_stop()
            _, running = await asyncio.wait(running, timeout=grace)
        for task in running:
            task.cancel()
        if running:
            _, stuck = await asyncio.wait(running, timeout=grace)
            if stuck:
                self._log.warning(
                    "%s: %d task(s) still running %g s after being cancelled; left behind",
                    named.name,
                    len(stuck),
                    grace,
                )


async def forever(what: str, body: Callable[[], Awaitable[None]], logger: logging.Logger) -> None:
    """Run `body` for as long as the task lives: an eternal loop that crashes is
    logged (as `what`) and restarted after 1 s, never lost quietly. (The agent's
    loops; the server names its tasks in a `Tasks`.)"""
    while True:
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s crashed; restarting in 1 s", what)
            await asyncio.sleep(1)
