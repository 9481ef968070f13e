"""The history checker catches what it is for (and passes what is allowed)."""

from __future__ import annotations

from tests.faults.history import Op, violations


def w(value: str | None, start: float, end: float, outcome: str = "ok") -> Op:
    return Op("write", "k", value, start, end, outcome)  # type: ignore[arg-type]


def r(value: str | None, start: float, end: float) -> Op:
    return Op("read", "k", value, start, end, "ok", via="server-1")


def test_a_clean_sequential_history_passes() -> None:
    ops = [w("1", 0, 1), r("1", 1.5, 2), w("2", 3, 4), r("2", 5, 6), w(None, 7, 8)]
    assert violations(ops, {"k": None}) == []


def test_an_acknowledged_write_missing_at_the_end_is_a_lost_write() -> None:
    problems = violations([w("1", 0, 1), w("2", 2, 3)], {"k": "1"})
    assert len(problems) == 1 and problems[0].startswith("lost write: k is '1'")


def test_a_write_with_no_answer_may_or_may_not_have_landed() -> None:
    ops = [w("1", 0, 1), w("2", 2, 9, "unknown")]
    assert violations(ops, {"k": "1"}) == []
    assert violations(ops, {"k": "2"}) == []
    # A refused write (4xx) did not land.
    assert violations([w("1", 0, 1), w("2", 2, 3, "fail")], {"k": "2"}) != []


def test_a_read_older_than_a_write_finished_before_it_began_is_stale() -> None:
    ops = [w("1", 0, 1), w("2", 2, 3), r("1", 4, 5)]
    (problem,) = violations(ops, {"k": "2"})
    assert problem.startswith("stale read: k read '1' via server-1")


def test_a_read_concurrent_with_a_write_may_see_either_value() -> None:
    ops = [w("1", 0, 1), w("2", 2, 5), r("1", 3, 4), r("2", 3, 4)]
    assert violations(ops, {"k": "2"}) == []


def test_a_read_of_a_value_never_written_is_caught() -> None:
    assert violations([w("1", 0, 1), r("7", 2, 3)], {"k": "1"}) != []
    # Nor can a read see a write that began after the read ended.
    assert violations([w("1", 0, 1), r("2", 2, 3), w("2", 4, 5)], {"k": "2"}) != []
