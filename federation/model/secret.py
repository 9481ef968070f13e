"""Secrets: write-only values (a database password) with data classes, like a service's.

A secret is stored sealed (federation.store.envelope): each version's values encrypted
with a data key of its own, the data key wrapped by a key-encryption key (KEK) that
never enters etcd. The API shows metadata only (`SecretRecord.metadata`): keys, version,
data classes, a keyed fingerprint per key, who wrote it and when. Values leave the
server only in the assignment stream of a region that residency allows them in.

Bounds (each a 422 naming the field): at most MAX_KEYS keys per secret, MAX_VALUE_BYTES
per value, MAX_TOTAL_BYTES per secret; key names like Kubernetes' (letters, digits,
`.`, `_`, `-`); no NUL in a value (it could not be an environment variable).

The KEK file (`serve --kek-file`) holds one key a line, `ID BASE64`: the first is the
primary, which wraps new data keys; the others are still accepted for unwrapping, so a
KEK rotation is: put the new key first, then `federation secret rewrap`, then remove
the old line. Parsing and writing that format are here, pure, for the store (which
reads the file) and `up` (which makes it).
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from federation.model.names import Name

MAX_KEYS = 64
MAX_VALUE_BYTES = 64 * 1024
MAX_TOTAL_BYTES = 256 * 1024
KEEP_VERSIONS = 3  # versions kept sealed: a rollout still delivers the one it started from
KEK_BYTES = 32  # AES-256

KEY_PATTERN = r"^[A-Za-z0-9._-]{1,253}$"
SecretKey = Annotated[str, Field(pattern=KEY_PATTERN)]
# `secrets: {DB_PASSWORD: patient-db#password}`: a secret's name, `#`, one of its keys.
REFERENCE_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?#[A-Za-z0-9._-]{1,253}$"
KEK_ID_PATTERN = r"^[a-z0-9][-a-z0-9]{0,62}$"
# The data class of a key that signs practice drills' webhooks (docs/drills.md): needs
# no policy, stands alone on its secret, and no service may carry it, so such a key is
# never delivered to a region and no other secret's value can be made a signing key.
WEBHOOK_SIGNING = "webhook-signing"


def _signing_alone(classes: list[str]) -> list[str]:
    if WEBHOOK_SIGNING in classes and len(classes) > 1:
        raise ValueError(f"{WEBHOOK_SIGNING!r} must be the secret's only data class")
    return classes


def _value(value: str) -> str:
    # Messages name the rule, never the value: they reach clients and logs.
    if "\x00" in value:
        raise ValueError("must not contain a NUL character (it could not be an env variable)")
    size = len(value.encode())
    if size > MAX_VALUE_BYTES:
        raise ValueError(f"is {size} bytes; a value holds at most {MAX_VALUE_BYTES}")
    return value


SecretValue = Annotated[str, AfterValidator(_value)]


def _check_data(data: dict[str, str]) -> dict[str, str]:
    total = sum(len(v.encode()) for v in data.values())
    if total > MAX_TOTAL_BYTES:
        raise ValueError(f"values total {total} bytes; a secret holds at most {MAX_TOTAL_BYTES}")
    return data


SecretData = Annotated[
    dict[SecretKey, SecretValue],
    Field(min_length=1, max_length=MAX_KEYS),
    AfterValidator(_check_data),
]


class SecretSpec(BaseModel):
    """Body of `PUT /v1/secrets/{s}`: the whole secret. Its data classes are required
    (`[public]` for none): a secret without them would go anywhere by omission."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: Name
    data_classes: list[Name] = Field(min_length=1, max_length=32)
    data: SecretData

    @field_validator("data_classes")
    @classmethod
    def _unique(cls, classes: list[str]) -> list[str]:
        return _signing_alone(sorted(set(classes)))


