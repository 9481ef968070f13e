"""Residency policies and admin-defined groups (docs/residency.md).

Static validation lives here so that an API answers a 422 naming the field (`allow.0`):
country codes (with a suggestion), group reference syntax, mandatory exemption expiry.
Checks that need the set of known groups are in `federation.residency.groups`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from federation.model.errors import BuiltinGroupConflictError
from federation.model.jurisdictions import BUILTIN_GROUPS, check_entry
from federation.model.names import Labels, Name

# A country code (`DE`) or a group reference (`group:eea`).
Jurisdiction = Annotated[str, AfterValidator(check_entry)]


class Mode(StrEnum):
    ENFORCE = "enforce"
    AUDIT = "audit"


class Exemption(BaseModel):
    """Extra countries one service may use under one policy, until `expires` (exclusive)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    service: Name
    allow: list[Jurisdiction] = Field(min_length=1)
    # Required and timezone-aware: an exemption without an end is a silent policy change.
    expires: AwareDatetime
    reason: str = Field(min_length=1, max_length=1024)


class Policy(BaseModel):
    """Where data of some classes may live. Empty `allow` means anywhere; `deny` always wins."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    data_classes: list[Name] = Field(min_length=1)
    allow: list[Jurisdiction] = Field(default_factory=list)
    deny: list[Jurisdiction] = Field(default_factory=list)
    mode: Mode = Mode.ENFORCE
    exemptions: list[Exemption] = Field(default_factory=list)
    labels: Labels = Field(default_factory=dict)


def _not_builtin(name: str) -> str:
    if name in BUILTIN_GROUPS:
        raise BuiltinGroupConflictError(name)
    return name


class Group(BaseModel):
    """An admin-defined group (`group:NAME`): countries and other groups, no cycles."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[Name, AfterValidator(_not_builtin)]
    countries: list[Jurisdiction] = Field(default_factory=list)
    description: str = Field(default="", max_length=1024)
    labels: Labels = Field(default_factory=dict)
