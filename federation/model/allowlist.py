"""The region owner's allowlist of executables (`federation agent --allow-exec GLOB`).

Pure: the agent (which resolves a command's executable on its host) and the scheduler
(which judges a region up front from the allowlist its heartbeat reported) share these
functions, so the two cannot disagree on what a pattern admits.

A pattern is an `fnmatch` glob matched, case-sensitively, against the executable's
absolute path: `/usr/bin/python3`, `/opt/apps/*` (`*` also crosses `/`). An allowlist
of None means no policy (everything runs: the `raw` driver's development default and
agents that predate allowlists); an empty list admits nothing.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from fnmatch import fnmatchcase

PYTHON = "{python}"
"""The command placeholder for the agent's own interpreter. The server cannot know its
path, so an agent whose interpreter its allowlist admits reports this token too."""


def admits(executable: str, allowlist: Sequence[str] | None) -> bool:
    """Whether `allowlist` admits the (absolute, resolved) `executable`."""
    if allowlist is None:
        return True
    return any(fnmatchcase(executable, pattern) for pattern in allowlist)


def admits_command(command: Sequence[str] | None, allowlist: Sequence[str] | None) -> bool:
    """The scheduler's judgement, from the server, of whether a region with `allowlist`
    can run `command`. An absolute executable is matched as is; `{python}` by the
    token the agent reports; a bare name, which only the agent can resolve through its
    PATH, by the patterns' last components (the agent judges it again, exactly, before
    starting anything). A service without a command is not admitted by an allowlist."""
    if allowlist is None:
        return True
    if not command:
        return False
    argv0 = command[0]
    if argv0 == PYTHON:
        return admits(PYTHON, allowlist)
    if "/" in argv0:
        return admits(posixpath.normpath(argv0), allowlist)
    return any(fnmatchcase(argv0, pattern.rsplit("/", 1)[-1]) for pattern in allowlist)


def refusal(region: str, command: Sequence[str] | None) -> str:
    """The sentence a refused command is reported with, naming region and command."""
    shown = " ".join(command) if command else "(no command)"
    return f"command not allowed in region {region}: {shown}"
