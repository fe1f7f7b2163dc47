"""Reading file bytes through the mount: correctness, request economy, faults, cache."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from support import band, sha256, source_of


def data_gets(emulator, url_path: str | None = None) -> list[dict]:
    return [r for r in emulator.requests("download") if r["method"] == "GET"
            and (url_path is None or r["path"].endswith(url_path))]


def test_copied_files_equal_the_source(emulator, emulator_data, mount_factory, tmp_path):
    mount = mount_factory(emulator)
    product = band(mount).parent
    dest = tmp_path / "copy"
    shutil.copytree(product, dest)
    files = sorted(p for p in product.iterdir() if p.is_file())
    assert len(files) > 5
    for f in files:
        assert sha256(dest / f.name) == sha256(source_of(emulator_data, f)), f.name


def test_sequential_copy_uses_one_request(emulator, mount_factory, tmp_path):
    mount = mount_factory(emulator)
    f = band(mount, "B08_10M")
    emulator.mark()
    shutil.copyfile(f, tmp_path / "x.tif")
    gets = data_gets(emulator, f.name)
    assert len(gets) == 1, f"cp made {len(gets)} requests: {[g['range'] for g in gets]}"
    assert (tmp_path / "x.tif").stat().st_size == f.stat().st_size


def test_gdalinfo_costs_at_most_one_request(emulator, mount_factory):
    mount = mount_factory(emulator)
    f = band(mount, "B03_10M")
    emulator.mark()
    out = subprocess.run(["gdalinfo", str(f)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "EPSG" in out.stdout or "UTM" in out.stdout
    assert len(emulator.requests("download")) <= 1, emulator.requests("download")


def test_rasterio_windows_equal_the_source(emulator, emulator_data, mount_factory):
    mount = mount_factory(emulator)
    f = band(mount, "B02_10M", day="2020/02/15")
    src_path = source_of(emulator_data, f)
    with rasterio.open(f) as mounted, rasterio.open(src_path) as source:
        assert mounted.crs == source.crs and mounted.transform == source.transform
        for win in (Window(0, 0, 64, 64), Window(100, 200, 150, 90), Window(300, 300, 200, 200)):
            assert np.array_equal(mounted.read(1, window=win), source.read(1, window=win))
        factor = mounted.overviews(1)[0] if mounted.overviews(1) else 2
        shape = (mounted.height // factor, mounted.width // factor)
        assert np.array_equal(mounted.read(1, out_shape=shape), source.read(1, out_shape=shape))


def test_remount_rereads_without_a_request(emulator, mount_factory, tmp_path):
    cache = tmp_path / "cache"
    first = mount_factory(emulator, cache_dir=cache, name="a")
    f = band(first, "B11_20M")
    digest = sha256(f)
    rel = f.relative_to(first.path)
    first.stop()
    emulator.mark()
    second = mount_factory(emulator, cache_dir=cache, name="b")
    assert sha256(second.path / rel) == digest
    assert data_gets(emulator) == [], "a remount fetched bytes it had cached"


def test_eight_readers_of_one_file_share_fetches(emulator, emulator_data, mount_factory):
    mount = mount_factory(emulator)
    f = band(mount, "B04_10M", day="2020/01/02")
    expected = sha256(source_of(emulator_data, f))
    emulator.mark()
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(sha256(f))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [expected] * 8
    fetched = sum(r["bytes"] for r in data_gets(emulator))
    assert fetched <= 2 * f.stat().st_size, f"{fetched} bytes fetched for one {f.stat().st_size}-byte file"


@pytest.mark.parametrize("fault", [
    {"drop_rate": 1.0},
    {"error_rate": 0.5},
    {"ignore_range": True},
    {"wrong_content_range": True},
])
def test_faults_end_in_correct_bytes_or_eio(emulator, emulator_data, mount_factory, fault):
    mount = mount_factory(emulator)
    files = [band(mount, name, day="2021/06/30") for name in ("B05_20M", "B06_20M", "B8A_20M")]
    emulator.set(**fault)
    for f in files:
        try:
            digest = sha256(f)
        except OSError as exc:
            assert exc.errno == 5, exc  # EIO, never anything else
            continue
        assert digest == sha256(source_of(emulator_data, f)), f"wrong bytes under {fault}"
    emulator.set(reset=True)
    for f in files:  # whatever happened, nothing wrong was cached
        assert sha256(f) == sha256(source_of(emulator_data, f))


def test_every_error_fault_gives_eio_not_a_hang(emulator, mount_factory):
    mount = mount_factory(emulator)
    f = band(mount, "B07_20M", day="2021/06/30")
    emulator.set(error_rate=1.0)
    started = time.monotonic()
    with pytest.raises(OSError) as err:
        sha256(f)
    assert err.value.errno == 5
    assert time.monotonic() - started < 60
    assert os.path.ismount(mount.path)


def test_offline_cached_stays_readable_uncached_fails_fast(emulator_factory, emulator_data, mount_factory):
    emu = emulator_factory(args=["--rate-limit", "off"])
    mount = mount_factory(emu)
    cached = band(mount, "B02_10M", day="2020/01/02")
    uncached = band(mount, "B03_10M", day="2020/01/02")
    digest = sha256(cached)
    emu.stop()
    assert sha256(cached) == digest
    started = time.monotonic()
    with pytest.raises(OSError) as err:
        sha256(uncached)
    assert err.value.errno == 5
    assert time.monotonic() - started < 30, "an uncached read hung with the server gone"
    assert os.listdir(cached.parent)


def test_kill_9_mid_fetch_serves_no_corrupt_byte_after(emulator, emulator_data, mount_factory, tmp_path):
    cache = tmp_path / "cache"
    first = mount_factory(emulator, cache_dir=cache, name="a")
    f = band(first, "B08_10M", day="2020/02/15")
    rel = f.relative_to(first.path)
    source = source_of(emulator_data, f)
    emulator.set(bandwidth=2_000_000)  # slow, so the kill lands mid-body
    reader = subprocess.Popen(["cat", str(f)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    first.kill9()
    reader.kill()
    reader.wait()
    emulator.set(reset=True)
    second = mount_factory(emulator, cache_dir=cache, name="b")
    assert sha256(second.path / rel) == sha256(source)


def test_a_mount_whose_first_catalogue_answers_are_a_503_and_an_html_page_comes_up(emulator, mount_factory):
    """A proxy or maintenance page at mount time is tried again, not a refusal to mount."""
    emulator.set(catalogue_fail_next=["503", "html"])
    m = mount_factory(emulator)
    assert any(m.path.iterdir()), "the mount came up empty"
    assert emulator.settings()["catalogue_fail_next"] == [], "the failing answers were never asked for"


def test_one_file_opened_and_released_from_many_threads_at_once(emulator, mount_factory):
    """open and release race: release must look at the other handles under the lock."""
    mount = mount_factory(emulator)
    files = [band(mount, name, day="2020/01/02") for name in ("B02_10M", "B03_10M")]
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            for i in range(60):
                with open(files[i % 2], "rb") as fh:
                    fh.read(1)
        except BaseException as exc:  # noqa: BLE001 - collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=churn) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert os.path.ismount(mount.path)
    bad = [line for line in mount.log_text().splitlines() if "failed unexpectedly" in line]
    assert not bad, bad[:3]
