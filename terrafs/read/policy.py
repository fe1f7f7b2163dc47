"""The read policy: which bytes to fetch for a read, and how, as pure functions.

Requests are what a user runs out of (the download service allows 80 per 10 s
and 200 per 60 s per address): once the limiter's burst is spent a request
costs 125 ms of budget, 300 ms sustained, while a byte costs 1/bandwidth. So a
fetch is planned to cover what the program will ask for next whenever those
bytes cost less than the request they save:

* A first read at offset 0 of `bulk_read` bytes or more is a copy program's:
  ONE streaming request for the whole file, kept going only while the program
  reads behind it (flow control, up to `readahead` ahead).
* A smaller first read at 0 is a format probe: one bounded request for the
  head (`head_size`), where a COG keeps every IFD (gdalinfo costs 1 request).
* A sequential run that reaches uncached blocks past `stream_after` starts a
  stream from there (on a slow link, from the next block, the rest of the
  current one in pieces beside it, when its held part costs more than a request).
* Any other read is random (a tile of a GeoTIFF): it fetches what it touches
  plus `random_ahead`, in pieces. Where the file is a TIFF whose IFDs are
  cached, the fetch is stretched to whole tiles (or strips): the one the read
  enters and the adjacent ones up to `tile_ahead` past it, so a program
  reading a run of tiles in one read() (which the kernel cuts into 128 KiB
  FUSE reads) costs one request, not one per cut.
* When such a fetch holds whole tiles of a row and the link is slow, the
  tiles under them come in a second request at the same time (rows.py): a
  program reading a window reads its rows one after the other.
* Missing units separated by cached ones are fetched as one range when the
  cached gap costs less to fetch again than a request (`merge_gap`).

Every speculative byte is priced (cost.py) against the link and budget the
reader measured (`Conditions`): a neighbouring tile, the margin past a random
read and the head beyond the format's first piece come only when their price
is below the chance that they save a request times that request's price. The
margin the kernel asks past a read is what the reader measured (`kernel_ahead`
of the conditions), not a constant.

Everything here is pure: state in, decision out; no threads, locks or I/O.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from terrafs.read import cost, rows
from terrafs.read.cost import Conditions, Link
from terrafs.read.tiff import TiffLayout

PAGE = 4096  # the kernel reads files in pages: tiles closer than this are one run


@dataclass(frozen=True)
class ReadPolicy:
    """The read path's knobs, each with why its default is what it is."""

    #: Unit of the disk cache and of copies (the cache's block_size): one CRC and one row per block.
    block_size: int = 1 << 20
    #: Unit of probes and random reads: whole blocks around ~260 KB tile ranges cost 4-8 x the bytes.
    piece_size: int = 16 << 10
    #: A probe's first request: a COG keeps every IFD in its head (a 10980 x 10980 band in 256 px tiles
    #: with overviews: ~20 KiB), a striped GeoTIFF its offset arrays (4096 rows: 32 KiB).
    head_size: int = 128 << 10
    #: How far a stream may run ahead of the program reading it (bounded RAM and spool).
    readahead: int = 64 << 20
    #: Streams at once: each holds a connection and a thread.
    max_streams: int = 4
    #: A paused stream nobody follows closes after this many seconds.
    idle_timeout: float = 2.0
    #: Recently used blocks kept in RAM: a 128 KiB kernel read must not re-verify a block from disk.
    hot_bytes: int = 64 << 20
    #: Bytes a stream hands over at a time (the block size: no copy when they match).
    stream_chunk: int = 1 << 20
    #: A sequential run away from the head opens a stream once it is this long (one request for the
    #: rest of the run): a run of strips or tiles past its first planned fetch is likely to go on.
    stream_after: int = 1 << 20
    #: A stream opened mid-file (a run of strips or tiles, not a copy from the start) ends this far past
    #: the run, or twice the run's length past it: a program that stops must not leave megabytes in flight.
    stream_reach: int = 4 << 20
    #: Seconds a ranged fetch waits for concurrent FUSE reads to join its request. Off: the planning
    #: lock and the in-flight claims already join the kernel's cuts of one read, and 3 ms on each of
    #: a GDAL window's 3 requests made a series of 17 windows 1.71 s where it takes 1.48 s.
    plug: float = 0.0
    #: Blocks waiting for the disk cache at most (RAM or spool): a whole 211 MB band fits.
    write_queue: int = 256 << 20
    #: A first read at 0 this large is a copy program's (the kernel sends >= 128 KiB for cp and cat).
    bulk_read: int = 64 << 10
    #: Bytes past a random read fetched in the same request: what the program and the kernel ask next.
    random_ahead: int = 384 << 10
    #: In a tiled TIFF, the adjacent tiles that start within this much of the one a read enters come in
    #: the same request: a window 2 or 3 tiles wide (256 px tiles of ~100 KB; 384 KiB brought a 4th
    #: tile and 0.8 x a window's bytes more on the Sentinel-2 bands, and saved no request).
    tile_ahead: int = 256 << 10
    #: In a striped TIFF the same, for strips (full rows: a window of a few dozen rows spans several).
    strip_ahead: int = 768 << 10
    #: Cached blocks verified ahead of a sequential re-read.
    disk_ahead: int = 8 << 20
    #: Budget one request costs once the limiter's burst is spent (80 per 10 s).
    request_cost: float = 0.125
    #: Bandwidth assumed for pricing bytes against requests (bytes/s); a modest link.
    bandwidth: float = 8e6
    #: A planned ranged fetch never goes beyond this many bytes.
    max_fetch: int = 8 << 20
    #: Bytes the kernel asks past a program's read: the rest of the 128 KiB FUSE read that holds the
    #: read's end, and one more for its read-ahead (lowered to 96 KiB in mount/fuseops.py); measured up to 228 KiB.
    #: Fetched with the tiles, or they cost a request of their own.
    kernel_ahead: int = 256 << 10
    #: Chance that the tile after the one a read enters is read next (a window straddling a tile edge).
    chance_next: float = 0.5
    #: Chance that a further adjacent tile within `tile_ahead` is read (a run of tiles in one read()).
    chance_run: float = 0.25
    #: Chance that a program reading whole tiles of a row reads the tiles under them next (a window
    #: half a tile tall or more spans two rows at least half the time; GDAL's larger windows always do).
    chance_below: float = 0.6
    #: Chance that a probe needs more of the head than its first piece (IFDs past 16 KiB).
    chance_head: float = 0.5
    #: Reads past the head that look for a TIFF layout in the cached bytes before giving up on a file.
    layout_tries: int = 8

    @property
    def wait_gap(self) -> int:
        """A read waits for a live stream rather than fetching if its unit is at most this far ahead."""
        return max(2 * self.block_size, min(self.readahead, 4 << 20))

    def assumed(self) -> Conditions:
        """Conditions before anything is measured: the old fixed prices (a bound budget, `bandwidth`)."""
        from terrafs.remote.limiter import BudgetState

        bound = BudgetState(room=0, wait=0.0, spacing=self.request_cost, used=1.0)
        return Conditions(Link(0.0, self.bandwidth), bound, self.kernel_ahead)

    @property
    def merge_gap(self) -> int:
        """Cached bytes worth fetching again to save a request."""
        return int(self.bandwidth * self.request_cost)

    def fitted(self, block_size: int) -> "ReadPolicy":
        """The policy for a cache of `block_size` blocks (pieces off if they do not divide it)."""
        import dataclasses

        ps = self.piece_size if 0 < self.piece_size < block_size and block_size % self.piece_size == 0 else block_size
        head = self.head_size if ps < block_size else max(self.head_size, block_size)
        return dataclasses.replace(self, block_size=block_size, piece_size=ps, head_size=head,
                                   readahead=max(self.readahead, block_size), max_streams=max(1, self.max_streams))


