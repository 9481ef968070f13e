"""The YAML files the CLI applies: what each document is, and in which order to send it.

`policy apply` takes files of policies and groups mixed, several documents each:
`load_documents` tells each one apart (`kind:`, else by its fields) and keeps going
past a bad one, collecting its error; `apply_order` sends groups before the
policies that may name them, and a group after the groups of the same batch it
includes, so one apply of a consistent set never trips on its own references.
`deploy` takes files of services: `load_services`. `plan`, `diff` and `apply` take
files and directories of those and of region labels and secrets' metadata:
`load_set`. Nothing here talks to the API.

Files are read by `model.safe_yaml`, the server's own YAML reader, so a file means the
same whether `deploy` sends it or it is PUT as YAML (YAML 1.2 scalars: `1:30` is a
string, not 90), and anchors and aliases are refused here as they are there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Document:
    """One YAML document: what it is, its name and body, and where it came from."""

    source: str
    kind: str  # "policy" or "group"; for `load_set` any of SET_KINDS
    name: str
    body: dict[str, Any]


def classify(source: str, doc: Any) -> Document:
    """Tell a policy from a group: `kind:` if given, else `data_classes` or `countries`."""
    if not isinstance(doc, dict):
        raise ValueError("a document must be a mapping (a policy or a group)")
    body = dict(doc)
    kind = body.pop("kind", None)
    if kind is not None:
        kind = str(kind).lower()
        if kind not in ("policy", "group"):
            raise ValueError(f"kind: must be 'policy' or 'group', not {kind!r}")
    elif "data_classes" in body:
        kind = "policy"
    elif "countries" in body:
        kind = "group"
    else:
        raise ValueError(
            "cannot tell a policy (data_classes) from a group (countries); add kind: policy|group"
        )
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("name: required")
    return Document(source, kind, name, body)


def load_documents(paths: tuple[Path, ...]) -> tuple[list[Document], list[str]]:
    """Every document of every file, and the errors that kept some from loading."""
    return _load(list(paths), classify)


def _load(
    files: list[Path], tell: Callable[[str, Any], Document]
) -> tuple[list[Document], list[str]]:
    """Every document of `files`, each told apart by `tell`, and the errors that kept
    some from loading (a file that is no YAML; a document `tell` refuses)."""
    from federation.model import safe_yaml  # PyYAML only for the commands that read files

    docs: list[Document] = []
    errors: list[str] = []
    for path in files:
        try:
            loaded = safe_yaml.load_all(path.read_text())
        except (OSError, UnicodeDecodeError, safe_yaml.YamlRefused) as exc:
            errors.append(f"{path}: {exc}")
            continue
        for i, doc in enumerate(loaded, start=1):
            if doc is None:  # an empty document, e.g. after a trailing `---`
                continue
            source = f"{path}#{i}" if len(loaded) > 1 else str(path)
            try:
                docs.append(tell(source, doc))
            except ValueError as exc:
                errors.append(f"{source}: {exc}")
    return docs, errors


def apply_order(docs: list[Document]) -> list[Document]:
    """Groups before policies, and a group after the groups of this batch it includes."""
    groups = {d.name: d for d in docs if d.kind == "group"}
    ordered: list[Document] = []
    placed: set[str] = set()

    def visit(name: str, seen: tuple[str, ...]) -> None:
        if name in placed or name in seen:  # a cycle: the server names it (422)
            return
        doc = groups[name]
        for entry in doc.body.get("countries") or []:
            ref = entry.removeprefix("group:") if isinstance(entry, str) else None
            if ref in groups and ref != entry:
                visit(ref, (*seen, name))
        placed.add(name)
        ordered.append(doc)

    for name in groups:
        visit(name, ())
    return ordered + [d for d in docs if d.kind == "policy"]


# What `plan`, `diff` and `apply` take, in the order `apply` writes them. Regions and
# secrets are told only by `kind:` (their fields look like the others'); a region
# document sets its labels, a secret document declares metadata the plan checks.
SET_KINDS = ("region", "group", "policy", "secret", "service", "drill-schedule")
# `kind: DrillSchedule`, as `federation drill schedule apply` files say it, is the same.
_KIND_ALIASES = {"drillschedule": "drill-schedule"}


def classify_any(source: str, doc: Any) -> Document:
    """Any of SET_KINDS: `kind:` if given, else by its fields (`countries`: a group;
    `command` or `image`: a service; `data_classes`: a policy)."""
    if not isinstance(doc, dict):
        raise ValueError("a document must be a mapping (a group, policy, service, ...)")
    body = dict(doc)
    kind = body.pop("kind", None)
    if kind is not None:
        kind = str(kind).lower()
        kind = _KIND_ALIASES.get(kind, kind)
        if kind not in SET_KINDS:
            raise ValueError(f"kind: must be one of {', '.join(SET_KINDS)}, not {kind!r}")
    elif "countries" in body:
        kind = "group"
    elif "command" in body or "image" in body:
        kind = "service"
    elif "data_classes" in body:
        kind = "policy"
    else:
        raise ValueError("cannot tell what this is; add kind: " + "|".join(SET_KINDS))
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("name: required")
    return Document(source, kind, name, body)


def yaml_files(paths: tuple[Path, ...]) -> list[Path]:
    """The files named, and every `*.yaml`/`*.yml` under the directories named, sorted
    within each directory (so a plan of a directory is the same on every machine)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
            )
        else:
            files.append(path)
    return files


def load_set(paths: tuple[Path, ...]) -> tuple[list[Document], list[str]]:
    """Every document of every file and directory, and the errors that kept some from
    loading (a plan with any is not sent)."""
    return _load(yaml_files(paths), classify_any)


def load_services(paths: tuple[Path, ...]) -> list[dict[str, Any]]:
    """Every service spec of every file, in order; ValueError naming the file for the
    first that is not YAML or has no name (then a deploy sends nothing)."""
    from federation.model import safe_yaml

    specs: list[dict[str, Any]] = []
    for path in paths:
        try:
            docs = [d for d in safe_yaml.load_all(path.read_text()) if d is not None]
        except safe_yaml.YamlRefused as exc:
            raise ValueError(f"{path}: not valid YAML ({exc})") from None
        for doc in docs:
            if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
                raise ValueError(f"{path}: a service needs a name")
            specs.append(doc)
    return specs
