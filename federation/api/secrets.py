"""Secret routes (metadata only, never a value), the checks of a service's secret
references, and delivery: a value added to the assignment stream of one region.

- `PUT /v1/secrets/{s}`, `POST /v1/secrets/{s}/rotate`, `DELETE` (operator),
  `POST /v1/secrets/rewrap` (admin); `GET /v1/secrets[/{s}]` (viewer) answers keys,
  version, data classes, fingerprints, who and when. A region token reads none of it.
- A service may reference a secret only if the secret exists, holds the key, and every
  data class of the secret (other than `public`) is one of the service's: else a 422
  naming both. A service cannot be deployed before its secret (refusing is simpler
  and safer than a service that waits for one).
- Delivery (`delivered`): only to the region's own token, only for the assignment of
  an instance placed there, and only when residency allows every data class of the
  secret in the region's country now (a policy change stops delivery at once). One
  secret withheld withholds them all for that assignment, with the reason; the agent
  then starts no instance of it.
"""

from __future__ import annotations

import weakref
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from federation.api.auth import require
from federation.api.body import if_match, json_response, path_name, read_model, read_named
from federation.api.context import CONTROLLER, KEYRING, MIRROR, STORE
from federation.api.errors import ApiError, from_validation, no_policy_names, not_found
from federation.model.errors import UnknownDataClassError
from federation.model.region import RegionRecord
from federation.model.secret import (
    WEBHOOK_SIGNING,
    SecretRecord,
    SecretRotation,
    SecretSpec,
    parse_reference,
)
from federation.model.service import ServiceSpec
from federation.model.token import Role
from federation.residency.evaluate import PUBLIC, check_data_classes, evaluate
from federation.residency.snapshot import Snapshot
from federation.store import keys
from federation.store import policies as store_policies
from federation.store import secrets as store_secrets
from federation.store.envelope import KeyProvider, KeyUnavailable
from federation.store.mirror import Mirror
from federation.telemetry import metrics as _metrics

routes = web.RouteTableDef()


def _keyring(app: web.Application) -> KeyProvider:
    keyring = app.get(KEYRING)
    if keyring is None:
        # As for a missing --audit-key: this server's configuration, not a passing failure.
        raise ApiError(
            409,
            "this server has no key-encryption key (federation serve --kek-file FILE): "
            "secrets cannot be sealed or opened",
            code="no_kek",
        )
    return keyring


def _unavailable(exc: KeyUnavailable) -> ApiError:
    return ApiError(409, f"cannot open the secret's keys: {exc}", code="kek_unavailable")


async def _known_classes(request: web.Request, classes: list[str]) -> None:
    """422 for a data class no policy names (a typo must not mean "anywhere")."""
    # A webhook signing key is bound by its own rules (federation.model.secret), not by
    # a policy.
    named = [c for c in classes if c != WEBHOOK_SIGNING]
    try:
        check_data_classes(named, await store_policies.policies(request.app[STORE]))
    except UnknownDataClassError as exc:
        raise no_policy_names(classes, exc) from None


def _uncovered(secret_classes: list[str], service_classes: list[str]) -> list[str]:
    """The secret's data classes a service with `service_classes` does not have."""
    return sorted(set(secret_classes) - set(service_classes) - {PUBLIC})


async def _answer(
    request: web.Request, record: SecretRecord, revision: int, outcome: str, status: int
) -> web.Response:
    # Also when nothing changed: it finishes a roll an earlier write left half done.
    rolled = await store_secrets.roll(request.app[STORE], record.name, record.version)
    if rolled:
        request.app[CONTROLLER].poke()
    body = {**record.metadata(revision), "outcome": outcome, "rolled": rolled}
    return json_response(body, status=status, revision=revision)


@routes.get("/v1/secrets")
async def list_secrets(request: web.Request) -> web.Response:
    await require(request, Role.VIEWER)
    found, revision = await store_secrets.all_secrets(request.app[STORE])
    items = [record.metadata(rev) for record, rev in found]
    return json_response({"items": items, "revision": revision})


@routes.post("/v1/secrets/rewrap")
async def rewrap(request: web.Request) -> web.Response:
    """Wrap every data key with the primary KEK; run after putting a new KEK first."""
    await require(request, Role.ADMIN)
    keyring = _keyring(request.app)
    done, unopened, total = await store_secrets.rewrap(request.app[STORE], keyring)
    return json_response(
        {"kek": keyring.primary, "rewrapped": done, "unopened": unopened, "secrets": total}
    )


