"""The client's transport: one aiohttp session, the bearer token, failover between
servers, the JSON error shape as `ApiError`, and client TLS. `ApiClient`
(`federation.client`) names the endpoints on top of it."""

from __future__ import annotations

import ipaddress
import json
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeAlias
from urllib.parse import urlsplit

import aiohttp

Json: TypeAlias = dict[str, Any]

log = logging.getLogger(__name__)

# Plain-HTTP URLs a token was sent to already (once per process is enough to be seen;
# every call would drown an agent's log).
_warned_plain_http: set[str] = set()


class ApiError(Exception):
    """The server answered with an error (the JSON error shape), or not at all."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def tls_context(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext | None:
    """Client TLS: verify the server with `ca` (else the system's roots), and present
    `cert`/`key` for mutual TLS. None when nothing is configured (system defaults)."""
    if ca is None and cert is None:
        return None
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine's loopback: `localhost` or an address in
    127.0.0.0/8 or ::1. Other names are not resolved: they count as the network."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_plain_http(urls: list[str]) -> None:
    """Log (once per process) that a bearer token goes over plain HTTP to another host:
    anyone on the path can read it and replay it until it is revoked."""
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme != "http" or is_loopback(parts.hostname or ""):
            continue
        if not _warned_plain_http:
            log.warning(
                "sending the bearer token over plain HTTP to %s, which is not this machine: "
                "anyone on the way can read and replay it; use https:// (docs/security.md)",
                url,
            )
        _warned_plain_http.add(url)
        return


class Transport:
    """One aiohttp session for the life of the client; bearer token on every call;
    `request` and `stream`, failing over between the servers given."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # Several servers, comma-separated: calls go to one until it fails to answer
        # (or answers 502-504), then to the next; the caller's retry does the rest.
        self.urls = [u.strip().rstrip("/") for u in url.split(",") if u.strip()]
        self._current = 0
        self.token = token
        if token:
            warn_plain_http(self.urls)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return self.urls[self._current]

    def _failover(self) -> None:
        self._current = (self._current + 1) % len(self.urls)

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        headers.update(extra or {})
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        slow_s: float | None = None,
    ) -> Any:
        """Send one request (`slow_s`: a time limit longer than the client's);
        returns the decoded JSON body or raises ApiError."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        data: bytes | None = raw
        if body is not None:
            data = json.dumps(body).encode()
        hdrs = self._headers(headers)
        if data is not None:
            hdrs["Content-Type"] = content_type
        try:
            async with self._session.request(
                method,
                self.url + path,
                data=data,
                headers=hdrs,
                ssl=self._ssl or True,
                timeout=aiohttp.ClientTimeout(total=slow_s) if slow_s else self._timeout,
            ) as resp:
                text = await resp.text()
                if resp.status in (502, 503, 504):
                    self._failover()
                payload = json.loads(text) if text else None
                if resp.status >= 400:
                    err = (payload or {}).get("error", {}) if isinstance(payload, dict) else {}
                    raise ApiError(
                        resp.status,
                        str(err.get("code", "error")),
                        str(err.get("message", resp.reason or "")),
                        err.get("details"),
                    )
                return payload
        except (aiohttp.ClientError, TimeoutError) as exc:
            where = self.url
            self._failover()
            raise ApiError(0, "unreachable", f"{where}: {exc or type(exc).__name__}") from exc
        except json.JSONDecodeError as exc:
            raise ApiError(0, "bad_response", f"{self.url}{path}: not JSON") from exc

    async def stream(self, path: str, *, idle_timeout: float) -> AsyncIterator[dict[str, Any]]:
        """Newline-delimited JSON from a long-lived GET; ApiError if it fails or goes
        quiet for longer than `idle_timeout` (the server sends progress lines)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=idle_timeout)
        try:
            async with self._session.get(
                self.url + path, headers=self._headers(), ssl=self._ssl or True, timeout=timeout
            ) as resp:
                if resp.status >= 400:
                    text = await resp.text()
                    try:
                        err = json.loads(text).get("error", {})
                    except (ValueError, AttributeError):
                        err = {}
                    raise ApiError(
                        resp.status, str(err.get("code", "error")), str(err.get("message", ""))
                    )
                async for raw in resp.content:
                    line = raw.strip()
                    if line:
                        yield json.loads(line)
        except (aiohttp.ClientError, TimeoutError) as exc:
            where = self.url
            self._failover()
            raise ApiError(0, "unreachable", f"{where}: {exc or type(exc).__name__}") from exc
        except json.JSONDecodeError as exc:
            raise ApiError(0, "bad_response", f"{self.url}{path}: not JSON") from exc

    async def _call(
        self, method: str, path: str, *, body: Json | None = None, slow_s: float | None = None
    ) -> Json:
        """`request` for an endpoint of the API, every one of which answers an object."""
        answer = await self.request(method, path, body=body, slow_s=slow_s)
        if not isinstance(answer, dict):
            raise ApiError(0, "bad_response", f"{self.url}{path}: not a JSON object")
        return answer

    async def _call_if_match(
        self, method: str, path: str, if_match: int, body: Json | None = None
    ) -> Json:
        headers = {"If-Match": f'"{if_match}"'}
        answer = await self.request(method, path, body=body, headers=headers)
        if not isinstance(answer, dict):
            raise ApiError(0, "bad_response", f"{self.url}{path}: not a JSON object")
        return answer
