"""Giving back what a long load frees: glibc keeps freed memory in its arenas.

The read path allocates and frees blocks (1 MiB) and pieces (16 KiB) all day, from
many threads; glibc's malloc keeps what is freed inside its per-thread arenas for
reuse, and under a steady load the part held free grew by ~3 MiB a minute while
the part in use stayed flat (scripts/soak --trace, docs/soak.md). A daemon thread
calls malloc_trim(0) every `interval` seconds, which hands the free pages of every
arena back to the system; nothing changes for allocations in use.

Must not: allocate or free anything itself, or run where there is no glibc
(musl and others: start() does nothing).
"""
from __future__ import annotations

import ctypes
import logging
import threading

log = logging.getLogger(__name__)

INTERVAL = 10.0  # seconds between trims: a trim of a ~100 MiB heap takes about a millisecond


def _malloc_trim():
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


class Trimmer:
    """A daemon thread that trims malloc's arenas now and then, until stop()."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Trimmer":
        trim = _malloc_trim()
        if trim is None:
            log.debug("no malloc_trim in this C library: freed memory stays with the allocator")
            return self
        self._thread = threading.Thread(target=self._loop, args=(trim,), name="terrafs-malloc-trim", daemon=True)
        self._thread.start()
        return self

    def _loop(self, trim) -> None:
        while not self._stop.wait(self._interval):
            trim(0)  # ctypes lets go of the GIL for the call

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
