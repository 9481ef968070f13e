"""The YAML reader of request bodies and CLI files: YAML 1.2 core-schema data, no
anchors or aliases, nesting and node count capped while parsing."""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.cli.documents import load_documents, load_services
from federation.model import safe_yaml
from federation.model.safe_yaml import YamlRefused, load, load_all


def refused(text: str | bytes, **limits: int) -> YamlRefused:
    with pytest.raises(YamlRefused) as caught:
        load(text, **limits)
    return caught.value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("a: 1", {"a": 1}),
        ("[null, Null, NULL, ~, '']", [None, None, None, None, ""]),
        ("[true, True, TRUE, false, False, FALSE]", [True] * 3 + [False] * 3),
        ("[0, -12, +3, 0o17, 0x1F, 017]", [0, -12, 3, 15, 31, 17]),
        ("[1.5, -.5, 1e3, 1., .inf, -.Inf]", [1.5, -0.5, 1000.0, 1.0, math.inf, -math.inf]),
        # YAML 1.1 read these as booleans, a base-60 integer, a date, an octal 8 bits.
        ("[yes, no, on, off, y, n]", ["yes", "no", "on", "off", "y", "n"]),
        (
            "[1:30, 1:0:0:0, 2024-01-01, 0b101, 1_000]",
            ["1:30", "1:0:0:0", "2024-01-01", "0b101", "1_000"],
        ),
        (
            "['1', \"2\", !!str 3, !!int '4', !!float 5, !!bool true, !!null '']",
            ["1", "2", "3", 4, 5.0, True, None],
        ),
        ("!!map {a: !!seq [x]}", {"a": ["x"]}),
        ("[²,  ٣]", ["²", "٣"]),
        ("<<: {a: 1}", {"<<": {"a": 1}}),
        ("# nothing but a comment\n", None),
        ("---\n", None),
    ],
)
def test_scalars_resolve_by_the_yaml_1_2_core_schema(text: str, value: Any) -> None:
    assert load(text) == value


def test_nan_is_a_float() -> None:
    assert math.isnan(load(".nan"))


@pytest.mark.parametrize(
    "text",
    [
        "a: &x 1",  # an anchor, even one never used
        "a: *x",
        "a: &x [1]\nb: *x",
        "&root {a: 1}",
    ],
)
def test_anchors_and_aliases_are_refused_where_they_appear(text: str) -> None:
    error = refused(text)
    assert error.reason == "YAML anchors and aliases are not accepted"
    first = min(i for i in (text.find("&"), text.find("*")) if i >= 0)
    assert error.line == text.count("\n", 0, first) + 1  # the first one stops the parse


def test_a_billion_laughs_is_refused_at_its_first_anchor_in_microseconds() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    start = time.perf_counter()
    assert refused("\n".join(lines)).line == 1
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize(
    "text",
    [
        "!!python/object/apply:os.system ['true']",
        "a: !!binary aGk=",
        "!!set {a}",
        "!!omap [a: 1]",
        "!custom x",
        "a: !!timestamp 2024-01-01",
    ],
)
def test_tags_other_than_the_core_ones_are_refused(text: str) -> None:
    assert "is not accepted" in refused(text).reason


@pytest.mark.parametrize("text", ["!!int x", "!!float 1:30", "!!bool yes", "!!null 0"])
def test_a_core_tag_on_a_value_it_does_not_fit_is_refused(text: str) -> None:
    assert refused(text).line == 1


def test_nesting_is_capped_while_parsing() -> None:
    assert load("[" * 32 + "]" * 32) is not None
    error = refused("[" * 33 + "]" * 33)
    assert error.reason == "nests deeper than 32 levels"
    # Refused at level 33: the rest of a huge document is never read.
    start = time.perf_counter()
    refused("a:\n" + "".join(" " * i + "- \n" for i in range(1, 40)) + "x" * 1_000_000)
    assert time.perf_counter() - start < 0.5


