"""The field-level diff a dry run (and `federation diff`) shows."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from federation.planning.preview import field_changes

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(JSON_VALUES, JSON_VALUES)
def test_no_changes_exactly_when_equal(a: Any, b: Any) -> None:
    assert (field_changes(a, b) == []) == (a == b)


def test_paths_name_the_leaf_that_changed() -> None:
    before = {"command": ["serve", "8080"], "resources": {"cpu": 1.0}, "env": {"A": "1"}}
    after = {"command": ["serve", "9090"], "resources": {"cpu": 2.0}, "env": {"B": "2"}}
    assert field_changes(before, after) == [
        {"field": "command[1]", "from": "8080", "to": "9090"},
        {"field": "env.A", "from": "1", "to": None},
        {"field": "env.B", "from": None, "to": "2"},
        {"field": "resources.cpu", "from": 1.0, "to": 2.0},
    ]
    assert field_changes([1], [1, 2], "args") == [{"field": "args", "from": [1], "to": [1, 2]}]
