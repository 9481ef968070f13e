"""The aiohttp application factory: routes, middleware, and the resources they share."""

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
from federation.api.context import CONFIG, CONTROLLER, ELECTION, MIRROR, STORE, ServerConfig
from federation.api.errors import error_middleware
from federation.controller import Controller
from federation.model.token import Role, TokenRecord, hash_secret, new_secret
from federation.store import Store
from federation.store import tokens as store_tokens
from federation.store.election import LeaderElection
from federation.store.mirror import Mirror
from federation.store.world import MIRROR_CACHED, MIRROR_PACKED, MIRRORED

log = logging.getLogger(__name__)

BOOTSTRAP_NOTICE = "admin token (shown once, store it now): "


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
    """Build the API application; its cleanup context owns the store and the controller."""
    app = web.Application(
        middlewares=[error_middleware, confirm_middleware], client_max_size=config.max_body_bytes
    )
    app[CONFIG] = config
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
    app[assignments.STREAMS] = set()
    app.on_shutdown.append(assignments.close_streams)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        # The controller plans in worker threads. With CPython's default 5 ms switch
        # interval, a planning thread holds the GIL for 5 ms each time the event loop
        # waits on I/O, so a request with a few etcd round trips queued for tens of ms.
        sys.setswitchinterval(0.0005)
        store = Store(
            list(config.etcd_endpoints),
            prefix=config.prefix,
            ca_cert=config.etcd_ca.read_bytes() if config.etcd_ca else None,
            cert_chain=config.etcd_cert.read_bytes() if config.etcd_cert else None,
            cert_key=config.etcd_key.read_bytes() if config.etcd_key else None,
            username=config.etcd_user,
            password=config.etcd_password,
        )
        await store.connect()
        app[STORE] = store
        election = LeaderElection(store, identity=config.identity, ttl=config.election_ttl)
        app[ELECTION] = election
        secret = await bootstrap_admin(store, config)
        if secret and announce:
            # Printed, never logged: logs are shipped and kept; stdout is the operator's.
            print(BOOTSTRAP_NOTICE + secret, flush=True)
        # One watched copy of the services and regions, shared by the controller and
        # the service reads (federation.store.mirror).
        mirror = Mirror(store, MIRRORED, cached=MIRROR_CACHED, packed=MIRROR_PACKED)
        app[MIRROR] = mirror
        controller = Controller(store, election, region_ttl=config.region_ttl, mirror=mirror)
        app[CONTROLLER] = controller
        await controller.start()
        try:
            yield
        finally:
            await controller.stop()
            await mirror.stop()
            await store.close()

    app.cleanup_ctx.append(resources)
    return app
