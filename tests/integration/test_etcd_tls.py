"""The store talks to an etcd that requires TLS client certificates."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from federation.processes.local_etcd import EtcdTLS, LocalEtcd
from federation.store import Store, StoreUnavailable


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
