"""`federation plan`, `diff` and `apply -f DIR` against a real server and etcd, with the
demo regions (and NL) beating: the set is planned as one, nothing is written by a
plan, apply writes with If-Match from the plan, and --prune deletes only what the
files' managed-by label selects.

The CLI runs its own event loop (asyncio.run), so it runs in a worker thread while
this test's loop keeps the regions' heartbeats going.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from federation.cli import main
from federation.processes.local_etcd import LocalEtcd
from federation.store import Store
from tests.conftest import Api
from tests.integration.agents import EU_PATIENT_DATA, Federation, durable, running_federation
from tests.integration.secret_support import new_kek_file, secret_api


class Cli:
    def __init__(self, api: Api) -> None:
        self.env = {
            "FEDERATION_URL": api.url,
            "FEDERATION_TOKEN": api.admin_token,
            "COLUMNS": "300",
        }

    async def __call__(self, *args: str) -> Result:
        def invoke() -> Result:
            return CliRunner().invoke(main, list(args), env=self.env, catch_exceptions=False)

        return await asyncio.to_thread(invoke)


@pytest.fixture
async def federation(api: Api, store: Store) -> AsyncIterator[Federation]:
    async with running_federation(api, store) as fed:
        await fed.start({"eu-nl-1": "NL"})
        yield fed


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

RECORDS: dict[str, Any] = {
    "name": "records",
    "command": ["true"],
    "replicas": 6,
    "data_classes": ["phi-eu"],
    "placement": {"min_regions": 3},
}


def write(directory: Path, name: str, *docs: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


async def test_a_policy_removing_fr_shows_the_fr_replicas_moving_and_writes_nothing(
    federation: Federation, api: Api, store: Store, tmp_path: Path
) -> None:
    await federation.deploy(RECORDS, expect=201)
    await federation.wait_placed("records", {"eu-de-1": 2, "eu-fr-1": 2, "eu-nl-1": 2})
    before, _ = await store.scan("")
    write(tmp_path, "policy.yaml", {**EU_PATIENT_DATA, "kind": "policy", "deny": ["FR"]})
    cli = Cli(api)

    result = await cli("plan", "-f", str(tmp_path), "-o", "json")
    assert result.exit_code == 2, result.output
    answer = json.loads(result.output)
    (policy,) = answer["resources"]
    assert (policy["kind"], policy["action"]) == ("policy", "update")
    assert [c["field"] for c in policy["diff"]] == ["deny"]
    (move,) = answer["moves"]
    assert move["service"] == "records"
    assert move["regions"]["eu-fr-1"] == {"from": 2, "to": 0}
    assert {r: c["to"] for r, c in move["regions"].items() if r != "eu-fr-1"} == {
        "eu-de-1": 3,
        "eu-nl-1": 3,
    }
    assert any(r["region"] == "eu-fr-1" and r["country"] == "FR" for r in answer["rejections"]), (
        answer["rejections"]
    )

    result = await cli("plan", "-f", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert "eu-fr-1" in result.output and "2 → 0" in result.output
    assert "Plan: 0 to create, 1 to update, 0 to delete" in result.output

    result = await cli("diff", "-f", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert "~ policy eu-patient-data" in result.output and 'deny: [] → ["FR"]' in result.output

    after, _ = await store.scan("")
    assert durable(after) == durable(before)


async def test_a_plan_that_leaves_a_service_without_compliant_room_exits_3_naming_it(
    federation: Federation, api: Api, tmp_path: Path
) -> None:
    await federation.deploy(RECORDS, expect=201)
    write(tmp_path, "policy.yaml", {**EU_PATIENT_DATA, "allow": ["CH"]})  # no region in CH
    result = await Cli(api)("plan", "-f", str(tmp_path), "-o", "json")
    assert result.exit_code == 3, result.output
    answer = json.loads(result.output)
    assert answer["no_room"] == ["records"]
    (warning,) = [w for w in answer["warnings"] if w["code"] == "NoCompliantRegion"]
    assert warning["service"] == "records" and warning["caused_by_this_change"]

    result = await Cli(api)("plan", "-f", str(tmp_path))
    assert result.exit_code == 3
    assert "NoCompliantRegion" in result.output and "records" in result.output


async def test_usage_errors_and_bad_files_exit_1_never_2(
    federation: Federation, api: Api, tmp_path: Path
) -> None:
    cli = Cli(api)
    assert (await cli("plan")).exit_code == 1  # no -f
    assert (await cli("plan", "-f", str(tmp_path / "missing"))).exit_code == 1
    write(tmp_path, "bad.yaml", {"name": "x", "something": 1})
    result = await cli("plan", "-f", str(tmp_path))
    assert result.exit_code == 1 and "kind" in result.output
    # A service whose data class no policy (stored or in the set) names.
    (tmp_path / "bad.yaml").unlink()
    write(tmp_path, "svc.yaml", {**RECORDS, "data_classes": ["pii-ch"]})
    result = await cli("plan", "-f", str(tmp_path), "-o", "json")
    assert result.exit_code == 1, result.output
    (problem,) = json.loads(result.output)["problems"]
    assert (problem["name"], problem["field"]) == ("records", "data_classes.0")


async def test_a_service_and_the_new_policy_it_needs_plan_and_apply_as_one(
    federation: Federation, api: Api, tmp_path: Path
) -> None:
    policy = {"kind": "policy", "name": "de-health", "data_classes": ["phi-de"], "allow": ["DE"]}
    service = {**RECORDS, "name": "lab", "replicas": 2, "data_classes": ["phi-de"]}
    service["placement"] = {"min_regions": 1}
    write(tmp_path / "repo", "all.yaml", service, policy)  # the service first in the file
    cli = Cli(api)
    result = await cli("plan", "-f", str(tmp_path / "repo"), "-o", "json")
    assert result.exit_code == 2, result.output
    answer = json.loads(result.output)
    assert [(r["kind"], r["action"]) for r in answer["resources"]] == [
        ("policy", "create"),
        ("service", "create"),
    ]
    (move,) = answer["moves"]
    assert move["regions"] == {"eu-de-1": {"from": 0, "to": 2}}

    result = await cli("apply", "-f", str(tmp_path / "repo"))
    assert result.exit_code == 0, result.output
    assert result.output.index("policy de-health created") < result.output.index(
        "service lab created"
    )
    await federation.wait_placed("lab", {"eu-de-1": 2})
    result = await cli("plan", "-f", str(tmp_path / "repo"))
    assert result.exit_code == 0, result.output


async def test_applying_a_plan_after_someone_changed_a_service_is_a_409_and_changes_nothing(
    federation: Federation, api: Api, store: Store, tmp_path: Path
) -> None:
    await federation.deploy(RECORDS, expect=201)
    repo = tmp_path / "repo"
    write(repo, "records.yaml", {**RECORDS, "replicas": 3})
    write(repo, "policy.yaml", {"kind": "policy", "name": "de-health", "data_classes": ["phi-de"]})
    cli = Cli(api)
    result = await cli("plan", "-f", str(repo), "-o", "json")
    assert result.exit_code == 2, result.output
    saved = tmp_path / "plan.json"
    saved.write_text(result.output)

    changed = await federation.deploy({**RECORDS, "replicas": 4}, expect=200)  # someone else
    # The controller places the change in the background; wait so that placement is
    # not mistaken for something the refused apply wrote.
    await federation.wait_decided("records", changed["generation"])
    before, _ = await store.scan("")
    result = await cli("apply", "-f", str(repo), "--plan", str(saved))
    assert result.exit_code == 1, result.output
    assert "409" in result.output and "service records" in result.output
    after, _ = await store.scan("")
    assert durable(after) == durable(before)
    assert (await federation.service("records"))["replicas"] == 4
    status, _ = await api.call("GET", "/v1/policies/de-health")
    assert status == 404


async def test_prune_deletes_only_what_carries_the_files_managed_by_label(
    federation: Federation, api: Api, tmp_path: Path
) -> None:
    small = {**RECORDS, "replicas": 1, "placement": {"min_regions": 1}}
    for name, labels in [
        ("old", {"managed-by": "repo"}),
        ("theirs", {"managed-by": "other-repo"}),
        ("by-hand", {}),
    ]:
        await federation.deploy({**small, "name": name, "labels": labels}, expect=201)
    repo = tmp_path / "repo"
    write(repo, "new.yaml", {**small, "name": "new", "labels": {"managed-by": "repo"}})
    cli = Cli(api)
    result = await cli("plan", "-f", str(repo), "--prune", "-o", "json")
    assert result.exit_code == 2, result.output
    actions = {r["name"]: r["action"] for r in json.loads(result.output)["resources"]}
    assert actions == {"new": "create", "old": "delete"}

    result = await cli("apply", "-f", str(repo), "--prune")
    assert result.exit_code == 0, result.output
    status, body = await api.call("GET", "/v1/services")
    assert status == 200
    assert sorted(s["name"] for s in body["items"]) == ["by-hand", "new", "theirs"]

    # Files without a common managed-by label cannot prune: that would select anything.
    write(repo, "other.yaml", {**small, "name": "other"})
    result = await cli("apply", "-f", str(repo), "--prune")
    assert result.exit_code == 1 and "managed-by" in result.output


async def test_a_viewer_cannot_plan(federation: Federation, api: Api) -> None:
    status, body = await api.call("POST", "/v1/tokens", json={"role": "viewer"})
    assert status == 201
    doc = {"kind": "service", "spec": RECORDS}
    status, _ = await api.call("POST", "/v1/plan", json={"documents": [doc]}, token=body["token"])
    assert status == 403
    status, answer = await api.call("POST", "/v1/plan", json={"documents": [doc, doc]})
    assert status == 422 and answer["error"]["details"][0]["field"] == "documents.1.spec.name"
    bad = {"kind": "service", "spec": {**RECORDS, "replicas": -1}}
    status, answer = await api.call("POST", "/v1/plan", json={"documents": [bad]})
    assert status == 422, answer
    assert "documents.0" in answer["error"]["details"][0]["field"]
    status, answer = await api.call("POST", "/v1/plan", json={"documents": [], "prune": {}})
    assert status == 422 and answer["error"]["details"][0]["field"] == "prune"


async def test_the_readme_plans_and_applies_the_examples_directory(
    etcd: LocalEtcd, prefix: str, store: Store, tmp_path: Path
) -> None:
    examples = str(EXAMPLES)
    async with (
        secret_api(etcd, prefix, new_kek_file(tmp_path)) as api,
        running_federation(api, store),
    ):
        await _plan_and_apply_examples(api, examples)


async def _plan_and_apply_examples(api: Api, examples: str) -> None:
    cli = Cli(api)
    # patient-records reads its database password from a secret: not there yet.
    result = await cli("plan", "-f", examples, "-o", "json")
    assert result.exit_code == 1, result.output
    problems = {(p["kind"], p["name"], p["field"]) for p in json.loads(result.output)["problems"]}
    assert problems == {
        ("secret", "patient-db", "name"),  # declared in examples/secrets, not set yet
        ("service", "patient-records", "secrets.DB_PASSWORD"),
    }
    secret = {"data_classes": ["phi-eu"], "data": {"password": "pw-1", "username": "records"}}
    status, body = await api.call("PUT", "/v1/secrets/patient-db", json=secret)
    assert status == 201, body
    result = await cli("plan", "-f", examples)
    assert result.exit_code == 2, result.output
    assert "Problems" not in result.output
    result = await cli("apply", "-f", examples)
    assert result.exit_code == 0, result.output
    assert "service patient-records created" in result.output
    result = await cli("plan", "-f", examples, "-o", "json")
    assert result.exit_code == 0, result.output


async def test_region_labels_and_the_service_that_prefers_them_are_planned_as_one(
    federation: Federation, api: Api, store: Store, tmp_path: Path
) -> None:
    before, _ = await store.scan("")
    gold = {
        **RECORDS,
        "name": "gold",
        "replicas": 1,
        "placement": {"min_regions": 1, "prefer_labels": {"tier": "gold"}},
    }
    write(tmp_path, "gold.yaml", gold)
    write(
        tmp_path, "regions.yaml", {"kind": "region", "name": "eu-nl-1", "labels": {"tier": "gold"}}
    )
    cli = Cli(api)

    result = await cli("plan", "-f", str(tmp_path), "-o", "json")
    assert result.exit_code == 2, result.output
    answer = json.loads(result.output)
    actions = [(r["kind"], r["name"], r["action"]) for r in answer["resources"]]
    assert actions == [("region", "eu-nl-1", "update"), ("service", "gold", "create")]
    assert [c["field"] for c in answer["resources"][0]["diff"]] == ["labels.tier"]
    # Without the new label, gold would go to eu-de-1 (first by name among equals).
    (move,) = answer["moves"]
    assert move["regions"] == {"eu-nl-1": {"from": 0, "to": 1}}
    after, _ = await store.scan("")
    assert durable(after) == durable(before)

    result = await cli("apply", "-f", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "region eu-nl-1 updated" in result.output
    status, body = await api.call("GET", "/v1/regions/eu-nl-1")
    assert status == 200 and body["labels"] == {"tier": "gold"}
    await federation.wait_placed("gold", {"eu-nl-1": 1})
    result = await cli("plan", "-f", str(tmp_path))
    assert result.exit_code == 0, result.output


async def test_a_region_is_never_made_or_pruned_from_files(
    federation: Federation, api: Api, tmp_path: Path
) -> None:
    cli = Cli(api)
    write(tmp_path, "new.yaml", {"kind": "region", "name": "eu-pl-1", "labels": {}})
    result = await cli("plan", "-f", str(tmp_path), "-o", "json")
    assert result.exit_code == 1, result.output
    (problem,) = json.loads(result.output)["problems"]
    assert (problem["kind"], problem["name"], problem["field"]) == ("region", "eu-pl-1", "name")
    assert "federation region register" in problem["message"]

    # Only labels: a country comes with registration (and its token), never from files.
    write(tmp_path, "new.yaml", {"kind": "region", "name": "eu-de-1", "country": "US"})
    result = await cli("plan", "-f", str(tmp_path))
    assert result.exit_code == 1 and "country" in result.output, result.output

    # --prune selects by the files' managed-by label; regions the files leave out stay.
    small = {**RECORDS, "name": "small", "replicas": 1, "placement": {"min_regions": 1}}
    labels = {"managed-by": "repo"}
    write(tmp_path, "new.yaml", {"kind": "region", "name": "eu-de-1", "labels": {}})
    write(tmp_path, "small.yaml", {**small, "labels": labels})
    result = await cli("apply", "-f", str(tmp_path), "--prune")
    assert result.exit_code == 0, result.output
    status, body = await api.call("GET", "/v1/regions")
    assert status == 200 and len(body["items"]) == 5


async def test_only_an_admin_sets_region_labels(federation: Federation, api: Api) -> None:
    status, body = await api.call("POST", "/v1/tokens", json={"role": "operator"})
    assert status == 201
    labels = {"name": "eu-de-1", "labels": {"tier": "gold"}}
    path = "/v1/regions/eu-de-1/labels"
    status, _ = await api.call("PUT", path, json=labels, token=body["token"])
    assert status == 403
    status, body = await api.call("PUT", path, json={**labels, "name": "eu-fr-1"})
    assert status == 422 and body["error"]["details"][0]["field"] == "name"
    status, body = await api.call("PUT", path, json={**labels, "labels": {"Bad Key": "x"}})
    assert status == 422, body
    status, body = await api.call("PUT", path, json=labels)
    assert status == 200 and body["labels"] == {"tier": "gold"}
    status, body = await api.call("GET", "/v1/audit?since=0")
    assert status == 200, body
    entry = body["items"][-1]
    assert entry["action"] == "region.labels"
    assert entry["details"] == {"before": {}, "after": {"tier": "gold"}}


async def test_a_secret_in_the_files_is_checked_against_the_stored_one_and_never_written(
    etcd: LocalEtcd, prefix: str, store: Store, tmp_path: Path
) -> None:
    declared = {
        "kind": "secret",
        "name": "patient-db",
        "data_classes": ["phi-eu"],
        "keys": ["password"],
    }
    repo = tmp_path / "repo"
    write(repo, "secret.yaml", declared)
    async with (
        secret_api(etcd, prefix, new_kek_file(tmp_path)) as api,
        running_federation(api, store),
    ):
        cli = Cli(api)
        result = await cli("plan", "-f", str(repo), "-o", "json")
        assert result.exit_code == 1, result.output
        (problem,) = json.loads(result.output)["problems"]
        assert (problem["name"], problem["field"]) == ("patient-db", "name")
        assert "federation secret set" in problem["message"]

        stored = {"data_classes": ["public"], "data": {"user": "records"}}
        status, body = await api.call("PUT", "/v1/secrets/patient-db", json=stored)
        assert status == 201, body
        result = await cli("plan", "-f", str(repo), "-o", "json")
        assert result.exit_code == 1, result.output
        fields = sorted(p["field"] for p in json.loads(result.output)["problems"])
        assert fields == ["data_classes", "keys"]

        stored = {"data_classes": ["phi-eu"], "data": {"password": "pw", "user": "records"}}
        status, body = await api.call("PUT", "/v1/secrets/patient-db", json=stored)
        assert status == 200, body
        version = body["version"]
        result = await cli("plan", "-f", str(repo), "-o", "json")
        assert result.exit_code == 0, result.output
        (resource,) = json.loads(result.output)["resources"]
        assert (resource["kind"], resource["action"]) == ("secret", "none")
        result = await cli("apply", "-f", str(repo))
        assert result.exit_code == 0, result.output
        status, body = await api.call("GET", "/v1/secrets/patient-db")
        assert status == 200 and body["version"] == version


async def test_drill_schedules_in_the_files_are_planned_applied_and_pruned(
    federation: Federation, api: Api, tmp_path: Path
) -> None:
    weekly = {
        "kind": "DrillSchedule",  # as `federation drill schedule apply` files say it
        "name": "weekly-fr",
        "labels": {"managed-by": "repo"},
        "regions": ["eu-fr-1"],
        "windows": ["Tue 09:00-12:00"],
        "time_zone": "Europe/Paris",
    }
    write(tmp_path, "weekly.yaml", {**weekly, "regions": ["eu-pl-1"]})
    cli = Cli(api)
    result = await cli("plan", "-f", str(tmp_path), "-o", "json")
    assert result.exit_code == 1, result.output
    (problem,) = json.loads(result.output)["problems"]
    assert (problem["kind"], problem["field"]) == ("drill-schedule", "regions.0")

    write(tmp_path, "weekly.yaml", weekly)
    result = await cli("apply", "-f", str(tmp_path))
    assert result.exit_code == 0, result.output
    status, body = await api.call("GET", "/v1/drill-schedules/weekly-fr")
    assert status == 200 and body["regions"] == ["eu-fr-1"], body
    result = await cli("plan", "-f", str(tmp_path))
    assert result.exit_code == 0, result.output

    write(tmp_path, "weekly.yaml", {**weekly, "windows": ["Wed 09:00-12:00"]})
    result = await cli("diff", "-f", str(tmp_path))
    assert result.exit_code == 2 and "Wed 09:00-12:00" in result.output, result.output

    small = {**RECORDS, "name": "small", "replicas": 1, "placement": {"min_regions": 1}}
    (tmp_path / "weekly.yaml").unlink()
    write(tmp_path, "small.yaml", {**small, "labels": {"managed-by": "repo"}})
    result = await cli("plan", "-f", str(tmp_path), "--prune", "-o", "json")
    assert result.exit_code == 2, result.output
    actions = {(r["kind"], r["name"]): r["action"] for r in json.loads(result.output)["resources"]}
    assert actions == {("service", "small"): "create", ("drill-schedule", "weekly-fr"): "delete"}
    result = await cli("apply", "-f", str(tmp_path), "--prune")
    assert result.exit_code == 0, result.output
    status, _ = await api.call("GET", "/v1/drill-schedules/weekly-fr")
    assert status == 404
