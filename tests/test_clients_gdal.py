"""Acceptance: GDAL's command-line tools and rasterio on a real mount give what they give on the source files.

Every comparison runs the same command on the mounted file and on a private
copy of its source file (so GDAL's .aux.xml side files never land in the
emulator's archive), then compares the outputs with the paths replaced, or the
pixels of the files the tools wrote. Request counts per client are printed
with the prefix "client-requests:" (see with pytest -s) for the notes.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from support import band, log_mark, neutral, report, run, source_copy, source_of



def pixels(path: Path) -> tuple[np.ndarray, object, object]:
    with rasterio.open(path) as ds:
        return ds.read(), ds.transform, ds.crs


def assert_same_raster(mounted_out: Path, source_out: Path) -> None:
    a, ta, ca = pixels(mounted_out)
    b, tb, cb = pixels(source_out)
    assert ca == cb, f"CRS differs: {ca} vs {cb}"
    assert ta.almost_equals(tb), f"transform differs: {ta} vs {tb}"
    assert a.shape == b.shape, f"shape differs: {a.shape} vs {b.shape}"
    assert np.array_equal(a, b), f"{int((a != b).sum())} pixels differ"


def vrt_shape(xml: str) -> str:
    """A VRT with each source file name cut to its base name: gdalbuildvrt
    writes them relative to the VRT, so the directories differ by design."""
    return re.sub(r"(<SourceFilename[^>]*>)[^<]*/", r"\1", xml)


# ---- GDAL command-line tools ---------------------------------------------------------------

def test_gdalinfo_stats_equal_the_source(emulator, emulator_data, mount_factory, tmp_path):
    mount = mount_factory(emulator)
    f = band(mount, "B04_10M")
    src = source_copy(emulator_data, f, tmp_path / "src")
    mark = log_mark(emulator)
    mounted = run(["gdalinfo", "-stats", "-checksum", "-mm", str(f)]).stdout
    reqs = report("gdalinfo -stats -checksum (PAM on, aux.xml not writable)", emulator, mark)
    source = run(["gdalinfo", "-stats", "-checksum", "-mm", str(src)]).stdout
    assert "STATISTICS_MEAN" in source and "Checksum=" in source
    assert neutral(mounted, f.parent) == neutral(source, src.parent)
    size = f.stat().st_size
    assert sum(r["bytes"] for r in reqs) <= 2 * size, "gdalinfo -stats fetched the file more than twice over"


def test_gdalinfo_json_of_every_band_equals_the_source(emulator, emulator_data, mount_factory, tmp_path):
    mount = mount_factory(emulator)
    product = band(mount, "B02_10M", day="2020/01/02").parent
    tifs = sorted(p for p in product.iterdir() if p.suffix == ".tif")
    assert len(tifs) > 10
    for f in tifs:
        src = source_copy(emulator_data, f, tmp_path / "src")
        a = json.loads(neutral(run(["gdalinfo", "-json", str(f)]).stdout, f.parent))
        b = json.loads(neutral(run(["gdalinfo", "-json", str(src)]).stdout, src.parent))
        assert a == b, f"gdalinfo -json differs for {f.name}"


def test_gdalinfo_header_costs_few_requests(emulator, mount_factory):
    mount = mount_factory(emulator)
    f = band(mount, "B03_10M", day="2021/07/01")
    mark = log_mark(emulator)
    run(["gdalinfo", str(f)])
    reqs = report("gdalinfo (header only)", emulator, mark)
    assert len(reqs) <= 1, f"gdalinfo made {len(reqs)} download requests"
    # GDAL looks for side files (.aux.xml, .ovr, .msk, .IMD ...) next to the band;
    # the product's listing answers those, not the catalogue.
    catalogue = [r for r in emulator.requests()[mark:] if r["kind"] in ("stac", "opensearch")]
    assert catalogue == [], f"gdalinfo's side-file probes reached the catalogue: {catalogue}"


def test_gdal_translate_srcwin_equals_the_source(emulator, emulator_data, mount_factory, tmp_path):
    mount = mount_factory(emulator)
    f = band(mount, "B08_10M", day="2020/02/15")
    src = source_copy(emulator_data, f, tmp_path / "src")
    mark = log_mark(emulator)
    run(["gdal_translate", "-q", "-srcwin", "100", "150", "200", "120", str(f), str(tmp_path / "m.tif")])
    report("gdal_translate -srcwin 100 150 200 120", emulator, mark)
    run(["gdal_translate", "-q", "-srcwin", "100", "150", "200", "120", str(src), str(tmp_path / "s.tif")])
    assert_same_raster(tmp_path / "m.tif", tmp_path / "s.tif")
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert (ds.width, ds.height) == (200, 120)


def test_gdalwarp_to_another_crs_equals_the_source(emulator, emulator_data, mount_factory, tmp_path):
    mount = mount_factory(emulator)
    f = band(mount, "B11_20M", day="2021/06/30")
    src = source_copy(emulator_data, f, tmp_path / "src")
    args = ["gdalwarp", "-q", "-t_srs", "EPSG:4326", "-r", "bilinear"]
    mark = log_mark(emulator)
    run([*args, str(f), str(tmp_path / "m.tif")])
    report("gdalwarp -t_srs EPSG:4326", emulator, mark)
    run([*args, str(src), str(tmp_path / "s.tif")])
    assert_same_raster(tmp_path / "m.tif", tmp_path / "s.tif")
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert ds.crs.to_epsg() == 4326


def test_gdalbuildvrt_over_several_products_equals_the_source(emulator, emulator_data, mount_factory, tmp_path):
    mount = mount_factory(emulator)
    day = mount.path / "terrascope-s2-toc-v2" / "2020" / "01" / "01"
    mounted = sorted(day.glob("*/*B04_10M*.tif"))
    assert len(mounted) == 3, mounted
    sources = [source_copy(emulator_data, f, tmp_path / "src" / f.parent.name) for f in mounted]
    mark = log_mark(emulator)
    run(["gdalbuildvrt", "-q", str(tmp_path / "m.vrt"), *map(str, mounted)])
    report("gdalbuildvrt over B04 of 3 products", emulator, mark)
    run(["gdalbuildvrt", "-q", str(tmp_path / "s.vrt"), *map(str, sources)])
    assert vrt_shape((tmp_path / "m.vrt").read_text()) == vrt_shape((tmp_path / "s.vrt").read_text())
    assert_same_raster(tmp_path / "m.vrt", tmp_path / "s.vrt")
    # and the bands of one product stacked
    product = mounted[0].parent
    names = ("B02_10M", "B03_10M", "B04_10M")
    stack_m = [next(product.glob(f"*{n}*.tif")) for n in names]
    stack_s = [source_copy(emulator_data, f, tmp_path / "src" / product.name) for f in stack_m]
    run(["gdalbuildvrt", "-q", "-separate", str(tmp_path / "ms.vrt"), *map(str, stack_m)])
    run(["gdalbuildvrt", "-q", "-separate", str(tmp_path / "ss.vrt"), *map(str, stack_s)])
    assert_same_raster(tmp_path / "ms.vrt", tmp_path / "ss.vrt")


def test_gdallocationinfo_equals_the_source(emulator, emulator_data, mount_factory, tmp_path):
    mount = mount_factory(emulator)
    f = band(mount, "B05_20M", day="2020/01/02")
    src = source_copy(emulator_data, f, tmp_path / "src")
    mark = log_mark(emulator)
    points = [(0, 0), (17, 201), (128, 128), (255, 255), (3, 250)]
    for x, y in points:
        m = run(["gdallocationinfo", str(f), str(x), str(y)]).stdout
        s = run(["gdallocationinfo", str(src), str(x), str(y)]).stdout
        assert "Value:" in s
        assert neutral(m, f.parent) == neutral(s, src.parent), (x, y)
    report(f"gdallocationinfo x{len(points)}", emulator, mark)
    # geographic query, values only
    m = run(["gdallocationinfo", "-valonly", "-wgs84", str(f), "4.0", "51.0"]).stdout
    s = run(["gdallocationinfo", "-valonly", "-wgs84", str(src), "4.0", "51.0"]).stdout
    assert m == s


# ---- rasterio -----------------------------------------------------------------------------

WINDOWS = [Window(0, 0, 64, 64), Window(100, 200, 150, 90), Window(300, 300, 212, 212),
           Window(511, 0, 1, 512), Window(250, 250, 13, 7)]


def test_rasterio_windowed_reads_are_pixel_equal(emulator, emulator_data, mount_factory):
    mount = mount_factory(emulator)
    f = band(mount, "B02_10M", day="2021/07/01")
    src = source_of(emulator_data, f)
    mark = log_mark(emulator)
    with rasterio.open(f) as mounted, rasterio.open(src) as source:
        assert (mounted.crs, mounted.transform, mounted.profile) == (source.crs, source.transform, source.profile)
        first = mounted.read(1, window=WINDOWS[0])
        report("rasterio open + one 64x64 window", emulator, mark)
        assert np.array_equal(first, source.read(1, window=WINDOWS[0]))
        for win in WINDOWS[1:]:
            assert np.array_equal(mounted.read(1, window=win), source.read(1, window=win)), win
        boundless = Window(-20, 480, 80, 80)
        assert np.array_equal(mounted.read(1, window=boundless, boundless=True, fill_value=7),
                              source.read(1, window=boundless, boundless=True, fill_value=7))
        assert np.array_equal(mounted.read_masks(1), source.read_masks(1))


def test_rasterio_overview_reads_are_pixel_equal(emulator, emulator_data, mount_factory):
    mount = mount_factory(emulator)
    f = band(mount, "B03_10M", day="2020/02/15")
    src = source_of(emulator_data, f)
    with rasterio.open(f) as mounted, rasterio.open(src) as source:
        factors = mounted.overviews(1)
        assert factors and factors == source.overviews(1), "no overviews on a COG band"
        for factor in factors:
            shape = (mounted.height // factor, mounted.width // factor)
            assert np.array_equal(mounted.read(1, out_shape=shape), source.read(1, out_shape=shape)), factor
    for level in range(len(factors)):
        with rasterio.open(f, overview_level=level) as mounted, rasterio.open(src, overview_level=level) as source:
            assert mounted.shape == source.shape
            assert np.array_equal(mounted.read(), source.read()), level
            win = Window(1, 2, max(1, mounted.width // 2), max(1, mounted.height // 3))
            assert np.array_equal(mounted.read(1, window=win), source.read(1, window=win))


def test_rasterio_windowed_read_of_an_uncached_file_costs_one_request(emulator, mount_factory):
    mount = mount_factory(emulator, name="windowed")
    f = band(mount, "B08_10M", day="2021/07/01")
    size = f.stat().st_size
    mark = log_mark(emulator)
    with rasterio.open(f) as ds:
        ds.read(1, window=Window(256, 256, 32, 32))
    reqs = report("rasterio windowed read 32x32 (uncached)", emulator, mark)
    # The small archive's files are below the reader's head size, so the
    # first touch fetches the whole file in one request; a bigger file would
    # fetch the head and the touched blocks only.
    assert len(reqs) == 1, f"{len(reqs)} requests for one small window"
    fetched = sum(r["bytes"] for r in reqs)
    assert fetched <= size, f"{fetched} bytes fetched for a {size}-byte file"
