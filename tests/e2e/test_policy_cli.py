"""`federation policy ...` against a real `federation serve` process and a real etcd.

Sync tests: the CLI runs its own event loop (asyncio.run), which cannot nest in an
async test; the server is a separate process, so CliRunner in this thread is enough.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from federation.cli import main
from tests.conftest import ServerProcess

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"


class Cli:
    """The `federation` command bound to one server and token."""

    def __init__(self, url: str, token: str) -> None:
        self.runner = CliRunner()
        # Wide enough that rich does not wrap a table row across lines.
        self.env = {"FEDERATION_URL": url, "FEDERATION_TOKEN": token, "COLUMNS": "400"}

    def __call__(self, *args: str) -> Result:
        return self.runner.invoke(main, list(args), env=self.env, catch_exceptions=False)


@pytest.fixture
def cli(spawn_server: Callable[..., ServerProcess]) -> Cli:
    server = spawn_server("cli-test")
    return Cli(server.url, spawn_server.admin_token)  # type: ignore[attr-defined]


def rows(output: str) -> dict[str, str]:
    """Table rows keyed by their first cell (a region or policy name)."""
    found = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) > 1 and cells[0]:
            found[cells[0]] = line
    return found


def test_apply_examples_then_evaluate_phi_eu(cli: Cli) -> None:
    for name, country in [
        ("eu-de-1", "DE"),
        ("eu-fr-1", "FR"),
        ("us-east-1", "US"),
        ("in-mum-1", "IN"),
    ]:
        result = cli("region", "add", name, "--country", country)
        assert result.exit_code == 0, result.output

    files = sorted(str(p) for p in EXAMPLES.glob("*.yaml"))
    result = cli("policy", "apply", *files)
    assert result.exit_code == 0, result.output
    for name in ("eu-patient-data", "us-phi", "de-only", "public-audit"):
        assert f"policy {name} created" in result.output

    # Applying the same files again updates in place.
    result = cli("policy", "apply", *files)
    assert result.exit_code == 0, result.output
    assert "policy eu-patient-data updated" in result.output

    result = cli("policy", "list")
    assert result.exit_code == 0, result.output
    listed = rows(result.output)
    assert "group:eea, CH" in listed["eu-patient-data"]
    assert "audit" in listed["public-audit"]

    result = cli("policy", "evaluate", "--data-class", "phi-eu")
    assert result.exit_code == 0, result.output
    verdicts = rows(result.output)
    assert "allowed" in verdicts["eu-de-1"]
    assert "allowed" in verdicts["eu-fr-1"]
    assert "rejected" in verdicts["us-east-1"]
    assert "rejected" in verdicts["in-mum-1"]
    assert "policy eu-patient-data (enforce)" in verdicts["us-east-1"]
    # Server text is printed literally, never read as rich markup.
    assert "is not in allow [group:eea, CH]" in verdicts["us-east-1"]
    assert "bound policies: eu-patient-data" in result.output


def test_apply_groups_before_policies_from_one_multi_document_file(
    cli: Cli, tmp_path: Path
) -> None:
    spec = tmp_path / "residency.yaml"
    spec.write_text(
        "name: eu-no-cloud-act\n"
        "data_classes: [phi-eu]\n"
        "allow: [group:eea]\n"
        "deny: [group:cloud-act]\n"
        "---\n"
        "kind: group\n"
        "name: cloud-act\n"
        "countries: [group:us-only]\n"
        "---\n"
        "name: us-only\n"
        "countries: [US]\n"
    )
    result = cli("policy", "apply", str(spec))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "created" in line]
    assert [line.split()[1] for line in lines] == ["us-only", "cloud-act", "eu-no-cloud-act"]

    result = cli("group", "list")
    assert result.exit_code == 0, result.output
    assert "built-in" in rows(result.output)["eu"]
    assert "group:us-only" in rows(result.output)["cloud-act"]


def test_apply_reports_the_field_and_exits_1(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: de-only\ndata_classes: [de-only]\nallow: [GER]\n---\nfoo: bar\n")
    result = cli("policy", "apply", str(bad))
    assert result.exit_code == 1
    assert "allow.0" in result.output
    assert "did you mean 'DE'?" in result.output
    assert "cannot tell a policy" in result.output

    result = cli("policy", "evaluate", "--data-class", "phi-euu")
    assert result.exit_code == 1
    assert "data_classes.0" in result.output


def test_apply_warns_when_a_class_is_left_with_no_country(cli: Cli, tmp_path: Path) -> None:
    spec = tmp_path / "disjoint.yaml"
    spec.write_text(
        "name: eu-only\ndata_classes: [phi]\nallow: [group:eu]\n"
        "---\n"
        "name: us-only\ndata_classes: [phi]\nallow: [US]\n"
    )
    result = cli("policy", "apply", "--dry-run", str(spec))
    assert result.exit_code == 0, result.output
    assert "would be created" in result.output
    result = cli("policy", "apply", str(spec))
    assert result.exit_code == 0, result.output
    assert result.output.count("data class 'phi' has no allowed country") == 1
    result = cli("policy", "evaluate", "--data-class", "phi")
    assert result.exit_code == 0, result.output
    assert "data class 'phi' has no allowed country" in result.output
