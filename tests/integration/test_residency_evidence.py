"""Residency evidence from the audit log of a real server on a real etcd: a phi-eu
service placed in DE and FR, DE lost (its replicas go to FR), NL added by a policy
change, a live drill of NL; the report for the period lists those intervals with their
countries, no violation, the policy change and the drill. An audit entry edited in
etcd makes the report refuse; a signed report verifies and a one-byte change does not.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web
from click.testing import CliRunner

from bench.evidence import changes as bench_changes
from federation.api import evidence as evidence_api
from federation.cli import main
from federation.processes.local_etcd import LocalEtcd
from federation.store import Op, Store, keys
from federation.store.audit import digest, entry_key, make_entry, read_head
from federation.store.audit.chain import head_value
from federation.store.audit.checkpoint import document_signature_holds
from tests.conftest import Api, server_config, serving
from tests.integration.agents import Federation, reporting, wait_until
from tests.integration.test_audit_checkpoint import write_key

DE_FR = {"name": "eu-patient-data", "data_classes": ["phi-eu"], "allow": ["DE", "FR"]}
RECORDS = {
    "name": "records",
    "command": ["true"],
    "replicas": 4,
    "data_classes": ["phi-eu"],
    "placement": {"min_regions": 2},
}


@pytest.fixture
async def keyed(etcd: LocalEtcd, prefix: str, tmp_path: Path) -> AsyncIterator[Api]:
    """An in-process server started with `--audit-key`."""
    config = server_config(etcd, prefix, audit_key=write_key(tmp_path / "audit.key"))
    async with serving(config) as api:
        yield api


@pytest.fixture
async def federation(keyed: Api, store: Store) -> AsyncIterator[Federation]:
    fed = Federation(keyed, store)
    try:
        await fed.start()
        status, body = await keyed.call("PUT", "/v1/policies/eu-patient-data", json=DE_FR)
        assert status == 201, body
        yield fed
    finally:
        await fed.close()


async def evidence(api: Api, start: datetime, end: datetime, **extra: Any) -> tuple[int, Any]:
    query = {"data_class": "phi-eu", "from": start.isoformat(), "to": end.isoformat()}
    return await api.call("GET", "/v1/residency/evidence?" + urlencode(query), **extra)


def timeline(report: dict[str, Any], service: str) -> dict[str, list[int]]:
    """Per region, the replica counts in order, adjacent equal counts merged (intervals
    are also split at policy changes, which does not change the count)."""
    seen: dict[str, list[int]] = {}
    for i in report["intervals"]:
        if i["service"] != service or i["draining"]:
            continue
        counts = seen.setdefault(i["region"], [])
        if not counts or counts[-1] != i["replicas"]:
            counts.append(i["replicas"])
    return seen


async def test_the_report_lists_what_ran_where_through_a_loss_a_policy_change_and_a_drill(
    federation: Federation, keyed: Api, tmp_path: Path
) -> None:
    api = keyed
    start = datetime.now(UTC)  # after the fixture's policy: its creation is not in it
    async with reporting(federation):
        await federation.deploy(RECORDS, expect=201)
        await federation.wait_placed("records", {"eu-de-1": 2, "eu-fr-1": 2})
        deployed = datetime.now(UTC)

        await federation.stop_heartbeats("eu-de-1")  # DE lost
        await federation.wait_placed("records", {"eu-fr-1": 4}, timeout=10)
        lost = datetime.now(UTC)

        await federation.start({"eu-nl-1": "NL"})
        status, body = await api.call(
            "PUT", "/v1/policies/eu-patient-data", json={**DE_FR, "allow": ["DE", "FR", "NL"]}
        )
        assert status == 200, body
        # Placements stay where they are until asked (failback: manual): spread afresh.
        status, body = await api.call("POST", "/v1/services/records/rebalance")
        assert status == 202, body
        await federation.wait_placed("records", {"eu-fr-1": 2, "eu-nl-1": 2}, timeout=10)

        status, started = await api.call(
            "POST",
            "/v1/drills",
            json={"regions": ["eu-nl-1"], "mode": "live", "max_duration_s": 30, "failback": True},
        )
        assert status == 201, started

        async def drill_done() -> bool:
            _, body = await api.call("GET", f"/v1/drills/{started['id']}")
            return bool(body["state"] in ("completed", "failed", "aborted"))

        await wait_until(drill_done, timeout=30, what="drill done")
    end = datetime.now(UTC) + timedelta(seconds=1)

    status, signed = await evidence(api, start, end)
    assert status == 200, signed
    report = signed["report"]
    assert report["summary"]["not_allowed"] == 0 and report["violations"] == []
    assert report["summary"]["countries"] == ["DE", "FR", "NL"]
    assert report["summary"]["services"] == ["records"]
    lines = timeline(report, "records")
    assert lines["eu-de-1"] == [2]
    assert lines["eu-fr-1"][:2] == [2, 4]  # then 2 beside NL, 4 during the drill, 2 again
    assert lines["eu-nl-1"][0] == 2
    assert set(lines) == {"eu-de-1", "eu-fr-1", "eu-nl-1"}
    countries = {i["region"]: i["country"] for i in report["intervals"]}
    assert countries == {"eu-de-1": "DE", "eu-fr-1": "FR", "eu-nl-1": "NL"}
    (de,) = [i for i in report["intervals"] if i["region"] == "eu-de-1"]
    assert start < datetime.fromisoformat(de["from"]) <= deployed
    assert deployed < datetime.fromisoformat(de["to"]) <= lost
    assert all(i["allowed"] and i["policies"] for i in report["intervals"])
    (change,) = report["policy_changes"]
    assert change["action"] == "policy.put" and change["after"]["allow"] == ["DE", "FR", "NL"]
    assert change["before"]["allow"] == ["DE", "FR"] and change["by"].startswith("admin")
    assert [d["id"] for d in report["drills"]] == [started["id"]]
    assert any(m["drill"] == started["id"] and m["region"] == "eu-nl-1" for m in report["moves"])
    assert report["chain"]["verified"] and report["chain"]["entries"] > 5
    # Sent as encoded, signed by its canonical text's SHA-256.
    assert signed["signature"]["algorithm"] == "ed25519-sha256"
    assert document_signature_holds(report, signed["signature"])

    # Saved, it verifies offline; a one-byte change does not.
    saved = tmp_path / "report.json"
    env = {"FEDERATION_URL": api.url, "FEDERATION_TOKEN": api.admin_token, "COLUMNS": "200"}
    args = ["residency", "evidence", "--data-class", "phi-eu", "--from", start.isoformat()]
    args += ["--to", end.isoformat(), "-o", str(saved)]
    result = await asyncio.to_thread(CliRunner().invoke, main, args, env=env)
    assert result.exit_code == 0, result.output
    verify = ["residency", "evidence", "verify", str(saved)]
    result = await asyncio.to_thread(CliRunner().invoke, main, verify)
    assert result.exit_code == 0 and "signature holds" in result.output, result.output
    text = saved.read_text()
    saved.write_text(text.replace('"DE"', '"US"', 1))
    result = await asyncio.to_thread(CliRunner().invoke, main, verify)
    assert result.exit_code == 1 and "does not hold" in result.output
    # A forged report before the signed one: JSON keeps the last, some readers the first.
    saved.write_text('{"report": {"summary": {"not_allowed": 0}}, ' + text.lstrip()[1:])
    result = await asyncio.to_thread(CliRunner().invoke, main, verify)
    assert result.exit_code == 1 and "not a signed report" in result.output, result.output
    markdown = tmp_path / "report.md"
    args[-1] = str(markdown)
    result = await asyncio.to_thread(CliRunner().invoke, main, args, env=env)
    assert result.exit_code == 0, result.output
    assert "Intervals not allowed: 0" in markdown.read_text()
    if example := os.environ.get("FEDERATION_EVIDENCE_EXAMPLE"):  # docs/evidence-example.md
        await asyncio.to_thread(Path(example).write_text, markdown.read_text())


async def test_an_edited_audit_entry_makes_the_report_refuse(
    federation: Federation, keyed: Api, store: Store
) -> None:
    start = datetime.now(UTC) - timedelta(seconds=1)
    await federation.deploy(RECORDS, expect=201)
    await federation.wait_placed("records", {"eu-de-1": 2, "eu-fr-1": 2})
    end = datetime.now(UTC) + timedelta(seconds=1)
    status, _ = await evidence(keyed, start, end)
    assert status == 200

    entry = await store.get(entry_key(3))
    assert entry is not None
    edited = json.loads(json.dumps(entry.value).replace('"DE"', '"CH"'))
    await store.put(entry_key(3), {**edited, "actor": "someone-else"})
    status, body = await evidence(keyed, start, end)
    assert status == 409, body
    assert body["error"]["code"] == "audit_log_broken" and "entry 3" in body["error"]["message"]
    assert "report" not in body


async def test_a_placement_allowed_by_an_exemption_shows_it_with_its_expiry(
    federation: Federation, keyed: Api
) -> None:
    expires = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    policy = {
        **DE_FR,
        "allow": ["DE"],
        "exemptions": [
            {
                "service": "records",
                "allow": ["FR"],
                "expires": expires.isoformat(),
                "reason": "migration",
            }
        ],
    }
    start = datetime.now(UTC) - timedelta(seconds=1)
    status, body = await keyed.call("PUT", "/v1/policies/eu-patient-data", json=policy)
    assert status == 200, body
    await federation.deploy(RECORDS, expect=201)
    await federation.wait_placed("records", {"eu-de-1": 2, "eu-fr-1": 2})
    status, signed = await evidence(keyed, start, datetime.now(UTC) + timedelta(seconds=1))
    assert status == 200, signed
    (fr,) = [i for i in signed["report"]["intervals"] if i["region"] == "eu-fr-1"]
    assert fr["allowed"]
    assert fr["exemptions"] == [
        {
            "policy": "eu-patient-data",
            "allow": ["FR"],
            "expires": expires.isoformat(),
            "reason": "migration",
        }
    ]
    assert any("exemption" in r for r in fr["reasons"]), fr["reasons"]
    (de,) = [i for i in signed["report"]["intervals"] if i["region"] == "eu-de-1"]
    assert de["allowed"]


async def test_bad_requests_and_roles(federation: Federation, keyed: Api) -> None:
    now = datetime.now(UTC)
    status, body = await keyed.call("POST", "/v1/tokens", json={"role": "operator"})
    assert status == 201
    status, _ = await evidence(keyed, now - timedelta(hours=1), now, token=body["token"])
    assert status == 403
    status, body = await keyed.call("GET", "/v1/residency/evidence?data_class=phi-eu&from=x&to=y")
    assert status == 400 and body["error"]["details"][0]["field"] == "from"
    status, body = await evidence(keyed, now, now - timedelta(hours=1))
    assert status == 422 and body["error"]["details"][0]["field"] == "to"
    naive = (
        "/v1/residency/evidence?data_class=phi-eu&from=2026-01-01T00:00:00&to=2026-02-01T00:00:00"
    )
    status, body = await keyed.call("GET", naive)
    assert status == 400 and body["error"]["details"][0]["field"] == "from"


async def test_times_out_of_range_and_entries_the_server_never_writes_are_4xx_not_500(
    federation: Federation, keyed: Api, store: Store
) -> None:
    for bad in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        query = urlencode({"data_class": "phi-eu", "from": bad, "to": "2026-12-31T00:00:00Z"})
        status, body = await keyed.call("GET", f"/v1/residency/evidence?{query}")
        assert status == 400 and body["error"]["details"][0]["field"] == "from", body
        post = {"data_class": "phi-eu", "from": bad, "to": "2026-12-31T00:00:00Z"}
        status, body = await keyed.call("POST", "/v1/residency/evidence", json=post)
        assert status == 422 and body["error"]["details"][0]["field"] == "from", body

    # Someone with etcd access replaces the last entry with one whose hash and chain
    # hold but whose time is not a time: the report refuses (409), it does not crash.
    head = await store.get(keys.AUDIT_HEAD)
    assert head is not None
    seq = int(head.value["seq"])
    last = await store.get(entry_key(seq))
    assert last is not None
    forged = {k: v for k, v in last.value.items() if k != "hash"} | {"at": "yesterday"}
    forged["hash"] = digest(forged)
    await store.delete(entry_key(seq))
    await store.put(entry_key(seq), forged)
    await store.put(keys.AUDIT_HEAD, {"seq": seq, "hash": forged["hash"]})
    now = datetime.now(UTC)
    status, body = await evidence(keyed, now - timedelta(hours=1), now + timedelta(hours=1))
    assert status == 409 and body["error"]["code"] == "audit_log_broken", body


@pytest.mark.parametrize("ending", ["cut", "unsigned"])
async def test_a_report_that_does_not_arrive_whole_and_signed_is_refused_and_not_kept(
    tmp_path: Path, ending: str
) -> None:
    """The report is sent as it is encoded, so a failure half-way can no longer be a
    status: the answer stops without its signature. The CLI must say so, exit non-zero
    and keep nothing (a server that sends such answers stands in for the failure)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if ending == "cut":
            await response.write(b'{"report":{"chain":{"verified":true},"intervals":[')
            assert request.transport is not None
            request.transport.abort()
        else:
            await response.write(b'{"report":{"summary":{"not_allowed":0}}}')
            await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/residency/evidence", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        saved = tmp_path / "report.json"
        url = f"http://127.0.0.1:{port}"
        env = {"FEDERATION_URL": url, "FEDERATION_TOKEN": "t" * 40, "COLUMNS": "300"}
        args = ["residency", "evidence", "--data-class", "phi-eu", "--from", "2026-10-01T00:00:00Z"]
        args += ["--to", "2026-12-31T00:00:00Z", "-o", str(saved)]
        result = await asyncio.to_thread(CliRunner().invoke, main, args, env=env)
        assert result.exit_code == 1, result.output
        assert "did not arrive whole and signed" in result.output, result.output
        assert await asyncio.to_thread(os.listdir, tmp_path) == []
    finally:
        await runner.cleanup()


