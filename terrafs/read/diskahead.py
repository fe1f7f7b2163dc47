"""Disk read-ahead: cached blocks verified and opened ahead of a sequential re-read.

As the kernel reads ahead in a local file, two loader threads check (CRC) and
open the next blocks from the disk cache into the hot set, so a warm copy does
not wait for one verification per block. A reader needing a block being loaded
waits for it rather than loading it twice.

Its lock is a leaf. Must not: fetch, or decide which blocks (the caller does).
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

log = logging.getLogger(__name__)

Key = tuple[str, int]


class DiskAhead:
    def __init__(self, load: Callable[[object, int, bytearray], None], block_size: int, threads: int = 2):
        self._load = load  # load(file, index, scratch): into the hot set, or nothing if absent
        self._block_size = block_size
        self._loading: dict[Key, threading.Event] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._loop, name="terrafs-cache-loader", daemon=True)
                         for _ in range(threads)]
        for t in self._threads:
            t.start()

    def schedule(self, f, key: str, indices: list[int]) -> None:
        """Load these blocks of f (cache key `key`) unless already being loaded."""
        with self._lock:
            for i in indices:
                if (key, i) in self._loading:
                    continue
                self._loading[(key, i)] = threading.Event()
                self._queue.put((f, key, i))

    def loading(self, key: Key) -> threading.Event | None:
        with self._lock:
            return self._loading.get(key)

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=10)

    def _loop(self) -> None:
        scratch = bytearray(self._block_size)  # reused: no fresh memory per block
        while True:
            item = self._queue.get()
            if item is None:
                return
            f, key, i = item
            try:
                self._load(f, i, scratch)
            except Exception:  # read-ahead is an optimisation: the reader retries itself
                log.exception("loading block %d of %s from the cache failed", i, getattr(f, "url", f))
            finally:
                with self._lock:
                    event = self._loading.pop((key, i), None)
                if event is not None:
                    event.set()
