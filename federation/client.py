"""A small async client for the federation HTTP API, used by the CLI and the agent."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp


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


class ApiClient:
    """One aiohttp session for the life of the client; bearer token on every call."""

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
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return self.urls[self._current]

    def _failover(self) -> None:
        self._current = (self._current + 1) % len(self.urls)

    async def __aenter__(self) -> ApiClient:
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
    ) -> Any:
        """Send one request; returns the decoded JSON body or raises ApiError."""
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
                method, self.url + path, data=data, headers=hdrs, ssl=self._ssl or True
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
