"""Secrets in etcd: sealed versions, the services that reference them, rotation, rewrap.

Nothing here holds a value in clear longer than a call: values are sealed
(federation.store.envelope) before they are written and opened only for the caller
that delivers them. Every write is audited with the version, data classes and keyed
fingerprints, never a value.

A new version rolls every referencing service (`roll`): each gets a new generation
with the secret's new version in `secret_versions`, which the controller rolls out
region by region like any spec change. `roll` is idempotent, and run after every
write of the secret, so a write whose roll was cut short is finished by the next.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from federation.model.secret import KEEP_VERSIONS, SealedVersion, SecretRecord, SecretSpec
from federation.model.service import ServiceRecord
from federation.store import audit, keys
from federation.store.audit import Change
from federation.store.audit.actor import current_actor
from federation.store.envelope import (
    KeyProvider,
    KeyUnavailable,
    fingerprint,
    new_key,
    open_values,
    seal_values,
)
from federation.store.errors import Conflict
from federation.store.etcd import Store

_ROLL_ATTEMPTS = 5


class SecretNotFound(LookupError):
    """No secret of that name."""


def _context(name: str, what: str) -> bytes:
    """What a sealed blob is bound to: the secret and which key or version it is."""
    return f"federation/secrets/{name}/{what}".encode()


async def get(store: Store, name: str) -> tuple[SecretRecord, int] | None:
    """The stored secret (sealed) and its revision."""
    entry = await store.get(keys.secret(name))
    if entry is None:
        return None
    return SecretRecord.model_validate(entry.value), entry.revision


async def all_secrets(store: Store) -> tuple[list[tuple[SecretRecord, int]], int]:
    """Every secret (sealed) with its revision, and the store revision of the read."""
    entries, revision = await store.scan(keys.SECRETS)
    return [(SecretRecord.model_validate(e.value), e.revision) for e in entries], revision


async def reveal(keyring: KeyProvider, record: SecretRecord, version: int) -> dict[str, str] | None:
    """The values of `version`, or None when that version is no longer kept.
    KeyUnavailable when its data key cannot be unwrapped here."""
    sealed = record.sealed(version)
    if sealed is None:
        return None
    data_key = await keyring.unwrap(sealed.data_key, _context(record.name, f"v{version}/key"))
    return open_values(data_key, sealed.ciphertext, _context(record.name, f"v{version}"))


async def _seal(
    keyring: KeyProvider,
    name: str,
    version: int,
    values: Mapping[str, str],
    fingerprint_key: bytes,
    now: datetime,
) -> SealedVersion:
    data_key = new_key()
    return SealedVersion(
        version=version,
        data_key=await keyring.wrap(data_key, _context(name, f"v{version}/key")),
        ciphertext=seal_values(data_key, dict(values), _context(name, f"v{version}")),
        fingerprints={k: fingerprint(fingerprint_key, k, v) for k, v in sorted(values.items())},
        created_at=now,
        created_by=current_actor(),
    )


async def _opens(keyring: KeyProvider, name: str, sealed: SealedVersion) -> bool:
    """Whether this keyring can unwrap the data key of `sealed`."""
    try:
        await keyring.unwrap(sealed.data_key, _context(name, f"v{sealed.version}/key"))
    except KeyUnavailable:
        return False
    return True


def _details(record: SecretRecord, **more: object) -> dict[str, object]:
    """What the audit log keeps of a write: never a value."""
    return {
        "version": record.version,
        "data_classes": record.data_classes,
        "fingerprints": record.current().fingerprints,
        **more,
    }


async def put(
    store: Store, keyring: KeyProvider, spec: SecretSpec, *, if_match: int | None
) -> tuple[SecretRecord, int, str]:
    """Create or replace a secret (CAS on its revision). New values make a new version;
    the same values again write nothing. Returns (record, revision, outcome): outcome
    is `created`, `new version`, `data classes changed` or `unchanged`."""
    key = keys.secret(spec.name)
    now = datetime.now(UTC)
    current = await get(store, spec.name)
    if current is None:
        if if_match is not None and if_match != 0:
            raise Conflict(key, if_match, None)
        fingerprint_key = new_key()
        record = SecretRecord(
            name=spec.name,
            data_classes=spec.data_classes,
            version=1,
            fingerprint_key=await keyring.wrap(fingerprint_key, _context(spec.name, "fp-key")),
            versions=[await _seal(keyring, spec.name, 1, spec.data, fingerprint_key, now)],
            created_at=now,
            updated_at=now,
            updated_by=current_actor(),
        )
        revision = await audit.create(
            store,
            key,
            record.model_dump_json(),
            change=Change("secret.put", key, details=_details(record)),
        )
        return record, revision, "created"
    record, revision = current
    if if_match is not None and if_match != revision:
        raise Conflict(key, if_match, revision)
    return await _update(store, keyring, record, revision, spec.data_classes, spec.data, now)


async def rotate(
    store: Store, keyring: KeyProvider, name: str, data: Mapping[str, str], *, if_match: int | None
) -> tuple[SecretRecord, int, str]:
    """A new version with `data`'s keys replaced (the other keys keep their values).
    SecretNotFound when there is no such secret; ValidationError when the secret would
    pass its bounds."""
    current = await get(store, name)
    if current is None:
        raise SecretNotFound(name)
    record, revision = current
    if if_match is not None and if_match != revision:
        raise Conflict(keys.secret(name), if_match, revision)
    values = await reveal(keyring, record, record.version) or {}
    # The whole secret is bounded, not only what this call adds (ValidationError).
    merged = SecretSpec(name=name, data_classes=record.data_classes, data={**values, **data}).data
    return await _update(
        store, keyring, record, revision, record.data_classes, merged, datetime.now(UTC)
    )


async def _update(
    store: Store,
    keyring: KeyProvider,
    record: SecretRecord,
    revision: int,
    data_classes: list[str],
    values: Mapping[str, str],
    now: datetime,
) -> tuple[SecretRecord, int, str]:
    key = keys.secret(record.name)
    try:
        held = await reveal(keyring, record, record.version)
    except KeyUnavailable:
        held = None  # its KEK is lost: new values replace what nobody can open
    if held == dict(values) and record.data_classes == data_classes:
        return record, revision, "unchanged"
    updated = record.model_copy(
        update={"data_classes": data_classes, "updated_at": now, "updated_by": current_actor()}
    )
    outcome = "data classes changed"
    if held != dict(values):
        fp_context = _context(record.name, "fp-key")
        try:
            fingerprint_key = await keyring.unwrap(record.fingerprint_key, fp_context)
        except KeyUnavailable:
            fingerprint_key = new_key()
            updated.fingerprint_key = await keyring.wrap(fingerprint_key, fp_context)
        version = record.version + 1
        sealed = await _seal(keyring, record.name, version, values, fingerprint_key, now)
        updated.version = version
        # Versions no KEK held here opens are dropped: nothing could deliver them, and
        # they would keep `rewrap` from ever finishing.
        kept = [v for v in record.versions if await _opens(keyring, record.name, v)]
        updated.versions = [*kept, sealed][-KEEP_VERSIONS:]
        outcome = "new version"
    new_revision = await audit.replace(
        store,
        key,
        updated.model_dump_json(),
        revision=revision,
        change=Change("secret.put", key, details=_details(updated, outcome=outcome)),
    )
    return updated, new_revision, outcome


async def referrers(store: Store, name: str) -> list[tuple[ServiceRecord, int]]:
    """The services that reference secret `name`, read from etcd."""
    entries, _ = await store.scan(keys.SERVICES)
    found = []
    for entry in entries:
        record = ServiceRecord.model_validate(entry.value)
        if name in record.spec.secret_names():
            found.append((record, entry.revision))
    return found


async def delete(store: Store, name: str, *, if_match: int | None) -> None:
    """Delete a secret and every version of it. SecretNotFound when absent."""
    current = await get(store, name)
    if current is None:
        raise SecretNotFound(name)
    record, revision = current
    await audit.delete(
        store,
        keys.secret(name),
        revision=if_match if if_match is not None else revision,
        change=Change("secret.delete", keys.secret(name), details={"version": record.version}),
    )


async def roll(store: Store, name: str, version: int) -> list[str]:
    """Give every service that references secret `name` a new generation delivering
    `version` (unless it does already). Returns the services rolled."""
    rolled = []
    for record, revision in await referrers(store, name):
        for _ in range(_ROLL_ATTEMPTS):
            if record.secret_versions.get(name) == version or name not in (
                record.spec.secret_names()
            ):
                break
            updated = record.model_copy(
                update={
                    "generation": record.generation + 1,
                    "updated_at": datetime.now(UTC),
                    "secret_versions": {**record.secret_versions, name: version},
                }
            )
            key = keys.service(record.spec.name)
            try:
                await audit.replace(
                    store,
                    key,
                    updated.model_dump_json(),
                    revision=revision,
                    change=Change(
                        "service.secret-rotated",
                        key,
                        details={
                            "generation": updated.generation,
                            "secret": name,
                            "version": version,
                        },
                    ),
                )
            except Conflict:
                entry = await store.get(key)
                if entry is None:
                    break
                record, revision = ServiceRecord.model_validate(entry.value), entry.revision
                continue
            rolled.append(record.spec.name)
            break
    return rolled


async def rewrap(store: Store, keyring: KeyProvider) -> tuple[list[str], list[str], int]:
    """Wrap every data key and fingerprint key with the primary KEK (the values stay
    sealed as they are). Returns (the secrets rewrapped, those with a key no KEK held
    here opens, how many secrets there are): the others are done even so."""
    secrets, _ = await all_secrets(store)
    done, unopened = [], []
    for record, revision in secrets:
        for _ in range(_ROLL_ATTEMPTS):
            if record.keks() == [keyring.primary]:
                break
            try:
                updated = await _rewrapped(keyring, record)
            except KeyUnavailable:
                unopened.append(record.name)
                break
            key = keys.secret(record.name)
            try:
                await audit.replace(
                    store,
                    key,
                    updated.model_dump_json(),
                    revision=revision,
                    change=Change(
                        "secret.rewrap",
                        key,
                        details={
                            "version": record.version,
                            "from": record.keks(),
                            "to": keyring.primary,
                        },
                    ),
                )
            except Conflict:
                found = await get(store, record.name)
                if found is None:
                    break
                record, revision = found
                continue
            done.append(record.name)
            break
    return done, unopened, len(secrets)


async def _rewrapped(keyring: KeyProvider, record: SecretRecord) -> SecretRecord:
    """`record` with every key wrapped by the primary KEK; KeyUnavailable if one
    does not open."""
    updated = record.model_copy(deep=True)
    fp_context = _context(record.name, "fp-key")
    updated.fingerprint_key = await keyring.wrap(
        await keyring.unwrap(record.fingerprint_key, fp_context), fp_context
    )
    for sealed in updated.versions:
        context = _context(record.name, f"v{sealed.version}/key")
        sealed.data_key = await keyring.wrap(
            await keyring.unwrap(sealed.data_key, context), context
        )
    return updated
