"""Which revision the leader compacts to: the one sampled a window ago, held back by
the mirror's resume point unless the mirror is more than two windows behind."""

from __future__ import annotations

from typing import Any, cast

from federation.store.compaction import Compactor, default_interval


def compactor(floor: int | None, window: float = 300.0) -> Compactor:
    # `_target` reads only the samples and the floor: no store, no election.
    made = Compactor(cast(Any, None), cast(Any, None), window_s=window, floor=lambda: floor)
    for t in range(0, 901, 30):  # 900 s of samples, 10 revisions a second
        made._sample(float(t), 1000 + 10 * t)
    return made


def test_it_compacts_to_the_revision_sampled_a_window_ago() -> None:
    assert compactor(None)._target(900.0) == 1000 + 10 * 600


def test_nothing_until_a_whole_window_is_sampled() -> None:
    made = Compactor(cast(Any, None), cast(Any, None), window_s=300.0)
    made._sample(0.0, 5)
    assert made._target(299.0) is None
    assert made._target(300.0) == 5


def test_never_past_what_the_mirror_would_resume_from() -> None:
    assert compactor(floor=1000 + 10 * 400)._target(900.0) == 1000 + 10 * 400


def test_a_mirror_more_than_two_windows_behind_lists_again_instead() -> None:
    assert compactor(floor=1000 + 10 * 200)._target(900.0) == 1000 + 10 * 600


def test_samples_older_than_two_windows_are_dropped() -> None:
    made = compactor(None)
    assert made.samples[0][0] >= 900 - 2 * 300 - made.interval_s


def test_the_interval_is_a_tenth_of_the_window_within_bounds() -> None:
    assert default_interval(300) == 30
    assert default_interval(3600) == 30
    assert default_interval(0.5) == 0.1
