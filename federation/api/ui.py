"""The dashboard at `/ui/`: static files shipped inside the package (`federation.ui`),
and `/`, a page that links to it.

Only the files the package ships are served, read once when the app is built and kept
in memory (a few hundred KiB): a request names one of them exactly or gets a 404, so no
path, encoded or not, reaches the file system. Every answer carries a strict Content
Security Policy (no inline script or style, nothing from another origin), so a name or
label that slipped into the page as markup still could not run. The dashboard reads
and writes only through the public `/v1` API, with the caller's own token.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

from aiohttp import web

from federation.api.errors import ApiError

routes = web.RouteTableDef()

# The routes here are the dashboard's, not the API's: the OpenAPI document leaves them out.
PATHS = frozenset({"/", "/ui", "/ui/{path}"})

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Always revalidated: a server upgraded under an open dashboard serves its new files.
    "Cache-Control": "no-cache",
}
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".md": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}

ROOT_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>federation</title></head>
<body><h1>federation</h1>
<p><a href="/ui/">Open the dashboard</a> &middot; <a href="/v1/openapi.json">API (OpenAPI)</a></p>
</body></html>
"""


def _walk(folder: Traversable, prefix: str, found: dict[str, tuple[bytes, str]]) -> None:
    for item in folder.iterdir():
        name = prefix + item.name
        if item.is_dir():
            _walk(item, name + "/", found)
            continue
        suffix = "." + item.name.rpartition(".")[2]
        if suffix in TYPES:
            found[name] = (item.read_bytes(), TYPES[suffix])


def load_files() -> dict[str, tuple[bytes, str]]:
    """Every file of the dashboard by its path under `/ui/`, with its content type (only
    files of a known type: nothing is served as a guess)."""
    found: dict[str, tuple[bytes, str]] = {}
    _walk(resources.files("federation.ui") / "static", "", found)
    return found


FILES = load_files()


def _answer(body: bytes, content_type: str) -> web.Response:
    response = web.Response(body=body, headers=HEADERS)
    response.headers["Content-Type"] = content_type
    return response


@routes.get("/")
async def root(request: web.Request) -> web.Response:
    """A page linking to the dashboard and the API document."""
    return _answer(ROOT_PAGE, TYPES[".html"])


@routes.get("/ui")
async def ui_folder(request: web.Request) -> web.Response:
    """`/ui` is the folder `/ui/`: its pages load their files relative to it."""
    raise web.HTTPPermanentRedirect("/ui/", headers=HEADERS)


@routes.get("/ui/{path:.*}")
async def ui_file(request: web.Request) -> web.Response:
    """One of the dashboard's files (`index.html` for the folder itself); 404 otherwise."""
    path = request.match_info["path"] or "index.html"
    found = FILES.get(path)
    if found is None:
        raise ApiError(404, "no such file in the dashboard")
    return _answer(*found)
