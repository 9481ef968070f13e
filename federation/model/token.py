"""API tokens: roles, and how a secret becomes the hash that is stored."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

TOKEN_PREFIX = "fed_"


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"
    REGION = "region"


# A role may do what the roles below it may do; region tokens stand apart.
_RANK = {Role.VIEWER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


def role_allows(held: Role, needed: Role) -> bool:
    """True when a token of role `held` may act where `needed` is required."""
    if held is Role.REGION or needed is Role.REGION:
        return held is needed
    return _RANK[held] >= _RANK[needed]


def new_secret() -> str:
    """A fresh bearer token: 256 random bits, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


# A secret given from outside (FEDERATION_ADMIN_TOKEN) is not made by new_secret, so
# its strength is checked: stored as a plain SHA-256, it must not be guessable.
MIN_SECRET_LENGTH = 32
MIN_DISTINCT_CHARACTERS = 10


def admin_token_weakness(secret: str) -> str | None:
    """Why `secret` is too weak for an admin token, or None. Never quotes the secret."""
    if len(secret) < MIN_SECRET_LENGTH:
        return f"is {len(secret)} characters long; it needs at least {MIN_SECRET_LENGTH}"
    distinct = len(set(secret))
    if distinct < MIN_DISTINCT_CHARACTERS:
        return (
            f"has only {distinct} distinct characters; it needs at least {MIN_DISTINCT_CHARACTERS}"
        )
    classes = {
        "lower-case letters": str.islower,
        "upper-case letters": str.isupper,
        "digits": str.isdigit,
    }
    for name, of_class in classes.items():
        if all(of_class(c) for c in secret):
            return f"is made of {name} only; mix in at least one other kind of character"
    return None


def hash_secret(secret: str) -> str:
    """What is stored instead of the token. Tokens carry 256 random bits, so a plain
    SHA-256 is enough: there is no password to brute-force."""
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenRecord(BaseModel):
    """A token as stored (under its hash): never the secret itself."""

    model_config = ConfigDict(extra="forbid")

    id: str
    role: Role
    region: str | None = None
    # The incarnation of `region` this token was made for (`RegionRecord.incarnation`):
    # a token speaks for that region, not for a later one registered under its name.
    region_incarnation: str | None = None
    created_at: datetime
    expires_at: datetime | None = None
    description: str = ""

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    @property
    def subject(self) -> str:
        """Who acts with this token, for logs and the audit trail."""
        return f"region:{self.region}" if self.role is Role.REGION else f"{self.role}:{self.id}"