class SecretDeclaration(BaseModel):
    """A `kind: secret` document of a plan: the secret's metadata as a repository
    declares it (data classes and keys; values never go in files). A plan checks it
    against the stored secret and never writes it."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    data_classes: list[Name] = Field(min_length=1, max_length=32)
    keys: list[SecretKey] = Field(min_length=1, max_length=MAX_KEYS)

    @field_validator("data_classes", "keys")
    @classmethod
    def _unique(cls, items: list[str]) -> list[str]:
        return sorted(set(items))


class SecretRotation(BaseModel):
    """Body of `POST /v1/secrets/{s}/rotate`: new values for some keys (the others keep
    theirs) in a new version."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    data: SecretData


class Wrapped(BaseModel):
    """A key wrapped by the KEK `kek` (base64 of nonce and AES-GCM ciphertext)."""

    kek: str
    blob: str


class SealedVersion(BaseModel):
    """One version: its values sealed with its own data key."""

    version: int
    data_key: Wrapped
    ciphertext: str  # base64 of nonce and AES-GCM ciphertext of the values as JSON
    fingerprints: dict[str, str]
    created_at: datetime
    created_by: str


class SecretRecord(BaseModel):
    """A secret as stored: no value in clear. The fingerprint key (HMAC) is wrapped
    like a data key, so fingerprints cannot be checked against guesses offline."""

    name: str
    data_classes: list[str]
    version: int
    fingerprint_key: Wrapped
    versions: list[SealedVersion]  # oldest first; the last is `version`
    created_at: datetime
    updated_at: datetime
    updated_by: str

    def current(self) -> SealedVersion:
        return self.versions[-1]

    def sealed(self, version: int) -> SealedVersion | None:
        return next((v for v in self.versions if v.version == version), None)

    def keks(self) -> list[str]:
        """The KEKs this record's keys are wrapped with."""
        return sorted({self.fingerprint_key.kek, *(v.data_key.kek for v in self.versions)})

    def metadata(self, revision: int) -> dict[str, Any]:
        """What the API shows: never a value."""
        current = self.current()
        return {
            "name": self.name,
            "data_classes": self.data_classes,
            "version": self.version,
            "keys": sorted(current.fingerprints),
            "fingerprints": dict(sorted(current.fingerprints.items())),
            "keks": self.keks(),
            "versions_kept": [v.version for v in self.versions],
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "updated_by": self.updated_by,
            "revision": revision,
        }


def parse_reference(ref: str) -> tuple[str, str]:
    """`name#key` -> (name, key); the pattern was checked by the service model."""
    name, _, key = ref.partition("#")
    return name, key


class KeyringError(ValueError):
    """The KEK file cannot be used; the message says why (never a key)."""


def parse_keyring(text: str) -> list[tuple[str, bytes]]:
    """The keys of a KEK file, primary first. KeyringError on a malformed line, a
    duplicate id, a key not 32 bytes, or no key at all."""
    found: list[tuple[str, bytes]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not re.match(KEK_ID_PATTERN, parts[0]):
            raise KeyringError(f"line {number}: expected `ID BASE64-KEY` (ID: a-z, 0-9, -)")
        try:
            key = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            raise KeyringError(f"line {number}: the key is not base64") from None
        if len(key) != KEK_BYTES:
            raise KeyringError(f"line {number}: the key is {len(key)} bytes, not {KEK_BYTES}")
        if any(kid == parts[0] for kid, _ in found):
            raise KeyringError(f"line {number}: key id {parts[0]!r} appears twice")
        found.append((parts[0], key))
    if not found:
        raise KeyringError("holds no key")
    return found


def keyring_line(kek_id: str, key: bytes) -> str:
    """One line of a KEK file."""
    if not re.match(KEK_ID_PATTERN, kek_id) or len(key) != KEK_BYTES:
        raise KeyringError("a KEK needs an id of a-z, 0-9, - and 32 bytes")
    return f"{kek_id} {base64.b64encode(key).decode()}\n"
