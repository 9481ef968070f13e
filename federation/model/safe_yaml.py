"""YAML read as plain data, bounded while it is parsed: no anchors or aliases, YAML 1.2
core-schema scalars only, a cap on nesting and on the number of nodes.

Why not `yaml.safe_load`: it expands aliases, so a 380-byte "billion laughs" document
is a graph of 10^9 nodes to anything that walks it; it resolves YAML 1.1 scalars, and a
base-60 integer (`1:0:0:...`) costs quadratic time to build; and nothing can count
nesting or nodes until the whole document is built. Here the parser's events (libyaml's
when PyYAML was built with it, else PyYAML's pure-Python parser) become data one at a
time, and the first anchor, alias, unknown tag, level too deep or node too many stops
the parse: a refused document costs at most what was read up to that point.

Scalars resolve as in YAML 1.2's core schema: `true`/`false`, `null`/`~`/empty, decimal,
`0o` octal and `0x` hex integers, floats with `.inf`/`.nan`; anything else is a string
(`yes`, `on`, `2024-01-01`, `1:30` included). Explicit tags are limited to the core
ones (`!!str`, `!!int`, `!!float`, `!!bool`, `!!null`, `!!map`, `!!seq`).

Pure: no I/O. The server parses large bodies on a worker thread (`api/body.py`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol

import yaml
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    NodeEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)
from yaml.parser import Parser
from yaml.reader import Reader, ReaderError
from yaml.scanner import Scanner

MAX_DEPTH = 32  # nested mappings and sequences; a service spec needs fewer than 6
MAX_NODES = 50_000  # scalars, mappings and sequences; a service spec has a few hundred
# Python refuses to convert longer decimal strings (sys.int_info.default_max_str_digits);
# JSON bodies meet the same bound in pydantic-core's parser.
MAX_INT_DIGITS = 4300

_CORE = "tag:yaml.org,2002:"
_NULL = frozenset(("", "~", "null", "Null", "NULL"))
_TRUE = frozenset(("true", "True", "TRUE"))
_FALSE = frozenset(("false", "False", "FALSE"))
_INT = re.compile(r"[-+]?[0-9]+")
_OCT = re.compile(r"0o[0-7]+")
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_INF = re.compile(r"[-+]?\.(inf|Inf|INF)")
_NAN = re.compile(r"\.(nan|NaN|NAN)")


class YamlRefused(ValueError):
    """The document is not valid YAML, or is refused; `line` is 1-based when known."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason if line is None else f"{reason} (line {line})")
        self.reason = reason
        self.line = line


class _Parser(Protocol):
    def get_event(self) -> Event | None: ...
    def dispose(self) -> None: ...


class _PyParser(Reader, Scanner, Parser):
    """PyYAML's pure-Python parser: the same events as libyaml's, slower."""

    def __init__(self, stream: str | bytes) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)

    def dispose(self) -> None:
        Parser.dispose(self)


try:
    from yaml._yaml import CParser as _CParser
except ImportError:  # PyYAML built without libyaml
    _CParser = None  # type: ignore[assignment,misc]


def _parser(data: str | bytes) -> _Parser:
    return _PyParser(data) if _CParser is None else _CParser(data)


def _line(event: Event) -> int | None:
    mark = event.start_mark
    return None if mark is None else mark.line + 1


def _int(value: str) -> int | None:
    if _INT.fullmatch(value):
        base, digits = 10, value
    elif _OCT.fullmatch(value):
        base, digits = 8, value[2:]
    elif _HEX.fullmatch(value):
        base, digits = 16, value[2:]
    else:
        return None
    if len(digits) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of more than {MAX_INT_DIGITS} digits")
    return int(digits, base)


def _float(value: str) -> float | None:
    if _FLOAT.fullmatch(value):
        return float(value)
    if _INF.fullmatch(value):
        return float("-inf") if value.startswith("-") else float("inf")
    if _NAN.fullmatch(value):
        return float("nan")
    return None


def _bool(value: str) -> bool | None:
    return True if value in _TRUE else False if value in _FALSE else None


def _null(value: str) -> None:
    if value not in _NULL:
        raise ValueError("not a null")


def _resolve(value: str) -> Any:
    """A plain scalar without a tag, by the YAML 1.2 core schema."""
    if value in _NULL:
        return None
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    if value[0] in "0123456789-+.":
        number: int | float | None = _int(value)
        if number is None:
            number = _float(value)
        if number is not None:
            return number
    return value


