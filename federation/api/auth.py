"""Bearer tokens: who is calling, and may they do this."""

from __future__ import annotations

import contextvars
from datetime import UTC, datetime

from aiohttp import web

from federation.api.context import STORE
from federation.api.errors import ApiError
from federation.model.token import Role, TokenRecord, hash_secret, role_allows
from federation.store import tokens
from federation.store.audit import acting_as

# The caller of the request being handled. A context variable, not a request key:
# a miss of `request.get` raises and catches a KeyError inside aiohttp, which showed in
# the deploy benchmark's profile.
# It holds the request too, because one keep-alive connection's requests share a task
# (and so its context): a later request must never see an earlier one's caller.
_PRINCIPAL: contextvars.ContextVar[tuple[web.Request, TokenRecord] | None] = contextvars.ContextVar(
    "principal", default=None
)


async def authenticate(request: web.Request) -> TokenRecord:
    """The token record behind the request's bearer token; 401 if absent or unknown."""
    cached = _PRINCIPAL.get()
    if cached is not None and cached[0] is request:
        return cached[1]
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)")
    # Looked up by hash: the secret is never compared, stored or logged.
    record = await tokens.lookup(request.app[STORE], hash_secret(secret.strip()))
    if record is None or record.expired(datetime.now(UTC)):
        raise ApiError(401, "invalid or expired token")
    _PRINCIPAL.set((request, record))
    # Every audited write made for this request names this token's subject.
    acting_as(record.subject)
    return record


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
