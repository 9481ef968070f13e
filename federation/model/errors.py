"""Residency errors: small classes that carry what a 422 or 409 needs (the bad value, a suggestion).

They subclass ValueError so that pydantic validators turn them into field errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class ResidencyError(ValueError):
    """Base of every error raised by the residency engine."""


class UnknownCountryError(ResidencyError):
    """A country code that is not ISO 3166-1 alpha-2; carries a suggestion when one exists."""

    def __init__(self, code: str, suggestion: str | None) -> None:
        self.code = code
        self.suggestion = suggestion
        hint = f"; did you mean {suggestion!r}?" if suggestion else ""
        super().__init__(f"unknown country code {code!r} (ISO 3166-1 alpha-2 expected){hint}")


class UnknownGroupError(ResidencyError):
    """A `group:NAME` reference to a group that is neither built in nor defined by an admin."""

    def __init__(self, ref: str, suggestion: str | None) -> None:
        self.ref = ref
        self.suggestion = suggestion
        hint = f"; did you mean {suggestion!r}?" if suggestion else ""
        super().__init__(f"unknown group {ref!r}{hint}")


class GroupCycleError(ResidencyError):
    """Admin-defined groups that include each other; `cycle` is the path, first == last."""

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = list(cycle)
        super().__init__("group cycle: " + " -> ".join(self.cycle))


class BuiltinGroupConflictError(ResidencyError):
    """An admin-defined group whose name is that of a built-in group."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"group name {name!r} is reserved for a built-in group")


class UnknownDataClassError(ResidencyError):
    """Data classes that no policy names (other than `public`): a typo must not mean "anywhere"."""

    def __init__(self, data_classes: Sequence[str], suggestions: Mapping[str, str]) -> None:
        self.data_classes = sorted(data_classes)
        self.suggestions = dict(suggestions)
        parts = []
        for name in self.data_classes:
            hint = self.suggestions.get(name)
            parts.append(f"{name!r} (did you mean {hint!r}?)" if hint else repr(name))
        super().__init__(
            "no policy names data class "
            + ", ".join(parts)
            + "; only 'public' may be used without a policy"
        )
