"""Jurisdiction catalogue: ISO 3166-1 countries (from pycountry) and the built-in groups.

Built-in groups are `group:eu`, `group:eea` and `group:eu-adequacy`. Facts that change
with time (an adequacy decision adopted, extended, renewed or struck down) are dated
memberships, so a group is always evaluated at a given `now`; the catalogue has no
clock of its own. Territories are their own entries and never inherit from a parent
state: FO is not DK, GG/JE/IM are not GB, GL is not EU. Sources: docs/residency.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from types import MappingProxyType

import pycountry

from federation.model.errors import UnknownCountryError
from federation.model.names import is_valid_name

__all__ = [
    "BUILTIN_GROUPS",
    "COUNTRIES",
    "EEA_ONLY",
    "EU_MEMBERS",
    "GROUP_PREFIX",
    "BuiltinGroup",
    "Membership",
    "UnknownCountryError",
    "check_country",
    "check_entry",
    "country_label",
    "group_name",
    "suggest_country",
    "utc_day",
]

COUNTRIES: frozenset[str] = frozenset(c.alpha_2 for c in pycountry.countries)

GROUP_PREFIX = "group:"

# Codes people type that are not ISO 3166-1 alpha-2 nor alpha-3: EU-internal (UK, EL) and
# sports (IOC/FIFA) codes. Only unambiguous ones; checked against ISO below.
_COMMON_MISTAKES: dict[str, str] = {
    "UK": "GB",
    "EL": "GR",
    "GER": "DE",
    "SUI": "CH",
    "NED": "NL",
    "POR": "PT",
    "DEN": "DK",
    "CRO": "HR",
    "GRE": "GR",
    "BUL": "BG",
    "LAT": "LV",
    "RSA": "ZA",
    "UAE": "AE",
}
# Codes that name a bloc, not a country: the fix is a group reference.
_BLOC_CODES: dict[str, str] = {"EU": "group:eu", "EEA": "group:eea"}


def _check_mistakes_table() -> None:
    # A "mistake" that is a real ISO code would silently rewrite a valid country.
    for wrong in (*_COMMON_MISTAKES, *_BLOC_CODES):
        if wrong in COUNTRIES or pycountry.countries.get(alpha_3=wrong) is not None:
            raise AssertionError(f"{wrong} is an ISO 3166-1 code, not a mistake")


_check_mistakes_table()


def suggest_country(code: str) -> str | None:
    """The ISO alpha-2 code meant by `code` when we are confident, else None.

    Confident means: a known non-ISO code (UK, EL, GER), a case slip (`de`), an alpha-3
    or numeric code (DEU, 276) or an exact country name (`Germany`). No fuzzy matching:
    a wrong suggestion for a residency rule is worse than none.
    """
    text = code.strip()
    upper = text.upper()
    if upper in _COMMON_MISTAKES:
        return _COMMON_MISTAKES[upper]
    if upper in COUNTRIES:
        return upper
    if not text:
        return None
    try:
        # Exact, case-insensitive match on alpha-2/alpha-3/numeric codes and names.
        found = pycountry.countries.lookup(text)
    except LookupError:
        return None
    return str(found.alpha_2)


def check_country(code: str) -> str:
    """Return `code` if it is an ISO 3166-1 alpha-2 code, else raise UnknownCountryError."""
    if code in COUNTRIES:
        return code
    raise UnknownCountryError(code, suggest_country(code))


def check_entry(value: str) -> str:
    """Return `value` if it is a country code or a well-formed `group:NAME`, else raise.

    Static check only: whether the group exists depends on the admin-defined groups and
    is checked by `federation.residency.groups.validate_references`.
    """
    if value.startswith(GROUP_PREFIX):
        name = value.removeprefix(GROUP_PREFIX)
        if is_valid_name(name):
            return value
        hint = ""
        if is_valid_name(name.strip().lower()):
            hint = f"; did you mean {GROUP_PREFIX + name.strip().lower()!r}?"
        raise ValueError(f"invalid group reference {value!r}: NAME must be a DNS-1123 label{hint}")
    if value.strip().upper() in _BLOC_CODES:
        raise UnknownCountryError(value, _BLOC_CODES[value.strip().upper()])
    if value.lower().startswith(GROUP_PREFIX):
        raise ValueError(
            f"invalid group reference {value!r}; did you mean "
            f"{GROUP_PREFIX + value[len(GROUP_PREFIX) :].lower()!r}?"
        )
    return check_country(value)


def group_name(entry: str) -> str | None:
    """The NAME of a `group:NAME` entry, or None when the entry is a country code."""
    return entry.removeprefix(GROUP_PREFIX) if entry.startswith(GROUP_PREFIX) else None


def country_label(code: str) -> str:
    """`FO (Faroe Islands)`: a code with its short English name, for readable reasons."""
    found = pycountry.countries.get(alpha_2=code)
    if found is None:
        return code
    name = getattr(found, "common_name", None) or found.name
    return f"{code} ({name})"


def utc_day(now: datetime) -> date:
    """The UTC calendar day of an aware datetime; raise on a naive one (no guessing zones)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (UTC)")
    return now.astimezone(UTC).date()


@dataclass(frozen=True)
class Membership:
    """One country in a built-in group, possibly only for a period.

    Both bounds are UTC calendar days and inclusive: `effective_until` is the last day
    the legal basis is in force (an adequacy decision that "expires on 27 June 2025"
    still applies on that day).
    """

    country: str
    basis: str = ""
    effective_from: date | None = None
    effective_until: date | None = None

    def in_force(self, day: date) -> bool:
        """True when this membership applies on `day`."""
        if self.effective_from is not None and day < self.effective_from:
            return False
        return self.effective_until is None or day <= self.effective_until


