"""The client of the federation HTTP API, used by the CLI and the region agent.

`ApiClient` holds one aiohttp session for its life and fails over between servers.
Every endpoint is a typed method that names what it does (`regions()`,
`cordon(name, reason)`, `put_service(name, body)`) and is one call of `request` (or
`stream` for a watch): callers never spell a path. Answers are the decoded JSON
objects the API documents (`/v1/openapi.json`); any error, including no answer at
all, is an `ApiError` carrying the API's error code and message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

from federation.client.transport import (
    ApiError,
    Json,
    Transport,
    is_loopback,
    tls_context,
    warn_plain_http,
)

__all__ = ["ApiClient", "ApiError", "Json", "is_loopback", "tls_context", "warn_plain_http"]

_PLURAL = {
    "group": "groups",
    "policy": "policies",
    "service": "services",
    "drill-schedule": "drill-schedules",
}


class ApiClient(Transport):
    """The API, one method per endpoint, each one call of the transport's `request`
    (or `stream` for a watch)."""

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
        body: Json = {"regions": regions, "mode": "live", "force": force, "failback": failback}
        body["max_duration_s"] = max_duration_s
        body["abort_on"] = {"unrecoverable": abort_on_unrecoverable}
        return await self._call("POST", "/v1/drills", body=body)

    async def drills(self) -> Json:
        return await self._call("GET", "/v1/drills")

    async def drill(self, drill_id: str) -> Json:
        return await self._call("GET", f"/v1/drills/{drill_id}")

    async def abort_drill(self, drill_id: str, reason: str = "") -> Json:
        """Abort a live drill; its regions are uncordoned at once."""
        path = f"/v1/drills/{drill_id}/abort"
        return await self._call("POST", path, body={"reason": reason})

    async def schedules(self, name: str = "", act: str = "", body: Json | None = None) -> Json:
        """Drill schedules: list; with `name`, get, put `body`, or act delete, run, runs."""
        verb = {"delete": "DELETE", "run": "POST", "runs": "GET"}.get(act, "PUT" if body else "GET")
        path = "/v1/drill-schedules" + (f"/{name}" if name else "")
        path += {"run": "/run", "runs": "/runs"}.get(act, "")
        return await self._call(verb, path, body=body)

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
