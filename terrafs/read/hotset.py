"""Recently used blocks in RAM, bounded by bytes and by open files.

A 128 KiB kernel read must not re-read and re-verify a whole block from disk
each time. A block loaded from the disk cache is held as its open, verified
file (DiskBlock): it costs a file descriptor, its bytes stay in the page cache,
and its length counts against the byte bound like a block in RAM.

Its lock is a leaf: nothing is called while it is held.
Must not: fetch, touch the disk, or know what a block means.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

from terrafs.cache.blockfiles import DiskBlock

Key = tuple[str, int]

MAX_OPEN_BLOCKS = 128  # DiskBlocks held at most: small blocks must not exhaust descriptors


class HotSet:
    def __init__(self, limit: int, max_open: int = MAX_OPEN_BLOCKS):
        self._limit = limit
        self._max_open = max_open
        self._data: OrderedDict[Key, bytes | DiskBlock] = OrderedDict()
        self._open: OrderedDict[Key, None] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __contains__(self, key: Key) -> bool:
        with self._lock:
            return key in self._data

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def open_files(self) -> int:
        return len(self._open)

    def get(self, key: Key) -> bytes | DiskBlock | None:
        with self._lock:
            data = self._data.get(key)
            if data is not None:
                self._data.move_to_end(key)
            return data

    def put(self, key: Key, data: bytes | DiskBlock) -> None:
        with self._lock:
            self._pop(key)
            self._data[key] = data
            self._bytes += len(data)
            if isinstance(data, DiskBlock):
                self._open[key] = None
                while len(self._open) > self._max_open:
                    self._pop(next(iter(self._open)))
            while self._bytes > self._limit and len(self._data) > 1:
                self._pop(next(iter(self._data)))

    def close_files(self, keys: set[str]) -> None:
        """Let go of the open cache files of these file keys (nobody has them open any more)."""
        with self._lock:
            for k in [k for k in self._open if k[0] in keys]:
                self._pop(k)

    def drop_files(self, keys: set[str]) -> None:
        """Forget every block of these file keys."""
        with self._lock:
            for k in [k for k in self._data if k[0] in keys]:
                self._pop(k)

    def _pop(self, key: Key) -> None:
        old = self._data.pop(key, None)
        if old is not None:
            self._bytes -= len(old)
            self._open.pop(key, None)
