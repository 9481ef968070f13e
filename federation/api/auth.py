"""Bearer tokens: who is calling, and may they do this."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NoReturn

from aiohttp import web

from federation.api.context import FAILURES, MIRROR, STORE
from federation.api.errors import ApiError, Handler
from federation.api.failures import Failures
from federation.model.region import RegionRecord
from federation.model.token import Role, TokenRecord, hash_secret, role_allows
from federation.store import (
    check_fence,
    fence_writes,
    keys,
    regions,
    tokens,
    unfence_writes,
    write_fence,
)
from federation.store.audit import acting_as
from federation.telemetry import metrics as _metrics

# Requests that change nothing: they read their token from etcd before anything else.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# The caller of the request being handled. A context variable, not a request key:
# every request asks for its caller, and a request key that is missing costs a raised
# and caught KeyError inside aiohttp each time.
# It holds the request too, because one keep-alive connection's requests share a task
# (and so its context): a later request must never see an earlier one's caller.
_PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "principal", default=None
)


@dataclass(frozen=True)
class Principal:
    """Who a request was authenticated as: the token's record, the hash it is stored
    under and its revision then (what a long-lived request re-checks; never the secret)."""

    request: web.Request
    record: TokenRecord
    digest: str
    revision: int


async def authenticate(request: web.Request) -> TokenRecord:
    """The token record behind the request's bearer token; 401 if absent or unknown,
    429 when the client's address has failed too often (federation.api.failures)."""
    return (await principal(request)).record


async def principal(request: web.Request) -> Principal:
    """`authenticate`, with the token's hash and revision."""
    cached = _PRINCIPAL.get()
    if cached is not None and cached.request is request:
        return cached
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)")
    # Looked up by hash: the secret is never compared, stored or logged.
    digest = hash_secret(secret.strip())
    failures = request.app[FAILURES]
    mirror = request.app[MIRROR]
    address = request.remote
    if failures.unknown.holds(digest) or failures.limiter.retry_after(address):
        # A token etcd did not hold a moment ago, or an address out of its budget of
        # failures: answered without reading etcd, unless this server's mirror now
        # holds a live token under that hash (one created since, through any replica:
        # it works as soon as the mirror has it; a good token is never refused).
        await mirror.sync()
        known = mirror.get(keys.TOKENS, digest, TokenRecord)
        if known is None or known[0].expired(datetime.now(UTC)):
            _refuse(request, failures, "remembered")
    # A read is answered only after a linearizable read of its token, and once this
    # server's copy holds every write acknowledged before it began, through any server
    # (`catch_up`: never a stale answer, even just after a partition heals; 503 if the
    # copy cannot get there). A request that changes something may take the token from
    # the mirror: its writes compare the token in their own txn, and if it writes
    # nothing, `confirm` reads the token.
    changes = request.method not in SAFE_METHODS
    store = request.app[STORE]
    found = await tokens.lookup(store, digest, mirror if changes else None)
    if found is None:
        failures.unknown.add(digest)
        _refuse(request, failures, "unknown", limit=False)
    record, revision = found
    if record.expired(datetime.now(UTC)):
        failures.unknown.add(digest)  # for good, unless the token is rewritten
        _refuse(request, failures, "expired", limit=False)
    if record.role is Role.REGION and not await _incarnation_stands(request, record):
        raise ApiError(401, "invalid or expired token")
    if not changes:
        # After the token, so a bad one costs etcd no more reads. The token's read
        # (shared, but begun after this request arrived) tells etcd's revision: a copy
        # that holds it is current; otherwise the audit head is read too.
        await mirror.catch_up(store.last_read)
    who = Principal(request, record, digest, revision)
    _PRINCIPAL.set(who)
    # Every audited write made for this request names this token's subject.
    acting_as(record.subject)
    if changes:
        fence_writes(keys.token(digest), revision)
    else:
        unfence_writes()  # a keep-alive connection's requests share one context
    return who


def _refuse(
    request: web.Request, failures: Failures, outcome: str, *, limit: bool = True
) -> NoReturn:
    """Count a failed authentication from the request's address and answer it: 401,
    or with `limit` and the address out of its budget, 429 with Retry-After."""
    address = request.remote
    wait = failures.limiter.retry_after(address) if limit else 0
    if wait:
        _metrics.auth_failures.add(1, {"outcome": "limited"})
        raise ApiError(
            429,
            "too many failed authentications from this address; "
            f"retry after {wait} s (a valid token is still accepted)",
            headers={"Retry-After": str(wait)},
        )
    failures.limiter.failed(address)
    _metrics.auth_failures.add(1, {"outcome": outcome})
    raise ApiError(401, "invalid or expired token")


async def _incarnation_stands(request: web.Request, token: TokenRecord) -> bool:
    """Is the region this token was made for still there, the same incarnation? A
    region deleted and registered again under its name is another region: a token of
    the one before (its tokens are deleted with it; one restored or written back by
    hand) must not speak for it."""
    if token.region is None:
        return False
    held = request.app[MIRROR].get(keys.REGIONS, token.region, RegionRecord)
    if held is not None and held[0].incarnation == token.region_incarnation:
        return True
    # The mirror may lag a registration made through another replica: etcd decides.
    record = await regions.get_record(request.app[STORE], token.region)
    return record is not None and record.incarnation == token.region_incarnation


@web.middleware
async def confirm_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answers a request that changes state only once its token is known to stand."""
    response = await handler(request)
    if request.method not in SAFE_METHODS:
        await confirm(request)
    return response


async def confirm(request: web.Request) -> None:
    """401 unless the request's token still stood when its writes committed, or, if
    none did (e.g. a PUT of an unchanged spec), is still there now."""
    cached = _PRINCIPAL.get()
    fence = write_fence()
    if cached is None or cached.request is not request or fence is None or fence.held:
        return
    # CredentialRevoked, as for a write the fence stopped (a 401 from error_middleware).
    check_fence(fence, await request.app[STORE].get_shared(fence.cond.key))


async def require(request: web.Request, role: Role) -> TokenRecord:
    """Authenticate, then 403 unless the token's role covers `role`."""
    record = await authenticate(request)
    if not role_allows(record.role, role):
        raise ApiError(403, f"this action needs the {role.value} role; token has {record.role}")
    return record


async def require_region(request: web.Request, region: str) -> TokenRecord:
    """Authenticate, then 403 unless this is the token of region `region` itself."""
    record = await authenticate(request)
    if record.role is not Role.REGION or record.region != region:
        raise ApiError(403, f"only region {region}'s own token may do this")
    return record
