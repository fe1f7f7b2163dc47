"""The reader: the read path's facade, which serves reads of remote files.

For each read: gather what is cached once (a snapshot: RAM, pending writes, disk, the TIFF layout, through
`Lookup`), with the link and budget measured now; plan under the file's cursor (cursor.py) with the pure policy;
then fetch what is missing (fetches.py, or wait for a stream, streams.py) and copy into the caller's buffer, a
plan's guess of the next tile row fetched alongside. Blocks that arrive are served at once and written to the disk
cache behind (writebehind.py, through Lookup). Only complete blocks from a response whose size and identity
(ETag / Last-Modified) were checked are cached. Every choice is the policy's; this module carries plans out.

Lock order, pairwise (a thread holding the left one may take the right one, never the reverse):
    Cursor.lock    ->  Reader._cond   a file's planning, then streams and in-flight fetches
    Reader._cond   ->  leaf locks     HotSet, WriteBehind._lock, Spool, DiskAhead, the meters
    Cursor.lock    ->  leaf locks
    WriteBehind._write_lock -> WriteBehind._lock (the writer thread; it takes neither of the above)
No disk or SQLite call, and no HTTP, is made while a cursor's lock or _cond is held: the snapshot is gathered
before them, and fetches and streams run outside.

Must not: import FUSE, or do HTTP itself (a Downloader does, see terrafs/remote/http.py).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable, Iterator, Union

from terrafs.cache.blocks import BlockCache
from terrafs.cache.blockfiles import DiskBlock
from terrafs.errors import FetchError
from terrafs.cache.filemeta import FileMeta
from terrafs.read import policy as decide
from terrafs.read.cost import Conditions, describe
from terrafs.read.cursor import Cursor
from terrafs.read.fetches import RANGE_CHUNK, Fetches
from terrafs.read.hotset import HotSet
from terrafs.read.identity import IdentityGuard
from terrafs.read.link import Gauges
from terrafs.read.lookup import Counters, Lookup, SharedTier
from terrafs.read.policy import Facts, Plan, ReadPolicy, plan
from terrafs.read.remote import Downloader, RemoteFile, Units, blocks_of, pieces_of, unit_keys
from terrafs.read.spool import Spooled
from terrafs.read.stats import ReaderStats
from terrafs.read.streams import Stream, Streams
from terrafs.read.writebehind import WriteBehind

log = logging.getLogger(__name__)

_WAIT_LIMIT = 600.0  # seconds a reader waits on another thread's fetch before giving up
_FOLLOWING = Facts(True, True, True)  # a read behind a live stream needs no cache lookups (never mutated)

# A block as the reader holds it: bytes in RAM, a slot of the spool file, or its verified cache file.
Block = Union[bytes, Spooled, DiskBlock]


class Reader:
    """Serves reads of remote files from the block cache, fetching what is missing. Thread-safe."""

    def __init__(self, downloader: Downloader, cache: BlockCache, policy: ReadPolicy | None = None, *,
                 block_size: int | None = None, shared: SharedTier | None = None, filemeta: FileMeta | None = None,
                 **knobs):
        if block_size is not None and block_size != cache.block_size:
            raise ValueError(f"reader block_size {block_size} differs from the cache's {cache.block_size}")
        if "max_workers" in knobs:
            knobs["max_streams"] = knobs.pop("max_workers")
        p = dataclasses.replace(policy or ReadPolicy(), **knobs).fitted(cache.block_size)
        self.policy = p
        self._dl = downloader
        self._cache = cache
        self._cond = threading.Condition(threading.Lock())  # a plain lock: an RLock makes every wait and notify slower
        self._cursors: dict[str, Cursor] = {}  # file key -> its cursor (the dict guarded by _cond)
        self._generations: dict[str, int] = {}  # file key -> how often its remote content changed
        self._closed = False
        wb = WriteBehind(cache, p.block_size, p.write_queue)
        self._held = Lookup(cache, HotSet(p.hot_bytes), wb, p.block_size, shared, filemeta)
        self._fetches = Fetches(self._cond, p)
        self._identity = IdentityGuard(self._held.identities(), self.invalidate)
        self._streams = Streams(downloader, self._cond, p, self._deliver, self._identity.check)
        self._counts = Counters(bytes_from_network=0, reads=0)
        self._gauges = Gauges(downloader, p.assumed())  # the cost model's inputs, measured

    @property
    def block_size(self) -> int:
        return self.policy.block_size

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

        The FUSE layer passes the kernel reply's own buffer: each byte is copied once, from RAM, the spool
        or a cache file. Raises FetchError."""
        if offset < 0:
            raise ValueError("negative offset")
        end = min(offset + len(out), f.size)
        if offset >= end:
            return 0
        bs = self.policy.block_size
        first, last = offset // bs, (end - 1) // bs
        self._held.reading(time.monotonic())
        self._counts.add("reads", 1)
        decided = self._plan(f, offset, end)
        blocks = blocks_of(f, bs)
        if decided.pieces:
            self._read_pieces(f, offset, end, decided, out)
            return end - offset
        fetch_last = (min(decided.fetch_end, f.size) - 1) // bs
        got = self._units(blocks, first, last, first, fetch_last)
        for i in range(first, last + 1):
            a, b = max(offset, i * bs), min(end, (i + 1) * bs)
            self._copy(blocks, i, got[i], a - i * bs, b - i * bs, out[a - offset: b - offset])
        return end - offset

    def prefetch(self, f: RemoteFile, progress: Callable[[int], None] | None = None) -> None:
        """Put the whole file in the cache with non-urgent streams over the missing runs;
        progress, if given, is called with the number of bytes of f cached so far."""
        blocks = blocks_of(f, self.policy.block_size)
        runs = decide.missing_runs([self._held.has(blocks, i) for i in range(blocks.count())])
        self._streams.fill(blocks, runs, progress)
        self.flush()

    def release(self, f: RemoteFile) -> None:
        """All openers closed f: stop its stream, forget its access pattern, close its cache files."""
        with self._cond:
            cur = self._cursors.pop(f.key, None)
            if cur is not None:
                cur.stop()
            self._cond.notify_all()
        # Its cache files held open go too: a re-read comes from the kernel's pages, and a
        # daemon that served a thousand files must not keep a descriptor for each.
        self._held.close_files(set(unit_keys(f, self.policy.piece_size)))

    def close(self) -> None:
        """Stop every stream, write what is pending (the cache stays open: the caller owns it)."""
        with self._cond:
            self._closed = True
        self._streams.close()
        self._held.close()

    def flush(self) -> None:
        """Wait until every block fetched so far is in the disk cache (or given up)."""
        self._held.flush()

    def stats(self) -> ReaderStats:
        """Live figures: bytes by source, open streams, RAM held, the cache writer's health, the link."""
        c, held = self._counts.snapshot(), self._held
        return ReaderStats(int(c["reads"]), int(c["bytes_from_network"]), self._streams.count(), held.stats(),
                           held.wb.stats(), self._gauges.stats(), held.shared.stats() if held.shared else None)

    # -- planning -------------------------------------------------------------

    def _plan(self, f: RemoteFile, offset: int, end: int) -> Plan:
        """Decide how to serve [offset, end), and start or move this file's stream accordingly.

        What is cached is gathered before the cursor's lock (disk and SQLite lookups, the layout, the
        limiter's state); the plan is made under it, one read of a file at a time and in the order the reads
        arrived: the kernel sends a program's reads concurrently, and the first must start the stream or plan
        the fetch that the others follow."""
        p = self.policy
        with self._cond:
            if self._closed:
                raise FetchError("reader is closed")
            cur = self._cursors.get(f.key) or self._cursors.setdefault(f.key, Cursor())
        with cur.lock:
            ticket = cur.arrive()
            follow = cur.live_stream() is not None  # no snapshot needed: the plan follows the stream
            find_layout = not follow and cur.layout is None and decide.wants_layout(p, cur.layout_tries, offset)
        planned = False
        try:
            facts, missing, layout, permanent, cond = Facts(True, True, True), [], None, False, None
            if not follow:
                facts, missing = self._facts(f, offset, end)
                if find_layout:
                    units = (blocks_of(f, p.block_size), pieces_of(f, p.piece_size))
                    layout, permanent = self._held.layout(f, units)
                cond = self.conditions() if missing or not facts.head_cached else None
            with cur.lock:
                cur.wait_turn(ticket)
                planned = True
                try:
                    if layout is not None:
                        cur.layout = cur.layout or layout
                    elif find_layout and cur.layout is None:
                        cur.layout_tries = decide.layout_tried(p, cur.layout_tries, permanent)
                    with self._cond:
                        if cur.live_stream() is not None:  # (another read of the file may have started it)
                            return self._apply(f, cur, offset, end, _FOLLOWING)
                        pieces = pieces_of(f, p.piece_size)
                        # Another read's fetch brings them (the kernel's concurrent reads of one program read).
                        facts.coming = bool(missing) and all(
                            self._fetches.in_flight(k) or cur.coming_covers(k, pieces) for k in missing)
                        return self._apply(f, cur, offset, end, facts, cond)
                finally:
                    cur.planned()
        finally:
            if not planned:  # the snapshot failed: let the reads behind this one plan
                with cur.lock:
                    cur.wait_turn(ticket)
                    cur.planned()

    def conditions(self) -> Conditions:
        """The link, budget and kernel read-ahead as measured now (never under a lock of the read path)."""
        return self._gauges.conditions()

    def _apply(self, f: RemoteFile, cur: Cursor, offset: int, end: int, facts: Facts,
               cond: Conditions | None = None) -> Plan:
        """Plan and act on it (caller holds cur.lock and _cond)."""
        st = cur.live_stream()
        p = plan(self.policy, cur.access, f.size, offset, end, stream=cur.stream_view(),
                 facts=facts, layout=cur.layout, cond=cond)
        if p.overshoot is not None:
            self._gauges.kernel.overshoot(p.overshoot)
        if p.pieces and p.fetch_end > end:
            cur.coming = (p.fetch_start, p.fetch_end)
        if p.allow_stream_to is not None and st is not None:
            self._streams.allow(st, p.allow_stream_to)
        if p.start_stream is not None:
            new = self._streams.start(f, *p.start_stream)
            if new is not None:
                cur.stream = new
        if log.isEnabledFor(logging.DEBUG):
            log.debug("read %s [%d, %d): %s%s%s", f.url, offset, end,
                      f"fetch [{p.fetch_start}, {p.fetch_end}) in {'pieces' if p.pieces else 'blocks'}",
                      f", stream from {p.start_stream[0]}" if p.start_stream else "", describe(cond))
        if p.disk_ahead_from is not None and self.policy.disk_ahead:
            blocks = blocks_of(f, self.policy.block_size)
            self._held.schedule_ahead(f, blocks, p.disk_ahead_from, max(1, self.policy.disk_ahead // blocks.unit),
                                      self._fetches.in_flight)
        return p

    def _facts(self, f: RemoteFile, offset: int, end: int) -> tuple[Facts, list[tuple[str, int]]]:
        """What is cached of f for a read of [offset, end), and the units of the read not held (disk lookups)."""
        blocks = blocks_of(f, self.policy.block_size)
        pieces = pieces_of(f, self.policy.piece_size)
        first = offset // blocks.unit
        head = self._held.has(blocks, 0)
        first_cached = head if first == 0 else self._held.has(blocks, first)
        pieces_cached = False
        if first == 0 and not head and pieces.unit < blocks.unit:
            pieces_cached = all(self._held.has(pieces, j) for j in pieces.span(offset, end))
        missing: list[tuple[str, int]] = []
        blocks_cached = True
        for i in blocks.span(offset, end):
            if first_cached if i == first else self._held.has(blocks, i):  # (one SQLite lookup per block)
                continue
            blocks_cached = False
            if pieces.unit >= blocks.unit:
                missing.append((blocks.key, i))
                continue
            span = pieces.span(max(offset, i * blocks.unit), min(end, (i + 1) * blocks.unit))
            missing += [(pieces.key, j) for j in span if not self._held.has(pieces, j)]
        return Facts(head, first_cached, pieces_cached, not missing, blocks_cached), missing

    # -- serving units ----------------------------------------------------------

    def _read_pieces(self, f: RemoteFile, offset: int, end: int, decided: Plan, out: memoryview) -> None:
        """[offset, end) into out from whole blocks where cached, else from pieces (fetched as planned)."""
        blocks = blocks_of(f, self.policy.block_size)
        pieces = pieces_of(f, self.policy.piece_size)
        ps = pieces.unit
        fetch_first = max(0, decided.fetch_start) // ps
        fetch_last = (min(decided.fetch_end, f.size) - 1) // ps
        below = decided.below  # the plan's guess of the next tile row (rows.py), sent right after this read's fetch
        then = (lambda: self._fetches.alongside(pieces, below, lambda i: self._elsewhere(pieces, i),
                                                self._held.fetcher(pieces, lambda a, b: self._chunks(f, a, b)),
                                                lambda i, data: self._store(pieces, i, data))) if below else None
        pos = offset
        while pos < end:
            i = pos // blocks.unit
            stop = min(end, (i + 1) * blocks.unit)
            if pos >= decided.fetch_end or self._held.has(blocks, i):  # (past a fetch: a stream's blocks)
                block = self._units(blocks, i, i, i, i)[i]
                self._copy(blocks, i, block, pos - i * blocks.unit, stop - i * blocks.unit,
                           out[pos - offset: stop - offset])
            else:
                p0, p1 = pos // ps, (stop - 1) // ps
                got = self._units(pieces, p0, p1, min(p0, fetch_first), max(p1, fetch_last), then)
                then = None
                for j in range(p0, p1 + 1):
                    a, b = max(pos, j * ps), min(stop, (j + 1) * ps)
                    self._copy(pieces, j, got[j], a - j * ps, b - j * ps, out[a - offset: b - offset])
            pos = stop

    def _units(self, u: Units, first: int, last: int, fetch_first: int, fetch_last: int,
               then: Callable[[], None] | None = None) -> dict[int, Block]:
        """Units first..last of a file, from RAM, disk, a stream or new fetches.

        A fetch this read leads also brings the missing units fetch_first..fetch_last in the same
        request; the read does not wait for those. `then` runs once its fetch started, before it waits."""
        got: dict[int, Block] = {}
        for i in range(first, last + 1):
            data = self._held.data(u, i)
            if data is not None:
                got[i] = data
        deadline = time.monotonic() + _WAIT_LIMIT
        # Extras are not looked up on disk: the lookups would delay this read's claim past the
        # moment the kernel's other reads of the same program read join its batch, and one more
        # cached piece in the same request costs bytes, not a request.
        extra = decide.extras(first, last, fetch_first, fetch_last, len(got))
        while True:
            missing = [i for i in range(first, last + 1) if i not in got]
            if not missing:
                return got
            with self._cond:
                lead, theirs, coming = self._fetches.claim(u, missing, extra, lambda i: self._elsewhere(u, i))
            extra = []
            if lead is not None:
                self._fetches.start(u, lead, self._held.fetcher(u, lambda a, b: self._chunks(u.file, a, b)),
                                    lambda i, data: self._store(u, i, data))
            if then is not None:
                then()
                then = None
            for i, fetch in theirs.items():
                if not fetch.wait(i, max(0.0, deadline - time.monotonic())):
                    raise FetchError(f"timed out waiting for block {i} of {u.url}")
                if i in fetch.blocks:
                    got[i] = fetch.blocks[i]
                elif fetch.error is not None:
                    raise fetch.failure(u.url)
            if coming:
                self._wait_stream(u, coming, got, deadline)

    def _elsewhere(self, u: Units, i: int) -> bool:
        """Whether unit i is held in RAM or a stream brings it soon (caller holds _cond)."""
        if self._held.in_ram(u, i):
            return True
        cur = self._cursors.get(u.file.key)
        st = cur.live_stream() if cur is not None else None
        if u.key != u.file.key or st is None:
            return False  # streams bring whole blocks only
        allow = decide.wait_for_stream(self.policy, cur.stream_view(), i * u.unit, (i + 1) * u.unit)
        if allow is not None:
            self._streams.allow(st, allow)  # cheaper than a request
        return allow is not None

    def _wait_stream(self, u: Units, wanted: list[int], got: dict[int, Block], deadline: float) -> None:
        """Wait until the stream delivered `wanted` or died; what it failed to bring is fetched later."""
        for i in wanted:
            with self._cond:
                while True:
                    data = self._held.ram(u, i)
                    if data is not None:
                        got[i] = data
                        break
                    cur = self._cursors.get(u.file.key)
                    st = cur.stream if cur else None
                    if st is None or not st.alive or st.pos > i * u.unit:
                        break  # not coming (or evicted from RAM): look in the cache, else fetch
                    if time.monotonic() > deadline:
                        raise FetchError(f"timed out waiting for block {i} of {u.url}")
                    self._cond.wait(1.0)
            if i not in got and (data := self._held.data(u, i)) is not None:
                got[i] = data

    def _copy(self, u: Units, i: int, data: Block, start: int, end: int, dst: memoryview) -> None:
        """Bytes [start, end) of unit i into dst, from RAM, the spool or the unit's cache file."""
        for _ in range(3):
            if self._held.copy(data, start, end, dst):
                return
            # Written to the cache and its slot reused while we read: look again.
            data = self._units(u, i, i, i, i)[i]
        raise FetchError(f"block {i} of {u.url} kept moving while it was read")

    # -- arrivals -------------------------------------------------------------

    def _chunks(self, f: RemoteFile, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) of f in one ranged request, chunk by chunk, once its identity is checked."""
        it = self._dl.stream(f.url, start, end, urgent=True, chunk_size=RANGE_CHUNK)
        return self._gauges.answer(it, lambda info: self._identity.check(f, info),
                                   lambda n: self._counts.add("bytes_from_network", n))

    def _deliver(self, st: Stream, pos: int, block: bytes) -> None:
        self._counts.add("bytes_from_network", len(block))
        self._store(blocks_of(st.file, self.policy.block_size), pos // self.policy.block_size, block, spool=True)
        self._held.streamed(st.file, pos // self.policy.block_size, block)

    def _store(self, u: Units, i: int, data: bytes, spool: bool = False) -> None:
        """A complete, checked unit: served from now on, written to the disk cache behind."""
        if len(data) != u.length(i):
            raise FetchError(f"block {i} of {u.url} is {len(data)} bytes, expected {u.length(i)}")
        self._held.keep(u, i, data, spool)

    def generation(self, f: RemoteFile) -> int:
        """How often f's content was seen to change on the server (bytes of two generations never mix)."""
        return self._generations.get(f.key, 0)

    def invalidate(self, f: RemoteFile) -> None:
        """Forget every cached byte of f (pending writes, RAM, disk); its generation moves on."""
        with self._cond:
            self._generations[f.key] = self._generations.get(f.key, 0) + 1
            self._cursors.pop(f.key, None)
        self._held.drop_files(set(unit_keys(f, self.policy.piece_size)))
