"""BlockCache: complete blocks only, checksums, persistence, LRU size limit, invalidation."""
from __future__ import annotations

import builtins
import os
import time
from pathlib import Path

import pytest

from terrafs.cache.blocks import BlockCache
from terrafs.cache.filemeta import FileMeta

BS = 64 << 10


def _block(i: int, n: int = BS) -> bytes:
    return bytes((i * 7 + j) % 251 for j in range(256)) * (n // 256) + b"x" * (n % 256)


@pytest.fixture
def cache(tmp_path: Path):
    c = BlockCache(tmp_path / "c", size_limit=64 << 20, block_size=BS)
    yield c
    c.close()


def test_put_get_roundtrip_and_has(cache: BlockCache):
    cache.put("f", 0, _block(0))
    cache.put("f", 1, _block(1, 1000), expected_len=1000)  # the short tail of a file
    assert cache.get("f", 0) == _block(0)
    assert cache.get("f", 1) == _block(1, 1000)
    assert cache.has("f", 0) and not cache.has("f", 2)
    assert cache.get("f", 2) is None
    assert cache.get("g", 0) is None


def test_incomplete_block_is_refused(cache: BlockCache):
    with pytest.raises(ValueError):
        cache.put("f", 0, _block(0)[:-1])  # short of block_size
    with pytest.raises(ValueError):
        cache.put("f", 0, _block(0, 100), expected_len=200)
    assert not cache.has("f", 0), "an incomplete block was stored"


def test_blocks_and_stats_survive_reopen(tmp_path: Path):
    c = BlockCache(tmp_path / "c", size_limit=64 << 20, block_size=BS)
    c.put("f", 3, _block(3))
    assert c.get("f", 3) is not None
    assert c.get("f", 4) is None
    FileMeta(c).set_identity("u", ("etag1", None))
    FileMeta(c).set_size_change("v", 10, 12)
    c.close()
    c = BlockCache(tmp_path / "c", size_limit=64 << 20, block_size=BS)
    try:
        assert c.get("f", 3) == _block(3)
        assert FileMeta(c).identity("u") == ("etag1", None)
        assert FileMeta(c).size_change("v") == (10, 12)
        s = c.stats()
        assert (s.hits, s.misses, s.entries) == (2, 1, 1), s
        assert s.hit_rate == pytest.approx(2 / 3)
        assert s.size > BS
    finally:
        c.close()


def _value_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*.val")]


def _stored_block_file(tmp_path: Path) -> Path:
    """Block 0 of "f", stored in the cache at tmp_path / "c" (then closed): its value file."""
    c = BlockCache(tmp_path / "c", size_limit=64 << 20, block_size=BS)
    c.put("f", 0, _block(0))
    c.close()
    files = _value_files(tmp_path / "c")
    assert len(files) == 1, f"expected one value file, found {files}"
    return files[0]


def _flip(path: Path, at: int, mask: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= mask
    path.write_bytes(bytes(raw))


def test_corrupt_block_file_is_dropped_not_served(tmp_path: Path):
    _flip(_stored_block_file(tmp_path), 1234, 0xFF)
    c = BlockCache(tmp_path / "c", size_limit=64 << 20, block_size=BS)
    try:
        assert c.get("f", 0) is None, "a corrupt block was served"
        assert not c.has("f", 0), "the corrupt block was not dropped"
    finally:
        c.close()


def test_truncated_block_file_is_dropped(tmp_path: Path):
    with open(_stored_block_file(tmp_path), "r+b") as fh:
        fh.truncate(BS // 2)  # as if the write had been cut short
    c = BlockCache(tmp_path / "c", size_limit=64 << 20, block_size=BS)
    try:
        assert c.get("f", 0) is None
    finally:
        c.close()


def _open_bytes(c: BlockCache, key: str, i: int) -> bytes | None:
    """What open_block hands back, as bytes (through the open file for a file-backed block)."""
    blk = c.open_block(key, i, bytearray(BS))
    if blk is None or isinstance(blk, bytes):
        return blk
    out = bytearray(len(blk))
    blk.read_into(0, memoryview(out))
    return bytes(out)


def test_open_block_serves_the_verified_file_and_keeps_it_if_evicted(tmp_path: Path):
    c = BlockCache(tmp_path / "c", size_limit=64 << 20, block_size=BS)
    try:
        c.put("f", 0, _block(0))
        c.put("f", 1, _block(1, 1000), expected_len=1000)
        assert _open_bytes(c, "f", 0) == _block(0)
        assert _open_bytes(c, "f", 1) == _block(1, 1000)
        assert c.open_block("f", 2, bytearray(BS)) is None
        held = c.open_block("f", 0, bytearray(BS))
        assert not isinstance(held, bytes), "a 64 KiB block should live in its own file"
        c.drop_file("f")  # evicted (its file unlinked) while a reader holds it
        out = bytearray(100)
        held.read_into(50, memoryview(out))
        assert out == _block(0)[50:150]
    finally:
        c.close()


def test_open_block_drops_a_corrupt_file(tmp_path: Path):
    _flip(_stored_block_file(tmp_path), 999, 0x01)
    c = BlockCache(tmp_path / "c", size_limit=64 << 20, block_size=BS)
    try:
        assert c.open_block("f", 0, bytearray(BS)) is None, "a corrupt block was handed out"
        assert not c.has("f", 0), "the corrupt block was not dropped"
    finally:
        c.close()


def test_size_limit_evicts_least_recently_used(tmp_path: Path):
    limit = 2 << 20
    # touch_after=0: every get counts as a use (by default only one per hour does).
    c = BlockCache(tmp_path / "c", size_limit=limit, block_size=BS, touch_after=0)
    try:
        for i in range(100):  # 6.25 MiB through a 2 MiB cache
            c.put("f", i, _block(i))
            assert c.get("f", 0) is not None, f"block 0 (used constantly) was evicted at put {i}"
        s = c.stats()
        # diskcache culls at most 10 entries per set, so allow a little slack.
        assert s.size <= limit + 4 * BS, s
        assert s.entries < 40, s
        assert c.get("f", 1) is None, "an old unused block survived eviction"
        assert c.get("f", 99) == _block(99)
    finally:
        c.close()


def test_drop_file_removes_only_that_file(cache: BlockCache):
    for i in range(3):
        cache.put("f", i, _block(i))
        cache.put("g", i, _block(i))
    assert cache.drop_file("f") == 3
    assert all(cache.get("f", i) is None for i in range(3))
    assert all(cache.get("g", i) == _block(i) for i in range(3))


def test_clear_empties_everything(cache: BlockCache):
    cache.put("f", 0, _block(0))
    cache.set_meta("k", "v")
    cache.get("f", 0)
    cache.clear()
    s = cache.stats()
    assert (s.entries, s.hits, s.misses) == (0, 0, 0), s
    assert cache.get_meta("k") is None


def test_cache_directory_is_private(tmp_path: Path):
    c = BlockCache(tmp_path / "priv", size_limit=1 << 20, block_size=BS)
    c.close()
    assert os.stat(tmp_path / "priv").st_mode & 0o077 == 0


def test_each_block_is_one_file_one_directory_deep(tmp_path: Path):
    """Blocks are stored as files under 256 directories (not one new directory per block)."""
    cache = BlockCache(tmp_path / "c", size_limit=64 << 20, block_size=64 << 10)
    data = bytes(range(256)) * 256  # binary with newlines: stored in one write, not line by line
    for i in range(40):
        cache.put("f", i, data)
    files = [p for p in (tmp_path / "c" / "blocks").rglob("*.val")]
    assert len(files) == 40
    assert all(p.parent.parent == tmp_path / "c" / "blocks" for p in files), files[:3]
    assert all(p.stat().st_size == len(data) for p in files)
    assert cache.get("f", 7) == data
    cache.close()


def test_gets_within_touch_after_write_nothing(tmp_path: Path):
    """A re-read does not rewrite blocks it finds fresh; an old one is stored again (its LRU position)."""
    c = BlockCache(tmp_path / "c", size_limit=64 << 20, block_size=BS, touch_after=3600)
    try:
        for i in range(5):
            c.put("f", i, _block(i))
        files = sorted((tmp_path / "c" / "blocks").rglob("*.val"))
        for _ in range(3):
            assert all(c.get("f", i) == _block(i) for i in range(5))
        assert sorted((tmp_path / "c" / "blocks").rglob("*.val")) == files, "a fresh block was rewritten on get"
        c.touch_after = 0
        time.sleep(1.1)  # store times have a one-second resolution
        assert c.get("f", 2) == _block(2)
        after = sorted((tmp_path / "c" / "blocks").rglob("*.val"))
        assert len(after) == 5 and after != files, "an old block was not stored again when used"
    finally:
        c.close()


def test_a_batch_of_puts_is_one_transaction(cache: BlockCache):
    """Inside batch() nothing is committed until its end; an error inside rolls the lot back."""
    other = BlockCache(cache.directory, size_limit=64 << 20, block_size=BS)  # another reader of the index
    try:
        with cache.batch():
            for i in range(4):
                cache.put("f", i, _block(i))
            assert not other.has("f", 0), "a put inside a batch was visible before its commit"
        assert all(other.has("f", i) for i in range(4))
        files = sorted(cache.directory.rglob("*.val"))
        with pytest.raises(RuntimeError):
            with cache.batch():
                cache.put("g", 0, _block(9))
                cache.put("g", 1, _block(10))
                raise RuntimeError("boom")
        assert not cache.has("g", 0) and cache.get("g", 0) is None
        assert sorted(cache.directory.rglob("*.val")) == files, "a rolled-back batch left its value files"
    finally:
        other.close()


def test_a_put_on_a_full_disk_leaves_no_file(tmp_path: Path, monkeypatch):
    """A block whose file cannot be written whole (ENOSPC part-way) leaves no empty or torn file
    behind, alone or in a batch; the blocks written before it in the batch stay."""
    cache = BlockCache(tmp_path / "c", size_limit=64 << 20, block_size=BS)
    real_open = open

    class Full:  # a file on a disk that fills up after the first bytes
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[:100])
            raise OSError(28, "No space left on device")

    full = []  # not empty: the disk is full

    def full_open(path, mode="r", *args, **kwargs):
        fh = real_open(path, mode, *args, **kwargs)
        return Full(fh) if full and str(path).endswith(".val") and "x" in mode else fh

    monkeypatch.setattr(builtins, "open", full_open)
    try:
        cache.put("f", 0, _block(0))
        full.append(True)
        with pytest.raises(OSError):
            cache.put("f", 1, _block(1))
        with cache.batch():
            with pytest.raises(OSError):
                cache.put("f", 2, _block(2))
        full.clear()
        assert len(list(cache.directory.rglob("*.val"))) == 1, "a failed write left a file behind"
        assert cache.get("f", 0) == _block(0) and not cache.has("f", 1) and not cache.has("f", 2)
    finally:
        cache.close()


def test_write_behind_writes_a_burst_and_a_failed_block_loses_no_other(tmp_path: Path):
    """Blocks queued together go to disk together; one block whose write fails (a full disk)
    costs that block alone, and the writer reports the cache degraded until writes have worked
    for a while: one batch that fits between failures does not end it."""
    from terrafs.read.writebehind import WriteBehind

    class OneFails(BlockCache):
        batches = 0

        def batch(self):
            self.batches += 1
            return super().batch()

        def put(self, file_key, index, data, expected_len=None):
            if index == 4 and file_key == "f":
                raise OSError(28, "No space left on device")
            return super().put(file_key, index, data, expected_len)

    c = OneFails(tmp_path / "c", size_limit=64 << 20, block_size=BS)
    wb = WriteBehind(c, BS, 64 * BS, recovered_after=0.5)
    try:
        wb.last_read = time.monotonic()  # a program is reading: the writer holds back, blocks queue up
        for i in range(5):  # the last one fails
            wb.put(("f", i), _block(i), spool=i % 2 == 1)
        wb.flush()
        assert c.batches < 5, "every block was committed on its own"
        assert [c.get("f", i) == _block(i) for i in range(5)] == [True, True, True, True, False]
        assert wb.stats().pending_blocks == 0 and wb.degraded and "No space" in wb.degraded
        wb.put(("g", 0), _block(7), spool=False)
        wb.flush()
        assert c.get("g", 0) == _block(7)
        assert wb.degraded and "No space" in wb.degraded, "one write that worked right after a failure ended it"
        deadline = time.monotonic() + 10
        while wb.degraded and time.monotonic() < deadline:  # no failure for recovered_after: it works
            time.sleep(0.05)
        assert wb.degraded is None and wb.stats().degraded is None
    finally:
        wb.close()
        c.close()


def test_a_cache_of_an_older_terrafs_is_emptied_once_and_its_pickles_never_read(tmp_path: Path):
    """An older terrafs kept identities as pickled tuples; without them a file republished since
    could mix versions, so the blocks go once, and nothing of the old store is unpickled."""
    import diskcache

    c = BlockCache(tmp_path / "c", size_limit=64 << 20, block_size=BS)
    c.put("f", 0, _block(0))
    c.close()
    marker = tmp_path / "pickle-ran"
    with diskcache.Cache(str(tmp_path / "c" / "meta")) as old:  # rewrite the store as the older one left it
        old.clear()
        old.set(("meta", "ident:u"), _Planted(marker))
    c = BlockCache(tmp_path / "c", size_limit=64 << 20, block_size=BS)
    try:
        assert c.get("f", 0) is None, "blocks of an older cache were served without their identities"
        assert FileMeta(c).identity("u") is None
        FileMeta(c).set_identity("u", ('"e2"', None))
    finally:
        c.close()
    c = BlockCache(tmp_path / "c", size_limit=64 << 20, block_size=BS)
    try:
        assert FileMeta(c).identity("u") == ('"e2"', None), "the new store was emptied again"
    finally:
        c.close()
    assert not marker.exists()


class _Planted:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("key", [
    ("b", "https://services.terrascope.be/download/S2/T31UFS_B04_10M.tif#12345:67890", 7),
    ("b", "é" * 40000, 1 << 40),  # long, non-ASCII, framed
    ("b", "k", 0),
    ("b", "u:p", -3),
])
def test_block_keys_are_the_bytes_diskcache_makes_of_them(key):
    """A cache written before the cheaper key conversion must still find its blocks (and the reverse)."""
    import pickle
    import pickletools

    from terrafs.cache.blockfiles import fast_pickle

    for protocol in (4, 5):
        assert fast_pickle(key, protocol) == pickletools.optimize(pickle.dumps(key, protocol=protocol))


def test_blocks_written_are_found_by_diskcaches_own_key_conversion(tmp_path: Path):
    import diskcache

    c = BlockCache(tmp_path / "c", size_limit=64 << 20, block_size=BS)
    c.put("https://host/download/x.tif#1:2", 3, _block(3))
    c.close()
    stock = diskcache.Cache(str(tmp_path / "c" / "blocks"))  # diskcache's own Disk: pickle, then optimize
    try:
        assert len(stock) == 1
        assert next(iter(stock)) == ("b", "https://host/download/x.tif#1:2", 3)
        assert ("b", "https://host/download/x.tif#1:2", 3) in stock
    finally:
        stock.close()
