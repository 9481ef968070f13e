"""Where a secret's value goes: only in the assignment stream of a region residency
allows it in, decided at delivery; and nowhere a viewer or another region can read."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from federation.model.service import Assignment, Runtime, ServiceSpec
from federation.processes.local_etcd import LocalEtcd
from federation.store import Store, keys
from tests.conftest import Api
from tests.integration.agents import Federation, running_federation, wait_until
from tests.integration.secret_support import marker, new_kek_file, secret_api, token


# Watches here start from revision 0 to see every assignment sent: on an etcd no other
# module compacts.
@pytest.fixture(scope="module")
def etcd(private_etcd: LocalEtcd) -> LocalEtcd:
    return private_etcd


EU = "eu-patient-data"  # phi-eu: EEA and CH (tests.integration.agents)


@pytest.fixture
async def fed(
    etcd: LocalEtcd, prefix: str, tmp_path: Path, store: Store
) -> AsyncIterator[Federation]:
    async with (
        secret_api(etcd, prefix, new_kek_file(tmp_path)) as api,
        running_federation(api, store) as federation,
    ):
        yield federation


async def put_secret(api: Api, name: str, classes: list[str], **data: str) -> dict[str, Any]:
    status, body = await api.call(
        "PUT", f"/v1/secrets/{name}", json={"data_classes": classes, "data": data}
    )
    assert status in (200, 201), body
    return dict(body)


async def listed(fed: Federation, region: str, who: str | None = None) -> str:
    """The region's assignments as its own token (or `who`) reads them, as text."""
    status, body = await fed.api.call(
        "GET", f"/v1/regions/{region}/assignments", token=who or fed.tokens[region]
    )
    assert status == 200, body
    return json.dumps(body)


async def items(fed: Federation, region: str) -> dict[str, dict[str, Any]]:
    status, body = await fed.api.call(
        "GET", f"/v1/regions/{region}/assignments", token=fed.tokens[region]
    )
    assert status == 200, body
    return {i["service"]: i for i in body["items"]}


async def watch_lines(fed: Federation, region: str, who: str, since: int, seconds: float) -> str:
    """What a watch of `region`'s assignments sends `who` in `seconds`, as text."""
    url = f"{fed.api.url}/v1/regions/{region}/assignments?watch=true&since={since}"
    chunks: list[bytes] = []
    headers = {"Authorization": f"Bearer {who}"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        try:
            async with asyncio.timeout(seconds):
                async for chunk in resp.content.iter_any():
                    chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks).decode()


async def test_a_us_region_never_receives_a_phi_eu_value(fed: Federation) -> None:
    eu_value, public_value = marker("eu-pw"), marker("pub-token")
    await put_secret(fed.api, "eu-db", ["phi-eu"], password=eu_value)
    await put_secret(fed.api, "pub", ["public"], token=public_value)
    await fed.deploy(
        {
            "name": "records",
            "command": ["true"],
            "replicas": 2,
            "data_classes": ["phi-eu"],
            "placement": {"min_regions": 2},
            "secrets": {"DB_PASSWORD": "eu-db#password"},
        }
    )
    await fed.deploy(
        {
            "name": "web",
            "command": ["true"],
            "data_classes": ["public"],
            "placement": {"regions": ["us-east-1"]},
            "secrets": {"API_TOKEN": "pub#token"},
        }
    )
    await fed.wait_placed("records", {"eu-de-1": 1, "eu-fr-1": 1})
    await fed.wait_placed("web", {"us-east-1": 1})
    us = await items(fed, "us-east-1")
    assert us["web"]["secret_env"] == {"API_TOKEN": public_value}
    assert eu_value not in await listed(fed, "us-east-1")
    de = await items(fed, "eu-de-1")
    assert de["records"]["secret_env"] == {"DB_PASSWORD": eu_value}
    # Its watch too, across a rotation of both secrets.
    status, body = await fed.api.call(
        "GET", "/v1/regions/us-east-1/assignments", token=fed.tokens["us-east-1"]
    )
    since = body["revision"]
    watching = asyncio.create_task(
        watch_lines(fed, "us-east-1", fed.tokens["us-east-1"], since, 3.0)
    )
    await asyncio.sleep(0.3)
    rotated = marker("eu-pw2")
    for name, key, value in (("eu-db", "password", rotated), ("pub", "token", marker("pub2"))):
        status, body = await fed.api.call(
            "POST", f"/v1/secrets/{name}/rotate", json={"data": {key: value}}
        )
        assert status == 200, body
    seen = await watching
    assert '"web"' in seen  # the rotated public secret came
    assert eu_value not in seen and rotated not in seen