@dataclass
class Access:
    """How one file is being read: the current sequential run."""

    last_end: int = -1
    run_start: int = 0
    seq_end: int = 0  # highest end of the current run
    run_reads: int = 0
    finished: tuple[int, int] | None = None  # the run the last read ended, if it ended one
    alongside: tuple[int, int] = (0, 0)  # what the file's guess of a row below fetched (rows.below)
    tile_rows: int = 0  # fetches of whole tiles of a row so far: only the first guesses the row below

    def note(self, offset: int, end: int, slack: int) -> bool:
        """Record a read; True if it continues a sequential run.

        FUSE may deliver the reads of one pass slightly out of order, so
        "sequential" tolerates `slack` bytes either way.
        """
        self.finished = None
        if self.last_end >= 0 and abs(offset - self.last_end) <= slack and end > self.seq_end:
            self.run_reads += 1
            self.seq_end = end
        elif not (self.run_start <= offset and end <= self.seq_end):
            if self.last_end >= 0:
                self.finished = (self.run_start, self.seq_end)
            self.run_start, self.seq_end, self.run_reads = offset, end, 1
        # else: a repeat inside the run (another thread, or the kernel re-asking)
        self.last_end = end
        return self.run_reads >= 2


@dataclass(slots=True)  # not frozen: made per read, and a frozen init costs ~3x
class StreamView:
    """A live stream of the file, as the plan sees it."""

    start: int
    end: int
    allowed_end: int
    pos: int = 0  # bytes before this are delivered


