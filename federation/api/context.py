"""Typed application state shared by the routes (`web.AppKey`s), and the server's
configuration. The values are set by the `cleanup_ctx` steps of federation.api.app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.api.errors import ApiError
from federation.api.failures import Failures
from federation.api.watches import Watches
from federation.controller import Controller
from federation.drills.practice import PracticeScheduler
from federation.drills.runner import DrillRunner
from federation.runtime import Tasks
from federation.store import Store
from federation.store.audit import HeadMonitor
from federation.store.compaction import Compactor
from federation.store.election import LeaderElection
from federation.store.envelope import KeyProvider
from federation.store.heartbeats import LastSeen
from federation.store.mirror import Mirror


@dataclass(frozen=True)
class ServerConfig:
    """What `federation serve` was started with."""

    etcd_endpoints: tuple[str, ...]
    prefix: str = "/federation/"
    host: str = "127.0.0.1"
    port: int = 8080
    region_ttl: int = 10
    election_ttl: int = 10
    identity: str = "server"
    admin_token: str | None = field(default=None, repr=False)
    max_body_bytes: int = 1024 * 1024
    etcd_ca: Path | None = None
    etcd_cert: Path | None = None
    etcd_key: Path | None = None
    etcd_server_name: str | None = None  # the name etcd's certificates are checked for
    etcd_user: str | None = None
    etcd_password: str | None = field(default=None, repr=False)
    # The Ed25519 key that signs audit checkpoints (`--audit-key`); never in etcd.
    audit_key: Path | None = None
    # The key-encryption keys of secrets (`--kek-file`); never in etcd. Without it,
    # secrets can be neither written nor delivered.
    kek_file: Path | None = None
    # Assignment watches one token may hold open at once (the next one is a 429).
    max_watches_per_token: int = 4
    # Failed authentications per client address: a burst, then so many per second
    # (federation.api.failures); beyond, 429 with Retry-After.
    auth_failures_burst: int = 20
    auth_failures_per_s: float = 2.0
    # etcd history the leader keeps, in seconds' worth of revisions (`--etcd-history`),
    # how often it samples and compacts (None: a tenth of that), and its step
    # (federation.store.compaction).
    history_window_s: float = 300.0
    compaction_interval_s: float | None = None
    compaction_step: int = 10_000
    # The clock drill schedules are judged by (tests move a fake one); None: the
    # real UTC time.
    clock: Callable[[], datetime] | None = field(default=None, repr=False, compare=False)


CONFIG = web.AppKey("config", ServerConfig)
TASKS = web.AppKey("tasks", Tasks)
STORE = web.AppKey("store", Store)
MIRROR = web.AppKey("mirror", Mirror)
ELECTION = web.AppKey("election", LeaderElection)
CONTROLLER = web.AppKey("controller", Controller)
DRILLS = web.AppKey("drills", DrillRunner)
PRACTICE = web.AppKey("practice", PracticeScheduler)
# Set only when the server was given `--audit-key`.
AUDIT_KEY = web.AppKey("audit_key", Ed25519PrivateKey)
AUDIT_MONITOR = web.AppKey("audit_monitor", HeadMonitor)
FAILURES = web.AppKey("failures", Failures)
# Set only when the server was given `--kek-file`.
KEYRING = web.AppKey("keyring", KeyProvider)
OPEN_WATCHES = web.AppKey("open watches", Watches)
# A plan (`POST /v1/plan`) or a residency evidence report reads everything there is
# (seconds of CPU with 100,000 services or a million audit entries): one at a time per
# server, so a burst of them cannot starve deploys and failovers.
WHOLE_READ = web.AppKey("whole read", asyncio.Lock)
COMPACTOR = web.AppKey("compactor", Compactor)
LAST_SEEN = web.AppKey("last seen", LastSeen)  # when this server last heard each region


async def synced(request: web.Request) -> Mirror:
    """The server's mirror, once it holds every write this server made (so a client
    reads what it wrote through this server)."""
    mirror = request.app[MIRROR]
    await mirror.sync()
    return mirror


@contextlib.asynccontextmanager
async def whole_read(request: web.Request) -> AsyncIterator[None]:
    """Hold the server's WHOLE_READ lock; a 429 (Retry-After: 1) when another holds it."""
    lock = request.app[WHOLE_READ]
    if lock.locked():
        raise ApiError(
            429,
            "another plan or evidence report is running on this server; try again shortly",
            headers={"Retry-After": "1"},
        )
    async with lock:
        yield
