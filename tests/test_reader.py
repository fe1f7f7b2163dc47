"""Reader read policy against a fake downloader that counts requests."""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
import os
from pathlib import Path

import pytest

from terrafs.cache.blocks import BlockCache
from terrafs.errors import FetchError, SizeChanged
from terrafs.read import Reader, RemoteFile
from terrafs.read.fetches import RANGE_CHUNK
from terrafs.read import writebehind
from terrafs.read.spool import Spool, Spooled

BS = 64 << 10
URL = "http://127.0.0.1:1/download/x/B02.tif"


@dataclass(frozen=True)
class Info:
    size: int
    etag: str | None
    last_modified: str | None


class _Stream:
    """Iterator like http.py's stream, exposing the response's RemoteInfo as .info."""

    def __init__(self, dl: "FakeDownloader", start: int, end: int, chunk: int, paced: bool = True):
        self.dl, self.pos, self.end, self.chunk, self.paced = dl, start, end, chunk, paced
        self.info = Info(len(dl.data), dl.etag, None)
        self.closed = False

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        dl = self.dl
        if self.closed or self.pos >= self.end:
            raise StopIteration
        if dl.stream_fail_at is not None and self.paced and self.pos >= dl.stream_fail_at:
            raise FetchError("connection reset (simulated)")
        if dl.delay and self.paced:
            time.sleep(dl.delay)
        if not self.paced and dl.range_gate_at is not None and self.pos >= dl.range_gate_at:
            dl.range_gate.wait(30)  # a slow link: the rest of the answer is still on its way
        n = min(self.chunk, self.end - self.pos)
        if dl.stream_fail_at is not None and self.paced:
            n = min(n, max(1, dl.stream_fail_at - self.pos))
        out = dl.data[self.pos : self.pos + n]
        self.pos += n
        with dl.lock:
            dl.bytes_sent += n
        return out

    def close(self) -> None:
        self.closed = True
        with self.dl.lock:
            self.dl.closed_streams += 1


class FakeDownloader:
    def __init__(self, data: bytes, etag: str | None = "e1"):
        self.data = data
        self.etag = etag
        self.lock = threading.Lock()
        self.calls: list[tuple[str, int, int, bool]] = []
        self.bytes_sent = 0
        self.closed_streams = 0
        self.delay = 0.0
        self.fail_ranges = False
        self.stream_fail_at: int | None = None
        self.range_gate_at: int | None = None  # a ranged answer stalls here until range_gate is set
        self.range_gate = threading.Event()

    def head(self, url: str) -> Info:
        return Info(len(self.data), self.etag, None)

    def _ranged(self, start: int, end: int, urgent: bool) -> None:
        """A ranged request: counted, delayed and failed as the test set it."""
        with self.lock:
            self.calls.append(("range", start, end, urgent))
        if self.delay:
            time.sleep(self.delay)
        if self.fail_ranges:
            raise FetchError("503 (simulated)")

    def get_range(self, url: str, start: int, end: int, *, urgent: bool = True):
        self._ranged(start, end, urgent)
        with self.lock:
            self.bytes_sent += end - start
        return self.data[start:end], Info(len(self.data), self.etag, None)

    def stream(self, url: str, start: int, end: int, *, urgent: bool = True, chunk_size: int = 1 << 20):
        # The reader's ranged fetches come through here too, in chunks of RANGE_CHUNK (a stream's
        # chunk is the policy's stream_chunk): they are told apart by it, and fail or stall as ranges.
        if chunk_size == RANGE_CHUNK:
            self._ranged(start, end, urgent)
            return _Stream(self, start, end, chunk_size, paced=False)
        with self.lock:
            self.calls.append(("stream", start, end, urgent))
        return _Stream(self, start, end, chunk_size)

    def kinds(self) -> list[str]:
        return [c[0] for c in self.calls]


