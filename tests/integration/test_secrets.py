"""Secrets through the API: sealed at rest, metadata only, bounded, audited by fingerprint."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from federation.model.secret import MAX_KEYS, MAX_VALUE_BYTES
from federation.processes.certs import add_kek
from federation.processes.commands import federation_command
from federation.processes.local_etcd import LocalEtcd
from federation.store import Store, keys
from federation.store import secrets as store_secrets
from federation.store.envelope import FileKeyring, KeyUnavailable
from tests.conftest import Api
from tests.integration.secret_support import marker, new_kek_file, secret_api, token

PHI_EU = {"data_classes": ["phi-eu"], "allow": ["group:eea"]}


@pytest.fixture
def kek(tmp_path: Path) -> Path:
    return new_kek_file(tmp_path)


@pytest.fixture
async def sapi(etcd: LocalEtcd, prefix: str, kek: Path) -> AsyncIterator[Api]:
    async with secret_api(etcd, prefix, kek) as api:
        status, body = await api.call("PUT", "/v1/policies/eu", json=PHI_EU)
        assert status in (200, 201), body
        yield api


async def test_a_secret_is_shown_as_metadata_only(sapi: Api) -> None:
    password, username = marker("pw"), marker("user")
    status, body = await sapi.call(
        "PUT",
        "/v1/secrets/patient-db",
        json={"data_classes": ["phi-eu"], "data": {"password": password, "username": username}},
    )
    assert status == 201, body
    assert body["version"] == 1 and body["outcome"] == "created"
    viewer = await token(sapi, "viewer")
    for who in ("admin", viewer):
        for path in ("/v1/secrets", "/v1/secrets/patient-db"):
            status, answer = await sapi.call("GET", path, token=who)
            assert status == 200, answer
            text = str(answer)
            assert password not in text and username not in text
    status, one = await sapi.call("GET", "/v1/secrets/patient-db", token=viewer)
    assert one["keys"] == ["password", "username"]
    assert one["data_classes"] == ["phi-eu"]
    assert one["version"] == 1
    assert one["updated_by"] and one["updated_at"]
    fp = one["fingerprints"]["password"]
    assert fp.startswith("hmac-sha256:")
    # Keyed: not a plain hash of the value that a guess could be checked against.
    for plain in (
        hashlib.sha256(password.encode()).hexdigest(),
        hashlib.sha256(b"password\x00" + password.encode()).hexdigest(),
    ):
        assert plain[:16] not in fp


async def test_roles_below_operator_cannot_write_and_a_region_reads_nothing(sapi: Api) -> None:
    status, body = await sapi.call("POST", "/v1/regions", json={"name": "eu-de-1", "country": "DE"})
    assert status == 201, body
    region = body["token"]
    viewer, operator = await token(sapi, "viewer"), await token(sapi, "operator")
    secret = {"data_classes": ["phi-eu"], "data": {"password": marker("pw")}}
    for who in (viewer, region):
        assert (await sapi.call("PUT", "/v1/secrets/s1", json=secret, token=who))[0] == 403
    status, _ = await sapi.call("PUT", "/v1/secrets/s1", json=secret, token=operator)
    assert status == 201
    assert (await sapi.call("GET", "/v1/secrets", token=region))[0] == 403
    assert (await sapi.call("GET", "/v1/secrets/s1", token=region))[0] == 403
    for who in (viewer, region):
        rotate = {"data": {"password": "x"}}
        assert (await sapi.call("POST", "/v1/secrets/s1/rotate", json=rotate, token=who))[0] == 403
        assert (await sapi.call("DELETE", "/v1/secrets/s1", token=who))[0] == 403
    # Rewrapping touches every secret's keys: admin only.
    assert (await sapi.call("POST", "/v1/secrets/rewrap", token=operator))[0] == 403
    assert (await sapi.call("POST", "/v1/secrets/rewrap"))[0] == 200
    assert (await sapi.call("DELETE", "/v1/secrets/s1", token=operator))[0] == 200
    assert (await sapi.call("GET", "/v1/secrets/s1"))[0] == 404


async def test_new_values_are_a_new_version_and_the_same_values_are_not(sapi: Api) -> None:
    first = {"data_classes": ["phi-eu"], "data": {"password": marker("a"), "user": "app"}}
    _, v1 = await sapi.call("PUT", "/v1/secrets/db", json=first)
    status, again = await sapi.call("PUT", "/v1/secrets/db", json=first)
    assert status == 200 and again["outcome"] == "unchanged" and again["version"] == 1
    status, v2 = await sapi.call(
        "POST", "/v1/secrets/db/rotate", json={"data": {"password": marker("b")}}
    )
    assert status == 200, v2
    assert v2["version"] == 2 and v2["outcome"] == "new version"
    assert v2["keys"] == ["password", "user"]  # the key not given keeps its value
    assert v2["fingerprints"]["user"] == v1["fingerprints"]["user"]
    assert v2["fingerprints"]["password"] != v1["fingerprints"]["password"]
    status, body = await sapi.call("POST", "/v1/secrets/nope/rotate", json={"data": {"a": "b"}})
    assert status == 404, body


async def test_the_audit_log_records_fingerprints_never_values(sapi: Api) -> None:
    value = marker("pw")
    _, made = await sapi.call(
        "PUT", "/v1/secrets/db", json={"data_classes": ["phi-eu"], "data": {"password": value}}
    )
    status, audit = await sapi.call("GET", "/v1/audit?since=0")
    assert status == 200, audit
    assert value not in str(audit)
    entries = [e for e in audit["items"] if e["action"] == "secret.put"]
    assert entries and entries[-1]["details"]["fingerprints"] == made["fingerprints"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"data_classes": ["phi-eu"], "data": {f"k{i}": "v" for i in range(MAX_KEYS + 1)}}, "data"),
        (
            {"data_classes": ["phi-eu"], "data": {"password": "x" * (MAX_VALUE_BYTES + 1)}},
            "data.password",
        ),
        ({"data_classes": ["phi-eu"], "data": {"bad key!": "v"}}, "data"),
        ({"data_classes": ["phi-eu"], "data": {"nul": "a\x00b"}}, "data.nul"),
        ({"data_classes": ["phi-eu"], "data": {}}, "data"),
        ({"data_classes": [], "data": {"k": "v"}}, "data_classes"),
        ({"data": {"k": "v"}}, "data_classes"),
        ({"data_classes": ["phi-ue"], "data": {"k": "v"}}, "data_classes.0"),
        ({"data_classes": ["phi-eu"], "data": {"k": 5}}, "data.k"),
        ({"data_classes": ["phi-eu"], "data": {"k": "v"}, "extra": 1}, "extra"),
    ],
)
async def test_bad_secrets_are_refused_naming_the_field_and_never_the_value(
    sapi: Api, body: dict[str, object], field: str
) -> None:
    status, answer = await sapi.call("PUT", "/v1/secrets/db", json=body)
    assert status == 422, answer
    fields = [d["field"] for d in answer["error"]["details"]]
    assert any(f == field or f.startswith(field + ".") for f in fields), fields
    assert "xxxxxxxx" not in str(answer) and "a\\x00b" not in str(answer)
    assert (await sapi.call("GET", "/v1/secrets/db"))[0] == 404  # nothing half-written


async def test_a_name_that_is_no_label_is_refused(sapi: Api) -> None:
    body = {"data_classes": ["phi-eu"], "data": {"k": "v"}}
    for name in ("UPPER", "a" * 64, "dot.ted", "-dash"):
        status, answer = await sapi.call("PUT", f"/v1/secrets/{name}", json=body)
        assert status == 422, answer
        assert answer["error"]["details"][0]["field"] == "secret"


async def test_a_server_without_a_kek_refuses_to_seal(etcd: LocalEtcd, prefix: str) -> None:
    async with secret_api(etcd, prefix, None) as api:
        body = {"data_classes": ["public"], "data": {"k": marker("v")}}
        status, answer = await api.call("PUT", "/v1/secrets/db", json=body)
        assert status == 409 and answer["error"]["code"] == "no_kek", answer


async def test_an_etcd_snapshot_holds_no_value(sapi: Api, etcd: LocalEtcd, tmp_path: Path) -> None:
    value = marker("pw")
    for name in ("db", "api"):
        status, _ = await sapi.call(
            "PUT",
            f"/v1/secrets/{name}",
            json={"data_classes": ["phi-eu"], "data": {"password": value}},
        )
        assert status == 201
    status, _ = await sapi.call(
        "POST", "/v1/secrets/db/rotate", json={"data": {"password": value + "2"}}
    )
    assert status == 200
    backup = tmp_path / "federation.snap"
    proc = await asyncio.create_subprocess_exec(
        *federation_command("backup", str(backup), f"--etcd={etcd.endpoint}"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    snapshot = backup.read_bytes()
    assert keys.secret("db").encode() in snapshot  # the secrets are in it, sealed
    for form in (value.encode(), base64.b64encode(value.encode()), value.encode().hex().encode()):
        assert form not in snapshot
    # Nor is the KEK that would open them.
    assert kek_bytes(sapi) not in snapshot


def _read(path: Path) -> str:
    return path.read_text()


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _add_kek(path: Path) -> tuple[str, str]:
    """(the file as it was, the id of the new primary KEK put first in it)."""
    old = path.read_text()
    return old, add_kek(path)


def kek_bytes(api: Api) -> bytes:
    assert api.config.kek_file is not None
    line = api.config.kek_file.read_text().split()
    return base64.b64decode(line[1])


async def test_kek_rotation_then_rewrap_opens_with_the_new_key_alone(
    sapi: Api, store: Store, kek: Path
) -> None:
    value = marker("pw")
    body = {"data_classes": ["phi-eu"], "data": {"password": value}}
    assert (await sapi.call("PUT", "/v1/secrets/db", json=body))[0] == 201
    old, new_id = _add_kek(kek)
    # Before the rewrap: the old KEK is still accepted.
    status, one = await sapi.call("GET", "/v1/secrets/db")
    assert one["keks"] != [new_id]
    status, answer = await sapi.call("POST", "/v1/secrets/rewrap")
    assert status == 200, answer
    assert answer == {"kek": new_id, "rewrapped": ["db"], "unopened": [], "secrets": 1}
    assert (await sapi.call("GET", "/v1/secrets/db"))[1]["keks"] == [new_id]
    # The old key's line removed: the secret still opens, with the new KEK alone.
    _write(kek, _read(kek).replace(old, ""))
    record, _ = await store_secrets.get(store, "db") or (None, 0)
    assert record is not None
    assert await store_secrets.reveal(FileKeyring(kek), record, 1) == {"password": value}
    # And a keyring holding only the old KEK cannot.
    only_old = kek.parent / "old-kek"
    _write(only_old, old)
    with pytest.raises(KeyUnavailable):
        await store_secrets.reveal(FileKeyring(only_old), record, 1)
    status, again = await sapi.call("POST", "/v1/secrets/rewrap")
    assert again["rewrapped"] == []


async def test_a_lost_kek_is_reported_and_new_values_replace_what_it_sealed(
    sapi: Api, kek: Path, tmp_path: Path
) -> None:
    body = {"data_classes": ["phi-eu"], "data": {"password": marker("pw"), "user": "app"}}
    assert (await sapi.call("PUT", "/v1/secrets/db", json=body))[0] == 201
    # The file replaced by one holding a new key only: the old KEK is gone.
    _write(kek, _read(new_kek_file(tmp_path / "other")))
    status, answer = await sapi.call("POST", "/v1/secrets/rewrap")
    assert status == 200 and answer["unopened"] == ["db"] and answer["rewrapped"] == [], answer
    status, answer = await sapi.call("POST", "/v1/secrets/db/rotate", json={"data": {"user": "x"}})
    assert status == 409 and answer["error"]["code"] == "kek_unavailable", answer
    body["data"]["password"] = marker("new")
    status, answer = await sapi.call("PUT", "/v1/secrets/db", json=body)
    assert status == 200 and answer["version"] == 2, answer
    assert answer["versions_kept"] == [2]  # what no KEK opens is dropped
    status, answer = await sapi.call("POST", "/v1/secrets/rewrap")
    assert answer["unopened"] == [] and answer["rewrapped"] == [], answer


async def test_a_referenced_secret_cannot_be_deleted(sapi: Api) -> None:
    body = {"data_classes": ["phi-eu"], "data": {"password": marker("pw")}}
    assert (await sapi.call("PUT", "/v1/secrets/db", json=body))[0] == 201
    svc = {
        "command": ["true"],
        "data_classes": ["phi-eu"],
        "secrets": {"DB_PASSWORD": "db#password"},
    }
    status, answer = await sapi.call("PUT", "/v1/services/records", json=svc)
    assert status == 201, answer
    status, answer = await sapi.call("DELETE", "/v1/secrets/db")
    assert status == 409 and "records" in answer["error"]["message"], answer


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _examples(kind: str) -> list[tuple[str, str]]:
    """(name, YAML text) of each example file of `kind`."""
    found = []
    for path in sorted((EXAMPLES / kind).glob("*.yaml")):
        text = path.read_text()
        [name] = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("name:")]
        found.append((name, text))
    return found


async def test_the_example_services_deploy_once_their_secret_is_set(sapi: Api) -> None:
    yaml = {"Content-Type": "application/yaml"}
    for name, text in _examples("policies"):
        status, body = await sapi.call("PUT", f"/v1/policies/{name}", data=text, headers=yaml)
        assert status in (200, 201), body
    services = _examples("services")
    status, body = await sapi.call(
        "PUT", "/v1/services/patient-records", data=dict(services)["patient-records"], headers=yaml
    )
    assert status == 422 and "patient-db" in body["error"]["message"], body  # no secret yet
    value = marker("pw")
    secret = {"data_classes": ["phi-eu"], "data": {"password": value, "username": "records"}}
    assert (await sapi.call("PUT", "/v1/secrets/patient-db", json=secret))[0] == 201
    for name, text in services:
        status, body = await sapi.call("PUT", f"/v1/services/{name}", data=text, headers=yaml)
        assert status == 201, body
    status, body = await sapi.call("GET", "/v1/services/patient-records")
    assert body["secrets"] == {
        "DB_PASSWORD": "patient-db#password",
        "DB_USER": "patient-db#username",
    }
    assert value not in str(body)


async def test_a_rotation_is_bounded_as_the_whole_secret_is(sapi: Api) -> None:
    body = {"data_classes": ["phi-eu"], "data": {"password": marker("pw")}}
    assert (await sapi.call("PUT", "/v1/secrets/db", json=body))[0] == 201
    more = {"data": {f"k{i}": "v" for i in range(MAX_KEYS)}}  # 64 more: 65 in all
    status, answer = await sapi.call("POST", "/v1/secrets/db/rotate", json=more)
    assert status == 422 and answer["error"]["details"][0]["field"] == "data", answer
    assert (await sapi.call("GET", "/v1/secrets/db"))[1]["version"] == 1


@pytest.mark.parametrize(
    ("content_type", "text"),
    [
        ("application/json", '{"data_classes": ["phi-eu"], "data": {"password": "VALUE'),
        ("application/yaml", 'data_classes: [phi-eu]\ndata: {password: "VALUE'),
        ("application/yaml", "data_classes: [phi-eu]\ndata:\n  password: VALUE\n  - x\n"),
    ],
)
async def test_a_body_that_does_not_parse_is_refused_without_echoing_it(
    sapi: Api, content_type: str, text: str
) -> None:
    value = marker("pw")
    status, answer = await sapi.call(
        "PUT",
        "/v1/secrets/db",
        data=text.replace("VALUE", value),
        headers={"Content-Type": content_type},
    )
    assert status == 400, answer
    assert value not in str(answer)