@routes.get("/v1/secrets/{secret}")
async def get_secret(request: web.Request) -> web.Response:
    name = path_name(request, "secret")
    await require(request, Role.VIEWER)
    found = await store_secrets.get(request.app[STORE], name)
    if found is None:
        raise not_found("secret", name)
    record, revision = found
    return json_response(record.metadata(revision), revision=revision)


@routes.put("/v1/secrets/{secret}")
async def put_secret(request: web.Request) -> web.Response:
    """Create or replace a secret; new values are a new version, rolled out to every
    service that references it."""
    name = path_name(request, "secret")
    await require(request, Role.OPERATOR)
    keyring = _keyring(request.app)
    data = await read_named(request, name, kind="secret")
    try:
        spec = SecretSpec.model_validate(data)
    except ValidationError as exc:
        raise from_validation(exc) from None
    await _known_classes(request, spec.data_classes)
    store = request.app[STORE]
    for service, _ in await store_secrets.referrers(store, name):
        missing = _uncovered(spec.data_classes, service.spec.data_classes)
        if missing:
            raise ApiError(
                422,
                f"data_classes: service {service.spec.name!r} (data classes "
                f"{service.spec.data_classes}) references secret {name!r}, and would not "
                f"have {missing}; change the service first",
                details=[{"field": "data_classes", "service": service.spec.name}],
            )
    try:
        record, revision, outcome = await store_secrets.put(
            store, keyring, spec, if_match=if_match(request)
        )
    except KeyUnavailable as exc:
        raise _unavailable(exc) from None
    return await _answer(request, record, revision, outcome, 201 if outcome == "created" else 200)


@routes.post("/v1/secrets/{secret}/rotate")
async def rotate_secret(request: web.Request) -> web.Response:
    """A new version with the given keys' new values; the others keep theirs."""
    name = path_name(request, "secret")
    await require(request, Role.OPERATOR)
    keyring = _keyring(request.app)
    body = await read_model(request, SecretRotation)
    try:
        record, revision, outcome = await store_secrets.rotate(
            request.app[STORE], keyring, name, body.data, if_match=if_match(request)
        )
    except store_secrets.SecretNotFound:
        raise not_found("secret", name) from None
    except ValidationError as exc:
        raise from_validation(exc) from None
    except KeyUnavailable as exc:
        raise _unavailable(exc) from None
    return await _answer(request, record, revision, outcome, 200)


@routes.delete("/v1/secrets/{secret}")
async def delete_secret(request: web.Request) -> web.Response:
    name = path_name(request, "secret")
    await require(request, Role.OPERATOR)
    store = request.app[STORE]
    users = sorted(s.spec.name for s, _ in await store_secrets.referrers(store, name))
    if users:
        raise ApiError(
            409,
            f"secret {name!r} is referenced by {', '.join(users)}: remove the references first",
            details=[{"field": "secret", "services": users}],
        )
    try:
        await store_secrets.delete(store, name, if_match=if_match(request))
    except store_secrets.SecretNotFound:
        raise not_found("secret", name) from None
    return json_response({"name": name, "deleted": True})


async def check_references(
    request: web.Request, spec: ServiceSpec, *, read: dict[str, Any] | None = None
) -> dict[str, int]:
    """422 unless every secret `spec` references exists, holds the key, and has only
    data classes the service has. Returns the version of each secret to deliver.
    `read`: the secrets already read (by name), shared across calls, so a plan of many
    services reads each secret once."""
    versions: dict[str, int] = {}
    store = request.app[STORE]
    read = {} if read is None else read
    for env, ref in sorted(spec.secrets.items()):
        name, key = parse_reference(ref)
        if name not in read:
            read[name] = await store_secrets.get(store, name)
        found = read[name]
        field = f"secrets.{env}"
        if found is None:
            raise ApiError(
                422,
                f"{field}: secret {name!r} not found; create it first (federation secret set)",
                details=[{"field": field, "message": f"secret {name!r} not found"}],
            )
        record = found[0]
        if key not in record.current().fingerprints:
            held = ", ".join(sorted(record.current().fingerprints))
            raise ApiError(
                422,
                f"{field}: secret {name!r} has no key {key!r} (it has: {held})",
                details=[{"field": field, "message": f"no key {key!r}"}],
            )
        missing = _uncovered(record.data_classes, spec.data_classes)
        if missing:
            message = (
                f"secret {name!r} holds data classes {record.data_classes}, and service "
                f"{spec.name!r} (data classes {spec.data_classes}) lacks {missing}: a "
                "service may only use secrets of its own data classes"
            )
            raise ApiError(
                422,
                f"{field}: {message}",
                details=[{"field": field, "message": message, "secret": name}],
            )
        versions[name] = record.version
    return versions


