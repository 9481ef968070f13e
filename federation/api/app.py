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
    practice    drill schedules' practice runs, by the leader (task `practice`)
    compaction  etcd's history kept to a window, by the leader (task `compaction`)

So on SIGTERM: open assignment watches close first (on_shutdown), then the drill
runner and the controller stop, the leader key is given up (a standby takes over at
once), the mirror's watch ends and the store closes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.api import (
    assignments,
    audit,
    drills,
    etcd,
    evidence,
    metrics,
    openapi,
    plan,
    regions,
    residency,
    schedules,
    services,
    system,
    tokens,
    ui,
)
from federation.api.auth import confirm_middleware
from federation.api.context import (
    AUDIT_KEY,
    AUDIT_MONITOR,
    COMPACTOR,
    CONFIG,
    CONTROLLER,
    DRILLS,
    ELECTION,
    FAILURES,
    KEYRING,
    LAST_SEEN,
    MIRROR,
    OPEN_WATCHES,
    PRACTICE,
    STORE,
    TASKS,
    WHOLE_READ,
    ServerConfig,
)
from federation.api.errors import error_middleware
from federation.api.failures import Failures
from federation.api.query import query_middleware
from federation.api.secrets import routes as secret_routes
from federation.api.watches import Watches
from federation.controller import Controller
from federation.drills.practice import PracticeScheduler, utc_now
from federation.drills.runner import DrillRunner
from federation.model.secret import KeyringError
from federation.model.token import (
    Role,
    TokenRecord,
    admin_token_weakness,
    hash_secret,
    new_secret,
)
from federation.processes.commands import ADMIN_TOKEN_ENV
from federation.runtime import Tasks
from federation.store import Store
from federation.store import audit as audit_log
from federation.store import compaction as store_compaction
from federation.store import tokens as store_tokens
from federation.store.audit.checkpoint import private_key_from_pem
from federation.store.election import LeaderElection
from federation.store.envelope import FileKeyring
from federation.store.heartbeats import LastSeen
from federation.store.mirror import Mirror
from federation.store.world import MIRROR_CACHED, MIRROR_GROUPED, MIRROR_PACKED, MIRRORED

log = logging.getLogger(__name__)

BOOTSTRAP_NOTICE = "admin token (shown once, store it now): "
# How long a stopping controller may take to finish the pass under way, before it is
# cancelled (its writes are fenced transactions: a cancelled pass leaves no half).
_CONTROLLER_GRACE_S = 1.0


class StartRefused(Exception):
    """The server will not start with this configuration; the message says why."""


def load_audit_key(path: Path) -> Ed25519PrivateKey:
    """The audit checkpoint key of `--audit-key` (StartRefused saying why not). A key
    others may read is used, with a warning: whoever reads it can sign checkpoints."""
    try:
        pem = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise StartRefused(f"--audit-key {path}: {exc.strerror}") from None
    try:
        key = private_key_from_pem(pem)
    except ValueError as exc:
        raise StartRefused(f"--audit-key {path}: {exc}") from None
    if mode & 0o077:
        log.warning(
            "--audit-key %s is readable by others (mode %o): chmod 600 it", path, mode & 0o777
        )
    return key


def load_keyring(path: Path) -> FileKeyring:
    """The KEK file of `--kek-file` (StartRefused saying why not); a file others may
    read is used, with a warning: whoever reads it can open every secret in a backup."""
    try:
        keyring = FileKeyring(path)
    except KeyringError as exc:
        raise StartRefused(f"--kek-file {path}: {exc}") from None
    if keyring.mode & 0o077:
        log.warning(
            "--kek-file %s is readable by others (mode %o): chmod 600 it", path, keyring.mode
        )
    return keyring


def check_config(config: ServerConfig) -> None:
    """Refuse, before anything starts, what the server must not run with."""
    if config.admin_token:
        weakness = admin_token_weakness(config.admin_token)
        if weakness is not None:
            raise StartRefused(
                f"{ADMIN_TOKEN_ENV} {weakness}. Use a random value, e.g. "
                "`openssl rand -hex 32`, or unset it and let the server make the first "
                "admin token"
            )


