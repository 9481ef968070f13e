"""Jurisdiction catalogue: ISO validation, confident suggestions, dated built-in groups."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from federation.model.errors import UnknownCountryError
from federation.model.jurisdictions import (
    BUILTIN_GROUPS,
    COUNTRIES,
    EU_MEMBERS,
    Membership,
    check_country,
    check_entry,
    suggest_country,
    utc_day,
)

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def members(group: str, now: datetime = NOW) -> frozenset[str]:
    return BUILTIN_GROUPS[group].countries(now)


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("GER", "DE"),
        ("UK", "GB"),
        ("EL", "GR"),
        ("uk", "GB"),
        ("de", "DE"),
        ("DEU", "DE"),
        ("CHE", "CH"),
        ("276", "DE"),
        ("Germany", "DE"),
        ("united kingdom", "GB"),
        ("SUI", "CH"),
    ],
)
def test_confident_suggestions(typed: str, meant: str) -> None:
    assert suggest_country(typed) == meant


@pytest.mark.parametrize("typed", ["XX", "ZZ", "QQQ", "", "Germny", "Narnia"])
def test_no_suggestion_when_not_confident(typed: str) -> None:
    assert suggest_country(typed) is None


def test_unknown_country_error_names_the_code_and_the_suggestion() -> None:
    with pytest.raises(UnknownCountryError) as info:
        check_country("GER")
    assert info.value.code == "GER"
    assert info.value.suggestion == "DE"
    assert "did you mean 'DE'?" in str(info.value)


def test_unknown_country_without_a_suggestion_says_so_plainly() -> None:
    with pytest.raises(UnknownCountryError) as info:
        check_country("XX")
    assert info.value.suggestion is None
    assert "did you mean" not in str(info.value)


def test_lowercase_codes_are_not_silently_accepted() -> None:
    with pytest.raises(UnknownCountryError):
        check_country("de")


@pytest.mark.parametrize(("typed", "meant"), [("EU", "group:eu"), ("EEA", "group:eea")])
def test_bloc_codes_suggest_the_group(typed: str, meant: str) -> None:
    with pytest.raises(UnknownCountryError) as info:
        check_entry(typed)
    assert info.value.suggestion == meant


@pytest.mark.parametrize("entry", ["group:eu", "group:us-cloud-act", "DE", "FO"])
def test_valid_entries(entry: str) -> None:
    assert check_entry(entry) == entry


@pytest.mark.parametrize("entry", ["group:", "group:EU", "group:has space", "Group:eu", "group:-x"])
def test_malformed_group_references(entry: str) -> None:
    with pytest.raises(ValueError, match="group reference"):
        check_entry(entry)


def test_every_builtin_member_is_an_iso_country() -> None:
    for group in BUILTIN_GROUPS.values():
        for member in group.members:
            assert member.country in COUNTRIES


def test_eu_has_27_member_states() -> None:
    assert len(members("eu")) == 27
    assert members("eu") == frozenset(EU_MEMBERS)


def test_eea_is_eu_plus_iceland_liechtenstein_norway() -> None:
    assert members("eea") == members("eu") | {"IS", "LI", "NO"}


@pytest.mark.parametrize(
    ("country", "group"),
    [("CH", "eea"), ("GB", "eu"), ("FO", "eu"), ("GL", "eu"), ("GL", "eea"), ("GG", "eu")],
)
def test_territories_and_neighbours_are_not_inferred(country: str, group: str) -> None:
    assert country not in members(group)


def test_eu_adequacy_includes_the_eea_and_the_decisions_in_force() -> None:
    expected_third = {
        "AD", "AR", "BR", "CA", "CH", "FO", "GB", "GG", "IL", "IM", "JE", "JP", "KR", "NZ",
        "US", "UY",
    }  # fmt: skip
    assert members("eu-adequacy") == members("eea") | expected_third


def test_greenland_is_not_adequate_because_denmark_is_in_the_eu() -> None:
    assert "GL" not in members("eu-adequacy")


@pytest.mark.parametrize(
    ("country", "day", "in_group"),
    [
        ("GB", "2021-06-27", False),
        ("GB", "2021-06-28", True),
        ("GB", "2025-06-27", True),
        ("GB", "2025-06-28", True),
        ("GB", "2025-12-27", True),
        ("GB", "2025-12-28", True),
        ("GB", "2031-12-27", True),
        ("GB", "2031-12-28", False),
        ("BR", "2026-01-25", False),
        ("BR", "2026-01-26", True),
        ("US", "2015-10-05", True),
        ("US", "2015-10-06", False),
        ("US", "2016-07-12", True),
        ("US", "2020-07-16", False),
        ("US", "2023-07-09", False),
        ("US", "2023-07-10", True),
        ("KR", "2021-12-16", False),
        ("JP", "2019-01-23", True),
    ],
)
def test_adequacy_is_evaluated_at_now(country: str, day: str, in_group: bool) -> None:
    now = datetime.fromisoformat(day).replace(hour=12, tzinfo=UTC)
    assert (country in members("eu-adequacy", now)) is in_group


def test_days_are_utc_days() -> None:
    # 2026-01-26 01:00 in UTC+02:00 is still 2026-01-25 in UTC: BR not yet adequate.
    plus_two = timezone(timedelta(hours=2))
    assert "BR" not in members("eu-adequacy", datetime(2026, 1, 26, 1, 0, tzinfo=plus_two))
    assert utc_day(datetime(2026, 1, 26, 1, 0, tzinfo=plus_two)) == date(2026, 1, 25)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        members("eu", datetime(2026, 1, 1))


def test_membership_bounds_are_inclusive() -> None:
    m = Membership("GB", "x", date(2021, 6, 28), date(2025, 6, 27))
    assert not m.in_force(date(2021, 6, 27))
    assert m.in_force(date(2021, 6, 28))
    assert m.in_force(date(2025, 6, 27))
    assert not m.in_force(date(2025, 6, 28))


def test_every_dated_membership_cites_its_basis() -> None:
    for member in BUILTIN_GROUPS["eu-adequacy"].members:
        assert member.basis
        assert member.effective_from is not None
