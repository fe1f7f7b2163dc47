"""Acceptance: headless QGIS (Debian's python3-qgis) loads and renders a mounted band as it does the source.

tests/qgis_probe.py runs under the SYSTEM python (/usr/bin/python3), which has
the qgis module; the project's venv does not. The probe prints JSON (valid,
extent, crs, stats, render size) and writes a PNG; we compare both, the PNG by
decoded pixels (GDAL reads PNG; the bytes may differ by metadata).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio

from support import band, log_mark, report, source_copy

PROBE = Path(__file__).resolve().parent / "qgis_probe.py"
SYSTEM_PYTHON = "/usr/bin/python3"


def probe(raster: Path, png: Path, tmp_path: Path) -> dict:
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR=str(runtime))
    # The system python must not pick up the venv's packages (numpy, rasterio ...).
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    out = subprocess.run([SYSTEM_PYTHON, str(PROBE), str(raster), str(png)], capture_output=True, text=True,
                         timeout=120, env=env, cwd=tmp_path)
    assert out.returncode == 0, f"qgis_probe failed on {raster} ({out.returncode}):\n{out.stdout}\n{out.stderr[-3000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def png_pixels(png: Path) -> np.ndarray:
    with rasterio.open(png) as ds:
        return ds.read()


@pytest.fixture
def qgis_available() -> None:
    """QGIS is a hard requirement of this module (CI installs python3-qgis): fail, never skip."""
    check = subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, f"python3-qgis is not installed for {SYSTEM_PYTHON}: {check.stderr[-500:]}"


@pytest.mark.parametrize("name,day", [("B04_10M", "2020/01/01"), ("B11_20M", "2021/06/30"), ("SCENECLASSIFICATION_20M", "2020/02/15")])
def test_qgis_layer_and_render_equal_the_source(qgis_available, emulator, emulator_data, mount_factory, tmp_path,
                                                 name, day):
    mount = mount_factory(emulator)
    f = band(mount, name, day=day)
    src = source_copy(emulator_data, f, tmp_path / "src")
    mark = log_mark(emulator)
    mounted = probe(f, tmp_path / "m.png", tmp_path)
    report(f"QGIS layer load + stats + render of {name}", emulator, mark)
    source = probe(src, tmp_path / "s.png", tmp_path)
    assert mounted["valid"] and source["valid"]
    assert mounted["crs"] == source["crs"] and mounted["crs"].startswith("EPSG:")
    assert mounted["extent"] == source["extent"]
    assert mounted["size"] == source["size"]
    assert mounted["stats"] == source["stats"]
    assert mounted["stats"]["count"] == source["size"][0] * source["size"][1]
    assert mounted["render"] == source["render"] and not mounted["render"]["errors"]
    a, b = png_pixels(tmp_path / "m.png"), png_pixels(tmp_path / "s.png")
    assert a.shape == b.shape
    assert np.array_equal(a, b), f"{int((a != b).any(axis=0).sum())} rendered pixels differ"
    assert len(np.unique(a[0])) > 2, "the render is blank: nothing was drawn"


def test_qgis_load_of_an_uncached_band_costs_one_request(qgis_available, emulator, mount_factory, tmp_path):
    mount = mount_factory(emulator)
    f = band(mount, "B08_10M", day="2021/07/01")
    mark = log_mark(emulator)
    probe(f, tmp_path / "m.png", tmp_path)
    reqs = report("QGIS uncached load (B08_10M)", emulator, mark)
    assert len(reqs) == 1, f"QGIS load made {len(reqs)} download requests"
    assert not [r for r in emulator.requests()[mark:] if r["kind"] in ("stac", "opensearch")], \
        "QGIS's side-file probes reached the catalogue"
