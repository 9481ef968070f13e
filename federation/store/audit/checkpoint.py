"""Signed checkpoints: the audit log anchored outside etcd.

Whoever can write etcd can rewrite the whole chain and its head so that it still
verifies, or cut its tail and point the head at what is left. They cannot sign: a
checkpoint is the head (`seq`, `hash`) and the time `at`, signed with the server's
Ed25519 key, which is a file given to `federation serve --audit-key` and is never
stored in etcd. Kept where the etcd operator cannot write, a checkpoint proves the log
once held that entry; `check(..., anchor=...)` fails when it no longer does.

The file carries the public key it was signed with, so it says which key to check it
with; a server checks only checkpoints of its own key (a forger's key would vouch for
anything). What is signed is the canonical JSON of `format`, `seq`, `hash` and `at`
(`at` as the very string in the file).

Pure: keys and bytes in, results out. Reading the key file is the server's
(federation.api.app); making one is `federation up`'s (federation.processes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, Final, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel, ConfigDict, Field

from federation.store.audit.chain import Head

FORMAT: Final = "federation-audit-checkpoint/1"
# Standard base64 of 32 bytes (a raw Ed25519 public key) and of 64 (a signature).
_KEY_B64 = r"^[A-Za-z0-9+/]{43}=$"
_SIGNATURE_B64 = r"^[A-Za-z0-9+/]{86}==$"


class Checkpoint(BaseModel):
    """A signed checkpoint, as `GET /v1/audit/checkpoint` answers it and its file holds."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["federation-audit-checkpoint/1"] = FORMAT
    seq: int = Field(ge=1, le=10**18, strict=True)
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    at: str = Field(min_length=1, max_length=64)
    public_key: str = Field(pattern=_KEY_B64)
    signature: str = Field(pattern=_SIGNATURE_B64)

    @property
    def head(self) -> Head:
        """The entry this checkpoint vouches for."""
        return Head(self.seq, self.hash)


def signed_bytes(seq: int, hash: str, at: str) -> bytes:
    """What the signature covers: the canonical JSON of the format, seq, hash and at."""
    body = {"format": FORMAT, "seq": seq, "hash": hash, "at": at}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public key as a checkpoint names it: base64 of its 32 raw bytes."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def sign(key: Ed25519PrivateKey, head: Head, now: datetime) -> Checkpoint:
    """A checkpoint of `head`, signed now."""
    at = now.isoformat()
    signature = key.sign(signed_bytes(head.seq, head.hash, at))
    return Checkpoint(
        seq=head.seq,
        hash=head.hash,
        at=at,
        public_key=public_key_text(key),
        signature=base64.b64encode(signature).decode(),
    )


def signature_holds(checkpoint: Checkpoint, public: Ed25519PublicKey) -> bool:
    """True when `checkpoint` was signed, as it reads, by the key `public`."""
    try:
        signature = base64.b64decode(checkpoint.signature, validate=True)
        public.verify(signature, signed_bytes(checkpoint.seq, checkpoint.hash, checkpoint.at))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def private_key_from_pem(pem: bytes) -> Ed25519PrivateKey:
    """The Ed25519 key of a PEM file (PKCS#8, unencrypted, as `openssl genpkey
    -algorithm ed25519` writes it); ValueError saying why not."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not an unencrypted Ed25519 private key in PEM: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"an Ed25519 private key is needed, not {type(key).__name__}")
    return key


def canonical(value: Any) -> bytes:
    """The bytes a signed document's signature covers: its canonical JSON (sorted keys,
    compact, non-ASCII kept), so any change of a value or a key breaks it."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_chunks(document: Mapping[str, Any], *, batch: int = 1000) -> Iterator[bytes]:
    """`canonical(document)` in pieces, a document too big to encode at once (a report
    of a million audit entries): its top-level lists `batch` items at a time."""
    encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
    sep = b"{"
    for name in sorted(document):
        value = document[name]
        yield sep + encode(name).encode() + b":"
        sep = b","
        if not isinstance(value, list) or len(value) <= batch:
            yield encode(value).encode()
            continue
        for i in range(0, len(value), batch):
            # A list's items as its canonical text has them: `[a,b]` is `[` a `,` b `]`.
            text = encode(value[i : i + batch])[1:-1]
            yield (b"[" if i == 0 else b",") + text.encode()
        yield b"]"
    yield b"{}" if sep == b"{" else b"}"


# What a streamed report's signature covers: its canonical text's SHA-256 (Ed25519
# signs a whole message at once, and the report is sent before it is all encoded).
STREAMED: Final = "ed25519-sha256"


def _digest_message(sha256: str) -> bytes:
    return canonical({"algorithm": STREAMED, "sha256": sha256})


def sign_document(key: Ed25519PrivateKey, document: Any) -> dict[str, str]:
    """A signature of `document` with the audit key: `{"algorithm", "public_key",
    "sha256", "signature"}`, checked by `document_signature_holds`."""
    return sign_digest(key, hashlib.sha256(canonical(document)).hexdigest())


def sign_digest(key: Ed25519PrivateKey, sha256: str) -> dict[str, str]:
    """`sign_document` of a document whose canonical text's SHA-256 is `sha256` (hex),
    for one hashed as it is sent (`canonical_chunks`)."""
    return {
        "algorithm": STREAMED,
        "public_key": public_key_text(key),
        "sha256": sha256,
        "signature": base64.b64encode(key.sign(_digest_message(sha256))).decode(),
    }


def document_signature_holds(document: Any, signature: Any) -> bool:
    """True when `signature` (as `sign_document` made it, or the earlier `ed25519` over
    the canonical text itself) covers `document` exactly, by the public key it names;
    the caller decides whether that key is one it trusts."""
    if not isinstance(signature, dict):
        return False
    algorithm = signature.get("algorithm")
    if algorithm == STREAMED:
        sha256 = hashlib.sha256(canonical(document)).hexdigest()
        if signature.get("sha256") != sha256:
            return False
        message = _digest_message(sha256)
    elif algorithm == "ed25519":
        message = canonical(document)
    else:
        return False
    try:
        raw_key = base64.b64decode(str(signature.get("public_key", "")), validate=True)
        raw_sig = base64.b64decode(str(signature.get("signature", "")), validate=True)
        Ed25519PublicKey.from_public_bytes(raw_key).verify(raw_sig, message)
    except (InvalidSignature, binascii.Error, ValueError, UnsupportedAlgorithm):
        return False
    return True
