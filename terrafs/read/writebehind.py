"""Write-behind: fetched blocks go to the disk cache on one writer thread, off the read path.

A diskcache set costs ~0.5 ms per MiB (a file and a SQLite row), as much as
serving the block, so reads never wait for it. Until written, a block is
served from `pending` and never fetched again: a ranged fetch's from RAM, a
stream's from a slot of the spool file (see spool.py). The queue bounds what
this holds: 256 MiB takes a whole cold copy of a 10980 x 10980 band (~211 MB),
so none of its writes compete with serving it.

A cache that cannot write (a full or read-only disk, a removed folder, a
damaged index) never fails a read: the block was served already; the writer
logs one warning per cause naming the folder, reports itself degraded in
stats(), and goes on trying, so writes resume when the cause is gone. It is
degraded until writes have gone RECOVERED_AFTER seconds without a failure: on a
full disk, a batch small enough for what a removed file freed commits between
failures, and one such batch does not mean the disk has room again.

Lock order: `_write_lock` (held while a batch of blocks goes to disk) before `_lock`
(pending; a leaf). Must not: decide what to fetch, or hold `_lock` across I/O.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from terrafs.cache.blocks import BlockCache
from terrafs.read.spool import Spool, Spooled
from terrafs.read.stats import WriteBehindStats

log = logging.getLogger(__name__)
WARN_EVERY = 600.0  # seconds: the same cause of failing cache writes is logged at most this often
RECOVERED_AFTER = 60.0  # seconds without a failed write before the cache is reported working again

Key = tuple[str, int]

_WRITE_DEFER = 0.05  # cache writes wait while a read came within this many seconds
_WRITE_MAX_DEFER = 2.0  # ... but no block waits longer than this
_BATCH_BLOCKS = 64  # blocks written in one transaction at most
_BATCH_BYTES = 16 << 20  # ... and bytes


class WriteBehind:
    def __init__(self, cache: BlockCache, block_size: int, queue_bytes: int,
                 recovered_after: float = RECOVERED_AFTER):
        self._cache = cache
        self._pending: dict[Key, bytes | Spooled] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue(maxsize=max(4, queue_bytes // block_size))
        self.spool: Spool | None = None
        try:
            self.spool = Spool(str(cache.directory), block_size, self._queue.maxsize)
        except (OSError, AttributeError) as exc:  # no spool: stream blocks wait in RAM
            log.warning("no spool file in %s (%s): stream blocks wait for the cache in RAM", cache.directory, exc)
        self.last_read = 0.0  # monotonic time of the last read (unlocked: a hint)
        self._flushing = 0
        self._closed = False
        self._why: str | None = None  # why the last write failed, until writes work again
        self._failed_at = 0.0  # monotonic time of the last failure
        self._last_failed = False  # the last batch had a failure
        self._recovered_after = recovered_after
        self._warned: dict[str, float] = {}  # cause -> when it was last warned about (monotonic)
        self._told = False  # a warning was logged since the last "work again"
        self._writer = threading.Thread(target=self._loop, name="terrafs-cache-writer", daemon=True)
        self._writer.start()

    # -- what readers use ---------------------------------------------------------

    def get(self, key: Key) -> bytes | Spooled | None:
        with self._lock:
            return self._pending.get(key)

    def __contains__(self, key: Key) -> bool:
        with self._lock:
            return key in self._pending

    def put(self, key: Key, data: bytes, spool: bool) -> bytes | Spooled:
        """Hold a complete, checked block until it is on disk; returns what serves it meanwhile."""
        held: bytes | Spooled = data
        if spool and self.spool is not None:
            try:
                held = self.spool.put(data)
            except OSError as exc:  # a full disk: this block waits in RAM instead
                self._warn("spool", f"the spool file in {self._cache.directory} cannot take blocks ({exc})")
        with self._lock:
            self._pending[key] = held
        self._queue.put((key, held, time.monotonic()))
        return held

    def drop_files(self, keys: set[str], then: Callable[[], None]) -> None:
        """Forget pending blocks of these file keys, then run `then` before any other write."""
        with self._write_lock:
            with self._lock:
                for k in [k for k in self._pending if k[0] in keys]:
                    del self._pending[k]
            then()

    def flush(self) -> None:
        """Wait until every block handed over so far is written (or given up)."""
        with self._lock:
            self._flushing += 1
        try:
            self._queue.join()
        finally:
            with self._lock:
                self._flushing -= 1

    def close(self) -> None:
        self.flush()
        self._closed = True
        self._queue.put(None)
        self._writer.join(timeout=60)
        if self.spool is not None and not self._writer.is_alive():
            self.spool.close()

    @property
    def degraded(self) -> str | None:
        """Why cache writes fail, while they do: the last batch had a failure, or one came within
        `recovered_after` seconds (a success between failures on a full disk is no recovery)."""
        why = self._why
        if why is None or (not self._last_failed and time.monotonic() - self._failed_at >= self._recovered_after):
            return None
        return why

    def stats(self) -> WriteBehindStats:
        with self._lock:
            spooled = sum(isinstance(v, Spooled) for v in self._pending.values())
            return WriteBehindStats(len(self._pending), spooled, self.degraded)

    # -- the writer ---------------------------------------------------------------

    def _yield_to_readers(self, queued: float) -> None:
        """Hold a disk write back while programs are reading and the queue has room.

        A block write costs about as much CPU as serving the block; on a busy
        2-core machine it slowed a cold `cat` by a third. Writes catch up when
        reads pause, the queue is all but full, the block has waited
        _WRITE_MAX_DEFER seconds, or on flush/close.
        """
        high = self._queue.maxsize - max(2, self._queue.maxsize // 16)
        while (
            not self._closed
            and not self._flushing
            and self._queue.qsize() < high
            and time.monotonic() - self.last_read < _WRITE_DEFER
            and time.monotonic() - queued < _WRITE_MAX_DEFER
        ):
            time.sleep(_WRITE_DEFER / 2)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            if item is not None:
                self._yield_to_readers(item[2])
                # What has queued up meanwhile goes to disk in the same transaction: one
                # commit for the lot (a commit per 16 KiB piece was most of the writer's CPU).
                size = len(item[1])
                while len(batch) < _BATCH_BLOCKS and size < _BATCH_BYTES:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    batch.append(nxt)
                    if nxt is None:
                        break
                    size += len(nxt[1])
            try:
                writes = [it for it in batch if it is not None]
                if writes:
                    self._write(writes)
            finally:
                for it in batch:
                    # Only now may a spool slot be reused: nobody finds the block in pending any more.
                    if it is not None and isinstance(it[1], Spooled) and self.spool is not None:
                        self.spool.free(it[1])
                    self._queue.task_done()
            if batch[-1] is None:
                return

    def _write(self, items: list[tuple[Key, bytes | Spooled, float]]) -> None:
        """Write queued blocks still current in one transaction; drop them from pending after its commit."""
        wrote = failed = False
        try:
            with self._write_lock, self._cache.batch():
                for key, held, _ in items:
                    with self._lock:
                        current = self._pending.get(key) is held
                    if not current:
                        continue
                    block = held
                    if isinstance(held, Spooled):
                        block = self.spool.read(held, 0, held.length)  # type: ignore[union-attr]
                        if block is None:
                            raise RuntimeError(f"spool slot of block {key[1]} was reused before its write")
                    try:
                        self._cache.put(key[0], key[1], block, expected_len=len(block))
                        wrote = True
                    except OSError as exc:  # this block's file (a full disk): the others may still fit
                        failed = True
                        self._failed(exc)
            if wrote and not failed:
                self._worked()
        except OSError as exc:  # the blocks were served already; it costs a refetch later, no more
            self._failed(exc)
        except Exception as exc:  # noqa: BLE001 - a damaged index (sqlite3) or a bug: still never fail a read
            self._warn(type(exc).__name__, f"cannot write to the cache in {self._cache.directory} ({exc!r}); "
                       "reads go on from the network")
        finally:
            with self._lock:
                for key, held, _ in items:
                    if self._pending.get(key) is held:
                        del self._pending[key]

    def _worked(self) -> None:
        """A batch went to disk whole; the cache works again once no write failed for recovered_after s."""
        self._last_failed = False
        if self._why is not None and time.monotonic() - self._failed_at >= self._recovered_after:
            self._why = None
            # A full disk that the cache's culling keeps freeing flaps between the two: each cause is
            # told at most once per WARN_EVERY, and its end only after a warning that was told.
            if self._told:
                log.warning("cache writes to %s work again", self._cache.directory)
                self._told = False

    def _failed(self, exc: OSError) -> None:
        self._warn(type(exc).__name__ + str(exc.errno), f"cannot write to the cache in {self._cache.directory} "
                   f"({exc.strerror or exc}); reads go on from the network")

    def _warn(self, cause: str, message: str) -> None:
        now = time.monotonic()
        self._why, self._failed_at, self._last_failed = message, now, True
        if now - self._warned.get(cause, -WARN_EVERY) >= WARN_EVERY:
            self._warned[cause] = now
            self._told = True
            log.warning("%s", message)
