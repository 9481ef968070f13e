"""The agent's heartbeat loop: never exits because the server or etcd blinked."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

from federation.client import ApiClient, ApiError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentConfig:
    server: str
    region: str
    token: str
    cpu: float
    memory_mb: int


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


class Agent:
    """Heartbeats at the pace the server asks for; backs off while it cannot reach it."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.interval = 1.0
        self.last_ok: float | None = None

    async def beat(self, client: ApiClient) -> str:
        """One heartbeat; returns what happened, as a sentence."""
        answer = await client.request(
            "POST",
            f"/v1/regions/{self.config.region}/heartbeat",
            body={
                "capacity": {"cpu": self.config.cpu, "memory_mb": self.config.memory_mb},
                "allocated": {"cpu": 0, "memory_mb": 0},
            },
        )
        self.interval = float(answer.get("interval_s", self.interval))
        self.last_ok = asyncio.get_running_loop().time()
        return str(answer.get("result", "heartbeat accepted"))

    async def run(self) -> None:
        """Heartbeat forever. Errors are logged and retried with capped backoff."""
        backoff = 0.2
        last = ""
        async with ApiClient(self.config.server, self.config.token, timeout=5.0) as client:
            while True:
                try:
                    sentence = await self.beat(client)
                    backoff = 0.2
                    delay = self.interval
                except ApiError as exc:
                    sentence = f"heartbeat failed: {exc.message} ({exc.status or 'no answer'})"
                    if exc.status in (401, 403, 404):
                        # Misconfiguration, not a blink: keep trying, but slowly.
                        backoff = 5.0
                    delay = backoff
                    backoff = min(backoff * 2, max(1.0, self.interval))
                if sentence != last:
                    log.info("agent %s: %s", self.config.region, sentence)
                    last = sentence
                await asyncio.sleep(delay)
