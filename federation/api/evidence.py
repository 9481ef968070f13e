"""`GET /v1/residency/evidence`: where data of one class went over a period, proven from
the audit log and signed with the server's audit key (docs/residency.md).

The log is walked from its first entry a page at a time, each entry verified as it is
read (`store.audit.walk`), and replayed by `residency.evidence`. A log that does not
verify is a 409 and no report: evidence built on a broken chain proves nothing. `POST`
the same route with a signed checkpoint in the body to have the chain checked against
it as well. Admin only, as the audit log is.

The report (hundreds of MB over a million entries) is sent as it is encoded: its
canonical text a few thousand intervals at a time, hashed on the way, then the
signature of that hash. The whole log is verified and replayed before the first byte,
so a broken chain is always the 409; a send that fails half-way (or a client that
stops reading) cuts the connection, and what arrived has no signature.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from federation.api.audit import audit_key, check_checkpoint
from federation.api.auth import require
from federation.api.body import read_model
from federation.api.context import STORE, whole_read
from federation.api.errors import ApiError, bad_parameter, invalid
from federation.model.names import Name, is_valid_name
from federation.model.token import Role
from federation.residency.evidence import Evidence
from federation.store import audit as store_audit
from federation.store.audit.checkpoint import (
    Checkpoint,
    canonical,
    canonical_chunks,
    public_key_text,
    sign_digest,
)

routes = web.RouteTableDef()
log = logging.getLogger(__name__)

# Intervals per piece of the answer, and how long one piece may wait for the client
# to take it before the send is given up (the server's lock is held while it sends).
_BATCH = 2000
_STALLED_S = 60.0
_MIN_RATE = 256 * 1024  # bytes a second a client must take a report at, on the whole


class EvidenceRequest(BaseModel):
    """Body of `POST /v1/residency/evidence` (the GET takes the same as its query)."""

    model_config = ConfigDict(extra="forbid")

    data_class: Name
    # `from` is a Python keyword: the body says `from` and `to`.
    start: AwareDatetime = Field(alias="from")
    end: AwareDatetime = Field(alias="to")
    checkpoint: Checkpoint | None = None


def _utc(moment: datetime) -> datetime | None:
    """`moment` in UTC; None when it has no zone. OverflowError for a time UTC cannot
    hold (0001-01-01T00:00:00+01:00)."""
    return moment.astimezone(UTC) if moment.tzinfo is not None else None


def _moment(request: web.Request, name: str) -> datetime:
    raw = request.query.get(name)
    if raw is None:
        raise bad_parameter(
            name, "required: an ISO 8601 time with a zone, e.g. 2026-10-01T00:00:00Z"
        )
    try:
        # An unencoded `+01:00` arrives as ` 01:00` (a `+` in a query is a space).
        moment = _utc(datetime.fromisoformat(raw.replace(" ", "+")))
    except (ValueError, OverflowError):
        moment = None
    if moment is None:
        raise bad_parameter(name, "must be an ISO 8601 time with a zone, e.g. 2026-10-01T00:00:00Z")
    return moment


@routes.get("/v1/residency/evidence")
async def get_evidence(request: web.Request) -> web.StreamResponse:
    """The signed report for `data_class` over [`from`, `to`]."""
    await require(request, Role.ADMIN)
    data_class = request.query.get("data_class", "")
    if not is_valid_name(data_class):
        raise bad_parameter("data_class", "required: a data class name (DNS-1123 label)")
    return await _report(request, data_class, _moment(request, "from"), _moment(request, "to"))


@routes.post("/v1/residency/evidence")
async def post_evidence(request: web.Request) -> web.StreamResponse:
    """As the GET, with the chain also checked against a signed checkpoint."""
    await require(request, Role.ADMIN)
    body = await read_model(request, EvidenceRequest)
    for field, moment in (("from", body.start), ("to", body.end)):
        try:
            _utc(moment)
        except OverflowError:
            raise invalid(field, "out of the range a UTC time can hold") from None
    if body.checkpoint is not None:
        check_checkpoint(request, body.checkpoint, "checkpoint.")
    return await _report(request, body.data_class, body.start, body.end, body.checkpoint)


async def _report(
    request: web.Request,
    data_class: str,
    start: datetime,
    end: datetime,
    checkpoint: Checkpoint | None = None,
) -> web.StreamResponse:
    if end <= start:
        raise invalid("to", "must be after from")
    key = audit_key(request)
    evidence = Evidence(data_class, start.astimezone(UTC), end.astimezone(UTC))
    anchor = checkpoint.head if checkpoint is not None else None
    async with whole_read(request):
        try:
            async for page in store_audit.walk(request.app[STORE], anchor=anchor):
                # Replaying is CPU work: off the loop, a page at a time.
                await asyncio.to_thread(_feed, evidence, page)
        except store_audit.ChainBroken as exc:
            raise ApiError(
                409,
                f"{exc}; no evidence is given from a log that does not verify",
                code="audit_log_broken",
                details={"first_bad": exc.seq, "reason": exc.reason},
            ) from None
        report = await asyncio.to_thread(evidence.report)
        report["generated_at"] = datetime.now(UTC).isoformat()
        report["chain"] = {
            "verified": True,
            "entries": evidence.entries,
            "first_in_period": evidence.first,
            "last_in_period": evidence.last,
            "checkpoint": checkpoint.model_dump() if checkpoint is not None else None,
            "signed_by": public_key_text(key),
        }
        response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
        await response.prepare(request)
        digest = hashlib.sha256()
        pieces = canonical_chunks(report, batch=_BATCH)
        started, sent = asyncio.get_running_loop().time(), 0
        try:
            # The lock is held while sending: a client must read at _MIN_RATE on the
            # whole (after _STALLED_S of grace), not merely a piece per _STALLED_S.
            async with asyncio.timeout(started + _STALLED_S) as deadline:
                await _send(response, b'{"report":')
                while (piece := await asyncio.to_thread(_next, pieces)) is not None:
                    digest.update(piece)
                    await _send(response, piece)
                    sent += len(piece)
                    deadline.reschedule(started + _STALLED_S + sent / _MIN_RATE)
                signature = sign_digest(key, digest.hexdigest())
                await _send(response, b',"signature":' + canonical(signature) + b"}")
                await response.write_eof()  # drains what is left, under the deadline too
        except Exception as exc:
            # Too late for a status: the answer stops here, with no signature.
            if not isinstance(exc, TimeoutError | ConnectionError):
                log.exception("evidence report: failed while being sent")
            if request.transport is not None:
                request.transport.abort()
        return response


def _next(pieces: Iterator[bytes]) -> bytes | None:
    return next(pieces, None)


async def _send(response: web.StreamResponse, data: bytes) -> None:
    await asyncio.wait_for(response.write(data), _STALLED_S)


def _feed(evidence: Evidence, page: list[dict[str, object]]) -> None:
    for entry in page:
        try:
            evidence.feed(entry)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # Its hash holds, so it was written like this: by the committer it was not.
            seq = entry.get("seq")
            raise store_audit.ChainBroken(
                seq if isinstance(seq, int) else 0,
                f"the entry is not one the server writes ({exc})",
            ) from None
