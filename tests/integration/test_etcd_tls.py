"""The store talks to an etcd that requires TLS client certificates, and a server works
under the etcd auth the deploy files turn on."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp.test_utils import TestServer
from etcd3aio.errors import EtcdPermissionDeniedError

from federation.api.app import create_app
from federation.processes.local_etcd import EtcdTLS, LocalEtcd, find_tool
from federation.store import Store, StoreUnavailable
from tests.conftest import Api, server_config
from tests.unit.test_deploy_files import command_lines


@pytest.fixture
def tls_etcd(tmp_path: Path) -> tuple[LocalEtcd, EtcdTLS]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("federation-server")
    files = {}
    for name, blob in {
        "server.pem": server.cert_chain_pems[0],
        "server.key": server.private_key_pem,
        "client.pem": client.cert_chain_pems[0],
        "client.key": client.private_key_pem,
        "ca.pem": ca.cert_pem,
    }.items():
        files[name] = tmp_path / name
        blob.write_to_path(str(files[name]))
    tls = EtcdTLS(
        cert=files["server.pem"],
        key=files["server.key"],
        ca=files["ca.pem"],
        client_cert=files["client.pem"],
        client_key=files["client.key"],
    )
    return LocalEtcd(tmp_path / "etcd", tls=tls), tls


async def test_store_with_a_client_certificate_reads_and_writes(
    tls_etcd: tuple[LocalEtcd, EtcdTLS],
) -> None:
    etcd, tls = tls_etcd
    etcd.start()
    try:
        async with Store(
            [etcd.endpoint],
            prefix="/tls/",
            ca_cert=tls.ca.read_bytes(),
            cert_chain=tls.client_cert.read_bytes(),
            cert_key=tls.client_key.read_bytes(),
        ) as store:
            await store.put("x", {"v": 1})
            entry = await store.get("x")
            assert entry is not None and entry.value == {"v": 1}
        async with Store([etcd.endpoint], prefix="/tls/", timeout=1.0) as plain:
            with pytest.raises(StoreUnavailable):
                await plain.get("x")
    finally:
        etcd.stop()


async def test_several_endpoints_over_tls_are_checked_for_one_server_name(
    tls_etcd: tuple[LocalEtcd, EtcdTLS],
) -> None:
    """Several endpoints are one gRPC target, so no address names the certificate:
    `serve --etcd-server-name` (here `localhost`, a SAN of the member's certificate)."""
    etcd, tls = tls_etcd
    etcd.start()
    try:
        creds = {
            "ca_cert": tls.ca.read_bytes(),
            "cert_chain": tls.client_cert.read_bytes(),
            "cert_key": tls.client_key.read_bytes(),
        }
        both = [etcd.endpoint, etcd.endpoint]
        async with Store(both, prefix="/tls/", tls_server_name="localhost", **creds) as named:
            await named.put("x", {"v": 2})
        async with Store(both, prefix="/tls/", timeout=1.0, **creds) as unnamed:
            with pytest.raises(StoreUnavailable):
                await unnamed.get("x")
    finally:
        etcd.stop()


def _auth_commands(files: dict[str, Path], endpoint: str) -> list[list[str]]:
    """The etcdctl steps of deploy/systemd/federation-etcd-auth.service, pointed at a
    local etcd and its certificates instead of the production hosts and paths."""
    local = {
        "--endpoints": f"https://{endpoint}",
        "--cacert": str(files["ca.pem"]),
        "--cert": str(files["root.pem"]),
        "--key": str(files["root.key"]),
    }
    steps = []
    for where, args in command_lines("etcdctl"):
        if where == "systemd/federation-etcd-auth.service":
            steps.append(
                [
                    find_tool("etcdctl"),
                    *(
                        f"{name}={local[name]}" if name in local else arg
                        for arg in args
                        for name in [arg.split("=", 1)[0]]
                    ),
                ]
            )
    assert steps and steps[-1][-2:] == ["auth", "enable"]
    return steps


async def test_a_server_works_under_the_etcd_auth_the_deploy_files_enable(
    tmp_path: Path,
) -> None:
    """With the deploy files' etcd auth on, a server whose certificate says `federation`
    runs (txns, leases, watches, the election); another certificate of the same CA, or
    the same one outside /federation/, is refused."""
    ca = trustme.CA()
    files: dict[str, Path] = {}
    blobs = {"ca.pem": ca.cert_pem}
    server = ca.issue_cert("127.0.0.1", "localhost")
    blobs.update({"server.pem": server.cert_chain_pems[0], "server.key": server.private_key_pem})
    for name in ("root", "federation", "intruder"):
        cert = ca.issue_cert(f"{name}.example", common_name=name)
        blobs[f"{name}.pem"] = cert.cert_chain_pems[0]
        blobs[f"{name}.key"] = cert.private_key_pem
    for name, blob in blobs.items():
        files[name] = tmp_path / name
        blob.write_to_path(str(files[name]))
    tls = EtcdTLS(
        cert=files["server.pem"],
        key=files["server.key"],
        ca=files["ca.pem"],
        client_cert=files["root.pem"],
        client_key=files["root.key"],
    )
    etcd = LocalEtcd(tmp_path / "etcd", tls=tls)
    etcd.start()
    try:
        for step in _auth_commands(files, etcd.endpoint):
            done = await asyncio.to_thread(
                subprocess.run, step, capture_output=True, text=True, timeout=30
            )
            assert done.returncode == 0, done.stderr

        def store(name: str, prefix: str) -> Store:
            return Store(
                [etcd.endpoint],
                prefix=prefix,
                timeout=2.0,
                ca_cert=files["ca.pem"].read_bytes(),
                cert_chain=files[f"{name}.pem"].read_bytes(),
                cert_key=files[f"{name}.key"].read_bytes(),
            )

        config = server_config(
            etcd,
            "/federation/",
            etcd_ca=files["ca.pem"],
            etcd_cert=files["federation.pem"],
            etcd_key=files["federation.key"],
        )
        app = TestServer(create_app(config, announce=False), host="127.0.0.1")
        await app.start_server()
        try:
            async with aiohttp.ClientSession() as session:
                api = Api(
                    str(app.make_url("")).rstrip("/"), str(config.admin_token), session, config
                )
                status, body = await api.call(
                    "POST", "/v1/regions", json={"name": "eu-de-1", "country": "DE"}
                )
                assert status == 201, body
                status, beat = await api.call(
                    "POST",
                    "/v1/regions/eu-de-1/heartbeat",
                    token=body["token"],
                    json={},
                )
                assert status == 200, beat
                end = asyncio.get_running_loop().time() + 10
                while True:  # the election's lease and the mirror's watch work too
                    status, ready = await api.call("GET", "/v1/ready", token=None)
                    _, region = await api.call("GET", "/v1/regions/eu-de-1")
                    if ready.get("leader") and region["state"] == "ready":
                        break
                    assert asyncio.get_running_loop().time() < end, (ready, region)
                    await asyncio.sleep(0.2)
                # etcd maintenance: status and compaction work as the federation user;
                # defragmenting is etcd root's alone, and the 403 says how to do it.
                status, etcd_status = await api.call("GET", "/v1/etcd/status")
                assert status == 200, etcd_status
                member = etcd_status["members"][0]
                assert member["db_size"] > 0 and member["errors"] == []
                status, body = await api.call("POST", f"/v1/etcd/defrag?member={member['id']}")
                assert status == 403, body
                assert body["error"]["code"] == "etcd_forbidden"
                assert "--etcd-cert" in body["error"]["message"]
        finally:
            await app.close()
        cli = [sys.executable, "-m", "federation", "etcd", "defrag", "--etcd", etcd.endpoint]
        cli += ["--etcd-ca", str(files["ca.pem"]), "--etcd-cert", str(files["root.pem"])]
        cli += ["--etcd-key", str(files["root.key"])]
        done = await asyncio.to_thread(
            subprocess.run, cli, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert "defragmented" in done.stdout and member["id"] in done.stdout
        for name, prefix in (("intruder", "/federation/"), ("federation", "/elsewhere/")):
            async with store(name, prefix) as other:
                with pytest.raises(EtcdPermissionDeniedError):
                    await other.put("tokens/planted", {"role": "admin"})
    finally:
        etcd.stop()
