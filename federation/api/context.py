"""Typed application state shared by the routes (`web.AppKey`s), and the server's
configuration. The values are set by the `cleanup_ctx` steps of federation.api.app."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from federation.controller import Controller
from federation.drills.runner import DrillRunner
from federation.runtime import Tasks
from federation.store import Store
from federation.store.election import LeaderElection
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


CONFIG = web.AppKey("config", ServerConfig)
TASKS = web.AppKey("tasks", Tasks)
STORE = web.AppKey("store", Store)
MIRROR = web.AppKey("mirror", Mirror)
ELECTION = web.AppKey("election", LeaderElection)
CONTROLLER = web.AppKey("controller", Controller)
DRILLS = web.AppKey("drills", DrillRunner)


async def synced(request: web.Request) -> Mirror:
    """The server's mirror, once it holds every write this server made (so a client
    reads what it wrote through this server)."""
    mirror = request.app[MIRROR]
    await mirror.sync()
    return mirror
