"""The server's memory: fewer garbage-collector runs, and freed heap handed back to
the OS after a big controller pass."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 - glibc only: absent on musl and macOS
    except (OSError, AttributeError):
        return None
    return libc


def release_memory() -> None:
    """Hand freed heap pages back to the OS (glibc `malloc_trim`; a no-op elsewhere).

    A full controller pass parses and plans thousands of records, then frees them;
    glibc keeps the freed pages, so without this the server's RSS stays at the peak
    of its biggest pass. It walks the heap, so it is called after big passes only."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def tune_gc() -> None:
    """Collect garbage cycles less often, and never re-scan what startup built.

    Each deploy allocates a few hundred short-lived objects (requests, pydantic models,
    protobufs), so CPython's default gen-0 threshold of 700 runs the collector every
    few deploys, and each run walks every young object for nothing: almost nothing
    here forms cycles (reference counting frees it). A threshold of 50,000 costs
    little memory. `gc.freeze` moves the objects that exist now (modules, schemas)
    out of every later collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
