"""GDAL windows through the mount on every raster layout the emulator serves:
pixel-equal to the source file, and within the request budget the read path
plans for (the head, then one request per tile row a window touches).

The layouts (a COG in 512 px tiles, a plain GeoTIFF in 256 px LZW tiles
without overviews, a striped GeoTIFF, the Sentinel-2 band) are where a
policy tuned on one layout spent 5 requests where 3 suffice on another.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

pytestmark = pytest.mark.mount

LAYOUTS = ("cog", "tiled", "striped", "sentinel2")
# 64 x 64 windows that straddle tile edges (512 and 256 px tiles) and strip edges: two tile rows each.
WINDOWS = [(500, 500), (240, 760)]


def _gdal_env() -> dict:
    return dict(os.environ, GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", GDAL_PAM_ENABLED="NO")


def _source(emulator_data: Path, row: dict) -> Path:
    return emulator_data / "small" / row["platform_path"].removeprefix("/data/MTDA/")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_series_of_windows_is_pixel_equal_and_costs_at_most_3_requests_a_file(
        emulator, emulator_data, mount_factory, tmp_path, layout):
    rows = [r for r in emulator.files(limit=1000, layout=layout) if r["name"].endswith(".tif")]
    rows = [r for r in rows if r["size"] > 300_000][:4]
    assert rows, f"the emulator serves no {layout} raster"
    m = mount_factory(emulator)
    out = tmp_path / "win.tif"
    for n, row in enumerate(rows):
        with rasterio.open(_source(emulator_data, row)) as src:
            x, y = (min(v, side - 65) for v, side in zip(WINDOWS[n % len(WINDOWS)], (src.width, src.height)))
        path = m.path / row["default_path"]
        emulator.mark()
        subprocess.run(["gdal_translate", "-q", "-srcwin", str(x), str(y), "64", "64", str(path), str(out)],
                       env=_gdal_env(), check=True, timeout=120)
        requests_made = [r for r in emulator.requests("download") if r["path"].endswith(row["path"])]
        with rasterio.open(out) as got, rasterio.open(_source(emulator_data, row)) as src:
            want = src.read(window=Window(x, y, 64, 64))
            assert np.array_equal(got.read(), want), f"{layout} window ({x}, {y}) of {row['name']} differs"
        ranges = [(r.get("method"), r.get("range")) for r in requests_made]
        assert len(requests_made) <= 3, f"{layout}: {len(requests_made)} requests for one window: {ranges}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gdalinfo_costs_one_request(emulator, mount_factory, layout):
    row = max((r for r in emulator.files(limit=1000, layout=layout) if r["name"].endswith(".tif")),
              key=lambda r: r["size"])
    m = mount_factory(emulator)
    emulator.mark()
    subprocess.run(["gdalinfo", str(m.path / row["default_path"])], env=_gdal_env(), check=True,
                   capture_output=True, timeout=120)
    made = [r for r in emulator.requests("download") if r["path"].endswith(row["path"])]
    assert len(made) == 1, f"gdalinfo of a {layout} file made {len(made)} requests: {made}"
