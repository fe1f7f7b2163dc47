"""The read policy: which byte ranges of a remote file to fetch, and when.

Requests are the scarce resource (the download service allows 80 per 10 s and
200 per 60 s per IP), so the policy spends them carefully:

* A first read at offset 0 of `bulk_read` bytes or more is a copy program's
  (the kernel turns cp's, cat's and rsync's big reads into 128-256 KiB reads):
  it opens ONE streaming request from 0 to the end of the file, which goes on
  only while the program reads behind it (flow control, up to `readahead`
  ahead). If nobody follows, it pauses and closes after `idle_timeout` or on
  release().
* A smaller first read at 0 is a format probe (GDAL reads 16 KiB): one bounded
  request for the head (`head_size`, 256 KiB, where a COG keeps its IFDs), so
  gdalinfo costs one request and no open-ended stream pushes megabytes into
  socket buffers that nobody reads.
* A sequential run that reaches uncached blocks without a live stream starts
  a new stream from there to the end of the file.
* Any other read fetches what it touches plus the next `random_ahead` bytes
  (what the program and the kernel's readahead ask for next, so a COG tile
  costs one request, not two); adjacent units are coalesced into one ranged
  request. These reads, the head probe and short sequential runs (under a
  block) fetch `piece_size` pieces (16 KiB), cached under the file's own piece
  key, not whole blocks: whole 1 MiB blocks around three ~260 KB tile ranges
  cost 8 times the bytes. Cached whole blocks are used when present.
* Concurrent readers of a block share one fetch (in-flight table), and readers
  of blocks a stream is about to deliver wait for it instead of asking again.

Fetched blocks are served at once and written to the disk cache behind, on
one writer thread that yields to readers (a cold copy is not slowed by cache
writes); flush()/close() wait for it. Until written, a ranged fetch's blocks
wait in RAM and a stream's in an unlinked spool file (its page cache is far
cheaper than fresh anonymous memory, see _Spool). Blocks read back from the disk
cache are verified once and then served from their open cache file (DiskBlock);
a sequential re-read has them verified ahead by two loader threads.

Blocks are cached only when complete and from a response whose size and
identity (ETag / Last-Modified) were checked. This module must not import FUSE
or do HTTP itself: bytes come from a Downloader (terrafs/http.py), blocks go
to a BlockCache.
"""
from __future__ import annotations

import ctypes
import logging
import os
import queue
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Union

from terrafs.blockcache import BlockCache, DiskBlock, read_fully
from terrafs.errors import FetchError

log = logging.getLogger(__name__)


def _libc(name: str):
    """A function of the C library, or None where there is none by that name."""
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None


# fallocate(2) itself: glibc's posix_fallocate writes zeros where the filesystem cannot allocate.
_fallocate = _libc("fallocate64")
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate.restype = ctypes.c_int
_fstatfs = _libc("fstatfs")
_MEMORY_FILESYSTEMS = {0x01021994, 0x858458F6}  # tmpfs, ramfs (statfs f_type)


def _in_memory(fd: int) -> bool:
    """Whether fd's file lives in memory (tmpfs, ramfs); False when it cannot tell."""
    if _fstatfs is None:
        return False
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first word
    if _fstatfs(fd, buf) != 0:
        return False
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF in _MEMORY_FILESYSTEMS

_WAIT_LIMIT = 600.0  # seconds a reader waits on another thread's fetch before giving up
_MAX_OPEN_BLOCKS = 128  # cache files held open (DiskBlock) at most: small blocks must not exhaust descriptors
_WRITE_DEFER = 0.05  # cache writes wait while a read came within this many seconds
_WRITE_MAX_DEFER = 2.0  # ... but no block waits longer than this


@dataclass(frozen=True)
class RemoteFile:
    url: str  # download URL, never with credentials in it
    size: int
    key: str  # stable identity for the cache (URL + ETag/size ...), no secrets


