"""Request bodies (JSON or YAML) into validated models; paths and headers checked.

A body for a named resource (`PUT /v1/services/{service}`, policies, groups) may name
it, and must then name the one in the path: `read_named` is the one place that checks.
"""

from __future__ import annotations

from typing import Any, TypeVar

import yaml
from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic_core import from_json, to_json

from federation.api.errors import ApiError, from_validation, invalid
from federation.model.names import is_valid_name

M = TypeVar("M", bound=BaseModel)

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
MAX_YAML_DEPTH = 32


def _depth(value: Any, limit: int) -> int:
    depth, frontier = 0, [value]
    while frontier:
        depth += 1
        if depth > limit:
            return depth
        nxt: list[Any] = []
        for item in frontier:
            if isinstance(item, dict):
                nxt.extend(item.values())
            elif isinstance(item, list):
                nxt.extend(item)
        frontier = nxt
    return depth


async def read_document(request: web.Request) -> Any:
    """The body as plain data: JSON, or YAML (safe_load) when the content type says so."""
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "request body is empty")
    if request.content_type in YAML_TYPES:
        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ApiError(400, f"body is not valid YAML{where}") from None
    else:
        try:
            # pydantic-core's parser, far quicker than `json.loads`: every deploy parses one.
            data = from_json(raw)
        except ValueError as exc:
            raise ApiError(400, f"body is not valid JSON: {exc}") from None
    if _depth(data, MAX_YAML_DEPTH) > MAX_YAML_DEPTH:
        raise ApiError(400, f"body nests deeper than {MAX_YAML_DEPTH} levels")
    return data


async def read_object(request: web.Request) -> dict[str, Any]:
    """The body as a mapping; a 422 on `body` if it is anything else."""
    data = await read_document(request)
    if not isinstance(data, dict):
        raise invalid("body", "must be an object")
    return data


async def read_named(request: web.Request, name: str, *, kind: str | None = None) -> dict[str, Any]:
    """The body of a write to the resource `name` (from the path), as a mapping whose
    `name` is `name`: filled in when absent, a 422 when it differs.

    With `kind`, a `kind` field is accepted (and dropped) if it says `kind`, so that a
    file written for `federation policy apply` can be sent as is."""
    data = await read_object(request)
    if data.setdefault("name", name) != name:
        raise invalid("name", f"must equal the name in the path ({name!r})")
    if kind is not None and "kind" in data:
        if not isinstance(data["kind"], str) or data["kind"].lower() != kind:
            raise invalid("kind", f"must be {kind!r} on this path")
        del data["kind"]
    return data


async def read_model(request: web.Request, model: type[M], **overrides: Any) -> M:
    """The body validated as `model`; a 422 naming every bad field otherwise."""
    data = await read_object(request)
    data.update(overrides)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation(exc) from None


async def read_optional_model(request: web.Request, model: type[M]) -> M:
    """Like read_model, but an empty body means the model's defaults."""
    if not (await request.read()).strip():
        return model()
    return await read_model(request, model)


def path_name(request: web.Request, param: str) -> str:
    """A name from the URL path, validated before it can reach an etcd key."""
    value = request.match_info[param]
    if not is_valid_name(value):
        raise invalid(param, "must be a DNS-1123 label (lowercase letters, digits, '-')")
    return value


def if_match(request: web.Request) -> int | None:
    """The revision in `If-Match`, if one was sent."""
    header = request.headers.get("If-Match")
    if header is None:
        return None
    value = header.strip().strip('"').removeprefix("W/").strip('"')
    if not value.isdigit():
        raise invalid("If-Match", "must be a revision number")
    return int(value)


def json_response(data: Any, *, status: int = 200, revision: int | None = None) -> web.Response:
    """JSON response; `revision` also goes out as the ETag."""
    headers = {"ETag": f'"{revision}"'} if revision is not None else None
    return web.Response(
        body=encode_json(data),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


def encode_json(data: Any) -> bytes:
    """`data` as compact UTF-8 JSON, anything unknown as its `str`. pydantic-core's
    encoder, far quicker than `json.dumps`: every deploy's answer is a service's view."""
    return to_json(data, fallback=str)
