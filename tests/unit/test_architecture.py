"""The layers of docs/architecture.md hold: the import-linter contracts in pyproject.toml
pass on the tree, fail on a deliberately wrong import, and no module outgrows one job."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(root / "pyproject.toml")],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": str(LINT_IMPORTS.parent)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_tree_keeps_every_contract() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(
    ("module", "wrong_import", "contract"),
    [
        # A pure package reaching for etcd: the residency engine must be testable offline.
        ("residency/evaluate.py", "import federation.store", "Pure packages do no I/O"),
        # An arrow pointing up: the scheduler deciding with the controller's help.
        ("scheduler/place.py", "import federation.controller", "Layers"),
        # A region holding etcd credentials, which it must never have.
        ("agent/loop.py", "import federation.store", "Regions never hold etcd"),
        # Siblings of one layer depending on each other.
        ("controller/__init__.py", "import federation.drills", "Layers"),
    ],
)
def test_a_wrong_import_breaks_a_contract(
    tmp_path: Path, module: str, wrong_import: str, contract: str
) -> None:
    shutil.copytree(ROOT / "federation", tmp_path / "federation")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "federation" / module
    target.write_text(target.read_text() + f"\n{wrong_import}  # noqa\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(line.startswith(contract) for line in broken), result.stdout


def test_no_module_is_over_500_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in (ROOT / "federation").rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 500
    }
    assert long == {}, "split these by job (docs/architecture.md): " + repr(long)
