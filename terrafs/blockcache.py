"""The on-disk block cache: fixed-size blocks of remote files, on diskcache.

A block is `block_size` bytes of one file (the last block of a file may be
shorter). Only complete blocks are stored, each with its length and CRC32 kept
in the same SQLite row (diskcache's `tag`), and both are checked on every get:
a block torn by a crash or flipped on disk is dropped and reported as a miss,
never served.

Eviction is least-recently-used at `touch_after` granularity: diskcache's own
LRU policy writes to SQLite on every get (a transaction per block, contended
by the read-ahead threads), so rows are ordered by store time and a get that
finds a block stored more than `touch_after` seconds ago stores it again.

Small per-file metadata (the ETag seen last) lives in a separate cache that
is never evicted, so eviction of blocks cannot make us forget an identity.

This module must not know about HTTP, FUSE or read policy; keys never contain
secrets (the caller builds file keys from the URL, which carries none).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import sqlite3
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import diskcache

log = logging.getLogger(__name__)

_BLOCK = "b"  # first element of every block key: (_BLOCK, file_key, index)
_HITS = "stats:hits"
_MISSES = "stats:misses"
_FLUSH_EVERY = 1024  # counter updates kept in memory before being written
# SQLite page cache per connection, in pages of 4 KiB. diskcache keeps one connection per thread
# and gives each 8192 pages (32 MiB); small blocks (pieces) live in the index itself, so each
# thread's cache filled with copies of cached bytes: a soak's RSS grew with the index (docs/soak.md).
# Reads of the index go through its memory map (diskcache's 64 MiB) and need no page cache.
SQLITE_CACHE_PAGES = 256


class _BlockDisk(diskcache.Disk):
    """diskcache's Disk with a cheaper store for block-sized bytes values.

    The stock one wraps bytes in a BytesIO and iterates it, i.e. writes it
    line by line (thousands of tiny writes per MiB of binary data), and calls
    makedirs before every file. Blocks are written at download speed, so
    here: one write, directories made only when missing, and fewer of them.
    """

    def put(self, key):
        # Every lookup, read and write of a block converts its key; the stock conversion (pickle, then
        # pickletools.optimize) cost ~80 us a time, a fifth of the daemon's CPU in a loopback series.
        # A tuple of distinct str and int objects pickles to the same bytes without the memo (fast
        # mode), which is what optimize leaves: the keys of an existing cache still match.
        if type(key) is tuple and all(type(k) in (str, int) for k in key) and len({id(k) for k in key}) == len(key):
            return sqlite3.Binary(fast_pickle(key, self.pickle_protocol)), False
        return super().put(key)

    def filename(self, key=diskcache.core.UNKNOWN, value=diskcache.core.UNKNOWN):
        # One level of 256 directories (the stock two levels make a new
        # directory for almost every block of a cache of a few thousand).
        name = os.urandom(16).hex()
        filename = os.path.join(name[:2], name[2:] + ".val")
        return filename, os.path.join(self._directory, filename)

    def store(self, value, read, key=diskcache.core.UNKNOWN):
        if type(value) is bytes and len(value) >= self.min_file_size:
            filename, full_path = self.filename(key, value)
            try:
                fh = open(full_path, "xb")
            except FileNotFoundError:
                os.makedirs(os.path.dirname(full_path), exist_ok=True)
                fh = open(full_path, "xb")
            with fh:
                fh.write(value)
            return len(value), diskcache.core.MODE_BINARY, filename, None
        return super().store(value, read, key)


def fast_pickle(key: tuple, protocol: int) -> bytes:
    """`key` pickled without the memo (the bytes pickletools.optimize makes of a tuple of distinct objects)."""
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=protocol)
    pickler.fast = True
    pickler.dump(key)
    return out.getvalue()


def _tag(data: bytes, stored: float) -> str:
    # Length, checksum and store time, kept atomically with the row.
    return f"{len(data)}:{zlib.crc32(data)}:{int(stored)}"


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


class DiskBlock:
    """A verified cached block, served from its open file (closed when the last user lets go)."""

    __slots__ = ("_file", "length")

    def __init__(self, file, length: int):
        self._file = file  # an unbuffered file object: closes its fd when collected
        self.length = length

    def __len__(self) -> int:
        return self.length

    def read_into(self, start: int, dst: memoryview) -> None:
        """Bytes [start, start+len(dst)) of the block into dst."""
        if read_fully(self._file.fileno(), dst, start) < len(dst):
            raise OSError("cached block file ended short")


def read_fully(fd: int, dst: memoryview, pos: int) -> int:
    """pread into all of dst from pos (fewer bytes only at end of file); returns how many were read."""
    done = 0
    while done < len(dst):
        n = os.preadv(fd, [dst[done:]], pos + done)
        if n <= 0:
            break
        done += n
    return done


def _check(value, tag: object) -> float | None:
    """When a block with this tag was stored, or None if value (bytes-like) does not match it."""
    if isinstance(tag, int):  # the first format: length and CRC packed, no time
        return 0.0 if tag == (len(value) << 32) | zlib.crc32(value) else None
    try:
        length, crc, stored = (int(x) for x in str(tag).split(":"))
    except ValueError:
        return None
    if length != len(value) or crc != zlib.crc32(value):
        return None
    return float(stored)


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
        self._blocks = diskcache.Cache(
            str(self.directory / "blocks"),
            size_limit=size_limit,
            eviction_policy="least-recently-stored",
            disk=_BlockDisk,
            sqlite_cache_size=SQLITE_CACHE_PAGES,
        )
        self._meta = diskcache.Cache(str(self.directory / "meta"), eviction_policy="none",
                                     sqlite_cache_size=SQLITE_CACHE_PAGES)
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
            stored = _check(data, tag)
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
                self._blocks.set(key, bytes(data), tag=_tag(data, now))  # used: to the back of the queue
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
        # diskcache writes the value file first and commits the row after, so a
        # kill -9 in between leaves an orphan file, never a row pointing at a torn one.
        self._blocks.set((_BLOCK, file_key, index), data, tag=_tag(data, time.time()))

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """put()s inside share one SQLite transaction: one commit for many blocks, where each
        put alone commits (a 16 KiB piece cost as much to commit as to serve). Nothing is
        visible to other readers of the index until the end; an error inside rolls all back.
        If the index is busy or unwritable, the puts go on one transaction each."""
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(self._blocks.transact())
            except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
                log.debug("cache writes not batched: %s", exc)
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

    # -- metadata -------------------------------------------------------------

    def get_meta(self, key: str) -> Any:
        try:
            return self._meta.get(("meta", key))
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            log.debug("cache metadata unreadable: %s", exc)
            return None

    def set_meta(self, key: str, value: Any) -> None:
        try:
            self._meta.set(("meta", key), value)
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:  # a full disk: remembered next time
            log.debug("cache metadata not written: %s", exc)

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
