"""glibc heap settings of a long-running server process: fewer arenas and a periodic trim, so
memory freed by one burst of work goes back to the OS instead of holding the RSS up."""

from __future__ import annotations

import asyncio
import ctypes
import logging

log = logging.getLogger(__name__)

#: glibc's ``mallopt`` parameter for the most malloc arenas (malloc.h).
M_ARENA_MAX = -8


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def limit_malloc_arenas(n: int) -> bool:
    """``mallopt(M_ARENA_MAX, n)``: threads created from now on share at most ``n`` malloc arenas.
    False where the C library is not glibc (the setting then does nothing)."""
    libc = _libc()
    return bool(libc.mallopt(M_ARENA_MAX, n)) if libc is not None else False


def trim_malloc() -> bool:
    """``malloc_trim(0)``: return every whole free page of every arena to the OS (``madvise``).
    True when memory was released; False when there was none or the C library is not glibc."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


async def trim_malloc_every(interval_s: float) -> None:
    """Call :func:`trim_malloc` every ``interval_s`` seconds on a worker thread, until cancelled."""
    if _libc() is None:
        log.info("malloc_trim_every_s: not glibc, no trimming")
        return
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(trim_malloc)