@dataclass(slots=True)  # not frozen: made per read, and a frozen init costs ~3x
class Facts:
    """What is cached, looked up before the plan (disk lookups stay outside locks)."""

    head_cached: bool  # block 0
    first_cached: bool  # the read's first block
    head_pieces_cached: bool  # pieces hold all of the read (only asked for reads at 0)
    read_cached: bool = False  # blocks or pieces hold all of the read: nothing to fetch
    blocks_cached: bool = False  # whole blocks hold all of the read
    coming: bool = False  # what the read misses is in flight, or a fetch planned before brings it


@dataclass(slots=True)  # not frozen: made per read, and a frozen init costs ~3x
class Plan:
    pieces: bool  # fetch in pieces (else whole blocks)
    fetch_start: int  # a fetch this read leads covers [fetch_start, fetch_end)
    fetch_end: int
    start_stream: tuple[int, int, int] | None = None  # (start, allowed_end, end) of a new stream
    allow_stream_to: int | None = None  # let the live stream run this far
    disk_ahead_from: int | None = None  # block index to load ahead from the disk cache
    overshoot: int | None = None  # how far the run this read ended went past its tiles (the kernel's reach)
    below: tuple[int, int] | None = None  # the tile row under the fetch, to fetch alongside it (rows.py)
    notes: tuple[str, ...] = field(default=())


def plan(p: ReadPolicy, access: Access, size: int, offset: int, end: int, *, stream: StreamView | None,
         facts: Facts, layout: TiffLayout | None, cond: Conditions | None = None) -> Plan:
    """Decide how to serve bytes [offset, end) of a file of `size` bytes; updates `access`.

    `cond` is the link, budget and kernel read-ahead measured now (default: `p.assumed()`).
    """
    c = cond or p.assumed()
    decided = _plan(p, c, access, size, offset, end, stream, facts, layout)
    if decided.pieces and (size <= p.block_size or facts.blocks_cached):
        decided.pieces = False  # served from the blocks that hold it (or one block is the file)
    if access.finished is not None:
        decided.overshoot = overshoot(layout, *access.finished)
    return decided


