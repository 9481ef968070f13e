"""Token routes: an admin makes, lists and revokes tokens for people and automation.

Secrets are shown once, when made; lists show ids and roles, never secrets or hashes.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator

from federation.api.auth import authenticate, require
from federation.api.body import json_response, path_name, read_model
from federation.api.context import STORE
from federation.api.errors import ApiError
from federation.model.names import Name
from federation.model.token import Role, TokenRecord, hash_secret, new_secret, role_allows
from federation.store import regions as store_regions
from federation.store import tokens as store_tokens

routes = web.RouteTableDef()


class TokenCreate(BaseModel):
    """Body of `POST /v1/tokens`."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    region: Name | None = None
    ttl_s: int | None = Field(default=None, ge=60, le=10 * 365 * 86400)
    description: str = Field(default="", max_length=256)

    @model_validator(mode="after")
    def _region_iff_region_role(self) -> TokenCreate:
        if (self.role is Role.REGION) != (self.region is not None):
            raise ValueError("region is required for role 'region' and only for it")
        return self


@routes.post("/v1/tokens")
async def create_token(request: web.Request) -> web.Response:
    """Make a token; the secret is in this answer only."""
    await require(request, Role.ADMIN)
    spec = await read_model(request, TokenCreate)
    store = request.app[STORE]
    now = datetime.now(UTC)
    record = TokenRecord(
        id=f"tok-{secrets.token_hex(6)}",
        role=spec.role,
        region=spec.region,
        created_at=now,
        expires_at=now + timedelta(seconds=spec.ttl_s) if spec.ttl_s else None,
        description=spec.description,
    )
    secret = new_secret()
    if spec.region is None:
        await store_tokens.put(store, hash_secret(secret), record)
    else:
        # Made in one txn with a check of the region as it is now: a token never
        # outlives its region, nor speaks for another registered under its name.
        try:
            record = await store_regions.mint_token(store, spec.region, hash_secret(secret), record)
        except store_regions.RegionNotFound:
            raise ApiError(
                422,
                f"region: region {spec.region!r} does not exist",
                details=[{"field": "region", "message": "no such region"}],
            ) from None
        except store_regions.RegionReplaced:
            raise ApiError(
                409,
                f"region {spec.region!r} was deleted and registered again meanwhile; "
                "make the token again for the new one",
            ) from None
    return json_response({**_shown(record), "token": secret}, status=201)


def _shown(record: TokenRecord) -> dict[str, object]:
    # The region's incarnation is the server's own business (auth compares it).
    return record.model_dump(mode="json", exclude={"region_incarnation"})


def _view(record: TokenRecord) -> dict[str, object]:
    return {**_shown(record), "subject": record.subject}


@routes.get("/v1/tokens")
async def list_tokens(request: web.Request) -> web.Response:
    """Every token: id, role, region, created, expires, description (no secret, no hash)."""
    await require(request, Role.ADMIN)
    found, revision = await store_tokens.list_all(request.app[STORE])
    return json_response({"items": [_view(r) for r in found], "revision": revision})


@routes.delete("/v1/tokens/{token}")
async def revoke_token(request: web.Request) -> web.Response:
    """Revoke a token at once, on every replica (tokens are read from etcd per request)."""
    token_id = path_name(request, "token")
    await require(request, Role.ADMIN)
    try:
        record = await store_tokens.revoke(request.app[STORE], token_id)
    except store_tokens.TokenNotFound:
        raise ApiError(404, f"token {token_id!r} not found") from None
    except store_tokens.LastAdminToken:
        raise ApiError(
            409, "this is the last admin token; create another admin token first"
        ) from None
    return json_response({**_view(record), "revoked": True})


@routes.get("/v1/whoami")
async def whoami(request: web.Request) -> web.Response:
    """The caller's own token (never its secret), and the roles it holds, so a client
    such as the dashboard shows only the actions the server would allow. Any token."""
    record = await authenticate(request)
    roles = [r.value for r in Role if role_allows(record.role, r)]
    return json_response({**_view(record), "roles": roles})
