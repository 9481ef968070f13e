"""API errors and the middleware that turns every failure into the JSON error shape."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from federation.model.errors import UnknownDataClassError
from federation.residency.groups import ReferenceProblem
from federation.store import Conflict, CredentialRevoked, NoSpace, StoreUnavailable

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
    503: "unavailable",
}


class ApiError(Exception):
    """An error a client should see: status, a stable code, a readable message."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.details = details
        self.headers = headers  # e.g. Retry-After on a 429


def invalid(field: str, message: str, **extra: Any) -> ApiError:
    """A 422 naming the offending field."""
    return ApiError(
        422,
        f"{field}: {message}",
        details=[{"field": field, "message": message, **extra}],
    )


def bad_parameter(name: str, message: str) -> ApiError:
    """A 400 naming the query parameter or header `name` that is wrong."""
    return ApiError(400, f"{name}: {message}", details=[{"field": name, "message": message}])


def not_found(kind: str, name: str) -> ApiError:
    """A 404 for the `kind` (service, region, policy...) of that name."""
    return ApiError(404, f"{kind} {name!r} not found")


def unprocessable(details: list[dict[str, Any]]) -> ApiError:
    """A 422 listing every problem (`field`, `message`, maybe `suggestion`); its message
    is the first one's, with a count of the others."""
    first = details[0] if details else {"field": "body", "message": "invalid"}
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return ApiError(422, f"{first['field']}: {first['message']}{more}", details=details)


def _field(loc: tuple[int | str, ...]) -> str:
    # pydantic marks an invalid mapping key with a "[key]" step; the key itself names it.
    return ".".join(str(part) for part in loc if part != "[key]") or "body"


def from_validation(
    exc: ValidationError, *, prefix: str = "", suggestions: bool = False
) -> ApiError:
    """A 422 listing every invalid field of a pydantic validation failure; with
    `suggestions`, each also carries the suggestion its validator's error made, if any
    (`GER` -> `DE`), for clients that offer the fix."""
    details = []
    for err in exc.errors(include_url=False, include_input=False):
        field = _field(tuple(err["loc"]))
        if prefix:
            field = f"{prefix}.{field}" if field != "body" else prefix
        msg = str(err["msg"]).removeprefix("Value error, ")
        detail: dict[str, Any] = {"field": field, "message": msg}
        suggestion = getattr(err.get("ctx", {}).get("error"), "suggestion", None)
        if suggestions and suggestion:
            detail["suggestion"] = suggestion
        details.append(detail)
    return unprocessable(details)


def unresolved(problems: Sequence[ReferenceProblem]) -> ApiError:
    """A 422 naming every reference of a policy or group that does not resolve."""
    details = []
    for problem in problems:
        detail: dict[str, Any] = {"field": problem.field, "message": problem.message}
        if problem.suggestion:
            detail["suggestion"] = problem.suggestion
        details.append(detail)
    return unprocessable(details)


def no_policy_names(requested: Sequence[str], exc: UnknownDataClassError) -> ApiError:
    """A 422 naming, field by field, every requested data class that no policy names.

    Each message is the residency engine's own (`UnknownDataClassError`) for that one
    class, so a deploy, an evaluation and a verdict's reason word the rule alike.
    """
    details = []
    for i, data_class in enumerate(requested):
        if data_class not in exc.data_classes:
            continue
        suggestion = exc.suggestions.get(data_class)
        hint = {data_class: suggestion} if suggestion else {}
        detail: dict[str, Any] = {
            "field": f"data_classes.{i}",
            "message": str(UnknownDataClassError([data_class], hint)),
        }
        if suggestion:
            detail["suggestion"] = suggestion
        details.append(detail)
    return unprocessable(details)


# What a client is told while etcd's NOSPACE alarm is raised: what a person must do.
NOSPACE_MESSAGE = (
    "the federation store (etcd) is out of space (NOSPACE alarm) and refuses writes. "
    "An admin must compact its history (the leader does so at once on this alarm), "
    "defragment every member (`federation etcd defrag`), then disarm the alarm "
    "(`federation etcd disarm`); see docs/operations.md"
)


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = {"error": {"code": code, "message": message, "details": details}}
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every exception to the JSON error shape; log unexpected ones without secrets."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)
    except ValidationError as exc:
        err = from_validation(exc)
        return error_response(err.status, err.code, err.message, err.details)
    except Conflict as exc:
        return error_response(
            409,
            "conflict",
            f"revision conflict: expected {exc.expected}, current {exc.actual}",
            {"expected": exc.expected, "current": exc.actual},
        )
    except CredentialRevoked:
        # The token was revoked while this request ran: its write did not land.
        return error_response(401, "unauthorized", "invalid or expired token")
    except NoSpace:
        log.warning("etcd NOSPACE alarm: %s %s refused", request.method, request.path)
        return error_response(503, "etcd_nospace", NOSPACE_MESSAGE, {"alarm": "NOSPACE"})
    except StoreUnavailable:
        log.warning("store unavailable during %s %s", request.method, request.path)
        return error_response(503, "unavailable", "the federation store (etcd) is unavailable")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, _CODES.get(exc.status, "error"), exc.reason)
    except Exception:
        # Log the traceback on our side; the client gets no internals.
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error")