async def test_delivery_is_decided_when_sent_not_only_when_placed(
    fed: Federation, store: Store
) -> None:
    """An assignment for a US region that references a phi-eu secret (a controller bug,
    a hand-edited etcd) still gets no value: residency is checked at delivery."""
    value = marker("eu-pw")
    await put_secret(fed.api, "eu-db", ["phi-eu"], password=value)
    spec = ServiceSpec(
        name="rogue", command=["true"], secrets={"DB": "eu-db#password"}, data_classes=["phi-eu"]
    )
    rogue = Assignment(
        service="rogue",
        region="us-east-1",
        replicas=1,
        runtime=Runtime.of(spec, 1, {"eu-db": 1}),
    )
    await store.put(keys.assignment("us-east-1", "rogue"), rogue.model_dump(mode="json"))
    got = await items(fed, "us-east-1")
    assert "secret_env" not in got["rogue"]
    assert "residency does not allow secret eu-db" in got["rogue"]["secrets_withheld"]
    assert "(US)" in got["rogue"]["secrets_withheld"]
    assert value not in json.dumps(got)
    # Counted, for an alert: an outcome, never a name or value.
    status, metrics = await fed.api.call("GET", "/metrics", token=None)
    assert status == 200
    assert 'federation_secret_deliveries_total{outcome="withheld"}' in metrics
    assert value not in metrics


async def test_a_policy_change_that_removes_fr_stops_delivery_to_fr(fed: Federation) -> None:
    value = marker("eu-pw")
    await put_secret(fed.api, "eu-db", ["phi-eu"], password=value)
    await fed.deploy(
        {
            "name": "records",
            "command": ["true"],
            "replicas": 2,
            "data_classes": ["phi-eu"],
            "placement": {"min_regions": 2},
            "secrets": {"DB_PASSWORD": "eu-db#password"},
        }
    )
    await fed.wait_placed("records", {"eu-de-1": 1, "eu-fr-1": 1})
    assert (await items(fed, "eu-fr-1"))["records"]["secret_env"] == {"DB_PASSWORD": value}
    status, body = await fed.api.call(
        "GET", "/v1/regions/eu-fr-1/assignments", token=fed.tokens["eu-fr-1"]
    )
    watching = asyncio.create_task(
        watch_lines(fed, "eu-fr-1", fed.tokens["eu-fr-1"], body["revision"], 3.0)
    )
    await asyncio.sleep(0.3)
    status, body = await fed.api.call(
        "PUT",
        f"/v1/policies/{EU}",
        json={"data_classes": ["phi-eu"], "allow": ["DE", "NL"], "mode": "enforce"},
    )
    assert status == 200, body
    # At once, before the controller has moved anything: FR gets no value.
    fr = await items(fed, "eu-fr-1")
    if "records" in fr:
        assert "secret_env" not in fr["records"]
        assert "eu-fr-1 (FR)" in fr["records"]["secrets_withheld"]
    assert value not in await listed(fed, "eu-fr-1")
    seen = await watching
    assert value not in seen
    # DE still gets it; the controller moves FR's replica away (NL has no region).
    assert (await items(fed, "eu-de-1"))["records"]["secret_env"] == {"DB_PASSWORD": value}


async def test_a_service_may_not_use_a_secret_outside_its_data_classes(fed: Federation) -> None:
    await put_secret(fed.api, "eu-db", ["phi-eu"], password=marker("pw"))
    await put_secret(fed.api, "pub", ["public"], token=marker("t"))
    spec = {"name": "web", "command": ["true"], "secrets": {"DB_PASSWORD": "eu-db#password"}}
    status, body = await fed.api.call("PUT", "/v1/services/web", json=spec)
    assert status == 422, body
    message = body["error"]["message"]
    assert "eu-db" in message and "web" in message and "phi-eu" in message
    assert body["error"]["details"][0]["field"] == "secrets.DB_PASSWORD"
    assert (await fed.api.call("GET", "/v1/services/web"))[0] == 404
    # A public secret is fine for any service; a phi-eu one for a phi-eu service.
    spec["secrets"] = {"API_TOKEN": "pub#token"}
    assert (await fed.api.call("PUT", "/v1/services/web", json=spec))[0] == 201
    spec = {**spec, "name": "rec", "data_classes": ["phi-eu"], "secrets": {"P": "eu-db#password"}}
    assert (await fed.api.call("PUT", "/v1/services/rec", json=spec))[0] == 201
    # Widening the secret's classes past a referencing service's is refused too.
    status, body = await fed.api.call(
        "PUT", "/v1/secrets/pub", json={"data_classes": ["phi-eu"], "data": {"token": "x"}}
    )
    assert status == 422 and "web" in body["error"]["message"], body


@pytest.mark.parametrize(
    ("secrets", "field", "says"),
    [
        ({"DB": "nope#password"}, "secrets.DB", "not found"),
        ({"DB": "eu-db#nokey"}, "secrets.DB", "no key"),
        ({"DB": "eu-db"}, "secrets.DB", ""),
        ({"DB": "Bad#password"}, "secrets.DB", ""),
        ({"PORT": "eu-db#password"}, "body", "set by the agent"),
        ({"FEDERATION_EPOCH": "eu-db#password"}, "body", "set by the agent"),
    ],
)
async def test_bad_references_are_refused_naming_the_field(
    fed: Federation, secrets: dict[str, str], field: str, says: str
) -> None:
    await put_secret(fed.api, "eu-db", ["phi-eu"], password=marker("pw"))
    spec = {"name": "rec", "command": ["true"], "data_classes": ["phi-eu"], "secrets": secrets}
    status, body = await fed.api.call("PUT", "/v1/services/rec", json=spec)
    assert status == 422, body
    assert body["error"]["details"][0]["field"] == field, body
    assert says in body["error"]["message"]
    spec["env"] = {"DB": "x"}
    spec["secrets"] = {"DB": "eu-db#password"}
    status, body = await fed.api.call("PUT", "/v1/services/rec", json=spec)
    assert status == 422 and "also set in env" in body["error"]["message"], body


