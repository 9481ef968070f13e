"""Runs the election and, while this replica leads, the controller's loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from federation.store.election import LeaderElection

log = logging.getLogger(__name__)


class Controller:
    """Owns the election task; loops added by later capabilities run only as leader."""

    def __init__(self, election: LeaderElection) -> None:
        self.election = election
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.election.run(), name="controller-election")

    async def stop(self) -> None:
        """Stop campaigning and hand leadership over at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.election.resign()
