"""Query parameters a route does not know are refused, on every route.

aiohttp hands a handler whatever query it was sent, and a handler reads only the
parameters it knows, so a misspelt or unsupported one used to be ignored: `PUT
/v1/services/x?dryrun=true` deployed for real. The route table in `api/openapi.py`
(OPERATIONS) is the one list of what each route accepts, and the same list the
published document shows; this middleware holds every request to it. A parameter sent
twice is refused too: which copy a handler would read is not something a client should
have to guess.
"""

from __future__ import annotations

from aiohttp import web

from federation.api.errors import Handler, bad_parameter
from federation.api.openapi import OPERATIONS

# Longest name echoed back in an error: the name is the client's, the message ours.
_SHOWN = 64


def _known(request: web.Request) -> frozenset[str] | None:
    """The query parameters the matched route accepts; None when no route matched (the
    404 or 405 that follows says more than a 400 would)."""
    route = request.match_info.route
    resource = route.resource
    if resource is None or route.method == "*":
        return None
    info = resource.get_info()
    path = str(info.get("path") or info.get("formatter") or "")
    method = "GET" if request.method == "HEAD" else request.method
    op = OPERATIONS.get((method, path))
    return frozenset(op.query) if op is not None else frozenset()


@web.middleware
async def query_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """400 naming the first query parameter the route does not accept or that was sent
    more than once, before the handler (and so before any write) runs."""
    if request.query:
        known = _known(request)
        if known is not None:
            seen: set[str] = set()
            # keys() of a multidict shows a repeated name once: items() shows each.
            for name, _ in request.query.items():
                shown = name[:_SHOWN]
                if name not in known:
                    accepted = ", ".join(sorted(known)) or "none"
                    raise bad_parameter(
                        shown, f"unknown query parameter (this route accepts: {accepted})"
                    )
                if name in seen:
                    raise bad_parameter(shown, "sent more than once")
                seen.add(name)
    return await handler(request)
