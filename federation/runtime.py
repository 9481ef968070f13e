"""Process-level tuning for the long-running server."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)


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
    of its biggest pass. Costs a few ms, so it is called after big passes only."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
