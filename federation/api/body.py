"""Request bodies (JSON or YAML) into validated models; paths, headers and query
parameters checked.

A body for a named resource (`PUT /v1/services/{service}`, policies, groups) may name
it, and must then name the one in the path: `read_named` is the one place that checks.

YAML goes through `model.safe_yaml` (no anchors or aliases, YAML 1.2 scalars, nesting
and node count capped while parsing), on a thread of its own unless the body is tiny:
the parser costs up to ~1.5 ms per KiB of dense YAML, and the event loop answers
heartbeats.
Numbers in headers and the query (`If-Match`, `since`) are ASCII digits and fit in
etcd's int64 (`str.isdigit` would take `²` and `٣`).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic_core import from_json, to_json

from federation.api.errors import ApiError, bad_parameter, from_validation, invalid
from federation.model import safe_yaml
from federation.model.names import is_valid_name

M = TypeVar("M", bound=BaseModel)

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
MAX_DEPTH = safe_yaml.MAX_DEPTH  # nested objects and arrays, JSON or YAML
# A YAML body this small is parsed on the loop (at most ~0.15 ms; handing it to a thread
# costs the loop ~60 us), anything larger on a thread. See bench/hostile_input.py.
YAML_ON_LOOP_BYTES = 128
# One thread parses every larger YAML body: a flood of them queues there, instead of
# taking the default pool (the services views use it) and more of the GIL from the loop.
_YAML_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="yaml-body")
MAX_REVISION = 2**63 - 1  # etcd revisions (and the audit's sequence numbers) are int64


def _nests_deeper(value: Any, limit: int) -> bool:
    """True when `value` has more than `limit` levels of objects and arrays. For JSON
    only: a parsed JSON document shares no nodes, so the walk is as long as the body."""
    depth, frontier = 0, [value] if isinstance(value, (dict, list)) else []
    while frontier:
        depth += 1
        if depth > limit:
            return True
        frontier = [
            child
            for item in frontier
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, (dict, list))
        ]
    return False


def parse_yaml(raw: bytes) -> Any:
    """A YAML body as plain data; a 400 naming the line of what was refused."""
    try:
        return safe_yaml.load(raw)
    except safe_yaml.YamlRefused as exc:
        detail: dict[str, Any] = {"field": "body", "message": exc.reason}
        if exc.line is not None:
            detail["line"] = exc.line
        raise ApiError(400, f"body: {exc}", details=[detail]) from None


async def read_document(request: web.Request) -> Any:
    """The body as plain data: JSON, or YAML (`model.safe_yaml`) when the content type
    says so."""
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "request body is empty")
    if request.content_type in YAML_TYPES:
        if len(raw) <= YAML_ON_LOOP_BYTES:
            return parse_yaml(raw)
        return await asyncio.get_running_loop().run_in_executor(_YAML_THREAD, parse_yaml, raw)
    try:
        # pydantic-core's parser, far quicker than `json.loads`: every deploy parses one.
        data = from_json(raw)
    except ValueError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from None
    if _nests_deeper(data, MAX_DEPTH):
        raise ApiError(400, f"body nests deeper than {MAX_DEPTH} levels")
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


def parse_count(name: str, raw: str, *, maximum: int = MAX_REVISION) -> int:
    """`raw` as a non-negative integer of ASCII digits, at most `maximum`; a 400 naming
    the parameter `name` otherwise (never an error from etcd further on)."""
    if raw.isascii() and raw.isdigit() and len(raw) <= len(str(maximum)) and int(raw) <= maximum:
        return int(raw)
    raise bad_parameter(name, f"must be a non-negative integer of ASCII digits, at most {maximum}")


def query_count(request: web.Request, name: str, *, maximum: int = MAX_REVISION) -> int | None:
    """The query parameter `name` as by `parse_count`; None when it was not sent."""
    raw = request.query.get(name)
    return None if raw is None else parse_count(name, raw, maximum=maximum)


def query_flag(request: web.Request, name: str) -> bool:
    """The query parameter `name` as a boolean (false when not sent); a 422 naming it
    when it is neither true nor false, so `?dry_run=ture` never writes for real."""
    value = request.query.get(name, "false").strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise invalid(name, "must be true or false")


def if_match(request: web.Request) -> int | None:
    """The revision in `If-Match`, if one was sent."""
    header = request.headers.get("If-Match")
    if header is None:
        return None
    value = header.strip().strip('"').removeprefix("W/").strip('"')
    return parse_count("If-Match", value)


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
