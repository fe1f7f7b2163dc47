"""The on-disk block cache: fixed-size blocks of remote files, on diskcache.

A block is `block_size` bytes of one file (the last block of a file may be
shorter). Only complete blocks are stored, each with its length and CRC32 kept
in the same SQLite row (diskcache's `tag`), and both are checked on every get:
a block torn by a crash or flipped on disk is dropped and reported as a miss,
never served. How a block sits on disk (value files, tags, reads of a verified
block): blockfiles.py.

Eviction is least-recently-used at `touch_after` granularity: diskcache's own
LRU policy writes to SQLite on every get (a transaction per block, contended
by the read-ahead threads), so rows are ordered by store time and a get that
finds a block stored more than `touch_after` seconds ago stores it again.

Small per-file metadata (filemeta.py: the ETag seen last, sizes) lives in a
separate cache that is never evicted, so eviction of blocks cannot make us
forget an identity; it holds text and numbers under string keys, never pickles.

This module must not know about HTTP, FUSE or read policy; keys never contain
secrets (the caller builds file keys from the URL, which carries none).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import diskcache

from terrafs.cache.blockfiles import BlockDisk, DiskBlock, read_fully, tag_of, unlink_quietly, verified_at
from terrafs.cache.listings import NoPickleDisk

log = logging.getLogger(__name__)

_BLOCK = "b"  # first element of every block key: (_BLOCK, file_key, index)
_HITS = "stats:hits"
_MISSES = "stats:misses"
_FORMAT = "format"
META_FORMAT = 2  # 2: string keys, JSON text (1, unmarked: pickled tuples)
_FLUSH_EVERY = 1024  # counter updates kept in memory before being written
# SQLite page cache per connection (4 KiB pages; diskcache gives each thread's connection 32 MiB), and
# no memory map of the index (diskcache maps 64 MiB): small blocks live in the index itself, and both
# grew the daemon's RSS with it under a long load (docs/soak.md). Reads of the index then use pread.
SQLITE_CACHE_PAGES, SQLITE_MMAP_BYTES = 256, 0


@dataclass(frozen=True)
class BlockCacheStats:
    """size (bytes on disk), entries (blocks), hits and misses (persisted across runs)."""

    size: int
    entries: int
    hits: int
    misses: int
    degraded: str | None = None  # why there is no disk cache (MemoryOnlyCache)

    @property
    def hit_rate(self) -> float:
        return self.hits / (self.hits + self.misses) if self.hits + self.misses else 0.0


class BlockCache:
    """Blocks of remote files, LRU-evicted to stay under `size_limit` bytes."""

    def __init__(self, directory: Path, size_limit: int, block_size: int = 1 << 20, touch_after: float = 3600.0):
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self.directory = Path(directory)
        self.block_size = block_size
        self.size_limit = size_limit
        self.touch_after = touch_after
        # The cache holds data that needed credentials to fetch: owner only.
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._blocks = diskcache.Cache(str(self.directory / "blocks"), size_limit=size_limit,
                                       eviction_policy="least-recently-stored", disk=BlockDisk,
                                       sqlite_cache_size=SQLITE_CACHE_PAGES, sqlite_mmap_size=SQLITE_MMAP_BYTES)
        self._meta = diskcache.Cache(str(self.directory / "meta"), eviction_policy="none", disk=NoPickleDisk,
                                     sqlite_cache_size=SQLITE_CACHE_PAGES, sqlite_mmap_size=SQLITE_MMAP_BYTES)
        if len(self._meta) and self._meta.get(_FORMAT) != META_FORMAT:
            # An older terrafs kept identities as pickles this one does not read: without them a file
            # republished since could mix versions, so its blocks go once (they are fetched again).
            log.info("the block cache in %s was made by an older terrafs; emptied once", self.directory)
            self._blocks.clear()
            self._meta.clear()
        if not len(self._meta):
            self._meta.set(_FORMAT, META_FORMAT)
        self._lock = threading.Lock()
        self._hits = 0  # not yet flushed to the meta cache
        self._misses = 0

    # -- blocks ---------------------------------------------------------------

    def get(self, file_key: str, index: int) -> bytes | None:
        """The verified block, or None (missing, or corrupt and now dropped)."""
        block = self.open_block(file_key, index, bytearray(self.block_size))
        if not isinstance(block, DiskBlock):
            return block
        out = bytearray(len(block))
        block.read_into(0, memoryview(out))
        return bytes(out)

    def open_block(self, file_key: str, index: int, scratch: bytearray) -> "bytes | DiskBlock | None":
        """The verified block as an open file (or bytes, if kept in the index), or None.

        A file-backed block is read into `scratch` (at least block_size bytes,
        reused by the caller) to check its length and CRC, and handed back open:
        serving it costs one copy out of the page cache and no fresh memory. A
        block that does not match its row is dropped and reported as a miss.
        """
        key = (_BLOCK, file_key, index)
        try:
            value, tag = self._blocks.get(key, default=None, read=True, tag=True)
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            log.warning("block cache read failed for block %d of %s: %s", index, file_key, exc)
            value, tag = None, None
        if value is None:
            self._count(False)
            return None
        raw = None
        try:
            if isinstance(value, bytes):  # small values live in the index itself
                data = memoryview(value)
            elif not hasattr(value, "fileno"):
                raise OSError(f"a {type(value).__name__} where a block should be")
            else:
                raw = value.detach() if hasattr(value, "detach") else value  # the unbuffered file under it
                length = os.fstat(raw.fileno()).st_size
                if length > len(scratch):
                    raise OSError(f"{length} bytes, more than a block")
                data = memoryview(scratch)[: read_fully(raw.fileno(), memoryview(scratch)[:length], 0)]
            stored = verified_at(data, tag)
        except OSError as exc:
            log.warning("block cache read failed for block %d of %s: %s", index, file_key, exc)
            stored = None
        if stored is None:
            if raw is not None:
                raw.close()
            log.warning("dropping corrupt cached block %d of %s", index, file_key)
            try:
                self._blocks.delete(key)
            except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
                log.debug("corrupt block not dropped: %s", exc)
            self._count(False)
            return None
        now = time.time()
        if now - stored > self.touch_after:
            try:
                self._set(key, bytes(data), tag_of(data, now))  # used: to the back of the queue
            except (OSError, sqlite3.Error, diskcache.Timeout) as exc:  # a full disk: serve it all the same
                log.debug("block %d of %s not touched: %s", index, file_key, exc)
        self._count(True)
        return value if raw is None else DiskBlock(raw, len(data))

    def put(self, file_key: str, index: int, data: bytes, expected_len: int | None = None) -> None:
        """Store one COMPLETE block: `expected_len` bytes (default block_size)."""
        want = self.block_size if expected_len is None else expected_len
        if len(data) != want or want > self.block_size or want <= 0:
            raise ValueError(f"incomplete block {index} of {file_key}: {len(data)} bytes, expected {want}")
        data = bytes(data)
        self._set((_BLOCK, file_key, index), data, tag_of(data, time.time()))

    def _set(self, key: tuple, data: bytes, tag: str) -> None:
        # diskcache writes the value file first and commits the row after: a kill -9 in between leaves
        # an orphan file, never a row pointing at a torn one; a row not written takes its file with it.
        with self._files_of_rows():
            self._blocks.set(key, data, tag=tag)

    @contextlib.contextmanager
    def _files_of_rows(self) -> Iterator[None]:
        """Value files written inside are removed if it ends in an error (diskcache leaves them behind
        without a row: a full disk filled up with them); inside a batch, if the batch ends in one."""
        written = self._blocks.disk.written
        outer, written.files = getattr(written, "files", None), []
        mine = written.files
        try:
            yield
        except BaseException:
            for path in mine:
                unlink_quietly(path)
            raise
        finally:
            written.files = outer
        if outer is not None:
            outer.extend(mine)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """put()s inside share one SQLite transaction: one commit for many blocks, where each
        put alone commits (a 16 KiB piece cost as much to commit as to serve). Nothing is
        visible to other readers of the index until the end; an error inside rolls all back,
        value files too. If the index is busy or unwritable, the puts go on one transaction each."""
        try:
            transaction = self._blocks.transact()
            transaction.__enter__()
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            log.debug("cache writes not batched: %s", exc)
            yield
            return
        with self._files_of_rows(), contextlib.ExitStack() as stack:
            stack.push(transaction)
            yield

    def has(self, file_key: str, index: int) -> bool:
        """Whether a block is stored (not verified: get() does that); False if the index cannot tell."""
        try:
            return (_BLOCK, file_key, index) in self._blocks
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            log.debug("block cache index unreadable: %s", exc)
            return False

    def drop_file(self, file_key: str) -> int:
        """Forget every block of one file (its remote content changed); returns how many."""
        doomed = [k for k in self._blocks.iterkeys() if isinstance(k, tuple) and len(k) == 3 and k[1] == file_key]
        for k in doomed:
            self._blocks.delete(k)
        if doomed:
            log.info("dropped %d cached blocks of %s", len(doomed), file_key)
        return len(doomed)

    def get_meta(self, key: str) -> Any:
        """Text kept under key (filemeta.py is the one reader), or None."""
        try:
            return self._meta.get("meta:" + key)
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            log.debug("cache metadata unreadable: %s", exc)
            return None

    def set_meta(self, key: str, value: Any) -> None:
        try:
            self._meta.set("meta:" + key, value)
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:  # a full disk: remembered next time
            log.debug("cache metadata not written: %s", exc)

    def _count(self, hit: bool) -> None:
        with self._lock:
            self._hits += hit
            self._misses += not hit
            pending = self._hits + self._misses
        if pending >= _FLUSH_EVERY:
            self._flush_counters()

    def _flush_counters(self) -> None:
        with self._lock:
            hits, misses = self._hits, self._misses
            self._hits = self._misses = 0
        try:
            if hits:
                self._meta.incr(_HITS, hits)
            if misses:
                self._meta.incr(_MISSES, misses)
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:  # counters never fail a read
            log.debug("cache counters not written: %s", exc)

    def stats(self) -> BlockCacheStats:
        self._flush_counters()
        return BlockCacheStats(self._blocks.volume(), len(self._blocks), int(self._meta.get(_HITS, 0)),
                               int(self._meta.get(_MISSES, 0)))

    def clear(self) -> None:
        """Remove every block, every metadata entry and the counters."""
        with self._lock:
            self._hits = self._misses = 0
        self._blocks.clear()
        self._meta.clear()
        self._meta.set(_FORMAT, META_FORMAT)

    def close(self) -> None:
        self._flush_counters()
        self._blocks.close()
        self._meta.close()

    def __enter__(self) -> "BlockCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryOnlyCache:
    """Stands in for a BlockCache that could not be opened (a read-only, full or
    damaged cache folder): nothing is stored, so every read is served from the
    network and the reader's RAM. The mount stays usable; `reason` says why."""

    def __init__(self, block_size: int, reason: str):
        self.block_size = block_size
        self.reason = reason
        self.directory = Path(tempfile.gettempdir())  # where the reader's spool goes
        self._meta: dict[str, Any] = {}

    def open_block(self, file_key: str, index: int, scratch: bytearray) -> None:
        return None

    def get(self, file_key: str, index: int) -> None:
        return None

    def has(self, file_key: str, index: int) -> bool:
        return False

    def put(self, file_key: str, index: int, data: bytes, expected_len: int | None = None) -> None:
        return None

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        yield

    def drop_file(self, file_key: str) -> int:
        return 0

    def get_meta(self, key: str) -> Any:
        return self._meta.get(key)

    def set_meta(self, key: str, value: Any) -> None:
        self._meta[key] = value

    def stats(self) -> BlockCacheStats:
        return BlockCacheStats(0, 0, 0, 0, self.reason)

    def close(self) -> None:
        return None
