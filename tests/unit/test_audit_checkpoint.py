"""The audit chain's pure parts: signed checkpoints, and checking a chain against one
(federation/store/audit/checkpoint.py, chain.py). No etcd: entries are made in memory."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from federation.store import keys
from federation.store.audit import GENESIS, Change, Head, check, entry_key, make_entry
from federation.store.audit.checkpoint import (
    Checkpoint,
    canonical,
    canonical_chunks,
    document_signature_holds,
    private_key_from_pem,
    public_key_text,
    sign,
    sign_digest,
    sign_document,
    signature_holds,
)
from federation.store.txn import Entry, decode

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
KEY = Ed25519PrivateKey.generate()


def chain(n: int) -> tuple[list[Entry], Entry | None]:
    """n entries as stored (each written once, at its own revision) and their head."""
    head, entries = Head(0, GENESIS), []
    for i in range(n):
        raw, head = make_entry(head, Change("thing.put", f"things/{i}", "admin:t"), NOW)
        entries.append(Entry(entry_key(head.seq), decode(raw.encode()), i + 10, i + 10, 0))
    return entries, (head_at(head.seq, head.hash) if n else None)


def head_at(seq: int, hash: object) -> Entry:
    return Entry(keys.AUDIT_HEAD, {"seq": seq, "hash": hash}, 100, 5, 0)


def test_a_checkpoint_signed_by_the_key_holds_and_survives_its_json() -> None:
    signed = sign(KEY, Head(7, "a" * 64), NOW)
    again = Checkpoint.model_validate_json(signed.model_dump_json())
    assert signature_holds(again, KEY.public_key())
    assert again.public_key == public_key_text(KEY)


@given(
    field=st.sampled_from(["seq", "hash", "at"]),
    seq=st.integers(1, 10**9),
)
def test_any_change_to_what_was_signed_breaks_the_signature(field: str, seq: int) -> None:
    signed = sign(KEY, Head(seq, "b" * 64), NOW)
    changed = {"seq": seq + 1, "hash": "c" * 64, "at": "2025-01-02T03:04:06+00:00"}[field]
    forged = signed.model_copy(update={field: changed})
    assert not signature_holds(forged, KEY.public_key())


def test_another_keys_signature_does_not_hold() -> None:
    other = sign(Ed25519PrivateKey.generate(), Head(3, "d" * 64), NOW)
    assert not signature_holds(other, KEY.public_key())


def test_a_key_file_that_is_not_ed25519_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="Ed25519"):
        private_key_from_pem(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")


# -- checking a chain ------------------------------------------------------------------


def test_a_whole_chain_verifies_with_or_without_its_checkpoint() -> None:
    entries, head = chain(5)
    assert check(entries, head).ok
    anchor = Head(3, str(entries[2].value["hash"]))
    result = check(entries, head, anchor=anchor)
    assert result.ok and result.checkpoint == 3


def test_an_empty_log_verifies_alone_but_not_against_a_checkpoint() -> None:
    assert check([], None).ok
    result = check([], None, anchor=Head(4, "e" * 64))
    assert (
        not result.ok and "empty" in str(result.reason) and "checkpoint seq 4" in str(result.reason)
    )


def test_a_log_shorter_than_its_checkpoint_fails_naming_it() -> None:
    entries, _ = chain(6)
    anchor = Head(6, str(entries[5].value["hash"]))
    kept, head = entries[:3], head_at(3, entries[2].value["hash"])
    result = check(kept, head, anchor=anchor)
    assert not result.ok and result.first_bad == 4
    assert "checkpoint seq 6" in str(result.reason)


def test_an_entry_past_the_head_is_flagged() -> None:
    entries, _ = chain(4)
    head = head_at(3, entries[2].value["hash"])
    result = check(entries, head)
    assert not result.ok and result.first_bad == 4 and "past the head" in str(result.reason)


def test_a_checkpoint_whose_entry_changed_fails() -> None:
    entries, head = chain(3)
    result = check(entries, head, anchor=Head(2, "f" * 64))
    assert not result.ok and result.first_bad == 2 and "checkpoint seq 2" in str(result.reason)


def test_the_raw_check_of_an_entry_agrees_with_the_digest_of_its_value() -> None:
    """`check_raw` hashes the stored bytes when they are in the committer's form and
    falls back to the digest of the parsed value otherwise: the same verdict."""
    import json as _json
    from datetime import UTC, datetime

    from federation.store.audit import Change, Head, make_entry
    from federation.store.audit.chain import GENESIS, check_raw, entry_key

    text, _ = make_entry(
        Head(), Change("policy.put", "policies/p", details={"é": 1}), datetime.now(UTC)
    )
    key = entry_key(1)
    assert check_raw(key, text.encode(), 5, 5, 1, GENESIS)[1] is None
    # The same value written another way (spaces, other key order): still whole.
    other = _json.dumps(_json.loads(text), indent=1).encode()
    assert check_raw(key, other, 5, 5, 1, GENESIS)[1] is None
    # A changed value, in either form: not whole.
    forged = text.replace('"policy.put"', '"policy.del"').encode()
    assert "does not match its hash" in str(check_raw(key, forged, 5, 5, 1, GENESIS)[1])
    # A key that once told the check to skip the hash is only data.
    tricked = _json.dumps({**_json.loads(forged), "__hash_checked": True}).encode()
    assert "does not match its hash" in str(check_raw(key, tricked, 5, 5, 1, GENESIS)[1])
    assert check_raw(key, text.encode(), 6, 5, 1, GENESIS)[1] is not None  # rewritten


documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(
    st.dictionaries(st.text(), documents | st.lists(documents, min_size=0, max_size=9), max_size=6),
    st.integers(min_value=1, max_value=4),
)
def test_a_document_encoded_in_pieces_is_its_canonical_text(
    doc: dict[str, object], batch: int
) -> None:
    """A report is sent as it is encoded, a few items of its long lists at a time; the
    pieces must be exactly the canonical text its signature is checked against."""
    assert b"".join(canonical_chunks(doc, batch=batch)) == canonical(doc)


def test_a_streamed_signature_holds_for_its_document_only() -> None:
    """A report is signed by the SHA-256 of its canonical text, hashed as it is sent."""
    report = {"intervals": [{"country": "DE", "n": i} for i in range(2500)], "to": "é"}
    digest = hashlib.sha256(b"".join(canonical_chunks(report))).hexdigest()
    signature = sign_digest(KEY, digest)
    assert document_signature_holds(report, signature)
    assert signature == sign_document(KEY, report)
    report["intervals"][1234]["country"] = "US"
    assert not document_signature_holds(report, signature)
    report["intervals"][1234]["country"] = "DE"
    assert not document_signature_holds(report, {**signature, "sha256": "0" * 64})
    other = sign_digest(Ed25519PrivateKey.generate(), digest)
    assert not document_signature_holds(report, {**signature, "signature": other["signature"]})
