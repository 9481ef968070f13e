"""The key material `federation up` makes for its data dir: the certificates of its etcd
(a CA of its own, one certificate for the etcd members, server and peer, and one client
certificate for the servers `up` starts), the key that signs audit checkpoints, and the
key-encryption key (KEK) file that seals secrets.

etcd then requires a client certificate signed by that CA, so another user of the
machine, who can reach the loopback port but not read the data dir (0700), cannot
read or write the federation's keys. The CA's private key is thrown away once the two
certificates are signed: nobody, `up` included, can sign another one. When a file is
missing or a certificate is about to expire, all of them are made again (etcd and the
servers are started by `up` with the new ones).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from federation.model.secret import KEK_BYTES, keyring_line, parse_keyring
from federation.processes.local_etcd import EtcdTLS

VALID_DAYS = 825
RENEW_WITHIN_DAYS = 30

_FILES = ("ca.pem", "etcd.pem", "etcd.key", "client.pem", "client.key")


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path`, readable by this user only (0600 from the start, not
    chmod-ed after: no moment where another user could open it)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_TRUNC


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    common_name: str,
    usages: list[x509.ObjectIdentifier],
    *,
    now: datetime.datetime,
    loopback: bool,
) -> tuple[bytes, bytes]:
    """A certificate for `common_name` signed by the CA: (certificate PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if loopback:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.DNSName("localhost"),
                ]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _current(directory: Path, now: datetime.datetime) -> bool:
    """Every file is there and no certificate expires within RENEW_WITHIN_DAYS."""
    if not all((directory / name).is_file() for name in _FILES):
        return False
    renew_by = now + datetime.timedelta(days=RENEW_WITHIN_DAYS)
    for name in ("ca.pem", "etcd.pem", "client.pem"):
        try:
            cert = x509.load_pem_x509_certificate((directory / name).read_bytes())
        except ValueError:
            return False
        if cert.not_valid_after_utc < renew_by:
            return False
    return True


def local_etcd_tls(directory: Path) -> EtcdTLS:
    """The certificates in `directory` (0700), made there first if missing or expiring."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    now = datetime.datetime.now(datetime.UTC)
    if not _current(directory, now):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = _name("federation up local etcd CA")
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        # The members' certificate is also their client certificate towards each other.
        etcd_cert, etcd_key = _issue(
            ca_key,
            ca_name,
            "etcd",
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            now=now,
            loopback=True,
        )
        client_cert, client_key = _issue(
            ca_key,
            ca_name,
            "federation",
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            now=now,
            loopback=False,
        )
        (directory / "ca.pem").unlink(missing_ok=True)
        for name, data in (
            ("etcd.pem", etcd_cert),
            ("etcd.key", etcd_key),
            ("client.pem", client_cert),
            ("client.key", client_key),
            # Last: a run interrupted before this point makes them all again.
            ("ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
        ):
            write_private(directory / name, data)
    return EtcdTLS(
        cert=directory / "etcd.pem",
        key=directory / "etcd.key",
        ca=directory / "ca.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        peers=True,
    )


def make_audit_key(path: Path) -> Path:
    """The Ed25519 key that signs audit checkpoints (`serve --audit-key`): made once per
    data dir, mode 0600, and kept, so checkpoints taken earlier still verify."""
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private(path, pem)
    return path


def _kek_id() -> str:
    # The date says when it was made; the random part keeps two files made the same day
    # (two data dirs, a replaced file) from naming different keys alike.
    return f"kek-{datetime.datetime.now(datetime.UTC):%Y%m%d}-{secrets.token_hex(3)}"


def make_kek_file(path: Path) -> Path:
    """The KEK file that seals secrets (`serve --kek-file`): made once per data dir,
    mode 0600, and kept (a new one could not open the secrets sealed with it)."""
    if not path.exists():
        write_private(path, keyring_line(_kek_id(), secrets.token_bytes(KEK_BYTES)).encode())
    return path


def add_kek(path: Path) -> str:
    """Put a new primary KEK first in the file at `path` (the others stay, still
    accepted to unwrap): the first step of a KEK rotation. Returns its id."""
    text = path.read_text() if path.exists() else ""
    held = {kid for kid, _ in parse_keyring(text)} if text.strip() else set()
    kek_id = _kek_id()
    while kek_id in held:
        kek_id = _kek_id()
    write_private(path, (keyring_line(kek_id, secrets.token_bytes(KEK_BYTES)) + text).encode())
    return kek_id