def test_nodes_are_capped_while_parsing() -> None:
    assert load("[" + "1," * 99 + "1]", max_nodes=101) == [1] * 100
    assert refused("[" + "1," * 100 + "1]", max_nodes=101).reason == "more than 101 nodes"
    # Across the documents of one file too.
    with pytest.raises(YamlRefused, match="more than 3 nodes"):
        load_all("[1]\n---\n[2]\n", max_nodes=3)


def test_integers_longer_than_python_converts_are_refused_not_a_crash() -> None:
    assert load("1" * 4300) == int("1" * 4300)
    assert "more than 4300 digits" in refused("1" * 4301).reason
    assert "more than 4300 digits" in refused("0x" + "f" * 4301).reason
    assert load("'" + "1" * 5000 + "'") == "1" * 5000


def test_keys_must_be_scalars_and_documents_one() -> None:
    assert refused("{[1]: 2}").reason == "a mapping key must be a scalar"
    assert refused("? {a: 1}\n: 2").reason == "a mapping key must be a scalar"
    error = refused("a: 1\n---\nb: 2\n")
    assert (error.reason, error.line) == ("expected one YAML document, found several", 2)
    assert load_all("a: 1\n---\nb: 2\n---\n") == [{"a": 1}, {"b": 2}, None]


@pytest.mark.parametrize(
    ("text", "line"),
    [("a: b: c", 1), ("a: 1\n b: 2\n  c", 2), (b"a: \xff", None), ("\x00", None), ("'open", 1)],
)
def test_malformed_yaml_is_refused_naming_the_line(text: str | bytes, line: int | None) -> None:
    error = refused(text)
    assert error.reason.startswith("not valid YAML")
    assert error.line == line


def test_the_pure_python_parser_reads_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "a: [1, 0x1F, yes, ~, 'q', {b: .inf}]\nc: 1:30\n"
    expected = load(text)
    monkeypatch.setattr(safe_yaml, "_CParser", None)  # as if PyYAML had no libyaml
    assert type(safe_yaml._parser(text)).__name__ == "_PyParser"
    assert load(text) == expected
    assert refused("a: &x 1").line == 1
    assert refused("[" * 33 + "]" * 33).reason == "nests deeper than 32 levels"


# libyaml reads neither JSON's surrogate-pair escapes (`\ud83d\ude00`) nor raw control
# characters, line separators or U+FFFE/U+FFFF in a string, and YAML bounds an implicit
# key at 1,024 characters (a key escaped as `\u0301` takes 6): the property holds for the rest.
alphabet = st.characters(max_codepoint=0xFFFD, exclude_categories=("Cs", "Cc", "Zl", "Zp"))
chars = st.text(alphabet)
keys = st.text(alphabet, max_size=150)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | chars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_json_reads_the_same_as_yaml_1_2(value: Any) -> None:
    """YAML 1.2 is a superset of JSON: a JSON body sent as YAML means the same."""
    assert load(json.dumps(value)) == value
    assert load(json.dumps(value, ensure_ascii=False)) == value


@settings(max_examples=300, deadline=None)
@given(st.text() | st.binary())
def test_any_input_is_data_or_a_refusal(text: str | bytes) -> None:
    with contextlib.suppress(YamlRefused):  # anything else fails the test
        load(text)


def test_cli_files_are_read_by_the_same_rules(tmp_path: Path) -> None:
    services = tmp_path / "svc.yaml"
    services.write_text("name: a\nenv: &env {A: '1'}\n---\nname: b\nenv: *env\n")
    with pytest.raises(ValueError, match=r"svc.yaml: .*anchors and aliases .*\(line 2\)"):
        load_services((services,))
    services.write_text("name: a\nversion: 1:30\nflag: yes\n")
    assert load_services((services,)) == [{"name": "a", "version": "1:30", "flag": "yes"}]
    policies = tmp_path / "p.yaml"
    policies.write_text("kind: group\nname: g\ncountries: &c [DE]\n")
    docs, errors = load_documents((policies,))
    assert docs == [] and len(errors) == 1 and "anchors and aliases" in errors[0]