async def bootstrap_admin(store: Store, config: ServerConfig) -> str | None:
    """Make sure an admin token exists. Returns a newly made secret, to print once."""
    now = datetime.now(UTC)
    if config.admin_token:
        record = TokenRecord(
            id=store_tokens.ENV_ADMIN_ID,
            role=Role.ADMIN,
            created_at=now,
            description=ADMIN_TOKEN_ENV,
        )
        done = await store_tokens.ensure_env_admin(store, hash_secret(config.admin_token), record)
        if done == store_tokens.ENV_ADMIN_REVOKED:
            log.warning("%s; unset it, or set a new value to make a new admin token", done)
        else:
            log.info("%s", done)
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
    the order they are listed, and aiohttp stops them in the reverse order.
    StartRefused when the configuration is unsafe (`check_config`) or the audit key
    does not load."""
    check_config(config)
    app = web.Application(
        middlewares=[error_middleware, query_middleware, confirm_middleware],
        client_max_size=config.max_body_bytes,
    )
    app[CONFIG] = config
    if config.audit_key is not None:
        app[AUDIT_KEY] = load_audit_key(config.audit_key)
    else:
        log.warning("no --audit-key: signed audit checkpoints are off")
    if config.kek_file is not None:
        app[KEYRING] = load_keyring(config.kek_file)
    app[AUDIT_MONITOR] = audit_log.HeadMonitor()
    app[TASKS] = Tasks()
    app[FAILURES] = Failures(burst=config.auth_failures_burst, per_s=config.auth_failures_per_s)
    app[LAST_SEEN] = LastSeen()
    app.add_routes(system.routes)
    app.add_routes(regions.routes)
    app.add_routes(tokens.routes)
    app.add_routes(residency.routes)
    app.add_routes(services.routes)
    app.add_routes(secret_routes)
    app.add_routes(assignments.routes)
    app.add_routes(drills.routes)
    app.add_routes(schedules.routes)
    app.add_routes(metrics.routes)
    app.add_routes(audit.routes)
    app.add_routes(openapi.routes)
    app.add_routes(plan.routes)
    app.add_routes(evidence.routes)
    app[WHOLE_READ] = asyncio.Lock()
    app.add_routes(etcd.routes)
    app.add_routes(ui.routes)
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
            app[STORE],
            MIRRORED,
            cached=MIRROR_CACHED,
            packed=MIRROR_PACKED,
            grouped=MIRROR_GROUPED,
            tasks=app[TASKS],
        )
        app[MIRROR] = mirror
        # Every head the watch applies: an alarm if it goes back (store.audit.monitor).
        audit_log.follow(mirror, app[AUDIT_MONITOR])
        # Open assignment watches end when their token or region does (a listener).
        app[OPEN_WATCHES] = Watches(mirror, per_token=config.max_watches_per_token)
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

    async def practice(app: web.Application) -> AsyncIterator[None]:
        """Drill schedules' practice runs, while this replica leads
        (federation.drills.practice)."""
        scheduler = PracticeScheduler(
            app[STORE],
            app[ELECTION],
            clock=config.clock or utc_now,
            keyring=app.get(KEYRING),
            region_ttl=config.region_ttl,
        )
        app[PRACTICE] = scheduler
        app[TASKS].start("practice", scheduler.run)
        yield
        await app[TASKS].stop("practice")

    async def compaction(app: web.Application) -> AsyncIterator[None]:
        """etcd's history kept to `history_window_s` (compacted while this replica
        leads; sampled on every replica, so a new leader knows the window at once)."""
        mirror = app[MIRROR]
        compactor = store_compaction.Compactor(
            app[STORE],
            app[ELECTION],
            window_s=config.history_window_s,
            interval_s=config.compaction_interval_s,
            step=config.compaction_step,
            floor=mirror.needs,
        )
        app[COMPACTOR] = compactor
        app[TASKS].start(store_compaction.TASK, compactor.run)
        yield
        await app[TASKS].stop(store_compaction.TASK)

    app.cleanup_ctx.extend(
        [tasks, store, mirror, election, controller, drill_runner, practice, compaction]
    )
    return app
