"""Resource names: DNS-1123 labels, the only strings allowed into etcd keys."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_NAME_RE = re.compile(NAME_PATTERN)


def is_valid_name(value: str) -> bool:
    """True when `value` is a DNS-1123 label (lowercase, digits, '-', at most 63 chars)."""
    return bool(_NAME_RE.fullmatch(value))


def check_name(value: str) -> str:
    """Return `value` unchanged or raise ValueError saying why it is not a valid name."""
    if not is_valid_name(value):
        raise ValueError(
            "must be a DNS-1123 label: 1-63 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return value


Name = Annotated[str, AfterValidator(check_name)]

LabelValue = Annotated[str, Field(max_length=253)]
# Labels on a resource (e.g. `managed-by: platform-repo`, which `federation apply
# --prune` selects by): names are DNS-1123 labels, at most 64 of them.
Labels = Annotated[dict[Name, LabelValue], Field(max_length=64)]
