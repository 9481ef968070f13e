"""Audit routes: read the log from a sequence number, verify its hash chain, and sign
and check checkpoints of its head (federation.store.audit.checkpoint).

A server checks only checkpoints signed with its own key (`--audit-key`): the file
names the public key it was signed with, and a checkpoint of another key is refused
(422 on `public_key`), as is one whose signature does not hold (422 on `signature`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.api.auth import require
from federation.api.body import json_response, query_count, read_model
from federation.api.context import AUDIT_KEY, STORE
from federation.api.errors import ApiError, invalid
from federation.model.token import Role
from federation.store import audit as store_audit
from federation.store.audit.checkpoint import (
    Checkpoint,
    public_key_text,
    sign,
    signature_holds,
)

routes = web.RouteTableDef()

PAGE = 1000


@routes.get("/v1/audit")
async def list_audit(request: web.Request) -> web.Response:
    """Entries after `since` (a sequence number; default 0), oldest first, at most 1000."""
    await require(request, Role.ADMIN)
    since = query_count(request, "since") or 0
    items, revision = await store_audit.since(request.app[STORE], since, limit=PAGE)
    return json_response({"items": items, "revision": revision})


@routes.get("/v1/audit/verify")
async def verify_audit(request: web.Request) -> web.Response:
    """Walk the hash chain; name the first entry that does not verify."""
    await require(request, Role.ADMIN)
    result = await store_audit.verify(request.app[STORE])
    return json_response(result.as_json())


@routes.post("/v1/audit/verify")
async def verify_against_checkpoint(request: web.Request) -> web.Response:
    """Walk the hash chain, and check that it still holds the entry a checkpoint
    (the body) signed: not cut before it, not rewritten, every entry after it whole."""
    await require(request, Role.ADMIN)
    signed = await read_model(request, Checkpoint)
    check_checkpoint(request, signed)
    result = await store_audit.verify(request.app[STORE], anchor=signed.head)
    return json_response(result.as_json())


def check_checkpoint(request: web.Request, signed: Checkpoint, field: str = "") -> None:
    """A 422 unless `signed` is a checkpoint this server's key signed, as it reads
    (`field`: where in the body the checkpoint sits, for the error's field names)."""
    key = audit_key(request)
    if signed.public_key != public_key_text(key):
        raise invalid(
            f"{field}public_key",
            "not this server's audit key: the checkpoint was signed with another key",
        )
    if not signature_holds(signed, key.public_key()):
        raise invalid(
            f"{field}signature",
            "does not hold for this seq, hash and at: the checkpoint was altered or forged",
        )


@routes.get("/v1/audit/checkpoint")
async def checkpoint(request: web.Request) -> web.Response:
    """The head of a log that verifies, signed with this server's key: keep it where
    the etcd operator cannot write, and verify against it later."""
    await require(request, Role.ADMIN)
    key = audit_key(request)
    result = await store_audit.verify(request.app[STORE])
    if not result.ok:
        raise ApiError(
            409,
            f"the audit log does not verify (first bad entry {result.first_bad}: "
            f"{result.reason}); no checkpoint is signed",
            code="audit_log_broken",
            details=result.as_json(),
        )
    if result.entries == 0:
        raise ApiError(
            409, "the audit log is empty: nothing to checkpoint yet", code="audit_log_empty"
        )
    head = store_audit.Head(result.entries, result.head)
    return json_response(sign(key, head, datetime.now(UTC)).model_dump())


def audit_key(request: web.Request) -> Ed25519PrivateKey:
    """This server's audit key; a 409 (no_audit_key) when it was started without one."""
    key = request.app.get(AUDIT_KEY)
    if key is None:
        raise ApiError(
            409,
            "this server has no audit key (federation serve --audit-key FILE): checkpoints are off",
            code="no_audit_key",
        )
    return key
