"""Who acts: the actor an audited write names when its Change names none.

A context variable, so it is the current task's: the API sets it once it has
authenticated a request (each request is its own asyncio task). An audited write
reads it in the caller's task, before the write is queued for the committer, whose
task has a context of its own.
"""

from __future__ import annotations

import contextvars

from federation.store.audit.chain import SYSTEM

_ACTOR: contextvars.ContextVar[str] = contextvars.ContextVar("audit_actor", default=SYSTEM)


def acting_as(actor: str) -> None:
    """Record who acts in the current task (the API does this once it has authenticated)."""
    _ACTOR.set(actor)


def current_actor() -> str:
    """Who acts in the current task: what `acting_as` set, else "system"."""
    return _ACTOR.get()
