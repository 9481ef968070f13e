"""etcd3aio below its public API: the one module that touches its private names.

`KVService.txn` takes finished Compare and RequestOp messages and copies each into a
new TxnRequest, copying every message again; a deploy's txns carry a few hundred
operations a second, and that copying would be most of their cost. So the TxnRequest is filled in
place here (`txn_request`, with etcd3aio's generated protobuf classes) and sent with
`KVService._rpc` (`send_txn`), the method every KVService call goes through for its
error mapping and etcd auth metadata. etcd3aio is pinned below 0.4 for these names:
a release that moves them breaks this module, and only this one.

`send_txn` is the single entry point to etcd for a txn, so tests that lose an answer
after etcd applied the txn (tests/conftest.py `lose_answers`) patch it.

`allow_large_messages` sets a gRPC channel option etcd3aio does not expose: etcd sends
a watch's backlog in responses of up to a thousand revisions, far above gRPC's default
4 MiB limit on a received message once a watch has fallen behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from etcd3aio import Etcd3Client, prefix_range_end
from etcd3aio._protobuf import Compare, TxnRequest
from etcd3aio.kv import KVService

from federation.store.txn import Cond, Op, encode


def txn_request(
    prefix: str, conditions: Sequence[Cond], ops: Sequence[Op], read_on_failure: Sequence[str]
) -> Any:
    """The etcd TxnRequest for keys under `prefix`, each message filled in place."""
    request = TxnRequest()
    for cond in conditions:
        compare = request.compare.add()
        compare.key = (prefix + cond.key).encode()
        if cond.kind == "absent":
            compare.target = Compare.CREATE
            compare.create_revision = 0
        elif cond.kind == "exists":
            compare.result = Compare.GREATER
            compare.target = Compare.CREATE
            compare.create_revision = 0
        elif cond.kind == "revision":
            compare.target = Compare.MOD
            compare.mod_revision = cond.revision
        else:
            compare.target = Compare.VALUE
            compare.value = cond.value.encode()
    for op in ops:
        key = (prefix + op.key).encode()
        if op.kind in ("put", "put_raw"):
            put = request.success.add().request_put
            put.key = key
            if op.kind == "put":
                assert op.value is not None
                put.value = encode(op.value)
            else:
                put.value = op.raw.encode()
            if op.lease:
                put.lease = op.lease
        else:
            delete = request.success.add().request_delete_range
            delete.key = key
            if op.kind == "delete_prefix":
                delete.range_end = prefix_range_end(key)
    for read in read_on_failure:
        request.failure.add().request_range.key = (prefix + read).encode()
    return request


async def send_txn(kv: KVService, request: Any, *, rpc_timeout: float) -> Any:
    """Send a TxnRequest built by `txn_request` (gRPC deadline `rpc_timeout`); the
    TxnResponse, or etcd3aio's errors as every KVService call raises them."""
    return await kv._rpc(kv._stub.Txn, request, operation="KV.Txn", timeout=rpc_timeout)


# Received messages up to this size: a thousand revisions of txns at etcd's default
# request limit (1.5 MiB) would be more, but a backlog that large is re-listed anyway.
MAX_RECEIVED_BYTES = 256 * 1024 * 1024


def allow_large_messages(client: Etcd3Client, limit: int = MAX_RECEIVED_BYTES) -> None:
    """Let `client`'s channel (made at connect, after this) receive messages up to
    `limit` bytes."""
    client._manager.grpc_options.append(("grpc.max_receive_message_length", limit))