def _plan(p: ReadPolicy, c: Conditions, access: Access, size: int, offset: int, end: int,
          stream: StreamView | None, facts: Facts, layout: TiffLayout | None) -> Plan:
    bs = p.block_size
    first = offset // bs
    # In a tiled file, reads further apart than the kernel reads ahead are not one run: the next
    # tile row of a window, planned as the run going on, fetched a whole block past that row.
    sequential = access.note(offset, end, c.kernel_ahead if stream is None and layout is not None else bs)
    run = access.seq_end - access.run_start
    ahead = min(p.readahead, max(run, 2 * bs))
    if access.run_start > 0:  # mid-file (a run of strips or tiles, not a copy): a quarter of the run ahead
        ahead = min(ahead, max(bs, run // 4))
    if stream is not None:
        allow = None
        if sequential and stream.start <= access.seq_end <= stream.end:
            want = max(stream.allowed_end, min(stream.end, access.seq_end + ahead))
            allow = want if want > stream.allowed_end else None
        # Bytes before the stream's start come in the pieces a fetch brings (see below), not as blocks.
        before = offset < stream.start and p.piece_size < bs
        return Plan(before, offset, min(end, stream.start) if before else end, allow_stream_to=allow)
    disk = (end - 1) // bs + 1 if sequential and p.disk_ahead else None
    pieces_on = p.piece_size < bs
    if first == 0 and not facts.head_cached:
        if end - offset >= p.bulk_read and not facts.head_pieces_cached:
            return Plan(False, offset, end, start_stream=(0, min(size, p.head_size), size), disk_ahead_from=disk)
        return Plan(pieces_on, offset, max(end, head(p, c)), disk_ahead_from=disk)
    if facts.read_cached or facts.coming:  # held, or another read's fetch brings it: in the units it is held in
        # Served in the units that hold it: the reader takes whole blocks where it has them.
        return Plan(pieces_on, offset, end, disk_ahead_from=disk)
    if sequential and run >= p.stream_after and not facts.first_cached:
        stop = min(size, access.seq_end + max(p.stream_reach, 2 * run))
        at = first * bs
        again = cost.byte_price(c, offset - at)
        if pieces_on and end <= at + bs < size and cost.networked(c) and again > cost.request_price(c) - c.link.ttfb:
            # The run came through this block in pieces: streaming them again delays the stream's new bytes
            # more than a request for the rest of the block costs, sent beside a stream from the next block
            # (a slow link; the round trip is the stream's too).
            return Plan(True, offset, at + bs, start_stream=(at + bs, min(size, access.seq_end + ahead), stop),
                        disk_ahead_from=disk)
        return Plan(False, offset, end, start_stream=(at, min(size, access.seq_end + ahead), stop),
                    disk_ahead_from=disk)
    if sequential and not (pieces_on and run < bs):
        return Plan(False, offset, end, disk_ahead_from=disk)
    # A random read, or a short run (a tile range the kernel cut up, or the next tile
    # row close by): pieces, reaching further the longer the run.
    start, stop = reach(p, layout, offset, end, run if sequential else 0, c)
    stop = min(size, stop)
    under = None
    if layout is not None and rows.row_of(layout, start, stop - c.kernel_ahead):
        under = None if access.tile_rows else rows.below(layout, start, stop, size, c, p.chance_below, access.alongside)
        access.tile_rows += 1
        access.alongside = under or access.alongside
    return Plan(pieces_on, start, stop, disk_ahead_from=disk, below=under)


def head(p: ReadPolicy, c: Conditions) -> int:
    """A probe's first request: `head_size`, less where the link makes the bytes past the first
    piece cost more than the request they may save (whole pieces, one at least)."""
    want = max(p.piece_size, min(p.head_size, cost.affordable(c, p.chance_head)))
    return -(-want // p.piece_size) * p.piece_size


def overshoot(layout: TiffLayout | None, start: int, end: int) -> int | None:
    """How far a finished run of FUSE reads [start, end) went past the last whole tile in it:
    what the kernel read past the program's read (None without a layout or a tile)."""
    if layout is None or end <= start:
        return None
    segs = layout.segments
    i = layout.after(end)
    i = (len(segs) if i is None else i) - 1
    while i >= 0 and segs[i].end > end:
        i -= 1
    if i < 0 or segs[i].end <= start or segs[i].offset < start - PAGE:
        return None
    return end - segs[i].end


def reach(p: ReadPolicy, layout: TiffLayout | None, offset: int, end: int, run: int = 0,
          cond: Conditions | None = None) -> tuple[int, int]:
    """The bytes a random read at [offset, end) should fetch.

    Without a layout: the read and `random_ahead` past it (what is worth its
    price, and the kernel's read-ahead at least). With one: whole
    tiles, from the start of the one the read enters, through each adjacent
    tile that starts before `tile_ahead` (`strip_ahead`) past the read (so that one request
    brings the run of tiles a program reads in one read()) while its bytes are
    worth their price, and the kernel's read-ahead past the last of them.
    """
    c = cond or p.assumed()
    ka = c.kernel_ahead
    generic = max(run, min(p.random_ahead, max(ka, cost.affordable(c, p.chance_next))))
    if layout is None:
        return offset, end + generic
    segs = layout.segments
    i = layout.at(offset)
    if i is None:
        return offset, end + generic  # the IFDs or a gap between tiles: the generic policy
    if segs[i].end - offset < p.piece_size and i + 1 < len(segs) and segs[i + 1].offset - segs[i].end <= PAGE:
        # GDAL reads a COG tile's 4-byte leader first, and the kernel rounds that read
        # out to pages of the tile before: a read in the last bytes of a tile enters the next.
        start, k = offset, i + 1
    else:
        start, k = min(offset, segs[i].offset), i
    stop = segs[k].end
    # The next tile too (a window that straddles a tile edge), and more while within the
    # reach: tile_ahead for tiles, strip_ahead for strips.
    ahead = max(run, p.strip_ahead if layout.across[segs[k].image] == 1 else p.tile_ahead)
    nxt = segs[k + 1].offset + 1 if k + 1 < len(segs) else 0
    want = max(end, segs[k].offset + ahead, nxt)
    entered = k
    while (k + 1 < len(segs) and segs[k + 1].offset < want and segs[k + 1].offset - stop <= PAGE
           and segs[k + 1].end - start <= p.max_fetch):
        nxt_seg = segs[k + 1]
        if nxt_seg.offset >= end:  # not asked yet: speculative, priced (a run of FUSE reads going on
            # past the tiles a program read is the kernel's read-ahead as often as the program's)
            chance = p.chance_next if k == entered else p.chance_run
            if not cost.worth(c, nxt_seg.end - max(stop, end), chance):
                break
        k += 1
        stop = segs[k].end
    return start, max(stop, end) + ka


def wants_layout(p: ReadPolicy, tries: int, offset: int) -> bool:
    """Whether a read at `offset` should look for the file's TIFF layout (once past the head,
    and `layout_tries` times at most)."""
    return tries < p.layout_tries and offset >= p.piece_size


def layout_tried(p: ReadPolicy, tries: int, permanent: bool) -> int:
    """The tries after one that found no layout (`permanent`: the file is not a TIFF we read)."""
    return p.layout_tries if permanent else tries + 1


def wait_for_stream(p: ReadPolicy, st: StreamView, unit_start: int, unit_end: int) -> int | None:
    """How far to let a live stream run so that it brings [unit_start, unit_end) soon, instead of a
    request (None: it will not, fetch it)."""
    if st.start <= unit_start < st.end and unit_start - st.pos <= p.wait_gap:
        return min(st.end, unit_end)
    return None


def extras(first: int, last: int, fetch_first: int, fetch_last: int, held: int) -> list[int]:
    """The units a read's own fetch also brings (the plan's reach around first..last), only when the
    read fetches anyway (fewer than all of its units are held)."""
    if held > last - first:
        return []
    return [*range(fetch_first, first), *range(last + 1, fetch_last + 1)]


def missing_runs(held: list[bool]) -> list[tuple[int, int]]:
    """The runs [i, j) of units not held: what a prefetch streams, one request each."""
    runs: list[tuple[int, int]] = []
    i, n = 0, len(held)
    while i < n:
        if held[i]:
            i += 1
            continue
        j = i
        while j < n and not held[j]:
            j += 1
        runs.append((i, j))
        i = j
    return runs


def ranges(missing: list[int], gap: int) -> list[tuple[int, int]]:
    """Sorted unit indices -> [first, last+1) runs; runs apart by at most `gap` units become one."""
    out: list[tuple[int, int]] = []
    for i in missing:
        if out and i - out[-1][1] <= gap:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out
