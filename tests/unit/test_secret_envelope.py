"""Envelope encryption and the KEK file, without etcd: what opens, what does not, and
which files are refused."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from federation.model.secret import KEK_BYTES, KeyringError, keyring_line, parse_keyring
from federation.processes.certs import add_kek, make_kek_file
from federation.store.envelope import (
    FileKeyring,
    KeyUnavailable,
    fingerprint,
    new_key,
    open_values,
    seal_values,
)


def test_sealed_values_open_only_where_they_were_sealed_for() -> None:
    key = new_key()
    sealed = seal_values(key, {"password": "p"}, b"federation/secrets/db/v1")
    assert open_values(key, sealed, b"federation/secrets/db/v1") == {"password": "p"}
    # Copied to another secret or version, or opened with another key: refused.
    for context, other in ((b"federation/secrets/api/v1", key), (b"federation/secrets/db/v2", key)):
        with pytest.raises(KeyUnavailable):
            open_values(other, sealed, context)
    with pytest.raises(KeyUnavailable):
        open_values(new_key(), sealed, b"federation/secrets/db/v1")
    tampered = bytearray(base64.b64decode(sealed))
    tampered[-1] ^= 1
    with pytest.raises(KeyUnavailable):
        open_values(key, base64.b64encode(bytes(tampered)).decode(), b"federation/secrets/db/v1")


def test_fingerprints_are_keyed() -> None:
    one, two = new_key(), new_key()
    assert fingerprint(one, "password", "p") == fingerprint(one, "password", "p")
    assert fingerprint(one, "password", "p") != fingerprint(two, "password", "p")
    assert fingerprint(one, "password", "p") != fingerprint(one, "user", "p")


def test_a_keyring_unwraps_with_an_old_kek_until_it_is_removed(tmp_path: Path) -> None:
    path = make_kek_file(tmp_path / "kek")
    assert path.stat().st_mode & 0o777 == 0o600
    ring = FileKeyring(path)
    old = ring.primary
    wrapped = asyncio.run(ring.wrap(b"k" * 32, b"ctx"))
    assert wrapped.kek == old
    new = add_kek(path)
    assert new != old and ring.primary == new  # re-read on change
    assert ring.held() == [new, old]
    assert asyncio.run(ring.unwrap(wrapped, b"ctx")) == b"k" * 32
    with pytest.raises(KeyUnavailable):
        asyncio.run(ring.unwrap(wrapped, b"other context"))
    path.write_text(path.read_text().splitlines()[0] + "\n")
    with pytest.raises(KeyUnavailable, match="does not hold"):
        asyncio.run(ring.unwrap(wrapped, b"ctx"))


def test_a_keyring_file_being_rewritten_keeps_the_keys_last_read(tmp_path: Path) -> None:
    path = make_kek_file(tmp_path / "kek")
    ring = FileKeyring(path)
    primary = ring.primary
    path.write_text("")
    assert ring.primary == primary


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "holds no key"),
        ("# only a comment\n", "holds no key"),
        ("kek-1\n", "expected `ID BASE64-KEY`"),
        ("KEK 00\n", "expected `ID BASE64-KEY`"),
        ("kek-1 not-base64!\n", "not base64"),
        (f"kek-1 {base64.b64encode(b'short').decode()}\n", "5 bytes"),
        (keyring_line("kek-1", b"a" * KEK_BYTES) * 2, "appears twice"),
    ],
)
def test_a_bad_kek_file_is_refused_saying_why_without_the_key(text: str, says: str) -> None:
    with pytest.raises(KeyringError, match=says) as caught:
        parse_keyring(text)
    assert base64.b64encode(b"a" * KEK_BYTES).decode() not in str(caught.value)


def test_a_server_refuses_to_start_with_a_bad_kek_file(tmp_path: Path) -> None:
    from federation.api.app import StartRefused, create_app
    from federation.api.context import ServerConfig

    bad = tmp_path / "kek"
    bad.write_text("nonsense\n")
    with pytest.raises(StartRefused, match="--kek-file"):
        create_app(ServerConfig(etcd_endpoints=("127.0.0.1:1",), kek_file=bad))
    with pytest.raises(StartRefused, match="No such file"):
        create_app(ServerConfig(etcd_endpoints=("127.0.0.1:1",), kek_file=tmp_path / "none"))
