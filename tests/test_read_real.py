"""The reader on the real Downloader against the emulator (not a fake): what runs in production.

A fake downloader's streams once carried an `info` that the real one's did not,
so a check that existed in the code never ran in production; these tests pin
that the real parts fit.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import requests

from terrafs.remote.auth import BasicAuth
from terrafs.cache.filemeta import FileMeta
from terrafs.cache.blocks import BlockCache
from terrafs.remote.http import Downloader
from terrafs.read import Reader, RemoteFile

from mounting import emulator_is_download_host  # noqa: F401  (a fixture: the emulator gets credentials)

BS = 64 << 10


@pytest.fixture
def real(emulator_is_download_host, tmp_path: Path):
    emulator = emulator_is_download_host
    files = [f for f in emulator.files(limit=300, min_size=300_000) if f["path"].endswith(".tif")]
    assert files, "the emulator serves no GeoTIFF over 300 kB"
    f = max(files, key=lambda f: f["size"])
    url = emulator.download_url(f["path"])
    source = requests.get(url, auth=("demo", "demo"), timeout=30).content
    dl = Downloader(BasicAuth("demo", "demo"), None)
    cache = BlockCache(tmp_path / "cache", 1 << 30, block_size=BS)
    reader = Reader(dl, cache)
    yield reader, cache, RemoteFile(url, len(source), url + "#" + str(len(source))), source, dl
    reader.close()
    cache.close()
    dl.close()


def test_a_stream_of_the_real_downloader_carries_the_files_identity(emulator, real):
    reader, cache, f, source, dl = real
    emulator.mark()
    out = bytearray()
    for off in range(0, f.size, 128 << 10):  # a copy: one stream
        out += reader.read(f, off, 128 << 10)
    assert bytes(out) == source
    gets = [r for r in emulator.requests("download") if r.get("method") == "GET"]
    assert len(gets) == 1, f"a copy made {len(gets)} GET requests"
    assert FileMeta(cache).identity(f.url) is not None, "the stream's ETag/Last-Modified were never checked"


def test_random_reads_through_the_real_downloader_are_exact(emulator, real):
    reader, cache, f, source, dl = real
    rng = random.Random(5)
    for _ in range(40):
        off = rng.randrange(0, f.size)
        n = rng.choice([1, 4096, 16 << 10, 128 << 10, 700 << 10])
        assert reader.read(f, off, n) == source[off: off + n], f"bytes at {off}+{n} differ"
    reader.flush()
    fresh = Reader(dl, cache)  # a remount: everything read so far comes from disk
    try:
        emulator.mark()
        for _ in range(10):
            off = rng.randrange(0, f.size)
            assert fresh.read(f, off, 4096) == source[off: off + 4096]
    finally:
        fresh.close()