async def test_a_client_that_stops_reading_loses_its_report_and_frees_the_server(
    keyed: Api, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report far bigger than the socket's buffers, asked by a client that then reads
    nothing: the server gives up the send (here after 1 s without progress instead of
    60) and its one-at-a-time lock, so the next report is answered, not refused."""
    monkeypatch.setattr(evidence_api, "_STALLED_S", 1.0)
    head, at = await read_head(store), datetime.now(UTC)
    start = at - timedelta(seconds=1)
    rng = random.Random(3)
    ops: list[Op] = []
    for change in bench_changes(40_000, rng):
        text, head = make_entry(head, change, at)
        ops.append(Op.put_raw(entry_key(head.seq), text))
        at += timedelta(seconds=5)
        if len(ops) == 100:
            await store.txn([], ops)
            ops = []
    ops.append(Op.put_raw(keys.AUDIT_HEAD, head_value(head)))
    await store.txn([], ops)
    query = urlencode({"data_class": "phi-eu", "from": start.isoformat(), "to": at.isoformat()})
    path = f"/v1/residency/evidence?{query}"

    port = int(keyed.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {keyed.admin_token}\r\n"
    writer.write((request + "\r\n").encode())
    await writer.drain()
    try:
        seen: list[int] = []
        async with asyncio.timeout(60):
            while not seen or seen[-1] == 429:  # while the stalled send holds the lock
                await asyncio.sleep(0.5)
                status, signed = await keyed.call("GET", path)
                seen.append(status)
        assert seen[0] == 429 and seen[-1] == 200, (seen, signed)
        assert signed["report"]["chain"]["entries"] == 40_000
        assert b'"report"' in await reader.read(1 << 16)  # it had begun
    finally:
        writer.close()