def _checked(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    def convert(value: str) -> Any:
        result = parse(value)
        if result is None:
            raise ValueError(f"not a valid !!{name}")
        return result

    return convert


_TAGGED: dict[str, Callable[[str], Any]] = {
    "!": str,
    _CORE + "str": str,
    _CORE + "int": _checked(_int, "int"),
    _CORE + "float": _checked(_float, "float"),
    _CORE + "bool": _checked(_bool, "bool"),
    _CORE + "null": _null,
}
_COLLECTION_TAGS = frozenset((None, "!", _CORE + "map", _CORE + "seq"))


def _scalar(event: ScalarEvent) -> Any:
    value = event.value
    if event.tag is None:
        if not event.implicit[0]:  # quoted: a string
            return value
        if value.isascii() and value.isdigit() and len(value) <= MAX_INT_DIGITS:
            return int(value)  # the common case, without the regexes
        convert: Callable[[str], Any] = _resolve
    else:
        found = _TAGGED.get(event.tag)
        if found is None:
            raise YamlRefused(f"the tag {event.tag!r} is not accepted", _line(event))
        convert = found
    try:
        return convert(value)
    except ValueError as exc:
        raise YamlRefused(f"{exc}: {value[:40]!r}", _line(event)) from None


_NO_KEY: Any = object()  # a mapping's next scalar is a key


def _documents(data: str | bytes, max_depth: int, max_nodes: int, *, single: bool) -> list[Any]:
    """Plain data from the parser's events, one at a time, refusing as soon as a limit is
    crossed. One flat loop: it runs once per node of a body, so it is kept lean."""
    parser = _parser(data)
    documents: list[Any] = []
    open_: list[Any] = []  # the open mappings and sequences, innermost last
    keys: list[Any] = []  # for each, the key waiting for its value (or _NO_KEY)
    nodes = 0
    try:
        while (event := parser.get_event()) is not None:
            kind = type(event)
            if kind is ScalarEvent or kind is MappingStartEvent or kind is SequenceStartEvent:
                assert isinstance(event, NodeEvent)
                if event.anchor is not None:
                    raise YamlRefused("YAML anchors and aliases are not accepted", _line(event))
                nodes += 1
                if nodes > max_nodes:
                    raise YamlRefused(f"more than {max_nodes} nodes", _line(event))
                collection = kind is not ScalarEvent
                if collection:
                    assert isinstance(event, (MappingStartEvent, SequenceStartEvent))
                    if event.tag not in _COLLECTION_TAGS:
                        raise YamlRefused(f"the tag {event.tag!r} is not accepted", _line(event))
                    if len(open_) >= max_depth:
                        raise YamlRefused(f"nests deeper than {max_depth} levels", _line(event))
                    value: Any = {} if kind is MappingStartEvent else []
                else:
                    assert isinstance(event, ScalarEvent)
                    value = _scalar(event)
                if not open_:
                    documents.append(value)
                elif type(top := open_[-1]) is list:
                    top.append(value)
                elif (key := keys[-1]) is _NO_KEY:
                    if collection:
                        raise YamlRefused("a mapping key must be a scalar", _line(event))
                    keys[-1] = value
                else:
                    top[key] = value
                    keys[-1] = _NO_KEY
                if collection:
                    open_.append(value)
                    keys.append(_NO_KEY)
            elif kind is MappingEndEvent or kind is SequenceEndEvent:
                open_.pop()
                keys.pop()
            elif kind is AliasEvent:
                raise YamlRefused("YAML anchors and aliases are not accepted", _line(event))
            elif kind is DocumentStartEvent and single and documents:
                raise YamlRefused("expected one YAML document, found several", _line(event))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "not valid YAML"
        raise YamlRefused(f"not valid YAML: {problem}", mark.line + 1 if mark else None) from None
    except ReaderError as exc:
        raise YamlRefused(f"not valid YAML: {exc.reason} at position {exc.position}") from None
    except yaml.YAMLError as exc:
        raise YamlRefused(f"not valid YAML: {exc}") from None
    finally:
        parser.dispose()
    return documents


def load_all(
    data: str | bytes, *, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES
) -> list[Any]:
    """Every document of `data`, as plain data; YamlRefused for anything not accepted.
    The node cap counts across all the documents."""
    return _documents(data, max_depth, max_nodes, single=False)


def load(data: str | bytes, *, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> Any:
    """The one document of `data` (None if there is none); YamlRefused for anything not
    accepted, more than one document included."""
    documents = _documents(data, max_depth, max_nodes, single=True)
    return documents[0] if documents else None
