"""The agent's side of the region owner's allowlist (`--allow-exec GLOB`).

The agent resolves a command's executable as the drivers start it (`{python}` is the
agent's interpreter; a bare name is looked up in the instance's PATH: the service's
`env` PATH if it sets one, else the agent's) and matches the absolute path with
`model.allowlist.admits`, the same function the scheduler judges regions with. The
loop asks before any driver sees an assignment, so every driver gets the policy.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import sys
from collections.abc import Mapping, Sequence

from federation.model.allowlist import PYTHON, admits


def executable(command: Sequence[str], env: Mapping[str, str] | None = None) -> str | None:
    """The absolute path `command` would execute, or None when it resolves to nothing.
    `{port}` in the executable stays unexpanded (the port is chosen at start)."""
    argv0 = command[0].replace(PYTHON, sys.executable)
    if "/" in argv0:
        return posixpath.normpath(os.path.abspath(argv0))
    path = (env or {}).get("PATH", os.environ.get("PATH", os.defpath))
    found = shutil.which(argv0, path=path)
    return posixpath.normpath(os.path.abspath(found)) if found else None


def allowed(
    command: Sequence[str] | None,
    allowlist: Sequence[str] | None,
    env: Mapping[str, str] | None = None,
) -> bool:
    """Whether the agent may start `command` under `allowlist` (None: no policy)."""
    if allowlist is None:
        return True
    if not command:
        return False
    exe = executable(command, env)
    return exe is not None and admits(exe, allowlist)


def reported(allowlist: Sequence[str] | None) -> list[str] | None:
    """The allowlist as the heartbeat reports it: the patterns, plus the `{python}`
    token when they admit this agent's interpreter (the server cannot know its path)."""
    if allowlist is None:
        return None
    extra = [PYTHON] if admits(sys.executable, allowlist) else []
    return [*allowlist, *extra]


def policy_problem(driver: str, allowlist: Sequence[str] | None) -> str | None:
    """Why the agent must not start with this driver and allowlist, or None. The
    isolated `exec` driver is the production driver, so its region owner must say what
    may run: with no `--allow-exec` it refuses to start rather than run anything."""
    if driver == "exec" and allowlist is None:
        return (
            "--driver exec needs at least one --allow-exec GLOB (e.g. /usr/bin/python3 "
            "or '/opt/apps/*'): the region owner decides what may run on its hosts"
        )
    return None
