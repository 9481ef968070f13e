"""One retry policy for every unary etcd call: a deadline per call, a bound per attempt.

`call` runs one etcd call (given as a function of the attempt's timeout) under a
span and its metrics (federation.telemetry), and retries transient failures with
exponential backoff (tenacity) until the call's deadline; then StoreUnavailable. Each
attempt gets at most `attempt_timeout` of the deadline: when the etcd leader dies, a
follower forwards writes to it until a new leader is elected, and those writes are
lost without an answer, so only a fresh attempt, after the election, lands. A retried
write whose first attempt did land after all fails its own conditions (every txn
that matters is a compare-and-swap), or is recognised as landed (the audit
committer, which checks the head it would have written).

A cancelled task is never retried: gRPC reports a cancellation as a CANCELLED rpc
error, which is turned back into the task's CancelledError.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import grpc.aio
from etcd3aio import EtcdConnectionError, EtcdTransientError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from federation.store.errors import NoSpace, StoreUnavailable
from federation.telemetry import metrics as _metrics
from federation.telemetry.setup import child_span

T = TypeVar("T")

# An attempt of one call waits at most this long before it is tried again.
ATTEMPT_TIMEOUT = 2.0

_RETRIED_CODES = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
)


class _Transient(Exception):
    """A gRPC failure worth retrying within the operation's deadline."""


def reraise_cancellation(exc: grpc.aio.AioRpcError) -> None:
    """gRPC turns a cancelled task into a CANCELLED rpc error; give the task its
    cancellation back, or a loop that retries errors would swallow its own stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


def is_nospace(exc: grpc.aio.AioRpcError) -> bool:
    """etcd's answer to a write while its NOSPACE alarm is raised (RESOURCE_EXHAUSTED
    is also gRPC's own "message too large", which this is not)."""
    return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "database space exceeded" in (
        exc.details() or ""
    )


async def call(
    what: str,
    fn: Callable[[float], Awaitable[T]],
    *,
    deadline: float,
    attempt_timeout: float = ATTEMPT_TIMEOUT,
) -> T:
    """Run `fn(timeout)` until it answers or `deadline` seconds have passed, recording
    a span (when tracing), its latency and its errors by operation `what`."""
    started = time.perf_counter()
    try:
        with child_span(f"etcd {what}", **{"db.system": "etcd", "db.operation": what}):
            return await _attempts(what, fn, deadline, attempt_timeout)
    except Exception as exc:
        kind = "unavailable" if isinstance(exc, StoreUnavailable) else type(exc).__name__
        if isinstance(exc, NoSpace):
            kind = "nospace"
        if isinstance(exc, grpc.aio.AioRpcError):
            kind = exc.code().name.lower()
        _metrics.etcd_errors.add(1, {"operation": what, "kind": kind})
        raise
    finally:
        _metrics.etcd_duration.record(time.perf_counter() - started, {"operation": what})


async def _attempts(
    what: str, fn: Callable[[float], Awaitable[T]], deadline: float, attempt_timeout: float
) -> T:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline

    async def attempt() -> T:
        remaining = max(0.05, min(attempt_timeout, end - loop.time()))
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
            # cancellation that races with completion, and a stop would hang.
            async with asyncio.timeout(remaining):
                return await fn(remaining)
        except (EtcdConnectionError, EtcdTransientError, TimeoutError) as exc:
            raise _Transient(str(exc) or type(exc).__name__) from exc
        except grpc.aio.AioRpcError as exc:
            reraise_cancellation(exc)
            if exc.code() in _RETRIED_CODES:
                raise _Transient(exc.code().name) from exc
            if is_nospace(exc):
                # Not retried: nothing changes until a person acts.
                _metrics.etcd_nospace_refusals.add(1, {"operation": what})
                raise NoSpace(what) from exc
            raise

    try:
        # Most calls succeed at once: only a failed first attempt pays for the
        # retry machinery.
        return await attempt()
    except _Transient:
        pass
    try:
        async for retrying in AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_delay(max(0.0, end - loop.time())),
            wait=wait_exponential(multiplier=0.05, max=1.0),
            reraise=True,
        ):
            with retrying:
                return await attempt()
    except _Transient as exc:
        raise StoreUnavailable(f"etcd {what}: {exc}") from exc
    raise StoreUnavailable(f"etcd {what}: no attempt made")  # pragma: no cover