def _get_paths(doc: dict[str, Any]) -> list[str]:
    return sorted(p for p, ops in doc["paths"].items() if "get" in ops)


def _fill(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "x-1"), path)


async def test_viewers_and_regions_never_see_a_value_through_any_get(fed: Federation) -> None:
    value = marker("eu-pw")
    await put_secret(fed.api, "eu-db", ["phi-eu"], password=value)
    await fed.deploy(
        {
            "name": "records",
            "command": ["true"],
            "replicas": 2,
            "data_classes": ["phi-eu"],
            "placement": {"min_regions": 2},
            "secrets": {"DB_PASSWORD": "eu-db#password"},
        }
    )
    await fed.wait_placed("records", {"eu-de-1": 1, "eu-fr-1": 1})
    status, plan = await fed.api.call("POST", "/v1/drills", json={"regions": ["eu-de-1"]})
    assert status == 200, plan
    status, doc = await fed.api.call("GET", "/v1/openapi.json", token=None)
    paths = _get_paths(doc)
    assert "/v1/secrets/{secret}" in paths and "/v1/regions/{region}/assignments" in paths
    viewer = await token(fed.api, "viewer")
    callers = {"viewer": viewer, **{r: t for r, t in fed.tokens.items()}}
    checked = 0
    for who, secret in callers.items():
        for region in fed.tokens:
            fills = {
                "region": region,
                "service": "records",
                "secret": "eu-db",
                "policy": EU,
                "group": "x-1",
                "drill": "x-1",
            }
            for path in paths:
                if "{region}" not in path and region != "eu-de-1":
                    continue  # walked once per caller
                status, body = await fed.api.call("GET", _fill(path, fills), token=secret)
                text = json.dumps(body)
                own_stream = path.endswith("/assignments") and who == region
                if own_stream and region in ("eu-de-1", "eu-fr-1"):
                    assert value in text  # the one place it goes
                else:
                    assert value not in text, (who, path, status)
                checked += 1
        # The watch of every region, as this caller may open it.
        for region in fed.tokens:
            if who not in ("viewer", region):
                continue
            seen = await watch_lines(fed, region, secret, 0, 1.0)
            if who == region and region in ("eu-de-1", "eu-fr-1"):
                assert value in seen
            else:
                assert value not in seen, (who, region)
    assert checked > 100
    # Nor the audit log, the metrics, a drill plan or an explain.
    for path in ("/v1/audit?since=0", "/metrics", "/v1/services/records/explain"):
        status, body = await fed.api.call("GET", path)
        assert value not in json.dumps(body), path
    assert value not in json.dumps(plan)


async def test_a_rotation_rolls_region_by_region_waiting_for_health(fed: Federation) -> None:
    await put_secret(fed.api, "eu-db", ["phi-eu"], password=marker("v1"))
    await fed.deploy(
        {
            "name": "records",
            "command": ["true"],
            "replicas": 2,
            "data_classes": ["phi-eu"],
            "placement": {"min_regions": 2},
            "secrets": {"DB_PASSWORD": "eu-db#password"},
            "rollout": {"max_parallel_regions": 1},
        }
    )
    await fed.wait_placed("records", {"eu-de-1": 1, "eu-fr-1": 1})
    for region in ("eu-de-1", "eu-fr-1"):
        await fed.report(region)
    await fed.wait_phase("records", "Running")
    v2 = marker("v2")
    status, body = await fed.api.call(
        "POST", "/v1/secrets/eu-db/rotate", json={"data": {"password": v2}}
    )
    assert status == 200 and body["rolled"] == ["records"], body

    async def versions() -> dict[str, int] | None:
        found = {
            r: a.runtime.secret_versions["eu-db"]
            for r, a in (await fed.assignments("records")).items()
        }
        return found if sorted(found.values()) == [1, 2] else None

    first = await wait_until(versions, timeout=5, what="one region on version 2")
    new = next(r for r, v in first.items() if v == 2)
    old = next(r for r, v in first.items() if v == 1)
    assert (await items(fed, new))["records"]["secret_env"] == {"DB_PASSWORD": v2}
    # Until the first region reports the new generation ready, the other waits.
    await fed.report(new, ready=lambda a: False)
    await asyncio.sleep(1.0)
    assert (await fed.assignments("records"))[old].runtime.secret_versions["eu-db"] == 1
    await fed.report(new)

    async def both() -> bool:
        return {
            a.runtime.secret_versions["eu-db"] for a in (await fed.assignments("records")).values()
        } == {2}

    await wait_until(both, timeout=5, what="both regions on version 2")
    await fed.report(old)
    await fed.report(new)
    await fed.wait_phase("records", "Running")
