"""The on-disk block cache: fixed-size blocks of remote files, on diskcache.

A block is `block_size` bytes of one file (the last block of a file may be
shorter). Only complete blocks are stored, each with its length and CRC32 kept
in the same SQLite row (diskcache's `tag`), and both are checked on every get:
a block torn by a crash or flipped on disk is dropped and reported as a miss,
never served. Small per-file metadata (the ETag seen last) lives in a separate
cache that is never evicted, so LRU eviction of blocks cannot make us forget
an identity.

This module must not know about HTTP, FUSE or read policy; keys never contain
secrets (the caller builds file keys from the URL, which carries none).
"""
from __future__ import annotations

import logging
import threading
import zlib
from pathlib import Path
from typing import Any

import diskcache

log = logging.getLogger(__name__)

_BLOCK = "b"  # first element of every block key: (_BLOCK, file_key, index)
_HITS = "stats:hits"
_MISSES = "stats:misses"
_FLUSH_EVERY = 1024  # counter updates kept in memory before being written


def _tag(data: bytes) -> int:
    # Length and checksum packed into one integer, stored atomically with the row.
    return (len(data) << 32) | zlib.crc32(data)


class BlockCache:
    """Blocks of remote files, LRU-evicted to stay under `size_limit` bytes."""

    def __init__(self, directory: Path, size_limit: int, block_size: int = 1 << 20):
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self.directory = Path(directory)
        self.block_size = block_size
        self.size_limit = size_limit
        # The cache holds data that needed credentials to fetch: owner only.
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._blocks = diskcache.Cache(
            str(self.directory / "blocks"),
            size_limit=size_limit,
            eviction_policy="least-recently-used",
        )
        self._meta = diskcache.Cache(str(self.directory / "meta"), eviction_policy="none")
        self._lock = threading.Lock()
        self._hits = 0  # not yet flushed to the meta cache
        self._misses = 0

    # -- blocks ---------------------------------------------------------------

    def get(self, file_key: str, index: int) -> bytes | None:
        """The verified block, or None (missing, or corrupt and now dropped)."""
        key = (_BLOCK, file_key, index)
        try:
            value, tag = self._blocks.get(key, default=None, tag=True)
        except (OSError, diskcache.Timeout) as exc:
            log.warning("block cache read failed for block %d of %s: %s", index, file_key, exc)
            value, tag = None, None
        if value is not None and (not isinstance(value, bytes) or tag != _tag(value)):
            log.warning("dropping corrupt cached block %d of %s", index, file_key)
            self._blocks.delete(key)
            value = None
        self._count(value is not None)
        return value

    def put(self, file_key: str, index: int, data: bytes, expected_len: int | None = None) -> None:
        """Store one COMPLETE block: `expected_len` bytes (default block_size)."""
        want = self.block_size if expected_len is None else expected_len
        if len(data) != want or want > self.block_size or want <= 0:
            raise ValueError(f"incomplete block {index} of {file_key}: {len(data)} bytes, expected {want}")
        data = bytes(data)
        # diskcache writes the value file first and commits the row after, so a
        # kill -9 in between leaves an orphan file, never a row pointing at a torn one.
        self._blocks.set((_BLOCK, file_key, index), data, tag=_tag(data))

    def has(self, file_key: str, index: int) -> bool:
        """Whether a block is stored (not verified: get() does that)."""
        return (_BLOCK, file_key, index) in self._blocks

    def drop_file(self, file_key: str) -> int:
        """Forget every block of one file (its remote content changed); returns how many."""
        doomed = [k for k in self._blocks.iterkeys() if isinstance(k, tuple) and len(k) == 3 and k[1] == file_key]
        for k in doomed:
            self._blocks.delete(k)
        if doomed:
            log.info("dropped %d cached blocks of %s", len(doomed), file_key)
        return len(doomed)

    # -- metadata -------------------------------------------------------------

    def get_meta(self, key: str) -> Any:
        return self._meta.get(("meta", key))

    def set_meta(self, key: str, value: Any) -> None:
        self._meta.set(("meta", key), value)

    # -- housekeeping ---------------------------------------------------------

    def _count(self, hit: bool) -> None:
        with self._lock:
            if hit:
                self._hits += 1
            else:
                self._misses += 1
            pending = self._hits + self._misses
        if pending >= _FLUSH_EVERY:
            self._flush_counters()

    def _flush_counters(self) -> None:
        with self._lock:
            hits, misses = self._hits, self._misses
            self._hits = self._misses = 0
        if hits:
            self._meta.incr(_HITS, hits)
        if misses:
            self._meta.incr(_MISSES, misses)

    def stats(self) -> dict:
        """size (bytes on disk), entries (blocks), hits, misses, hit_rate (persisted across runs)."""
        self._flush_counters()
        hits = int(self._meta.get(_HITS, 0))
        misses = int(self._meta.get(_MISSES, 0))
        total = hits + misses
        return {
            "size": self._blocks.volume(),
            "entries": len(self._blocks),
            "hits": hits,
            "misses": misses,
            "hit_rate": hits / total if total else 0.0,
        }

    def clear(self) -> None:
        """Remove every block, every metadata entry and the counters."""
        with self._lock:
            self._hits = self._misses = 0
        self._blocks.clear()
        self._meta.clear()

    def close(self) -> None:
        self._flush_counters()
        self._blocks.close()
        self._meta.close()

    def __enter__(self) -> "BlockCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