class StalledCache(BlockCache):
    """A block cache whose writes wait until `go` is set: the writer is stuck, blocks must wait somewhere."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.go = threading.Event()

    def put(self, *a, **kw):
        self.go.wait(60)
        return super().put(*a, **kw)


def _data(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def env(tmp_path: Path):
    """(data, file, downloader, cache, reader) with a 4 MiB file and 64 KiB blocks."""
    made = []

    def make(size: int = 4 << 20, cache_dir: Path | None = None, dl: FakeDownloader | None = None,
             cache_cls: type = BlockCache, **kw):
        data = dl.data if dl else _data(size)
        dl = dl or FakeDownloader(data)
        cache = cache_cls(cache_dir or tmp_path / "cache", size_limit=256 << 20, block_size=BS)
        kw.setdefault("head_size", 256 << 10)
        kw.setdefault("readahead", 1 << 20)
        kw.setdefault("stream_chunk", 32 << 10)
        kw.setdefault("piece_size", BS)  # whole blocks: the piece tests below turn pieces on
        kw.setdefault("random_ahead", 512 << 10)
        reader = Reader(dl, cache, **kw)
        made.append((reader, cache))
        return data, RemoteFile(URL, len(data), "key-" + URL), dl, cache, reader

    yield make
    for reader, cache in made:
        reader.close()
        cache.close()


def _read_all(reader: Reader, f: RemoteFile, step: int = 128 << 10) -> bytes:
    out = bytearray()
    off = 0
    while off < f.size:
        out += reader.read(f, off, step)
        off += step
    return bytes(out)


def test_sequential_read_of_whole_file_is_one_stream_request(env):
    data, f, dl, cache, reader = env(size=(4 << 20) + 12345)
    assert _read_all(reader, f) == data
    assert dl.kinds() == ["stream"], f"expected one stream request, got {dl.calls}"
    assert dl.calls[0][1:3] == (0, f.size), "the stream should cover the whole file"
    assert dl.bytes_sent == f.size
    assert reader.read(f, f.size - 10, 100) == data[-10:]
    assert reader.read(f, f.size, 100) == b""


def test_warm_reread_uses_no_request(env):
    data, f, dl, cache, reader = env()
    _read_all(reader, f)
    n = len(dl.calls)
    assert _read_all(reader, f, step=100_000) == data
    assert len(dl.calls) == n, f"re-read issued requests: {dl.calls[n:]}"


def test_head_probe_costs_one_bounded_request(env):
    """gdalinfo: a small first read, then scattered reads inside the head: one ranged request, no stream."""
    data, f, dl, cache, reader = env(size=16 << 20)
    for off, n in [(0, 16384), (200_000, 4096), (8, 100), (150_000, 30_000), (250_000, 6_000)]:
        assert reader.read(f, off, n) == data[off : off + n]
    assert dl.calls == [("range", 0, 256 << 10, True)], dl.calls
    assert dl.bytes_sent == 256 << 10


def test_bulk_first_read_streams_and_a_reader_that_stops_closes_it(env):
    """A first read of >= 128 KiB at 0 (cp, cat) opens the stream; it pauses and closes when nobody follows."""
    data, f, dl, cache, reader = env(size=16 << 20, idle_timeout=0.3)
    assert reader.read(f, 0, 128 << 10) == data[: 128 << 10]
    time.sleep(0.6)  # let the paused stream time out
    assert dl.kinds() == ["stream"], dl.calls
    # Bytes beyond the head: at most one stream chunk in flight.
    assert dl.bytes_sent <= (256 << 10) + (32 << 10), dl.bytes_sent
    assert dl.closed_streams == 1, "the idle stream was not closed"


def test_release_stops_a_paused_stream(env):
    data, f, dl, cache, reader = env(size=16 << 20, idle_timeout=30)
    reader.read(f, 0, 128 << 10)
    reader.release(f)
    deadline = time.monotonic() + 3
    while dl.closed_streams == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert dl.closed_streams == 1, "release() did not stop the stream"


def test_random_window_fetches_missing_blocks_coalesced(env):
    data, f, dl, cache, reader = env(random_ahead=0)
    off = 1_000_000  # inside block 15, spans blocks 15..18
    assert reader.read(f, off, 200_000) == data[off : off + 200_000]
    assert dl.calls == [("range", 15 * BS, 19 * BS, True)], dl.calls
    # Overlapping read (blocks 16..21): only the new blocks 19..21 are fetched, as one range.
    assert reader.read(f, off + 100_000, 300_000) == data[off + 100_000 : off + 400_000]
    assert dl.calls[1:] == [("range", 19 * BS, 22 * BS, True)], dl.calls


def test_random_read_brings_the_kernels_next_readahead_in_the_same_request(env):
    """A COG tile through the kernel: a small read, then sequential 128 KiB pieces; one request in all."""
    data, f, dl, cache, reader = env(random_ahead=512 << 10)
    tile = 2_500_000 - 2_500_000 % 4096
    pieces = [(tile, 8192)] + [(tile + 8192 + k * (128 << 10), 128 << 10) for k in range(4)]
    for off, n in pieces:
        assert reader.read(f, off, n) == data[off : off + n]
    assert len(dl.calls) == 1, f"one tile cost {len(dl.calls)} requests: {dl.calls}"
    kind, start, end, urgent = dl.calls[0]
    assert kind == "range" and start == tile // BS * BS
    assert end <= (tile + 8192 + (512 << 10)) // BS * BS + BS, "fetched more than random_ahead beyond the read"


def test_same_region_read_by_8_threads_is_one_fetch(env):
    data, f, dl, cache, reader = env()
    dl.delay = 0.2
    off, n = 2_000_000, 150_000
    results: list[bytes] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        try:
            results.append(reader.read(f, off, n))
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors, errors
    assert results == [data[off : off + n]] * 8
    assert len(dl.calls) == 1, f"8 concurrent readers caused {len(dl.calls)} requests: {dl.calls}"


def test_concurrent_sequential_readers_share_the_stream(env):
    data, f, dl, cache, reader = env(size=8 << 20)
    dl.delay = 0.001
    step = 128 << 10
    out: dict[int, bytes] = {}

    def work(k: int) -> None:  # 4 threads take alternate pieces, like async FUSE reads
        for off in range(k * step, f.size, 4 * step):
            out[off] = reader.read(f, off, step)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert b"".join(out[o] for o in sorted(out)) == data
    assert dl.kinds().count("stream") == 1, dl.calls
    assert len(dl.calls) <= 2, f"too many requests for a sequential pass: {dl.calls}"


def test_concurrent_pieces_of_one_large_read_are_one_request(env):
    """The kernel splits a 600 KB pread (a COG tile row) into concurrent 128 KiB reads."""
    # A long plug: on a loaded 2-core machine five threads may take more than the default 3 ms to arrive.
    data, f, dl, cache, reader = env(random_ahead=0, plug=0.05)
    base, piece = 2_000_000, 128 << 10
    out: dict[int, bytes] = {}
    barrier = threading.Barrier(5)

    def work(k: int) -> None:
        barrier.wait()
        out[k] = reader.read(f, base + k * piece, piece)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert b"".join(out[k] for k in range(5)) == data[base : base + 5 * piece]
    assert len(dl.calls) == 1, f"one large read cost {len(dl.calls)} requests: {dl.calls}"
    first, last = base // BS, (base + 5 * piece - 1) // BS
    assert dl.calls[0][1:3] == (first * BS, (last + 1) * BS), "fetched more than the touched blocks"


def test_short_sequential_run_mid_file_does_not_open_a_stream(env):
    data, f, dl, cache, reader = env(stream_after=1 << 20)
    base = 2 << 20
    for k in range(4):  # 512 KiB: a tile row, not a copy
        reader.read(f, base + k * (128 << 10), 128 << 10)
    assert "stream" not in dl.kinds(), dl.calls
    for k in range(4, 16):  # the run goes on: now it is a copy
        assert reader.read(f, base + k * (128 << 10), 128 << 10) == data[base + k * (128 << 10) : base + (k + 1) * (128 << 10)]
    assert dl.kinds().count("stream") == 1, dl.calls
    assert len(dl.calls) <= 10, dl.calls


def test_cache_survives_a_new_blockcache_on_the_same_dir(env, tmp_path: Path):
    data, f, dl, cache, reader = env()
    _read_all(reader, f)
    reader.close()
    cache.close()
    dl2 = FakeDownloader(data)
    _, f2, dl2, cache2, reader2 = env(cache_dir=tmp_path / "cache", dl=dl2)
    assert _read_all(reader2, f2) == data
    assert dl2.calls == [], f"re-read after reopening the cache made requests: {dl2.calls}"


def test_corrupt_block_on_disk_is_refetched_never_served(env, tmp_path: Path):
    data, f, dl, cache, reader = env()
    off = 1_500_000
    reader.read(f, off, 100_000)
    reader.close()
    cache.close()
    files = list((tmp_path / "cache").rglob("*.val"))
    assert files, "no block files on disk"
    for p in files:
        raw = bytearray(p.read_bytes())
        raw[len(raw) // 2] ^= 0x55
        p.write_bytes(bytes(raw))
    dl2 = FakeDownloader(data)
    _, f2, dl2, cache2, reader2 = env(cache_dir=tmp_path / "cache", dl=dl2)
    assert reader2.read(f2, off, 100_000) == data[off : off + 100_000]
    assert len(dl2.calls) == 1, dl2.calls
    # And the refetched blocks are good now.
    assert reader2.read(f2, off, 100_000) == data[off : off + 100_000]
    assert len(dl2.calls) == 1


def test_fetch_failure_raises_and_caches_nothing(env):
    data, f, dl, cache, reader = env()
    dl.fail_ranges = True
    with pytest.raises(FetchError):
        reader.read(f, 1_000_000, 100_000)
    assert cache.stats().entries == 0, "a failed fetch left blocks in the cache"
    dl.fail_ranges = False
    assert reader.read(f, 1_000_000, 100_000) == data[1_000_000:1_100_000]


def _fetch_errors_of_concurrent_reads(reader, f, n: int) -> list[BaseException]:
    """The FetchErrors of n threads reading the same 1000 bytes of f at once."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            reader.read(f, 1_000_000, 1000)
        except FetchError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return errors


