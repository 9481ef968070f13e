"""Bearer tokens: who is calling, and may they do this."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from federation.api.context import STORE
from federation.api.errors import ApiError
from federation.model.token import Role, TokenRecord, hash_secret, role_allows
from federation.store import tokens
from federation.store.audit import acting_as

_PRINCIPAL = web.RequestKey("principal", TokenRecord)


async def authenticate(request: web.Request) -> TokenRecord:
    """The token record behind the request's bearer token; 401 if absent or unknown."""
    cached: TokenRecord | None = request.get(_PRINCIPAL)
    if cached is not None:
        return cached
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)")
    # Looked up by hash: the secret is never compared, stored or logged.
    record = await tokens.lookup(request.app[STORE], hash_secret(secret.strip()))
    if record is None or record.expired(datetime.now(UTC)):
        raise ApiError(401, "invalid or expired token")
    request[_PRINCIPAL] = record
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
