"""The dashboard's files as a server serves them: types, the security headers, no way
out of the package's folder, and `GET /v1/whoami`, which the dashboard asks what a
token may do."""

from __future__ import annotations

import asyncio
import json
import re
from urllib.parse import urlsplit

import pytest

from federation.api.ui import CSP, FILES
from tests.conftest import Api


async def raw_get(api: Api, target: str) -> tuple[int, dict[str, str], bytes]:
    """GET `target` sent byte for byte (no client normalises its dots or escapes)."""
    url = urlsplit(api.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def test_the_dashboard_is_served_with_its_types_and_a_strict_csp(api: Api) -> None:
    expected = {
        "/ui/": "text/html",
        "/ui/app.js": "text/javascript",
        "/ui/views/map.js": "text/javascript",
        "/ui/vendor/d3-geo.min.mjs": "text/javascript",
        "/ui/style.css": "text/css",
        "/ui/vendor/countries-110m.json": "application/json",
    }
    for path, kind in expected.items():
        status, headers, body = await raw_get(api, path)
        assert status == 200, path
        assert headers["content-type"].startswith(kind), (path, headers["content-type"])
        assert headers["content-security-policy"] == CSP
        assert headers["x-content-type-options"] == "nosniff"
        assert body
    assert "script-src 'self';" in CSP and "unsafe-inline" not in CSP
    assert "frame-ancestors 'none'" in CSP


async def test_the_root_links_to_the_dashboard(api: Api) -> None:
    status, headers, body = await raw_get(api, "/")
    assert status == 200
    assert b'href="/ui/"' in body
    status, headers, _ = await raw_get(api, "/ui")
    assert status == 308 and headers["location"] == "/ui/"


def test_no_page_has_an_inline_script_or_style() -> None:
    for name, (body, kind) in FILES.items():
        if kind.startswith("text/html"):
            text = body.decode()
            assert "<script>" not in text and "<style" not in text and " style=" not in text
            assert not re.search(r"\son[a-z]+\s*=", text), name
        if kind.startswith("text/javascript") and not name.startswith("vendor/"):
            text = body.decode()
            assert "innerHTML" not in text and "insertAdjacentHTML" not in text, name
            assert "document.write" not in text and "eval(" not in text, name


@pytest.mark.parametrize(
    "target",
    [
        "/ui/../pyproject.toml",
        "/ui/%2e%2e/pyproject.toml",
        "/ui/%2E%2E%2Fpyproject.toml",
        "/ui/..%2fpyproject.toml",
        "/ui/..%5cpyproject.toml",
        "/ui/vendor/../../api/ui.py",
        "/ui/%2e%2e/%2e%2e/api/app.py",
        "/ui/%252e%252e/pyproject.toml",
        "/ui//etc/passwd",
        "/ui/../../../../../../etc/passwd",
        "/ui/..%00/pyproject.toml",
        "/ui/__init__.py",
        "/ui/static/index.html",
        "/ui/index.html/",
        "/ui/" + "a/" * 2000 + "index.html",
    ],
)
async def test_no_path_leaves_the_dashboard_folder(api: Api, target: str) -> None:
    status, _, body = await raw_get(api, target)
    assert status in (400, 404, 414), (target, status)
    assert b"[project]" not in body and b"root:" not in body and b"import" not in body


async def test_a_query_on_the_dashboard_is_refused_like_any_unknown_parameter(api: Api) -> None:
    status, _, body = await raw_get(api, "/ui/app.js?x=1")
    assert status == 400
    assert json.loads(body)["error"]["details"][0]["field"] == "x"


async def test_the_dashboard_is_not_in_the_openapi_document(api: Api) -> None:
    status, doc = await api.call("GET", "/v1/openapi.json", token=None)
    assert status == 200
    assert not [p for p in doc["paths"] if p == "/" or p.startswith("/ui")]
    assert "/v1/whoami" in doc["paths"]


async def test_whoami_names_the_token_and_its_roles(api: Api) -> None:
    status, made = await api.call("POST", "/v1/tokens", json={"role": "viewer"})
    assert status == 201, made
    status, me = await api.call("GET", "/v1/whoami", token=made["token"])
    assert status == 200, me
    assert me["role"] == "viewer" and me["roles"] == ["viewer"]
    assert me["id"] == made["id"] and "token" not in me and "hash" not in json.dumps(me)
    status, me = await api.call("GET", "/v1/whoami")
    assert status == 200 and set(me["roles"]) == {"admin", "operator", "viewer"}


async def test_whoami_refuses_a_caller_without_a_valid_token(api: Api) -> None:
    status, body = await api.call("GET", "/v1/whoami", token=None)
    assert status == 401, body
    status, body = await api.call("GET", "/v1/whoami", token="fed_" + "x" * 40)
    assert status == 401, body
