"""The catalogue as a directory tree, through a real FUSE mount (issue: tree)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from expected import default_tree, walk
from mounting import credentials_env, write_config

CATALOGUE_KINDS = ("stac", "opensearch")


def _catalogue_requests(emulator) -> list[dict]:
    return [r for r in emulator.requests() if r["kind"] in CATALOGUE_KINDS]


@pytest.mark.parametrize("backend", ["stac", "opensearch"])
def test_every_catalogue_file_at_its_path_with_its_size(emulator, emulator_data, mount_factory, backend):
    mount = mount_factory(emulator, catalogue=backend)
    expected = default_tree(emulator_data, backend)
    seen = walk(mount.path)
    missing = sorted(set(expected) - set(seen))[:5]
    extra = sorted(set(seen) - set(expected))[:5]
    assert not missing and not extra, f"missing {missing}, unexpected {extra}"
    wrong = {p: (seen[p], s) for p, s in expected.items() if seen[p] != s}
    assert not wrong, f"sizes differ (mount, catalogue): {list(wrong.items())[:5]}"
    count = subprocess.run(f"find {mount.path} -type f | wc -l", shell=True, capture_output=True, text=True)
    assert int(count.stdout) == len(expected)


def test_ls_lR_makes_no_download_get(emulator, mount_factory):
    mount = mount_factory(emulator)
    emulator.mark()
    out = subprocess.run(["ls", "-lR", str(mount.path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    subprocess.run(["du", "-s", str(mount.path)], capture_output=True, check=True)
    gets = [r for r in emulator.requests("download") if r["method"] != "HEAD"]
    assert gets == [], f"ls -lR made download requests: {gets[:3]}"
    heads = [r["path"] for r in emulator.requests("download") if r["method"] == "HEAD" and r["status"] == 200]
    assert len(heads) == len(set(heads)), "a HEAD for a size was repeated"


def test_sizes_without_catalogue_length_cost_one_head_remembered_across_remounts(
        emulator, mount_factory, tmp_path):
    cache = tmp_path / "shared-cache"
    first = mount_factory(emulator, cache_dir=cache, name="first")
    emulator.mark()
    subprocess.run(["ls", "-lR", str(first.path)], capture_output=True, check=True)
    heads = [r for r in emulator.requests("download") if r["method"] == "HEAD"]
    assert heads, "the emulator has files without a catalogue size; expected one HEAD each"
    first.stop()
    emulator.mark()
    second = mount_factory(emulator, cache_dir=cache, name="second")
    subprocess.run(["ls", "-lR", str(second.path)], capture_output=True, check=True)
    assert emulator.requests("download") == [], "sizes were not remembered across remounts"
    # The one request a mount makes is its start-up check that the catalogue answers.
    listings = [r for r in _catalogue_requests(emulator) if not r["path"].endswith("/collections")]
    assert listings == [], "listings were not kept in the disk cache across remounts"


def test_day_of_1000_products_listed_in_ceil_n_over_page_requests(emulator_factory, mount_factory):
    from terrafs.catalogue.stac import StacCatalogue

    emu = emulator_factory(args=["--bulk", "1000", "--rate-limit", "off"])
    mount = mount_factory(emu, collections=["terrascope-s2-ndvi-v2"])
    day = mount.path / "terrascope-s2-ndvi-v2" / "2021" / "06" / "15"
    emu.mark()
    names = os.listdir(day)
    assert len(names) == 1000
    searches = [r for r in _catalogue_requests(emu) if "/collections" not in r["path"] or "/items" in r["path"]]
    page = StacCatalogue.PAGE_SIZE
    print(f"catalogue requests for a day of 1000 products: {len(searches)} (page size {page})")
    assert len(searches) <= math.ceil(1000 / page), f"{len(searches)} catalogue requests for 1000 products"
    emu.mark()
    assert len(os.listdir(day)) == 1000
    subprocess.run(["ls", "-l", str(day)], capture_output=True, check=True)
    assert _catalogue_requests(emu) == [], "a second listing reached the catalogue"


def test_product_xattrs(emulator, mount_factory):
    mount = mount_factory(emulator)
    f = next(p for p in mount.path.rglob("*B04_10M*.tif"))
    url = os.getxattr(f, "user.terrafs.url").decode()
    assert url.startswith(emulator.base_url + "/download/") and url.endswith(f.name)
    assert os.getxattr(f, "user.terrafs.platform_path").decode().startswith("/data/MTDA/")
    record = json.loads(os.getxattr(f.parent, "user.terrafs.record"))
    assert record.get("id") == os.getxattr(f.parent, "user.terrafs.product_id").decode()
    assert "user.terrafs.url" in os.listxattr(f)


def test_modes_and_times(emulator, mount_factory):
    mount = mount_factory(emulator)
    day = mount.path / "terrascope-s2-toc-v2" / "2020" / "01" / "01"
    product = next(iter(day.iterdir()))
    assert oct(product.stat().st_mode & 0o777) == "0o555"
    f = next(product.iterdir())
    assert oct(f.stat().st_mode & 0o777) == "0o444"
    assert 1577836800 <= f.stat().st_mtime < 1577923200  # 2020-01-01 UTC
    with pytest.raises(OSError):
        open(f, "r+b")


def test_unknown_paths_give_enoent(emulator, mount_factory):
    mount = mount_factory(emulator)
    for rel in ("nope", "terrascope-s2-toc-v2/1999", "terrascope-s2-toc-v2/2020/01/03",
                "terrascope-s2-toc-v2/2020/13"):
        with pytest.raises(FileNotFoundError):
            os.stat(mount.path / rel)


def test_catalogue_failure_gives_eio_and_the_mount_stays_up(emulator_factory, mount_factory):
    emu = emulator_factory(args=["--rate-limit", "off"])
    mount = mount_factory(emu)
    emu.stop()  # the catalogue is gone
    with pytest.raises(OSError) as err:
        os.listdir(mount.path / "terrascope-s2-toc-v2" / "2020" / "02")
    assert err.value.errno == 5  # EIO
    assert os.path.ismount(mount.path)
    assert "terrascope-s2-toc-v2" in os.listdir(mount.path)


def _mount_command(config, mnt, env):
    return subprocess.run([sys.executable, "-m", "terrafs", "mount", "--config", str(config), str(mnt)],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("bad", [
    {"cahce": {"dir": "/tmp/x"}},
    {"catalogue": "wfs"},
    {"cache": {"size": "lots"}},
    {"rate_limits": [{"requests": -1, "seconds": 10}]},
])
def test_bad_config_is_one_clear_line(tmp_path, bad):
    config = write_config(tmp_path / "config.yaml", "http://127.0.0.1:9", tmp_path / "cache", **bad)
    (tmp_path / "mnt").mkdir()
    result = _mount_command(config, tmp_path / "mnt", credentials_env())
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    key = next(iter(bad))
    assert key in lines[0] and "config.yaml" in lines[0], lines[0]
    assert not os.path.ismount(tmp_path / "mnt")


def test_unreachable_endpoint_is_one_clear_line(tmp_path):
    config = write_config(tmp_path / "config.yaml", "http://127.0.0.1:9", tmp_path / "cache",
                          auth={"method": "basic"})
    (tmp_path / "mnt").mkdir()
    result = _mount_command(config, tmp_path / "mnt", credentials_env())
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "127.0.0.1:9" in lines[0]
    assert not os.path.ismount(tmp_path / "mnt")


def test_background_mount_and_umount(emulator, tmp_path):
    config = write_config(tmp_path / "config.yaml", emulator.base_url, tmp_path / "cache")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = _mount_command(config, mnt, credentials_env())
    try:
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(mnt)
        assert "terrascope-s2-toc-v2" in os.listdir(mnt)
    finally:
        umount = subprocess.run([sys.executable, "-m", "terrafs", "umount", str(mnt)], capture_output=True, text=True)
    assert umount.returncode == 0, umount.stderr
    assert not os.path.ismount(mnt)


@pytest.mark.parametrize("backend", ["stac", "opensearch"])
def test_catalogue_garbage_gives_eio_with_a_logged_reason(emulator, mount_factory, backend):
    mount = mount_factory(emulator, catalogue=backend)
    folder = "terrascope-s2-toc-v2" if backend == "stac" else "TERRASCOPE_S2_TOC_V2"
    emulator.set(catalogue_garbage=True)
    with pytest.raises(OSError) as err:
        os.listdir(mount.path / folder / "2021" / "06")
    assert err.value.errno == 5
    emulator.set(catalogue_garbage=False)
    assert "30" in os.listdir(mount.path / folder / "2021" / "06"), "the mount did not recover"
    log = mount.log_text()
    assert "JSON" in log or "json" in log, log[-2000:]