async def delivered(
    app: web.Application, region: str, service: str, runtime: dict[str, Any]
) -> dict[str, Any]:
    """What to add to an assignment sent to region `region`'s own token: the values of
    the secrets its runtime references (`secret_env`), or why they are withheld
    (`secrets_withheld`). Nothing for an assignment that references no secret."""
    refs = runtime.get("secrets") or {}
    if not refs:
        return {}
    try:
        opened = {"secret_env": await _open_all(app, region, service, runtime)}
    except _Withheld as exc:
        _metrics.secret_deliveries.add(1, {"outcome": "withheld"})
        return {"secrets_withheld": str(exc)}
    _metrics.secret_deliveries.add(1, {"outcome": "delivered"})
    return opened


# The policies and groups a delivery is judged by, parsed once per change of them
# rather than once per assignment (a failover delivers hundreds at once).
_snapshots: weakref.WeakKeyDictionary[Mirror, tuple[object, Snapshot]] = weakref.WeakKeyDictionary()


def _residency(mirror: Mirror) -> Snapshot:
    stamp = (mirror.revisions(keys.POLICIES), mirror.revisions(keys.GROUPS))
    cached = _snapshots.get(mirror)
    if cached is None or cached[0] != stamp:
        cached = _snapshots[mirror] = (stamp, store_policies.snapshot_of(mirror))
    return cached[1]


class _Withheld(Exception):
    """Why a region does not get an assignment's secrets (never holds a value)."""


async def _open_all(
    app: web.Application, region: str, service: str, runtime: dict[str, Any]
) -> dict[str, str]:
    keyring = app.get(KEYRING)
    if keyring is None:
        raise _Withheld("the server has no key-encryption key (--kek-file)")
    mirror, store = app[MIRROR], app[STORE]
    held = mirror.get(keys.REGIONS, region, RegionRecord)
    if held is None:
        raise _Withheld(f"region {region} is not registered")
    snapshot = _residency(mirror)
    versions: dict[str, int] = runtime.get("secret_versions") or {}
    opened: dict[str, dict[str, str]] = {}
    env: dict[str, str] = {}
    for env_name, ref in sorted(dict(runtime["secrets"]).items()):
        name, key = parse_reference(str(ref))
        if name not in opened:
            try:
                # The mirror's copy, unless it has not seen the version wanted yet.
                found = mirror.get(keys.SECRETS, name, SecretRecord)
                if found is None or found[0].sealed(versions.get(name, found[0].version)) is None:
                    found = await store_secrets.get(store, name)
            except ValidationError:
                raise _Withheld(f"secret {name} is stored malformed") from None
            if found is None:
                raise _Withheld(f"secret {name} no longer exists")
            record = found[0]
            verdict = evaluate(
                data_classes=record.data_classes,
                service=service,
                regions=[held[0]],
                policies=snapshot.all_policies(),
                groups=snapshot.valid_groups(),
                now=datetime.now(UTC),
            ).verdicts[0]
            if not verdict.allowed:
                raise _Withheld(
                    f"residency does not allow secret {name} (data classes "
                    f"{record.data_classes}) in region {region} ({held[0].country}): "
                    + "; ".join(verdict.reasons)
                )
            version = int(versions.get(name, record.version))
            try:
                values = await store_secrets.reveal(keyring, record, version)
            except KeyUnavailable as exc:
                raise _Withheld(f"secret {name}: {exc}") from None
            if values is None:
                raise _Withheld(f"secret {name} no longer keeps version {version}")
            opened[name] = values
        if key not in opened[name]:
            raise _Withheld(f"secret {name} has no key {key}")
        env[env_name] = opened[name][key]
    return env


async def delivered_item(
    app: web.Application, region: str, item: dict[str, Any], *, to_region: bool
) -> dict[str, Any]:
    """An assignment as sent: with its secrets' values when it goes to the region's own
    token (`to_region`), as stored (references only) to anyone else."""
    if not to_region:
        return item
    runtime = item.get("runtime")
    if not isinstance(runtime, dict):
        return item
    return {**item, **await delivered(app, region, str(item.get("service", "")), runtime)}