@dataclass(frozen=True)
class BuiltinGroup:
    """A group shipped with the catalogue: its own memberships plus other built-in groups."""

    name: str
    description: str
    includes: tuple[str, ...] = ()
    members: tuple[Membership, ...] = field(default_factory=tuple)

    def countries(self, now: datetime) -> frozenset[str]:
        """The countries in this group on the UTC day of `now`."""
        day = utc_day(now)
        result = {m.country for m in self.members if m.in_force(day)}
        for included in self.includes:
            result |= BUILTIN_GROUPS[included].countries(now)
        return frozenset(result)


# The 27 member states since 1 February 2020 (the United Kingdom's withdrawal).
EU_MEMBERS: tuple[str, ...] = (
    "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU",
    "IE", "IT", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK",
)  # fmt: skip
# EEA members outside the EU (EEA Agreement). Switzerland is EFTA but not EEA.
EEA_ONLY: tuple[str, ...] = ("IS", "LI", "NO")

_GDPR = "Regulation (EU) 2016/679 Art. 45"


def _d(text: str) -> date:
    return date.fromisoformat(text)


# Countries and territories with an EU adequacy decision (GDPR Art. 45, or Directive
# 95/46/EC Art. 25(6) decisions kept in force by GDPR Art. 45(9)). Partial decisions are
# listed as the whole country; the limits are in `basis` and in docs/residency.md.
_ADEQUACY: tuple[Membership, ...] = (
    Membership("CH", "Decision 2000/518/EC of 26 July 2000", _d("2000-07-26")),
    Membership(
        "CA",
        "Decision 2002/2/EC of 20 December 2001 (commercial organisations under PIPEDA only)",
        _d("2001-12-20"),
    ),
    Membership("AR", "Decision 2003/490/EC of 30 June 2003", _d("2003-06-30")),
    Membership("GG", "Decision 2003/821/EC of 21 November 2003", _d("2003-11-21")),
    Membership("IM", "Decision 2004/411/EC of 28 April 2004", _d("2004-04-28")),
    Membership("JE", "Decision 2008/393/EC of 8 May 2008", _d("2008-05-08")),
    Membership("FO", "Decision 2010/146/EU of 5 March 2010", _d("2010-03-05")),
    Membership("AD", "Decision 2010/625/EU of 19 October 2010", _d("2010-10-19")),
    Membership("IL", "Decision 2011/61/EU of 31 January 2011", _d("2011-01-31")),
    Membership("UY", "Decision 2012/484/EU of 21 August 2012", _d("2012-08-21")),
    Membership("NZ", "Decision 2013/65/EU of 19 December 2012", _d("2012-12-19")),
    Membership(
        "JP",
        "Implementing Decision (EU) 2019/419 of 23 January 2019 (private sector under APPI)",
        _d("2019-01-23"),
    ),
    Membership("KR", "Implementing Decision (EU) 2022/254 of 17 December 2021", _d("2021-12-17")),
    # United Kingdom: adopted with a sunset clause, extended six months, then renewed.
    Membership(
        "GB",
        "Implementing Decision (EU) 2021/1772 of 28 June 2021, sunset 27 June 2025",
        _d("2021-06-28"),
        _d("2025-06-27"),
    ),
    Membership(
        "GB",
        "technical extension of Implementing Decision (EU) 2021/1772 to 27 December 2025 "
        "(adopted June 2025)",
        _d("2025-06-28"),
        _d("2025-12-27"),
    ),
    Membership(
        "GB",
        "renewal adopted 19 December 2025, in force until 27 December 2031",
        _d("2025-12-28"),
        _d("2031-12-27"),
    ),
    # United States: only organisations certified under the framework of the day.
    Membership(
        "US",
        "Safe Harbour, Decision 2000/520/EC of 26 July 2000, invalidated by CJEU C-362/14 "
        "(Schrems I) on 6 October 2015",
        _d("2000-07-26"),
        _d("2015-10-05"),
    ),
    Membership(
        "US",
        "EU-US Privacy Shield, Implementing Decision (EU) 2016/1250 of 12 July 2016, "
        "invalidated by CJEU C-311/18 (Schrems II) on 16 July 2020",
        _d("2016-07-12"),
        _d("2020-07-15"),
    ),
    Membership(
        "US",
        "EU-US Data Privacy Framework, Implementing Decision (EU) 2023/1795 of 10 July 2023 "
        "(DPF-certified organisations only)",
        _d("2023-07-10"),
    ),
    Membership("BR", "Implementing Decision (EU) 2026/179 of 26 January 2026", _d("2026-01-26")),
)

_BUILTINS: dict[str, BuiltinGroup] = {
    "eu": BuiltinGroup(
        "eu",
        "The 27 EU member states",
        members=tuple(Membership(c, "Treaty on European Union") for c in EU_MEMBERS),
    ),
    "eea": BuiltinGroup(
        "eea",
        "European Economic Area: the EU plus Iceland, Liechtenstein and Norway",
        includes=("eu",),
        members=tuple(Membership(c, "EEA Agreement") for c in EEA_ONLY),
    ),
    "eu-adequacy": BuiltinGroup(
        "eu-adequacy",
        f"The EEA plus countries with an EU adequacy decision in force ({_GDPR})",
        includes=("eea",),
        members=_ADEQUACY,
    ),
}

BUILTIN_GROUPS: Mapping[str, BuiltinGroup] = MappingProxyType(_BUILTINS)


def _check_catalogue() -> None:
    # The catalogue is data typed by hand: fail at import, not at evaluation, on a typo.
    for group in _BUILTINS.values():
        for member in group.members:
            check_country(member.country)
    if len(EU_MEMBERS) != 27 or len(set(EU_MEMBERS)) != 27:
        raise AssertionError("the EU has 27 member states")


_check_catalogue()