class Downloader(Protocol):
    """What reader needs of terrafs.http.Downloader."""

    def get_range(self, url: str, start: int, end: int, *, urgent: bool = True) -> tuple[bytes, object]:
        ...

    def stream(
        self, url: str, start: int, end: int, *, urgent: bool = True, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        ...


class _Fetch:
    """A batch of ranged fetches of one file; readers of its blocks wait on `done`.

    While `open`, other readers add the blocks they miss to it: the kernel splits
    one large read into concurrent 128 KiB requests, and they should cost one
    HTTP request, not one each.
    """

    def __init__(self) -> None:
        self.done = threading.Event()
        self.wanted: set[int] = set()
        self.open = True
        self.blocks: dict[int, bytes] = {}
        self.error: BaseException | None = None


class _Stream:
    """One streaming request over [start, end) of a file; its state is guarded by Reader._lock."""

    def __init__(self, f: RemoteFile, start: int, end: int, allowed_end: int, urgent: bool):
        self.file = f
        self.start = start
        self.end = end
        self.pos = start  # bytes before this are stored (or the stream is dead)
        self.allowed_end = allowed_end  # flow control: pause when pos reaches it
        self.urgent = urgent
        self.stop = False
        self.alive = True
        self.error: Exception | None = None
        self.thread: threading.Thread | None = None


class _Spooled:
    """A stream block waiting in the spool file for its disk-cache write (see _Spool)."""

    __slots__ = ("slot", "gen", "length")

    def __init__(self, slot: int, gen: int, length: int):
        self.slot, self.gen, self.length = slot, gen, length

    def __len__(self) -> int:
        return self.length


# A block as the reader holds it: bytes in RAM, a slot of the spool file, or
# its verified file in the disk cache.
_Block = Union[bytes, _Spooled, DiskBlock]


class _Spool:
    """Fixed-size slots of an unlinked file that hold stream blocks until they are cached.

    Why not RAM: a cold copy keeps every block until its (deferred) cache
    write, and on the VMs we measured, faulting in fresh anonymous memory
    costs ~0.5 ms per MiB, four times a page-cache write; it was a third of
    the daemon's CPU on a cold `cat` of a 211 MB band. Here the stream's
    receive buffers are freed at once (malloc hands them out again) and the
    bytes sit in the page cache of this file. A slot gets a new generation
    each time it is handed out or freed, so a reader that raced with its reuse
    sees it and reads the block again elsewhere instead of serving other bytes.
    The file is unlinked from the start: nothing is left behind by a kill -9.

    Its space is allocated up front (fallocate, where the filesystem can do it
    without writing): ext4's delayed allocation of each new page was a fifth
    of the daemon's CPU on a cold copy (measured: 0.19 -> 0.15 s of CPU for a
    211 MB band). The space is held only while the daemon runs.
    """

    def __init__(self, directory: str, slot_size: int, slots: int):
        self._fh = tempfile.TemporaryFile(dir=directory)
        self._fd = self._fh.fileno()
        self._size = slot_size
        self._free = list(range(slots - 1, -1, -1))
        self._gens = [0] * slots
        self._room = threading.Semaphore(slots)
        self._lock = threading.Lock()
        # Not on tmpfs: there, reserving would take 256 MiB of RAM for as long as we run.
        self._reserve = _fallocate is not None and not _in_memory(self._fd)
        self._allocate()

    def _allocate(self) -> None:
        """Reserve the file's blocks if the filesystem can (a hint: without, writes allocate as they go)."""
        if not self._reserve:
            return
        if _fallocate(self._fd, 0, 0, ctypes.c_int64(len(self._gens) * self._size)) != 0:
            err = ctypes.get_errno()
            log.debug("spool space not reserved ahead: %s", os.strerror(err))

    def put(self, data: bytes) -> _Spooled:
        """Copy a block into a free slot (waits for one: the spool is bounded)."""
        self._room.acquire()
        with self._lock:
            slot = self._free.pop()
            self._gens[slot] += 1
            gen = self._gens[slot]
        try:
            view = memoryview(data)
            done = 0
            while done < len(view):
                done += os.pwrite(self._fd, view[done:], slot * self._size + done)
        except BaseException:
            self.free(_Spooled(slot, gen, 0))
            raise
        return _Spooled(slot, gen, len(data))

    def read(self, sp: _Spooled, start: int, end: int) -> bytes | None:
        """Bytes [start, end) of the block, or None if its slot was reused meanwhile."""
        data = os.pread(self._fd, end - start, sp.slot * self._size + start)
        with self._lock:
            if self._gens[sp.slot] != sp.gen:
                return None
        if len(data) != end - start:
            raise FetchError(f"spool file returned {len(data)} bytes for {end - start}")
        return data

    def read_into(self, sp: _Spooled, start: int, dst: memoryview) -> bool:
        """Bytes [start, start+len(dst)) of the block into dst; False if its slot was reused meanwhile."""
        if read_fully(self._fd, dst, sp.slot * self._size + start) < len(dst):
            raise FetchError("spool file ended short")
        with self._lock:
            return self._gens[sp.slot] == sp.gen

    def free(self, sp: _Spooled) -> None:
        """The block is in the cache (or dropped): its slot may be handed out again."""
        with self._lock:
            self._gens[sp.slot] += 1  # a reader still holding sp now looks elsewhere
            self._free.append(sp.slot)
            if len(self._free) == len(self._gens):
                # Empty: give the pages back rather than let writeback put them on disk.
                os.ftruncate(self._fd, 0)
                self._allocate()
        self._room.release()

    def close(self) -> None:
        self._fh.close()


class _FileState:
    """Access pattern of one file (guarded by Reader._lock)."""

    def __init__(self) -> None:
        self.last_end = -1
        self.run_start = 0
        self.seq_end = 0  # highest end of the current sequential run
        self.run_reads = 0
        self.stream: _Stream | None = None


class Reader:
    """Serves reads of remote files from the block cache, fetching what is missing.

    Thread-safe; read() is called from many FUSE threads at once. Memory:
    up to `hot_bytes` of recent blocks plus up to `write_queue` of blocks not
    yet on disk (ranged fetches' in RAM, streams' in the spool file's page cache).
    """

    def __init__(
        self,
        downloader: Downloader,
        cache: BlockCache,
        *,
        block_size: int | None = None,
        head_size: int = 256 << 10,
        readahead: int = 64 << 20,
        max_workers: int = 4,
        idle_timeout: float = 2.0,
        hot_bytes: int = 64 << 20,
        stream_chunk: int = 1 << 20,
        stream_after: int = 2 << 20,
        plug: float = 0.003,
        write_queue: int = 256 << 20,
        bulk_read: int = 64 << 10,
        random_ahead: int = 384 << 10,
        disk_ahead: int = 8 << 20,
        piece_size: int = 16 << 10,
    ):
        bs = cache.block_size if block_size is None else block_size
        if bs != cache.block_size:
            raise ValueError(f"reader block_size {bs} differs from the cache's {cache.block_size}")
        self._dl = downloader
        self._cache = cache
        self.block_size = bs
        # Reads that are not part of a copy (format probes, COG tiles) fetch and
        # cache `piece_size` pieces, not whole blocks: a 512x512 window of a COG
        # is three ~260 KB tile ranges, and whole blocks around them cost 4-8
        # times the bytes. Pieces live under their own file key; a piece size
        # of block_size or more turns them off.
        self.piece_size = piece_size if 0 < piece_size < bs and bs % piece_size == 0 else bs
        self._pieces = self.piece_size < bs
        self.head_size = head_size if self._pieces else max(head_size, bs)
        self.readahead = max(readahead, bs)
        self.max_workers = max(1, max_workers)
        self.idle_timeout = idle_timeout
        self._stream_chunk = stream_chunk
        # A sequential run away from the head opens a stream only once it is this
        # long: shorter runs (a COG tile row) are cheaper as one ranged request.
        self.stream_after = stream_after
        # A first read at offset 0 at least this big is a copy program's.
        self.bulk_read = bulk_read
        self.random_ahead = random_ahead
        # How long a ranged fetch waits for concurrent readers to join its batch.
        self.plug = plug
        self._batches: dict[str, _Fetch] = {}  # open batch per file key
        # A reader waits for a stream rather than fetching if its block is at most
        # this far ahead of the stream: closer than a new request would be.
        self._wait_gap = max(2 * bs, min(self.readahead, 4 << 20))
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._files: dict[str, _FileState] = {}
        self._inflight: dict[tuple[str, int], _Fetch] = {}
        self._streams: list[_Stream] = []
        # Recently used blocks in RAM: a 128 KiB kernel read must not re-read and
        # re-verify a whole block from disk each time.
        # A block loaded from the disk cache is held as its open, verified file
        # (DiskBlock): it costs a file descriptor here, its bytes stay in the
        # page cache. Its length counts against hot_bytes like a block in RAM.
        self._hot: OrderedDict[tuple[str, int], bytes | DiskBlock] = OrderedDict()
        self._open_files: OrderedDict[tuple[str, int], None] = OrderedDict()  # the DiskBlocks in _hot
        self._scratch: list[bytearray] = []  # verify buffers (list.pop/append are atomic)
        self._hot_bytes = 0
        self._hot_limit = hot_bytes
        self._closed = False
        # Blocks go to disk on a writer thread, off the read path: a diskcache
        # set costs ~0.5 ms per MiB (file + SQLite row), as long as serving it.
        # Until written they are served from `_pending`, never fetched again
        # (a stream's from the spool file, which has as many slots as the queue).
        # The queue bounds the RAM this takes: 256 MiB holds a whole cold copy
        # of a 10980x10980 band (~211 MB), so none of its writes compete with
        # serving it (measured: 0.53 -> 0.62 of curl's rate vs 192 MiB, where
        # the writer started three quarters through the copy).
        self._pending: dict[tuple[str, int], bytes | _Spooled] = {}
        self._writes: queue.Queue = queue.Queue(maxsize=max(4, write_queue // bs))
        self._spool: _Spool | None = None
        try:
            self._spool = _Spool(str(cache.directory), bs, self._writes.maxsize)
        except (OSError, AttributeError) as exc:  # no spool: stream blocks wait in RAM
            log.warning("no spool file for stream blocks (%s): keeping them in RAM", exc)
        self._write_lock = threading.Lock()  # held while a block goes to disk
        self._last_read = 0.0  # monotonic time of the last read() (unlocked: a hint)
        self._flushing = 0
        self._writer = threading.Thread(target=self._write_loop, name="terrafs-cache-writer", daemon=True)
        self._writer.start()
        # Disk read-ahead for sequential re-reads: blocks are verified and
        # opened ahead of the reader, two at a time, as the kernel reads ahead
        # in a local file. A reader needing a block being loaded waits for it.
        self.disk_ahead = max(0, disk_ahead)
        self._loading: dict[tuple[str, int], threading.Event] = {}
        self._loads: queue.Queue = queue.Queue()
        self._loaders = [
            threading.Thread(target=self._load_loop, name="terrafs-cache-loader", daemon=True) for _ in range(2)
        ]
        for t in self._loaders:
            t.start()

    # -- public ---------------------------------------------------------------

    def read(self, f: RemoteFile, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of f, shorter at end of file. Raises FetchError."""
        if offset < 0 or size < 0:
            raise ValueError("negative offset or size")
        out = bytearray(max(0, min(offset + size, f.size) - offset))
        n = self.read_into(f, offset, memoryview(out))
        return bytes(out[:n])

    def read_into(self, f: RemoteFile, offset: int, out: memoryview) -> int:
        """Copy bytes [offset, offset+len(out)) of f into out; returns how many (fewer at end of file).

        The FUSE layer passes the kernel reply's own buffer: each byte is
        copied once, from RAM or straight from the spool file, with no
        intermediate bytes objects. Raises FetchError.
        """
        if offset < 0:
            raise ValueError("negative offset")
        end = min(offset + len(out), f.size)
        if offset >= end:
            return 0
        bs = self.block_size
        first, last = offset // bs, (end - 1) // bs
        self._last_read = time.monotonic()
        with self._lock:
            if self._closed:
                raise FetchError("reader is closed")
            fetch_to, pieces = self._note_access(f, offset, end, first)
        # A file of one block costs one request whole, fewer than in pieces.
        if pieces and self._pieces and f.size > bs and not all(self._cached(f, i) for i in range(first, last + 1)):
            self._read_pieces(f, offset, end, fetch_to, out)
            return end - offset
        blocks = self._blocks(f, first, last, (min(fetch_to, f.size) - 1) // bs)
        for i in range(first, last + 1):
            a, b = max(offset, i * bs), min(end, (i + 1) * bs)
            self._copy(f, i, blocks[i], a - i * bs, b - i * bs, out[a - offset : b - offset])
        return end - offset

    def _piece_file(self, f: RemoteFile) -> RemoteFile:
        """The same file seen as pieces: its own cache key, so pieces and blocks never mix."""
        return RemoteFile(f.url, f.size, f"{f.key}#p{self.piece_size}")

    def _read_pieces(self, f: RemoteFile, offset: int, end: int, fetch_to: int, out: memoryview) -> None:
        """Bytes [offset, end) into out from whole blocks where cached, else from pieces (fetched up to fetch_to)."""
        bs, ps = self.block_size, self.piece_size
        pf = self._piece_file(f)
        fetch_last = (min(fetch_to, f.size) - 1) // ps
        pos = offset
        while pos < end:
            i = pos // bs
            stop = min(end, (i + 1) * bs)
            if self._cached(f, i):
                block = self._blocks(f, i, i, i)[i]
                self._copy(f, i, block, pos - i * bs, stop - i * bs, out[pos - offset : stop - offset])
            else:
                p0, p1 = pos // ps, (stop - 1) // ps
                got = self._blocks(pf, p0, p1, max(p1, fetch_last), ps)
                for j in range(p0, p1 + 1):
                    a, b = max(pos, j * ps), min(stop, (j + 1) * ps)
                    self._copy(pf, j, got[j], a - j * ps, b - j * ps, out[a - offset : b - offset])
            pos = stop

    def _copy(self, f: RemoteFile, i: int, data: _Block, start: int, end: int, dst: memoryview) -> None:
        """Bytes [start, end) of block i into dst, from RAM, the spool or the block's cache file."""
        for _ in range(3):
            if isinstance(data, DiskBlock):
                data.read_into(start, dst)
                return
            if not isinstance(data, _Spooled):
                dst[:] = memoryview(data)[start:end]
                return
            if self._spool.read_into(data, start, dst):  # type: ignore[union-attr]
                return
            # Written to the cache and its slot reused while we read: look again.
            data = self._blocks(f, i, i, i)[i]
        raise FetchError(f"block {i} of {f.url} kept moving while it was read")

    def prefetch(self, f: RemoteFile, progress: Callable[[int], None] | None = None) -> None:
        """Put the whole file in the cache with non-urgent streams over the missing runs.

        progress, if given, is called with the number of bytes of f cached so far.
        """
        bs = self.block_size
        nblocks = self._nblocks(f)
        done = 0
        i = 0
        while i < nblocks:
            if self._cached(f, i):
                done += self._block_len(f, i)
                i += 1
                if progress:
                    progress(done)
                continue
            j = i
            while j < nblocks and not self._cached(f, j):
                j += 1
            stream = _Stream(f, i * bs, min(j * bs, f.size), allowed_end=f.size, urgent=False)
            base = done

            def on_block(pos: int, base: int = base, start: int = i * bs) -> None:
                if progress:
                    progress(base + pos - start)

            self._run_stream(stream, on_block=on_block)
            if stream.pos < stream.end:
                raise FetchError(f"prefetch of {f.url} stopped at byte {stream.pos}: {stream.error}")
            done += stream.end - stream.start
            i = j
        self.flush()

    def release(self, f: RemoteFile) -> None:
        """All openers closed f: stop its stream and forget its access pattern."""
        with self._lock:
            state = self._files.pop(f.key, None)
            if state and state.stream and state.stream.alive:
                state.stream.stop = True
            self._cond.notify_all()

    def close(self) -> None:
        """Stop every stream and wait for their threads (the cache stays open: the caller owns it)."""
        with self._lock:
            self._closed = True
            streams = list(self._streams)
            for st in streams:
                st.stop = True
            self._cond.notify_all()
        for st in streams:
            if st.thread is not None:
                st.thread.join(timeout=10)
        self.flush()
        self._writes.put(None)
        self._writer.join(timeout=60)
        for t in self._loaders:
            self._loads.put(None)
        for t in self._loaders:
            t.join(timeout=10)
        if self._spool is not None and not self._writer.is_alive():
            self._spool.close()

    def flush(self) -> None:
        """Wait until every block fetched so far is in the disk cache."""
        with self._lock:
            self._flushing += 1
        try:
            self._writes.join()
        finally:
            with self._lock:
                self._flushing -= 1

    # -- access pattern and streams --------------------------------------------

    def _note_access(self, f: RemoteFile, offset: int, end: int, first: int) -> tuple[int, bool]:
        """Track sequential runs and start or extend a stream (caller holds the lock).

        Returns how far a fetch for this read, should it need one, goes (the
        bytes of the read and the next ones the program will likely ask for),
        and whether it fetches pieces rather than whole blocks.
        """
        bs = self.block_size
        state = self._files.get(f.key)
        if state is None:
            state = self._files[f.key] = _FileState()
        # FUSE may deliver the reads of one sequential pass slightly out of
        # order, so "sequential" tolerates a block of slack either way.
        if state.last_end >= 0 and abs(offset - state.last_end) <= bs and end > state.seq_end:
            state.run_reads += 1
            state.seq_end = end
        elif not (state.run_start <= offset and end <= state.seq_end):
            state.run_start, state.seq_end, state.run_reads = offset, end, 1
        # else: a repeat inside the run (another thread, or the kernel re-asking): no change
        state.last_end = end
        sequential = state.run_reads >= 2
        st = state.stream
        live = st is not None and st.alive and not st.stop
        if sequential and self.disk_ahead and not live:
            self._schedule_disk_ahead(f, (end - 1) // bs + 1)
        if live:
            if sequential and st.start <= state.seq_end <= st.end:
                ahead = min(self.readahead, max(state.seq_end - state.run_start, 2 * bs))
                allowed = max(st.allowed_end, min(st.end, state.seq_end + ahead))
                if allowed > st.allowed_end:
                    # Only a paused stream waits for this (see _wait_allowed): wake
                    # it then, not every thread on the condition at every read.
                    paused = st.pos >= st.allowed_end
                    st.allowed_end = allowed
                    if paused:
                        self._cond.notify_all()
            return end, False
        if first == 0 and not self._cached(f, 0):
            if end - offset >= self.bulk_read and not self._pieces_cached(f, offset, end):
                # A copy program: the kernel turns its big reads into reads
                # of >= 128 KiB. One request for the whole file; it also
                # fills the head, so a COG reader that shows up is served too.
                self._start_stream(state, f, 0, min(f.size, self.head_size))
                return end, False
            # A format probe (GDAL reads 16 KiB): one bounded request for the
            # head, where a COG keeps every IFD. No open-ended stream whose
            # socket buffers would carry megabytes nobody reads.
            return max(end, self.head_size), True
        if sequential and state.seq_end - state.run_start >= self.stream_after and not self._cached(f, first):
            ahead = min(self.readahead, max(state.seq_end - state.run_start, 2 * bs))
            self._start_stream(state, f, first * bs, min(f.size, state.seq_end + ahead))
            return end, False
        if sequential:
            # A short run (a tile range split by the kernel) goes on in pieces,
            # as far ahead as a random read; past a block it is whole blocks,
            # and past stream_after a stream.
            if self._pieces and state.seq_end - state.run_start < bs:
                return end + self.random_ahead, True
            return end, False
        # A random read (a COG tile): also what the program and the kernel's
        # readahead will ask for next, in the same request (measured with a
        # 64 KiB kernel readahead: GDAL's ~260 KB tile ranges become ~352 KiB).
        return end + self.random_ahead, True

    def _pieces_cached(self, f: RemoteFile, offset: int, end: int) -> bool:
        """Whether pieces hold all of [offset, end) (caller may hold the lock)."""
        if not self._pieces:
            return False
        pf, ps = self._piece_file(f), self.piece_size
        return all(self._cached(pf, j, ps) for j in range(offset // ps, (end - 1) // ps + 1))

    def _start_stream(self, state: _FileState, f: RemoteFile, start: int, allowed_end: int) -> None:
        live = [s for s in self._streams if s.alive]
        if len(live) >= self.max_workers:
            idle = [s for s in live if not s.stop and s.pos >= s.allowed_end]
            if not idle:
                return  # readers fall back to ranged fetches
            idle[0].stop = True  # a paused stream nobody follows gives way
            self._cond.notify_all()
        st = _Stream(f, start, f.size, allowed_end=max(allowed_end, start + self.block_size), urgent=True)
        state.stream = st
        self._streams.append(st)
        st.thread = threading.Thread(target=self._stream_thread, args=(st,), name="terrafs-stream", daemon=True)
        st.thread.start()

    def _stream_thread(self, st: _Stream) -> None:
        try:
            self._run_stream(st)
        finally:
            with self._lock:
                if st in self._streams:
                    self._streams.remove(st)

    def _run_stream(self, st: _Stream, on_block: Callable[[int], None] | None = None) -> None:
        """Receive [st.start, st.end) block by block into the cache, honouring flow control."""
        f, bs = st.file, self.block_size
        it = self._dl.stream(f.url, st.start, st.end, urgent=st.urgent, chunk_size=self._stream_chunk)
        buf = bytearray()
        pos = st.start
        checked = False

        def deliver(block: bytes) -> None:
            """Store the block at pos and wake the readers waiting for it."""
            nonlocal pos
            self._store(f, pos // bs, block, spool=True)
            pos += len(block)
            with self._lock:
                st.pos = pos
                self._cond.notify_all()
            if on_block:
                on_block(pos)

        try:
            for chunk in it:
                if not checked:
                    # http.py may expose the response's RemoteInfo on the iterator.
                    info = getattr(it, "info", None)
                    if info is not None:
                        self._check_identity(f, info)
                    checked = True
                if not buf and len(chunk) == min(bs, st.end - pos) and pos % bs == 0:
                    deliver(bytes(chunk))  # the usual case (chunk size = block size): no copy
                    if pos >= st.end or not self._wait_allowed(st, pos):
                        break
                    continue
                buf += chunk
                while buf and (len(buf) >= bs or pos + len(buf) >= st.end):
                    n = min(bs, st.end - pos)
                    if len(buf) < n:
                        break
                    deliver(bytes(buf[:n]))
                    del buf[:n]
                if pos >= st.end or not self._wait_allowed(st, pos):
                    break
            if pos < st.end and not st.stop:
                log.warning("stream of %s ended early at byte %d of %d", f.url, pos, st.end)
        except FetchError as exc:
            st.error = exc
            log.warning("stream of %s failed at byte %d: %s", f.url, pos, exc)
        except Exception as exc:  # a bug or a cache failure must not kill readers waiting on us
            st.error = exc
            log.exception("stream of %s failed at byte %d", f.url, pos)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
            with self._lock:
                st.alive = False
                self._cond.notify_all()

    def _wait_allowed(self, st: _Stream, pos: int) -> bool:
        """Pause while the stream is far enough ahead; False once it should stop."""
        with self._lock:
            last_change = time.monotonic()
            allowed = st.allowed_end
            while not st.stop and pos >= st.allowed_end:
                if st.allowed_end != allowed:
                    allowed, last_change = st.allowed_end, time.monotonic()
                left = self.idle_timeout - (time.monotonic() - last_change)
                if left <= 0:
                    log.debug("closing idle stream of %s at byte %d", st.file.url, pos)
                    st.stop = True
                    break
                self._cond.wait(min(left, 1.0))
            return not st.stop

    # -- blocks ---------------------------------------------------------------

    def _blocks(
        self, f: RemoteFile, first: int, last: int, fetch_last: int, unit: int | None = None
    ) -> dict[int, _Block]:
        """Blocks first..last of f, from RAM, disk, a stream or new fetches.

        A fetch this read leads also brings the missing blocks up to
        fetch_last, in the same request; the read does not wait for others'.
        unit: the size of a "block" here (piece_size for a piece file).
        """
        got: dict[int, bytes] = {}
        for i in range(first, last + 1):
            data = self._cached_data(f, i, unit)
            if data is not None:
                got[i] = data
        deadline = time.monotonic() + _WAIT_LIMIT
        extra = [i for i in range(last + 1, fetch_last + 1) if not self._cached(f, i, unit)]
        while True:
            missing = [i for i in range(first, last + 1) if i not in got]
            if not missing:
                break
            lead, theirs, stream = self._claim(f, missing, extra, unit)
            extra = []
            if lead is not None:
                got.update(self._fetch_batch(f, lead, unit))
            for i, fetch in theirs.items():
                if not fetch.done.wait(max(0.0, deadline - time.monotonic())):
                    raise FetchError(f"timed out waiting for block {i} of {f.url}")
                if fetch.error is not None:
                    raise FetchError(f"fetch of {f.url} failed: {fetch.error}")
                if i in fetch.blocks:
                    got[i] = fetch.blocks[i]
            if stream:
                self._wait_stream(f, stream, got, deadline, unit)
        return got

    def _claim(
        self, f: RemoteFile, missing: list[int], extra: list[int] = (), unit: int | None = None
    ) -> tuple[_Fetch | None, dict[int, _Fetch], list[int]]:
        """Split missing blocks into: a batch I lead, fetches to wait on, the stream to wait on.

        `extra` blocks join the batch only if this read fetches anyway and
        nobody brings them yet; nobody waits for them.
        """
        mine: list[int] = []
        theirs: dict[int, _Fetch] = {}
        stream: list[int] = []
        bs = unit or self.block_size
        with self._lock:
            state = self._files.get(f.key)
            st = state.stream if state else None
            for i in missing:
                fetch = self._inflight.get((f.key, i))
                if fetch is not None:
                    theirs[i] = fetch
                elif (f.key, i) in self._hot or (f.key, i) in self._pending:
                    stream.append(i)  # arrived meanwhile: picked up by _wait_stream
                elif (
                    st is not None
                    and st.alive
                    and not st.stop
                    and st.start <= i * bs < st.end
                    and i * bs - st.pos <= self._wait_gap
                ):
                    # Keep the stream going up to this block rather than pay a request.
                    st.allowed_end = max(st.allowed_end, min(st.end, (i + 1) * bs))
                    stream.append(i)
                else:
                    mine.append(i)
            lead = None
            if mine:
                batch = self._batches.get(f.key)
                if batch is None or not batch.open:
                    batch = lead = self._batches[f.key] = _Fetch()
                for i in mine:
                    batch.wanted.add(i)
                    self._inflight[(f.key, i)] = batch
                    if lead is None:
                        theirs[i] = batch
                for i in extra:
                    key = (f.key, i)
                    if key in self._inflight or key in self._hot or key in self._pending:
                        continue
                    if st is not None and st.alive and not st.stop and st.start <= i * bs < st.end:
                        continue
                    batch.wanted.add(i)
                    self._inflight[key] = batch
            if stream:
                self._cond.notify_all()
        return lead, theirs, stream

    def _wait_stream(
        self, f: RemoteFile, wanted: list[int], got: dict[int, bytes], deadline: float, unit: int | None = None
    ) -> None:
        """Wait until the stream delivered `wanted` or died; what it failed to bring is retried."""
        bs = unit or self.block_size
        for i in wanted:
            with self._lock:
                while True:
                    data = self._hot.get((f.key, i)) or self._pending.get((f.key, i))
                    if data is not None:
                        got[i] = data
                        break
                    state = self._files.get(f.key)
                    st = state.stream if state else None
                    if st is None or not st.alive or st.pos > i * bs:
                        break  # not coming (or evicted from RAM): look in the cache, else fetch
                    if time.monotonic() > deadline:
                        raise FetchError(f"timed out waiting for block {i} of {f.url}")
                    self._cond.wait(1.0)
            if i not in got:
                data = self._cached_data(f, i, unit)
                if data is not None:
                    got[i] = data

    def _fetch_batch(self, f: RemoteFile, fetch: _Fetch, unit: int | None = None) -> dict[int, bytes]:
        """Let concurrent readers join for `plug` seconds, then fetch the batch, adjacent blocks as one range."""
        if self.plug > 0:
            time.sleep(self.plug)
        with self._lock:
            fetch.open = False
            if self._batches.get(f.key) is fetch:
                del self._batches[f.key]
            mine = sorted(fetch.wanted)
        bs = unit or self.block_size
        got: dict[int, bytes] = {}
        runs: list[tuple[int, int]] = []
        for i in mine:
            if runs and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], i + 1)
            else:
                runs.append((i, i + 1))
        try:
            for a, b in runs:
                start, end = a * bs, min(b * bs, f.size)
                data, info = self._dl.get_range(f.url, start, end, urgent=True)
                if len(data) != end - start:
                    raise FetchError(f"got {len(data)} bytes of {f.url} for a range of {end - start}")
                self._check_identity(f, info)
                for i in range(a, b):
                    block = data[(i - a) * bs : min((i - a + 1) * bs, end - start)]
                    self._store(f, i, block, unit=unit)
                    got[i] = block
            fetch.blocks = got
        except FetchError as exc:
            fetch.error = exc
            raise
        except Exception as exc:
            fetch.error = exc
            raise FetchError(f"fetch of {f.url} failed: {exc}") from exc
        finally:
            with self._lock:
                for i in mine:
                    self._inflight.pop((f.key, i), None)
            fetch.done.set()
        return got

    def _check_identity(self, f: RemoteFile, info: object) -> None:
        """Reject a response for a file of another size; drop old blocks if the ETag moved."""
        size = getattr(info, "size", None)
        if size is not None and size != f.size:
            raise FetchError(f"{f.url} is now {size} bytes, expected {f.size}")
        ident = (getattr(info, "etag", None), getattr(info, "last_modified", None))
        if ident == (None, None):
            return
        meta_key = "ident:" + f.url
        old = self._cache.get_meta(meta_key)
        if old is not None and tuple(old) != ident:
            log.info("%s changed remotely: dropping its cached blocks", f.url)
            suffix = f"#p{self.piece_size}"
            base = f.key[: -len(suffix)] if f.key.endswith(suffix) else f.key
            keys = {base, base + suffix}  # its blocks and its pieces
            with self._write_lock:
                with self._lock:
                    for k in [k for k in self._pending if k[0] in keys]:
                        del self._pending[k]
                for key in keys:
                    self._cache.drop_file(key)
            with self._lock:
                for k in [k for k in self._hot if k[0] in keys]:
                    self._hot_bytes -= len(self._hot.pop(k))
                    self._open_files.pop(k, None)
        if old is None or tuple(old) != ident:
            self._cache.set_meta(meta_key, ident)

    def _store(self, f: RemoteFile, i: int, data: bytes, spool: bool = False, unit: int | None = None) -> None:
        """A complete, checked block: served from now on, written to the disk cache behind.

        spool: a stream's block goes to the spool file rather than RAM (see _Spool).
        """
        want = self._block_len(f, i, unit)
        if len(data) != want:
            raise FetchError(f"block {i} of {f.url} is {len(data)} bytes, expected {want}")
        held: bytes | _Spooled = data
        if spool and self._spool is not None:
            held = self._spool.put(data)
        else:
            self._remember(f.key, i, data)
        with self._lock:
            self._pending[(f.key, i)] = held
        self._writes.put((f.key, i, held, time.monotonic()))

    def _yield_to_readers(self, queued: float) -> None:
        """Hold a disk write back while programs are reading and the queue has room.

        A block write costs about as much CPU as serving the block; on a busy
        2-core machine it slowed a cold `cat` by a third. Writes catch up when
        reads pause, the queue is all but full, the block has waited
        _WRITE_MAX_DEFER seconds, or on flush/close. (At three quarters full,
        a cold copy of a 211 MB band had its last 19 blocks written during
        the copy, at the cost of fresh page-cache pages for each.)
        """
        high = self._writes.maxsize - max(2, self._writes.maxsize // 16)
        while (
            not self._closed
            and not self._flushing
            and self._writes.qsize() < high
            and time.monotonic() - self._last_read < _WRITE_DEFER
            and time.monotonic() - queued < _WRITE_MAX_DEFER
        ):
            time.sleep(_WRITE_DEFER / 2)

    def _schedule_disk_ahead(self, f: RemoteFile, start: int) -> None:
        """Queue blocks [start, start + disk_ahead) for loading (caller holds the lock)."""
        bs = self.block_size
        for i in range(start, min(self._nblocks(f), start + max(1, self.disk_ahead // bs))):
            key = (f.key, i)
            if key in self._hot or key in self._pending or key in self._loading or key in self._inflight:
                continue
            self._loading[key] = threading.Event()
            self._loads.put((f, i))

    def _load_loop(self) -> None:
        scratch = bytearray(self.block_size)  # reused: no fresh memory per block
        while True:
            item = self._loads.get()
            if item is None:
                return
            f, i = item
            self._load(f, i, scratch)

    def _load(self, f: RemoteFile, i: int, scratch: bytearray) -> None:
        """Verify block i from the disk cache into the hot set; wake whoever waits for it."""
        try:
            data = self._cache.open_block(f.key, i, scratch)  # None if absent: then a fetch brings it
            if data is not None and len(data) == self._block_len(f, i):
                self._remember(f.key, i, data)
        except Exception:  # read-ahead is an optimisation: the reader retries itself
            log.exception("loading block %d of %s from the cache failed", i, f.url)
        finally:
            with self._lock:
                event = self._loading.pop((f.key, i), None)
            if event is not None:
                event.set()

    def _write_loop(self) -> None:
        while True:
            item = self._writes.get()
            try:
                if item is None:
                    return
                key, i, data, queued = item
                self._yield_to_readers(queued)
                with self._write_lock:
                    with self._lock:
                        current = self._pending.get((key, i)) is data
                    if current:
                        block = data
                        if isinstance(data, _Spooled):
                            block = self._spool.read(data, 0, data.length)  # type: ignore[union-attr]
                        if block is None:
                            raise RuntimeError(f"spool slot of block {i} was reused before its write")
                        self._cache.put(key, i, block, expected_len=len(block))
                    with self._lock:
                        if self._pending.get((key, i)) is data:
                            del self._pending[(key, i)]
            except Exception:  # the cache is an optimisation: a failed write costs a refetch later
                log.exception("writing a block to the cache failed")
                with self._lock:
                    if item is not None and self._pending.get((item[0], item[1])) is item[2]:
                        del self._pending[(item[0], item[1])]
            finally:
                # Only now may the slot be reused: nobody finds the block in _pending any more.
                if item is not None and isinstance(item[2], _Spooled):
                    self._spool.free(item[2])  # type: ignore[union-attr]
                self._writes.task_done()

    def _cached_data(self, f: RemoteFile, i: int, unit: int | None = None) -> bytes | DiskBlock | None:
        with self._lock:
            data = self._hot.get((f.key, i))
            if data is not None:
                self._hot.move_to_end((f.key, i))
                return data
            data = self._pending.get((f.key, i))
            if data is not None:
                return data
            loading = self._loading.get((f.key, i))
        if loading is not None and loading.wait(_WAIT_LIMIT):
            with self._lock:
                data = self._hot.get((f.key, i))
            if data is not None:
                return data
        scratch = self._take_scratch()
        try:
            data = self._cache.open_block(f.key, i, scratch)
        finally:
            self._scratch.append(scratch)
        if data is None:
            return None
        if len(data) != self._block_len(f, i, unit):
            log.warning("cached block %d of %s has the wrong length; refetching", i, f.url)
            return None
        self._remember(f.key, i, data)
        return data

    def _take_scratch(self) -> bytearray:
        """A block-sized buffer to verify a cached block in (kept for reuse: no fresh memory each time)."""
        try:
            return self._scratch.pop()
        except IndexError:
            return bytearray(self.block_size)

    def _cached(self, f: RemoteFile, i: int, unit: int | None = None) -> bool:
        """Cheap presence test (caller may hold the lock)."""
        return (f.key, i) in self._hot or (f.key, i) in self._pending or self._cache.has(f.key, i)

    def _remember(self, key: str, i: int, data: bytes | DiskBlock) -> None:
        with self._lock:
            old = self._hot.pop((key, i), None)
            if old is not None:
                self._hot_bytes -= len(old)
                self._open_files.pop((key, i), None)
            self._hot[(key, i)] = data
            self._hot_bytes += len(data)
            if isinstance(data, DiskBlock):
                self._open_files[(key, i)] = None
                while len(self._open_files) > _MAX_OPEN_BLOCKS:
                    k, _ = self._open_files.popitem(last=False)
                    closed = self._hot.pop(k, None)
                    if closed is not None:
                        self._hot_bytes -= len(closed)
            while self._hot_bytes > self._hot_limit and len(self._hot) > 1:
                k, dropped = self._hot.popitem(last=False)
                self._hot_bytes -= len(dropped)
                self._open_files.pop(k, None)

    def _block_len(self, f: RemoteFile, i: int, unit: int | None = None) -> int:
        u = unit or self.block_size
        return min(u, f.size - i * u)

    def _nblocks(self, f: RemoteFile) -> int:
        return (f.size + self.block_size - 1) // self.block_size
