"""The aiohttp application factory: routes, middleware, and the server's composition.

The server's parts start in the order of `create_app`'s `cleanup_ctx` steps and stop
in the reverse order (aiohttp runs each step's teardown only if its start finished):

    tasks       the task group every long-lived task is started in, by name
    store       the etcd client, the audit log's committer (task `audit-committer`),
                and the first admin token
    mirror      the watched copy of the store (task `store mirror`)
    election    the campaign for the leader key (task `election`)
    controller  the reconcile loop (task `controller`)
    drill_runner  live drills (task `drill runner`)

So on SIGTERM: open assignment watches close first (on_shutdown), then the drill
runner and the controller stop, the leader key is given up (a standby takes over at
once), the mirror's watch ends and the store closes.
"""

from __future__ import annotations

import logging
import secrets
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from aiohttp import web

from federation.api import (
    assignments,
    audit,
    drills,
    metrics,
    openapi,
    regions,
    residency,
    services,
    system,
    tokens,
)
from federation.api.auth import confirm_middleware
from federation.api.context import (
    CONFIG,
    CONTROLLER,
    DRILLS,
    ELECTION,
    MIRROR,
    STORE,
    TASKS,
    ServerConfig,
)
from federation.api.errors import error_middleware
from federation.controller import Controller
from federation.drills.runner import DrillRunner
from federation.model.token import Role, TokenRecord, hash_secret, new_secret
from federation.runtime import Tasks
from federation.store import Store
from federation.store import audit as audit_log
from federation.store import tokens as store_tokens
from federation.store.election import LeaderElection
from federation.store.mirror import Mirror
from federation.store.world import MIRROR_CACHED, MIRROR_PACKED, MIRRORED

log = logging.getLogger(__name__)

BOOTSTRAP_NOTICE = "admin token (shown once, store it now): "
# How long a stopping controller may take to finish the pass under way, before it is
# cancelled (its writes are fenced transactions: a cancelled pass leaves no half).
_CONTROLLER_GRACE_S = 1.0


async def bootstrap_admin(store: Store, config: ServerConfig) -> str | None:
    """Make sure an admin token exists. Returns a newly made secret, to print once."""
    now = datetime.now(UTC)
    if config.admin_token:
        record = TokenRecord(
            id="tok-admin-env",
            role=Role.ADMIN,
            created_at=now,
            description="FEDERATION_ADMIN_TOKEN",
        )
        await store_tokens.ensure(store, hash_secret(config.admin_token), record)
        return None
    secret = new_secret()
    record = TokenRecord(
        id=f"tok-{secrets.token_hex(6)}",
        role=Role.ADMIN,
        created_at=now,
        description="first admin token",
    )
    made = await store_tokens.bootstrap_admin(store, hash_secret(secret), record)
    return secret if made else None


def create_app(config: ServerConfig, *, announce: bool = True) -> web.Application:
    """Build the API application. Its `cleanup_ctx` steps start the server's parts in
    the order they are listed, and aiohttp stops them in the reverse order."""
    app = web.Application(
        middlewares=[error_middleware, confirm_middleware], client_max_size=config.max_body_bytes
    )
    app[CONFIG] = config
    app[TASKS] = Tasks()
    app.add_routes(system.routes)
    app.add_routes(regions.routes)
    app.add_routes(tokens.routes)
    app.add_routes(residency.routes)
    app.add_routes(services.routes)
    app.add_routes(assignments.routes)
    app.add_routes(drills.routes)
    app.add_routes(metrics.routes)
    app.add_routes(audit.routes)
    app.add_routes(openapi.routes)
    app.on_shutdown.append(assignments.close_streams)

    async def tasks(app: web.Application) -> AsyncIterator[None]:
        """Last to stop: whatever long-lived task is still running then."""
        yield
        await app[TASKS].stop_all()

    async def store(app: web.Application) -> AsyncIterator[None]:
        """etcd, the audit committer, and the first admin token."""
        store = Store(
            list(config.etcd_endpoints),
            prefix=config.prefix,
            ca_cert=config.etcd_ca.read_bytes() if config.etcd_ca else None,
            cert_chain=config.etcd_cert.read_bytes() if config.etcd_cert else None,
            cert_key=config.etcd_key.read_bytes() if config.etcd_key else None,
            tls_server_name=config.etcd_server_name,
            username=config.etcd_user,
            password=config.etcd_password,
        )
        await store.connect()
        app[STORE] = store
        # Resident for the server's life (task "audit-committer"); stopped before the
        # store closes, so every audited write queued at shutdown is committed first.
        committer = audit_log.committer(store)
        committer.start()
        try:
            secret = await bootstrap_admin(store, config)
            if secret and announce:
                # Printed, never logged: logs are shipped and kept; stdout is the operator's.
                print(BOOTSTRAP_NOTICE + secret, flush=True)
            yield
        finally:
            try:
                await committer.stop()
            finally:
                await store.close()

    async def mirror(app: web.Application) -> AsyncIterator[None]:
        """One watched copy of the services and regions, shared by the controller and
        the service reads (federation.store.mirror). Its first load is not awaited:
        the first read or pass that needs it waits for it."""
        mirror = Mirror(
            app[STORE], MIRRORED, cached=MIRROR_CACHED, packed=MIRROR_PACKED, tasks=app[TASKS]
        )
        app[MIRROR] = mirror
        await mirror.start(wait=False)
        yield
        await mirror.stop()

    async def election(app: web.Application) -> AsyncIterator[None]:
        """Campaign for the leader key. Stopped right after the controller, before the
        mirror, and the key is given up at once, so a standby takes over now."""
        election = LeaderElection(app[STORE], identity=config.identity, ttl=config.election_ttl)
        app[ELECTION] = election
        app[TASKS].start("election", election.run)
        yield
        await app[TASKS].stop("election")
        await election.resign()

    async def controller(app: web.Application) -> AsyncIterator[None]:
        """The reconcile loop (it acts while this replica leads). On stop, the pass
        under way is written whole, for at most the grace period."""
        # The controller plans in worker threads. With CPython's default 5 ms switch
        # interval, a planning thread holds the GIL for 5 ms each time the event loop
        # waits on I/O, so a request with a few etcd round trips queued for tens of ms.
        sys.setswitchinterval(0.0005)
        controller = Controller(
            app[STORE], app[ELECTION], region_ttl=config.region_ttl, mirror=app[MIRROR]
        )
        app[CONTROLLER] = controller
        app[TASKS].start("controller", controller.run, on_stop=controller.finish)
        yield
        await app[TASKS].stop("controller", grace=_CONTROLLER_GRACE_S)

    async def drill_runner(app: web.Application) -> AsyncIterator[None]:
        """Live drills, driven while this replica leads (federation.drills.runner)."""
        runner = DrillRunner(app[STORE], app[ELECTION])
        app[DRILLS] = runner
        app[TASKS].start("drill runner", runner.run)
        yield
        await app[TASKS].stop("drill runner")

    app.cleanup_ctx.extend([tasks, store, mirror, election, controller, drill_runner])
    return app