def test_waiters_of_a_failed_fetch_get_fetcherror(env):
    data, f, dl, cache, reader = env()
    dl.fail_ranges, dl.delay = True, 0.2
    errors = _fetch_errors_of_concurrent_reads(reader, f, 4)
    assert len(errors) == 4, errors
    assert len(dl.calls) == 1, dl.calls


def test_stream_failure_falls_back_and_caches_no_partial_block(env):
    data, f, dl, cache, reader = env(size=2 << 20)
    dl.stream_fail_at = 700_000  # mid-block 10
    assert _read_all(reader, f) == data
    assert dl.kinds()[0] == "stream"
    assert "range" in dl.kinds(), "no fallback after the stream died"
    reader.flush()
    for i in range(f.size // BS):
        got = cache.get(f.key, i)
        assert got is None or got == data[i * BS : (i + 1) * BS], f"block {i} is wrong in the cache"


def test_etag_change_drops_old_blocks(env):
    data, f, dl, cache, reader = env()
    reader.read(f, 1_000_000, 10)
    reader.flush()
    assert cache.has(f.key, 15)
    new = _data(len(data), seed=2)
    dl.data, dl.etag = new, "e2"
    assert reader.read(f, 3_000_000, 10) == new[3_000_000:3_000_010]
    reader.flush()
    assert not cache.has(f.key, 15), "blocks from the old ETag survived"
    assert reader.read(f, 1_000_000, 10) == new[1_000_000:1_000_010]


def test_size_mismatch_is_a_fetcherror_and_not_cached(env):
    data, f, dl, cache, reader = env()
    wrong = RemoteFile(f.url, f.size + 1, f.key)
    with pytest.raises(FetchError):
        reader.read(wrong, 1_000_000, 10)
    reader.flush()
    assert cache.stats().entries == 0


def test_a_size_change_reaches_every_reader_as_sizechanged(env):
    """files.py learns a republished file's new size from the SizeChanged a read raises: the
    error of a fetch run on the fetch thread must reach its leader and its waiters as one."""
    data, f, dl, cache, reader = env()
    wrong = RemoteFile(f.url, f.size + 1, f.key)
    dl.delay = 0.2
    errors = _fetch_errors_of_concurrent_reads(reader, wrong, 3)
    assert len(errors) == 3, errors
    for exc in errors:
        assert isinstance(exc, SizeChanged), repr(exc)
        assert (exc.size, exc.expected) == (f.size, f.size + 1)


def test_prefetch_warms_the_whole_file_non_urgently(env):
    data, f, dl, cache, reader = env(size=(1 << 20) + 5)
    reader.read(f, 500_000, 10)  # one block already cached
    seen: list[int] = []
    reader.prefetch(f, progress=seen.append)
    assert seen and seen[-1] == f.size and seen == sorted(seen)
    assert all(not c[3] for c in dl.calls[1:]), f"prefetch used urgent requests: {dl.calls}"
    n = len(dl.calls)
    assert _read_all(reader, f) == data
    assert len(dl.calls) == n


def test_small_file_is_one_request(env):
    data, f, dl, cache, reader = env(size=1000)
    assert reader.read(f, 0, 4096) == data
    assert reader.read(f, 500, 4096) == data[500:]
    assert len(dl.calls) == 1, dl.calls


def test_lru_eviction_under_reader(tmp_path: Path):
    data = _data(4 << 20)
    dl = FakeDownloader(data)
    cache = BlockCache(tmp_path / "small", size_limit=1 << 20, block_size=BS)
    reader = Reader(dl, cache, head_size=BS, readahead=1 << 20, stream_chunk=32 << 10, hot_bytes=BS)
    try:
        f = RemoteFile(URL, len(data), "k")
        assert _read_all(reader, f) == data
        reader.flush()
        assert cache.stats().size <= (1 << 20) + 4 * BS
        assert _read_all(reader, f) == data  # refetches what was evicted, still correct
    finally:
        reader.close()
        cache.close()


def test_blocks_are_written_behind_and_served_until_they_are(env):
    """Cache writes happen off the read path; a block not yet on disk is served from RAM, not fetched again."""
    data, f, dl, cache, reader = env(size=2 << 20, hot_bytes=BS)  # RAM holds one block: the rest wait in the queue
    assert _read_all(reader, f) == data
    assert _read_all(reader, f) == data
    assert dl.kinds() == ["stream"], dl.calls
    reader.flush()
    for i in range(f.size // BS):
        assert cache.get(f.key, i) == data[i * BS : (i + 1) * BS], f"block {i} missing or wrong after flush"


class CountingCache(BlockCache):
    """Records which thread read each block from disk."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.getters: list[str] = []

    def get(self, file_key, index):
        self.getters.append(threading.current_thread().name)
        return super().get(file_key, index)


def test_sequential_reread_from_disk_is_loaded_ahead(tmp_path: Path):
    """A warm re-read: blocks come from disk on read-ahead threads, not in the reader's own call."""
    data = _data(4 << 20)
    dl = FakeDownloader(data)
    cache = BlockCache(tmp_path / "c", size_limit=256 << 20, block_size=BS)
    f = RemoteFile(URL, len(data), "k")
    reader = Reader(dl, cache, head_size=BS, stream_chunk=32 << 10)
    assert _read_all(reader, f) == data
    reader.close()
    cache.close()
    cache = CountingCache(tmp_path / "c", size_limit=256 << 20, block_size=BS)
    reader = Reader(dl, cache, head_size=BS, disk_ahead=8 * BS)
    try:
        calls = len(dl.calls)
        assert _read_all(reader, f, step=32 << 10) == data
        assert len(dl.calls) == calls, "a warm re-read made requests"
        ahead = sum(1 for name in cache.getters if name == "terrafs-cache-loader")
        assert ahead >= len(cache.getters) - 4, f"most blocks were read from disk in the read path: {cache.getters}"
    finally:
        reader.close()
        cache.close()


def test_stream_blocks_wait_for_their_cache_write_in_an_unlinked_spool(env, tmp_path: Path):
    """A cold copy's blocks are not held in RAM until written: they sit in a spool file nobody can see."""
    data, f, dl, cache, reader = env(size=2 << 20, cache_cls=StalledCache)
    try:
        assert _read_all(reader, f) == data
        s = reader.stats()
        wb = s.write_behind
        assert wb.spooled_blocks > 0 and wb.spooled_blocks == wb.pending_blocks, f"stream blocks waited in RAM: {s}"
        assert s.held.hot_bytes == 0, f"stream blocks were also kept in RAM: {s}"
        assert _read_all(reader, f, step=100_000) == data, "a block waiting in the spool was served wrong"
    finally:
        cache.go.set()
    reader.flush()
    for i in range(f.size // BS):
        assert cache.get(f.key, i) == data[i * BS : (i + 1) * BS], f"block {i} missing or wrong after flush"
    leftovers = [p.name for p in (tmp_path / "cache").iterdir()]
    assert sorted(leftovers) == ["blocks", "meta"], f"the spool left a file behind: {leftovers}"
    assert dl.kinds() == ["stream"], dl.calls


def test_spool_is_bounded_and_the_stream_waits_for_room(env):
    data, f, dl, cache, reader = env(size=2 << 20, write_queue=4 * BS, cache_cls=StalledCache)
    out: list[bytes] = []
    try:
        t = threading.Thread(target=lambda: out.append(_read_all(reader, f)))
        t.start()
        time.sleep(0.5)
        spooled = reader.stats().write_behind.spooled_blocks
        assert 0 < spooled <= 4, f"{spooled} blocks in a spool of 4 slots"
        assert t.is_alive(), "the copy finished although the spool had no room"
    finally:
        cache.go.set()
    t.join(30)
    assert out == [data]


def test_a_read_racing_the_reuse_of_a_spool_slot_never_serves_the_new_bytes(env, monkeypatch):
    """A read finds a block in the spool; before it copies it out, the block's cache write completes
    and its slot is handed out again to other bytes. The read looks again (here: the disk cache)."""
    race = threading.Event()  # set: the next read from the spool races

    class RacingSpool(Spool):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.freed = threading.Condition()
            self.gone: set[int] = set()
            self.reused: list[Spooled] = []

        def free(self, sp: Spooled) -> None:
            super().free(sp)
            with self.freed:
                self.gone.add(id(sp))
                self.freed.notify_all()

        def read_into(self, sp: Spooled, start: int, dst: memoryview) -> bool:
            if race.is_set():
                race.clear()
                cache.go.set()  # the write completes and frees the slot meanwhile ...
                with self.freed:
                    assert self.freed.wait_for(lambda: id(sp) in self.gone, 30), "the block was never written"
                while not self.reused or self.reused[-1].slot != sp.slot:
                    self.reused.append(self.put(b"y" * BS))  # ... and the slot takes other bytes
                assert self.read(sp, 0, 10) is None, "a reused slot was not detected"
            return super().read_into(sp, start, dst)

    monkeypatch.setattr(writebehind, "Spool", RacingSpool)
    data, f, dl, cache, reader = env(size=1 << 20, write_queue=32 * BS, cache_cls=StalledCache)
    try:
        assert _read_all(reader, f) == data  # every block waits in the spool: the cache's writer is stuck
        race.set()
        assert reader.read(f, 3 * BS + 5, 100) == data[3 * BS + 5: 3 * BS + 105]
        assert not race.is_set(), "the read did not find the block in the spool"
    finally:
        cache.go.set()


def test_a_read_of_a_slot_freed_as_the_spool_empties_looks_elsewhere(tmp_path: Path):
    """The last free empties the spool and truncates its file: a reader still holding the block
    gets "look elsewhere", not a short read turned into an error."""
    # No reservation, as on a filesystem without fallocate: the truncated file stays empty.
    spool = Spool(str(tmp_path), BS, 4, reserve=False)
    try:
        held = spool.put(b"z" * BS)
        spool.free(held)  # the only slot in use: the spool is empty now, its file truncated
        assert spool.disk_bytes() == 0
        assert spool.read_into(held, 0, memoryview(bytearray(100))) is False
    finally:
        spool.close()


# -- pieces: sub-block fetches for format probes and COG tiles ------------------

MB = 1 << 20
PS = 16 << 10


@pytest.fixture
def penv(tmp_path: Path):
    """(data, file, downloader, cache, reader) as in production: 1 MiB blocks, 16 KiB pieces."""
    made = []

    def make(size: int = 16 << 20, cache_dir: Path | None = None, dl: FakeDownloader | None = None, **kw):
        data = dl.data if dl else _data(size)
        dl = dl or FakeDownloader(data)
        cache = BlockCache(cache_dir or tmp_path / "pcache", size_limit=256 << 20, block_size=MB)
        kw.setdefault("stream_chunk", MB)
        kw.setdefault("piece_size", PS)
        reader = Reader(dl, cache, head_size=256 << 10, random_ahead=384 << 10, **kw)
        made.append((reader, cache))
        return data, RemoteFile(URL, len(data), "key-" + URL), dl, cache, reader

    yield make
    for reader, cache in made:
        reader.close()
        cache.close()


# What GDAL and the kernel (96 KiB readahead) read for gdal_translate -srcwin on a
# 512-tiled COG (measured): the head, then per tile range an 8 KiB read and 96 KiB ones.
TILES = (3_060_224, 7_844_928, 12_629_632)


def _window_reads() -> list[tuple[int, int]]:
    reads = [(0, 16384), (16384, 32768)]
    for t in TILES:
        reads += [(t, 8192), (t + 8192, 98304), (t + 106496, 90112), (t + 196608, 98304), (t + 294912, 98304)]
    return reads


def test_window_costs_one_request_per_tile_range_in_pieces(penv):
    data, f, dl, cache, reader = penv()
    for off, n in _window_reads():
        assert reader.read(f, off, n) == data[off : off + n]
    assert [c[0] for c in dl.calls] == ["range"] * 4, dl.calls
    assert dl.calls[0][1:3] == (0, 256 << 10), "the head probe is not one 256 KiB request"
    for (kind, start, end, urgent), t in zip(dl.calls[1:], TILES):
        assert t - PS < start <= t and t + 393216 <= end <= t + 8192 + (384 << 10) + PS, (start, end, t)
    # Whole 1 MiB blocks would be >= 4 MiB here.
    assert dl.bytes_sent <= (256 << 10) + 3 * (416 << 10), dl.bytes_sent


def test_pieces_go_to_the_disk_cache_and_serve_a_new_reader(penv, tmp_path: Path):
    data, f, dl, cache, reader = penv()
    for off, n in _window_reads():
        reader.read(f, off, n)
    reader.flush()
    assert cache.has(f.key + f"#p{PS}", TILES[0] // PS)
    assert not cache.has(f.key, TILES[0] // MB), "a whole block was cached for a tile read"
    reader.close()
    cache.close()
    dl2 = FakeDownloader(data)
    _, f2, dl2, cache2, reader2 = penv(cache_dir=tmp_path / "pcache", dl=dl2)
    for off, n in _window_reads():
        assert reader2.read(f2, off, n) == data[off : off + n]
    assert dl2.calls == [], f"cached pieces were fetched again: {dl2.calls}"


def test_cached_blocks_serve_random_reads_without_pieces(penv):
    data, f, dl, cache, reader = penv(size=4 << 20)
    assert _read_all(reader, f, 192 << 10) == data
    n = len(dl.calls)
    for off, n_ in [(3_000_001, 8192), (1_500_000, 300_000), (100, 5)]:
        assert reader.read(f, off, n_) == data[off : off + n_]
    assert len(dl.calls) == n, dl.calls[n:]


def test_a_copy_after_a_head_probe_is_one_stream(penv):
    data, f, dl, cache, reader = penv(size=6 << 20)
    reader.read(f, 0, 16384)
    assert _read_all(reader, f, 192 << 10) == data
    assert dl.kinds() == ["range", "stream"], dl.calls


def test_a_long_run_mid_file_leaves_pieces_for_blocks(penv):
    data, f, dl, cache, reader = penv()
    base = 5 << 20
    for k in range(16):  # 3 MiB sequential run, starting as a random read
        off = base + k * (192 << 10)
        assert reader.read(f, off, 192 << 10) == data[off : off + (192 << 10)]
    assert len(dl.calls) <= 5, dl.calls
    assert dl.bytes_sent <= (3 << 20) + 2 * MB, dl.bytes_sent


def test_concurrent_readers_of_a_tile_share_one_piece_fetch(penv):
    data, f, dl, cache, reader = penv()
    dl.delay = 0.2
    off, n = 9_000_000, 100_000
    results: list[bytes] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        results.append(reader.read(f, off, n))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [data[off : off + n]] * 8
    assert len(dl.calls) == 1, dl.calls


def test_etag_change_drops_cached_pieces(penv):
    data, f, dl, cache, reader = penv()
    reader.read(f, 9_000_000, 10)
    reader.flush()
    pkey = f.key + f"#p{PS}"
    assert cache.has(pkey, 9_000_000 // PS)
    new = _data(len(data), seed=2)
    dl.data, dl.etag = new, "e2"
    assert reader.read(f, 2_000_000, 10) == new[2_000_000:2_000_010]
    reader.flush()
    assert not cache.has(pkey, 9_000_000 // PS), "pieces from the old ETag survived"
    assert reader.read(f, 9_000_000, 10) == new[9_000_000:9_000_010]


def test_a_failed_piece_fetch_caches_nothing(penv):
    data, f, dl, cache, reader = penv()
    dl.fail_ranges = True
    with pytest.raises(FetchError):
        reader.read(f, 9_000_000, 8192)
    reader.flush()
    assert cache.stats().entries == 0
    dl.fail_ranges = False
    assert reader.read(f, 9_000_000, 8192) == data[9_000_000:9_008_192]


def test_a_file_of_one_block_is_fetched_whole_in_one_request(penv):
    data, f, dl, cache, reader = penv(size=900_000)
    for off, n in [(0, 16384), (16384, 32768), (600_000, 8192), (300_000, 90_000)]:
        assert reader.read(f, off, n) == data[off : off + n]
    assert dl.calls == [("range", 0, 900_000, True)], dl.calls


def test_spool_reserves_its_space_on_disk_but_not_in_memory(tmp_path: Path):
    spool = Spool(str(tmp_path), BS, 4)
    try:
        assert spool.disk_bytes() >= 4 * BS, "the spool's space was not reserved ahead"
        sp = spool.put(b"z" * BS)
        out = bytearray(10)
        assert spool.read_into(sp, 100, memoryview(out)) and out == b"z" * 10
        spool.free(sp)  # empty again: pages given back, space reserved again
        assert spool.disk_bytes() >= 4 * BS
    finally:
        spool.close()
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        spool = Spool("/dev/shm", BS, 4)
        try:
            assert spool.disk_bytes() == 0, "a spool in memory reserved 4 blocks of RAM"
        finally:
            spool.close()


def test_cached_blocks_held_open_are_bounded(env, tmp_path: Path):
    """A re-read from the disk cache holds blocks as open files; small blocks must not use up descriptors."""
    from terrafs.read.hotset import MAX_OPEN_BLOCKS as limit

    data, f, dl, cache, reader = env(size=256 * BS, cache_dir=tmp_path / "c")  # 256 blocks, 16 MiB
    assert _read_all(reader, f) == data
    reader.flush()
    reader2 = Reader(dl, cache)  # a fresh reader (as after a remount) on the same cache
    try:
        fds_before = len(os.listdir("/proc/self/fd"))
        requests_before = len(dl.calls)
        assert _read_all(reader2, f) == data
        assert len(dl.calls) == requests_before, "the re-read went to the server"
        held = reader2.stats().held.hot_open_files
        assert 0 < held <= limit, f"{held} cached blocks held open"
        assert len(os.listdir("/proc/self/fd")) - fds_before <= limit + 8
    finally:
        reader2.close()


def test_a_read_is_answered_while_the_bytes_fetched_past_it_still_arrive(env):
    """On a slow link the margin a plan fetches past a read (the kernel's read-ahead) must not delay the read."""
    data, f, dl, cache, reader = env(random_ahead=512 << 10)
    off = 2 * BS
    dl.range_gate_at = off + BS  # the answer stalls after the read's own bytes
    got: list[bytes] = []
    t = threading.Thread(target=lambda: got.append(reader.read(f, off, 32 << 10)))
    t.start()
    t.join(20)
    try:
        assert got == [data[off: off + (32 << 10)]], "the read waited for the whole answer"
        assert dl.calls[0][0] == "range" and dl.calls[0][2] > off + BS, "the plan fetched nothing past the read"
    finally:
        dl.range_gate.set()
    nxt = off + BS + 4096  # the rest arrives, and is served without another request
    assert reader.read(f, nxt, 4096) == data[nxt: nxt + 4096]
    assert len(dl.calls) == 1, dl.calls
