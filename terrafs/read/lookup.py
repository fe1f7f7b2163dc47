"""Where a unit of a file is held now: RAM (hot set), pending writes, the disk cache, the shared tier.

The read path's one way to RAM, pending writes, the spool and disk read-ahead:
the reader keeps no reference of its own to any of them. Looking a unit up in
the disk cache reads and verifies it (CRC) and may ask SQLite: never call into
here while holding a cursor's lock or the reader's condition, except `in_ram`,
`ram`, `keep`, `close_files` and `reading`, which take only leaf locks.

The shared tier (sharedtier.py, when the config names one) is the last level:
a unit found there is kept in RAM and written to the disk cache like a fetched
one. The reader reaches the tier's other roles through here too: `fetcher`
(one fetch per unit across the cluster), `streamed` (stream blocks offered to
the tier) and `identities` (the versions the guard sees, published to the cluster).

Must not: fetch, or decide anything (the reader and the policy do).
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable

from terrafs.cache.blocks import BlockCache
from terrafs.cache.blockfiles import DiskBlock
from terrafs.counters import Counters
from terrafs.cache.filemeta import FileMeta
from terrafs.read import tiff
from terrafs.read.diskahead import DiskAhead
from terrafs.read.hotset import HotSet
from terrafs.read.remote import RemoteFile, Units, blocks_of
from terrafs.read.sharedfetch import SharedFetch
from terrafs.read.sharedtier import SharedMeta, SharedTier

__all__ = ["Lookup", "SharedTier"]
from terrafs.read.spool import Spooled
from terrafs.read.stats import HeldStats
from terrafs.read.writebehind import WriteBehind

log = logging.getLogger(__name__)

_WAIT_LIMIT = 600.0  # seconds to wait for a loader thread's block

class Lookup:
    def __init__(self, cache: BlockCache, hot: HotSet, wb: WriteBehind, block_size: int,
                 shared: SharedTier | None = None, filemeta: FileMeta | None = None):
        self.cache = cache
        self.filemeta = filemeta if filemeta is not None else FileMeta(cache)
        self.shared = shared
        if shared is not None:
            shared.bind(self.filemeta)
        self.hot = hot
        self.wb = wb
        self._block_size = block_size
        self.ahead = DiskAhead(self.load, block_size)
        self._scratch: list[bytearray] = []  # verify buffers (list.pop/append are atomic)
        self.counts = Counters(bytes_from_cache=0, hits=0, misses=0)

    def in_ram(self, u: Units, i: int) -> bool:
        """Held in RAM or waiting for its write (leaf locks only: callable under the reader's cond)."""
        return (u.key, i) in self.hot or (u.key, i) in self.wb

    def has(self, u: Units, i: int) -> bool:
        """Cheap presence test (may ask SQLite)."""
        return self.in_ram(u, i) or self.cache.has(u.key, i)

    def data(self, u: Units, i: int) -> "bytes | Spooled | DiskBlock | None":
        """Unit i from RAM, a pending write, a loader thread or the disk cache (verified); None if absent."""
        data = self.hot.get((u.key, i)) or self.wb.get((u.key, i))
        if data is not None:
            return data
        loading = self.ahead.loading((u.key, i))
        if loading is not None and loading.wait(_WAIT_LIMIT):
            data = self.hot.get((u.key, i))
            if data is not None:
                return data
        scratch = self._take_scratch()
        try:
            data = self.cache.open_block(u.key, i, scratch)
        finally:
            self._scratch.append(scratch)
        if data is None:
            self.counts.add("misses", 1)
            return self._from_shared(u, i)
        self.counts.add("hits", 1)
        if len(data) != u.length(i):
            log.warning("cached block %d of %s has the wrong length; refetching", i, u.url)
            return None
        self.counts.add("bytes_from_cache", len(data))
        self.hot.put((u.key, i), data)
        return data

    def _from_shared(self, u: Units, i: int) -> bytes | None:
        """Unit i from the shared tier (verified there), then held as a fetched unit is; None if absent."""
        if self.shared is None:
            return None
        data = self.shared.get(u, i)
        if data is not None:
            self.hot.put((u.key, i), data)
            self.wb.put((u.key, i), data, False)
        return data

    def fetcher(self, u: Units, chunks: Callable[[int, int], Iterable[bytes]]) -> Callable[[int, int], Iterable[bytes]]:
        """chunks(start, end) of u's file, fetched once across the cluster when a tier is shared (then in one piece)."""
        if self.shared is None:
            return chunks
        shared = SharedFetch(self.shared)
        return lambda start, end: (shared.fetch_range(u, start, end, lambda a, b: b"".join(chunks(a, b))),)

    def streamed(self, f: RemoteFile, i: int, data: bytes) -> None:
        """A stream brought block i: offered to the shared tier for files up to its stream size."""
        if self.shared is not None and f.size <= self.shared.settings.stream_max:
            self.shared.put(blocks_of(f, self._block_size), i, data)

    def identities(self) -> FileMeta | SharedMeta:
        """Where the identity guard records the versions it sees: the file metadata, and the cluster if shared."""
        return self.filemeta if self.shared is None else SharedMeta(self.filemeta, self.shared)

    def peek(self, units: tuple[Units, ...], offset: int, n: int) -> bytes | None:
        """Bytes [offset, offset+n) if cached in any of these unit sizes, else None; never fetches."""
        out = memoryview(bytearray(n))
        pos, end = offset, offset + n
        while pos < end:
            # RAM first, in every unit size: a layout is parsed from pieces a fetch just brought, and
            # asking SQLite for the block around each of them cost a lookup per peek.
            held = ([u for u in units if self.in_ram(u, pos // u.unit)]
                    or [u for u in units if self.has(u, pos // u.unit)])
            for u in held:
                i = pos // u.unit
                data = self.data(u, i)
                if data is not None:
                    stop = min(end, i * u.unit + u.length(i))
                    if not self.copy(data, pos - i * u.unit, stop - i * u.unit, out[pos - offset: stop - offset]):
                        return None
                    pos = stop
                    break
            else:
                return None
        return bytes(out)

    def layout(self, f: RemoteFile, units: tuple[Units, ...]) -> tuple[tiff.TiffLayout | None, bool]:
        """f's TIFF layout from cached bytes; (None, permanent?) when there is none (yet)."""
        try:
            layout = tiff.parse(lambda off, n: self.peek(units, off, n), f.size)
        except tiff.Incomplete:
            return None, False
        except (tiff.NotTiff, ValueError, OverflowError) as exc:
            log.debug("%s: no TIFF layout (%s)", f.url, exc)
            return None, True
        log.debug("%s: TIFF layout of %d tiles or strips in %d images", f.url, len(layout.segments),
                  len(layout.across))
        return layout, False

    def copy(self, data: "bytes | Spooled | DiskBlock", start: int, end: int, dst: memoryview) -> bool:
        """Bytes [start, end) of a held unit into dst; False if its spool slot was reused meanwhile."""
        if isinstance(data, DiskBlock):
            data.read_into(start, dst)
            return True
        if not isinstance(data, Spooled):
            dst[:] = memoryview(data)[start:end]
            return True
        return self.wb.spool.read_into(data, start, dst)  # type: ignore[union-attr]

    def schedule_ahead(self, f: RemoteFile, u: Units, start: int, count: int, busy) -> None:
        """Load blocks [start, start+count) ahead unless held or `busy(key)` (leaf locks only)."""
        todo = [i for i in range(start, min(u.count(), start + count))
                if not self.in_ram(u, i) and not busy((u.key, i))]
        if todo:
            self.ahead.schedule(f, u.key, todo)

    def load(self, f: RemoteFile, i: int, scratch: bytearray) -> None:
        """Verify block i from the disk cache into the hot set (a loader thread)."""
        data = self.cache.open_block(f.key, i, scratch)  # None if absent: then a fetch brings it
        if data is not None and len(data) == min(self._block_size, f.size - i * self._block_size):
            self.counts.add("bytes_from_cache", len(data))
            self.hot.put((f.key, i), data)

    def _take_scratch(self) -> bytearray:
        try:
            return self._scratch.pop()
        except IndexError:
            return bytearray(self._block_size)

    # -- what the reader does to held units, through here only ------------------

    def ram(self, u: Units, i: int) -> "bytes | Spooled | DiskBlock | None":
        """Unit i if in RAM or waiting for its write; never the disk (leaf locks only)."""
        return self.hot.get((u.key, i)) or self.wb.get((u.key, i))

    def keep(self, u: Units, i: int, data: bytes, spool: bool = False) -> None:
        """A complete, checked unit: served from now on, written to the disk cache behind
        (a stream's through the spool file when there is one, not RAM)."""
        if not spool or self.wb.spool is None:
            self.hot.put((u.key, i), data)
        self.wb.put((u.key, i), data, spool)

    def reading(self, now: float) -> None:
        """A program reads now: the writer yields the disk to it (leaf)."""
        self.wb.last_read = now

    def close_files(self, keys: set[str]) -> None:
        """Close the cache files held open for these file keys (leaf)."""
        self.hot.close_files(keys)

    def drop_files(self, keys: set[str]) -> None:
        """Forget every unit of these file keys: pending writes, RAM and the disk cache."""
        self.wb.drop_files(keys, lambda: [self.cache.drop_file(k) for k in keys])
        self.hot.drop_files(keys)

    def flush(self) -> None:
        """Wait until every unit kept so far is in the disk cache (or given up)."""
        self.wb.flush()

    def close(self) -> None:
        """Write what is pending and stop the loaders (the cache stays open)."""
        self.wb.close()
        self.ahead.close()

    def stats(self) -> HeldStats:
        """Units found held or not, bytes served from them, and what RAM holds."""
        c = self.counts.snapshot()
        return HeldStats(int(c["hits"]), int(c["misses"]), int(c["bytes_from_cache"]), self.hot.bytes,
                         self.hot.open_files)
