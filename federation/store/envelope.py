"""Envelope encryption of secrets: data keys wrapped by a key-encryption key (KEK).

Each secret version is sealed with a fresh 256-bit data key (AES-256-GCM); the data key
is wrapped by the KEK provider's primary key and stored beside the ciphertext. The KEK
itself never enters etcd, so an etcd backup holds nothing that opens a secret. Every
ciphertext is bound to where it belongs (the secret's name and version as associated
data): a blob copied to another secret or version does not open.

`KeyProvider` is the KMS interface (wrap and unwrap, by key id); `FileKeyring` is the
local one, a file given to `federation serve --kek-file` (format: federation.model.
secret). It re-reads the file when it changes, so a KEK rotation needs no restart:
put the new key first in the file on every replica, run `federation secret rewrap`,
then remove the old key. A real KMS plugs in as another `KeyProvider`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from federation.model.secret import KeyringError, Wrapped, parse_keyring

NONCE_BYTES = 12
FINGERPRINT_HEX = 16  # 64 bits of HMAC-SHA256: tells versions apart, keyed so not guessable


class KeyUnavailable(Exception):
    """A wrapped key cannot be opened here: its KEK is not held, or it was tampered with."""


class KeyProvider(Protocol):
    """A KMS: wraps data keys with its primary KEK, unwraps with any KEK it holds."""

    @property
    def primary(self) -> str:
        """The id of the KEK new data keys are wrapped with."""
        ...

    async def wrap(self, key: bytes, context: bytes) -> Wrapped: ...

    async def unwrap(self, wrapped: Wrapped, context: bytes) -> bytes:
        """The key; KeyUnavailable when its KEK is not held or the blob does not open."""
        ...


def _seal(key: bytes, plain: bytes, context: bytes) -> str:
    nonce = os.urandom(NONCE_BYTES)
    return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, plain, context)).decode()


def _open(key: bytes, blob: str, context: bytes) -> bytes:
    raw = base64.b64decode(blob)
    return AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context)


class FileKeyring:
    """The KEKs of a file (primary first), re-read whenever the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._keys: dict[str, bytes] = {}
        self._primary = ""
        self.mode = 0  # the file's permission bits, when last read
        self._load()

    def _load(self) -> None:
        """Read the file if it changed; KeyringError saying why it cannot be used."""
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return
            text = self.path.read_text()
        except OSError as exc:
            raise KeyringError(f"{self.path}: {exc.strerror}") from None
        keys = parse_keyring(text)
        self._keys, self._primary, self._stamp = dict(keys), keys[0][0], stamp
        self.mode = st.st_mode & 0o777

    def _current(self) -> dict[str, bytes]:
        # A file being rewritten keeps the keys last read: delivery must not stop for it.
        with contextlib.suppress(KeyringError):
            self._load()
        return self._keys

    @property
    def primary(self) -> str:
        self._current()
        return self._primary

    def held(self) -> list[str]:
        """The ids of the KEKs held, primary first."""
        return list(self._current())

    async def wrap(self, key: bytes, context: bytes) -> Wrapped:
        keys = self._current()
        return Wrapped(kek=self._primary, blob=_seal(keys[self._primary], key, context))

    async def unwrap(self, wrapped: Wrapped, context: bytes) -> bytes:
        kek = self._current().get(wrapped.kek)
        if kek is None:
            raise KeyUnavailable(
                f"wrapped by KEK {wrapped.kek!r}, which this server's --kek-file does not hold"
            )
        try:
            return _open(kek, wrapped.blob, context)
        except (InvalidTag, ValueError):
            raise KeyUnavailable(f"a key wrapped by KEK {wrapped.kek!r} does not open") from None


def new_key() -> bytes:
    """A fresh 256-bit key (a data key or a fingerprint key)."""
    return secrets.token_bytes(32)


def seal_values(data_key: bytes, values: dict[str, str], context: bytes) -> str:
    """The values, encrypted with `data_key` and bound to `context`."""
    return _seal(data_key, json.dumps(values, sort_keys=True).encode(), context)


def open_values(data_key: bytes, ciphertext: str, context: bytes) -> dict[str, str]:
    """What `seal_values` sealed; KeyUnavailable when it does not open."""
    try:
        values = json.loads(_open(data_key, ciphertext, context))
    except (InvalidTag, ValueError):
        raise KeyUnavailable("the sealed values do not open with their data key") from None
    return {str(k): str(v) for k, v in values.items()}


def fingerprint(key: bytes, name: str, value: str) -> str:
    """A keyed fingerprint of one value: equal values of one secret fingerprint alike,
    and without the (wrapped) key nobody can test a guess against it."""
    digest = hmac.new(key, name.encode() + b"\x00" + value.encode(), hashlib.sha256)
    return "hmac-sha256:" + digest.hexdigest()[:FINGERPRINT_HEX]
