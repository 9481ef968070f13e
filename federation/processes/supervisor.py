"""Keeping `federation up`'s servers running, and saying what happens to its children.

A server that exits is started again after a back-off (1 s, doubling up to 30 s, and
back to 1 s once it has run for a minute), and each exit and restart is one line. An
agent that exits is left down and said once: killing a region's agent is how `up`
shows a region lost (README), and the federation, not `up`, must handle that. A
server that stops answering is one line when it stops and one when it answers again:
a slow server is waited for, never a reason to stop the others. The supervisor only
runs processes and remembers answers; what to ask a server is `devcluster`'s.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from federation.processes.children import launch

RESTART_FIRST_S = 1.0
RESTART_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0  # a child that ran this long starts its back-off afresh


@dataclass
class Child:
    """A process kept running: how to start it again, and when it may be."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    backoff: float = RESTART_FIRST_S
    restart_at: float | None = None  # set while it is dead and waiting to be started
    restart: bool = True  # False: left down when it exits (an agent), said once
    reported: bool = False

    @property
    def running(self) -> bool:
        return self.proc.poll() is None


class Supervisor:
    """Starts children, restarts the ones that exit, and tracks who answers."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self._silent_since: dict[str, float] = {}

    def start(
        self, name: str, argv: list[str], env: dict[str, str], log: Path, *, restart: bool = True
    ) -> Child:
        """Launch a child; with `restart`, `tick` starts it again whenever it exits."""
        return Child(name, argv, env, log, launch(argv, log=log, env=env), restart=restart)

    def tick(self, children: list[Child]) -> None:
        """Restart, once their back-off has passed, the children that exited."""
        now = time.monotonic()
        for child in children:
            if child.running:
                if now - child.started > HEALTHY_AFTER_S:
                    child.backoff = RESTART_FIRST_S
                continue
            if not child.restart:
                if not child.reported:
                    child.reported = True
                    self.say(
                        f"[yellow]{child.name} exited ({child.proc.returncode}); left down: "
                        f"its region is lost once its lease runs out (log: {child.log})[/]"
                    )
                continue
            if child.restart_at is None:
                child.restart_at = now + child.backoff
                self.say(
                    f"[yellow]{child.name} exited ({child.proc.returncode}); "
                    f"starting it again in {child.backoff:g} s (log: {child.log})[/]"
                )
                child.backoff = min(child.backoff * 2, RESTART_MAX_S)
            elif now >= child.restart_at:
                child.proc = launch(child.argv, log=child.log, env=child.env)
                child.started, child.restart_at = now, None
                self.say(f"{child.name} restarted (pid {child.proc.pid})")

    def answered(self, url: str, ok: bool, *, asked_at: float) -> None:
        """Record whether the server at `url` answered the request sent at `asked_at`
        (monotonic); say so when that changes."""
        since = self._silent_since.get(url)
        if not ok and since is None:
            self._silent_since[url] = asked_at
            self.say(
                f"[yellow]server {url} is not answering; waiting for it "
                "(the agents retry meanwhile)[/]"
            )
        elif ok and since is not None:
            del self._silent_since[url]
            silent = time.monotonic() - since
            self.say(f"[green]server {url} answers again[/] (no answer for {silent:.0f} s)")

    def silent(self, url: str) -> bool:
        return url in self._silent_since
