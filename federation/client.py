"""The client of the federation HTTP API, used by the CLI and the region agent.

`ApiClient` holds one aiohttp session for its life and fails over between servers.
Every endpoint is a typed method that names what it does (`regions()`,
`cordon(name, reason)`, `put_service(name, body)`) and is one call of `request` (or
`stream` for a watch): callers never spell a path. Answers are the decoded JSON
objects the API documents (`/v1/openapi.json`); any error, including no answer at
all, is an `ApiError` carrying the API's error code and message.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias
from urllib.parse import quote, urlsplit

import aiohttp

Json: TypeAlias = dict[str, Any]
_PLURAL = {"group": "groups", "policy": "policies", "service": "services"}

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


class ApiClient:
    """One aiohttp session for the life of the client; bearer token on every call.

    `request` and `stream` are the transport; the methods after them are the API."""

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

    async def evidence(self, body: Json) -> Json:
        """`POST /v1/residency/evidence`: the signed report ({"report", "signature"}); a
        long log's is verified and replayed for a minute before it comes."""
        return await self._call("POST", "/v1/residency/evidence", body=body, slow_s=900)

    # -- a set of documents: plan, then apply resource by resource (cli/gitops.py) ------

    async def plan(self, documents: list[Json], *, prune: dict[str, str] | None = None) -> Json:
        """`POST /v1/plan`: what applying `documents` ({"kind", "spec"}) would do."""
        return await self._call("POST", "/v1/plan", body={"documents": documents, "prune": prune})

    async def put_resource(self, kind: str, name: str, spec: Json, *, if_match: int) -> Json:
        """Write a group, policy or service (or a region's labels), only if its revision
        is still `if_match` (0: only if it does not exist yet); a 409 otherwise."""
        path = f"/v1/regions/{name}/labels" if kind == "region" else f"/v1/{_PLURAL[kind]}/{name}"
        return await self._call_if_match("PUT", path, if_match, spec)

    async def delete_resource(self, kind: str, name: str, *, if_match: int) -> Json:
        """Delete a group, policy or service, only if its revision is still `if_match`."""
        return await self._call_if_match("DELETE", f"/v1/{_PLURAL[kind]}/{name}", if_match)

    # -- regions ----------------------------------------------------------------------

    async def regions(self) -> Json:
        return await self._call("GET", "/v1/regions")

    async def region(self, name: str) -> Json:
        return await self._call("GET", f"/v1/regions/{name}")

    async def register_region(
        self,
        name: str,
        *,
        country: str,
        labels: dict[str, str] | None = None,
        endpoint: str | None = None,
        capacity_limit: Json | None = None,
    ) -> Json:
        """Register a region; the answer holds the region and its token (shown once).
        `capacity_limit` ({cpu, memory_mb}) caps what its heartbeats may claim."""
        body: Json = {"name": name, "country": country, "labels": labels or {}}
        if endpoint:
            body["endpoint"] = endpoint
        if capacity_limit is not None:
            body["capacity_limit"] = capacity_limit
        return await self._call("POST", "/v1/regions", body=body)

    async def set_capacity_limit(self, name: str, limit: Json | None) -> Json:
        """Set (or, with None, lift) the ceiling on what region `name` may claim."""
        path = f"/v1/regions/{name}/capacity-limit"
        if limit is None:
            return await self._call("DELETE", path)
        return await self._call("PUT", path, body=limit)

    async def cordon(self, name: str, reason: str = "") -> Json:
        return await self._call("POST", f"/v1/regions/{name}/cordon", body={"reason": reason})

    async def uncordon(self, name: str) -> Json:
        return await self._call("POST", f"/v1/regions/{name}/uncordon")

    # -- what a region agent calls (with its region token) ----------------------------

    async def heartbeat(
        self,
        region: str,
        *,
        capacity: Json,
        allocated: Json,
        allow_exec: list[str] | None = None,
    ) -> Json:
        """Keep `region` alive; the answer says at what pace (`interval_s`, `ttl_s`).
        `allow_exec`, the agent's allowlist, is sent only when it has one."""
        body: Json = {"capacity": capacity, "allocated": allocated}
        if allow_exec is not None:
            body["allow_exec"] = allow_exec
        return await self._call("POST", f"/v1/regions/{region}/heartbeat", body=body)

    async def assignments(self, region: str) -> Json:
        """Every assignment of `region`, and the etcd revision to watch from."""
        return await self._call("GET", f"/v1/regions/{region}/assignments")

    def watch_assignments(
        self, region: str, *, since: int, idle_timeout: float
    ) -> AsyncIterator[Json]:
        """Changes to `region`'s assignments after revision `since`, one line each."""
        path = f"/v1/regions/{region}/assignments?watch=true&since={since}"
        return self.stream(path, idle_timeout=idle_timeout)

    async def report_status(self, region: str, instances: list[Json]) -> Json:
        body = {"instances": instances}
        return await self._call("PUT", f"/v1/regions/{region}/status", body=body)

    # -- residency --------------------------------------------------------------------

    async def policies(self) -> Json:
        return await self._call("GET", "/v1/policies")

    async def put_policy(self, name: str, body: Json, *, dry_run: bool = False) -> Json:
        """Create or update a policy; with `dry_run` only validate it (and warn)."""
        path = f"/v1/policies/{name}" + ("?dry_run=true" if dry_run else "")
        return await self._call("PUT", path, body=body)

    async def delete_policy(self, name: str) -> Json:
        return await self._call("DELETE", f"/v1/policies/{name}")

    async def groups(self) -> Json:
        return await self._call("GET", "/v1/groups")

    async def put_group(self, name: str, body: Json, *, dry_run: bool = False) -> Json:
        """Create or update a jurisdiction group; with `dry_run` only validate it."""
        path = f"/v1/groups/{name}" + ("?dry_run=true" if dry_run else "")
        return await self._call("PUT", path, body=body)

    async def evaluate(
        self, data_classes: list[str], *, service: str | None = None, at: str | None = None
    ) -> Json:
        """Every region's verdict for data of these classes (none: public), and why;
        with `service`, its exemptions apply; with `at`, as of that instant."""
        body: Json = {"data_classes": data_classes}
        if service:
            body["service"] = service
        if at:
            body["at"] = at
        return await self._call("POST", "/v1/residency/evaluate", body=body)

    # -- services ---------------------------------------------------------------------

    async def services(self) -> Json:
        return await self._call("GET", "/v1/services")

    async def service(self, name: str) -> Json:
        return await self._call("GET", f"/v1/services/{name}")

    async def put_service(self, name: str, body: Json) -> Json:
        """Create or update a service; the answer holds its new `generation`."""
        return await self._call("PUT", f"/v1/services/{name}", body=body)

    async def explain(self, name: str) -> Json:
        """Every region, chosen or rejected for service `name`, and why."""
        return await self._call("GET", f"/v1/services/{name}/explain")

    # -- secrets (metadata only: the API never answers a value) -----------------------

    async def secrets(self) -> Json:
        return await self._call("GET", "/v1/secrets")

    async def secret(self, name: str) -> Json:
        return await self._call("GET", f"/v1/secrets/{name}")

    async def put_secret(self, name: str, *, data_classes: list[str], data: dict[str, str]) -> Json:
        """Create or replace a secret; the answer holds its `version` and `outcome`."""
        body = {"data_classes": data_classes, "data": data}
        return await self._call("PUT", f"/v1/secrets/{name}", body=body)

    async def rotate_secret(self, name: str, data: dict[str, str]) -> Json:
        """A new version with these keys' values (the others kept)."""
        return await self._call("POST", f"/v1/secrets/{name}/rotate", body={"data": data})

    async def delete_secret(self, name: str) -> Json:
        return await self._call("DELETE", f"/v1/secrets/{name}")

    async def rewrap_secrets(self) -> Json:
        """Wrap every secret's keys with the server's primary KEK."""
        return await self._call("POST", "/v1/secrets/rewrap")

    # -- drills -----------------------------------------------------------------------

    async def plan_drill(self, regions: list[str]) -> Json:
        """What losing `regions` would do to every service in them; changes nothing."""
        body = {"regions": regions, "mode": "plan"}
        return await self._call("POST", "/v1/drills", body=body)

    async def start_drill(
        self,
        regions: list[str],
        *,
        force: bool,
        failback: bool,
        max_duration_s: float,
        abort_on_unrecoverable: int,
    ) -> Json:
        """Start a live drill: the server cordons `regions` and follows the recovery."""
        body = {
            "regions": regions,
            "mode": "live",
            "force": force,
            "failback": failback,
            "max_duration_s": max_duration_s,
            "abort_on": {"unrecoverable": abort_on_unrecoverable},
        }
        return await self._call("POST", "/v1/drills", body=body)

    async def drills(self) -> Json:
        return await self._call("GET", "/v1/drills")

    async def drill(self, drill_id: str) -> Json:
        return await self._call("GET", f"/v1/drills/{drill_id}")

    async def abort_drill(self, drill_id: str, reason: str = "") -> Json:
        """Abort a live drill; its regions are uncordoned at once."""
        path = f"/v1/drills/{drill_id}/abort"
        return await self._call("POST", path, body={"reason": reason})

    # -- tokens and audit -------------------------------------------------------------

    async def create_token(
        self,
        *,
        role: str,
        region: str | None = None,
        ttl_s: int | None = None,
        description: str = "",
    ) -> Json:
        """Make a token; the answer holds its secret (`token`), never shown again."""
        body: Json = {"role": role, "description": description}
        if region is not None:
            body["region"] = region
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        return await self._call("POST", "/v1/tokens", body=body)

    async def tokens(self) -> Json:
        return await self._call("GET", "/v1/tokens")

    async def revoke_token(self, token_id: str) -> Json:
        return await self._call("DELETE", f"/v1/tokens/{token_id}")

    async def audit(self, *, since: int = 0) -> Json:
        """Audit entries after sequence number `since`, oldest first."""
        return await self._call("GET", f"/v1/audit?since={since}")

    async def audit_verify(self, *, checkpoint: Json | None = None) -> Json:
        """Check the audit hash chain (and that it still holds the entry a signed
        `checkpoint` names); the answer names the first entry that fails."""
        if checkpoint is not None:
            return await self._call("POST", "/v1/audit/verify", body=checkpoint)
        return await self._call("GET", "/v1/audit/verify")

    async def audit_checkpoint(self) -> Json:
        """The audit log's head, signed with the server's audit key."""
        return await self._call("GET", "/v1/audit/checkpoint")

    # -- etcd -------------------------------------------------------------------------

    async def etcd_status(self) -> Json:
        """etcd's members (sizes, revision, leader, alarms) and its compacted revision."""
        return await self._call("GET", "/v1/etcd/status")

    async def etcd_defrag(self, member: str) -> Json:
        """Defragment one etcd member (minutes for a large one); its status after."""
        path = f"/v1/etcd/defrag?member={quote(member, safe='')}"
        return await self._call("POST", path, slow_s=660)

    async def etcd_disarm(self) -> Json:
        """Deactivate etcd's raised alarms; answers those that were raised."""
        return await self._call("POST", "/v1/etcd/disarm")
