"""Raster layouts for the read-path benchmark and tests: one collection
("terrascope-layouts-test") whose daily products each hold one file per layout.

- cog:     a cloud-optimized GeoTIFF, deflate, 512 x 512 tiles, with overviews
           (the layout of the data the read-path issue was measured on)
- tiled:   a plain GeoTIFF (GDAL's GTiff driver, not COG-ordered), 256 x 256 tiles,
           LZW, no overviews
- striped: a GeoTIFF without tiles, 16 rows per strip, deflate
The pixels are uint16: a smooth field plus noise whose strength varies across
the image, so that tiles and strips compress to different sizes (as real data
does), never to nothing: a 512 x 512 COG tile takes 300-435 kB (about 370 kB on
average, as in the data the read-path issue measured).

Sizes per profile: small (tests) 1536 x 1536 and 5 files per layout (3 COG tile
rows, 6 tiled rows); bench 4096 x 4096 and 40 files per layout. List them with
GET /_emulator/files?layout=cog (or tiled, striped).

Platform path: /data/MTDA/TERRASCOPE_LayoutsTest/V1/YYYY/MM/DD/<product>/<file>;
download URL: /download/LayoutsTest/V1/... (a prefix that is not a plain swap).
Nothing here writes files or serves HTTP, and nothing is imported from the
client side of terrafs.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from terrafs.emulator.archive import EmuCollection
from terrafs.emulator.plan import UTC, PlannedProduct, RasterSpec, raster_file, seed

COLLECTION = "terrascope-layouts-test"
URN = "urn:eop:VITO:TERRASCOPE_LAYOUTS_TEST"
LAYOUTS = ("cog", "tiled", "striped")
FIRST_DAY = datetime(2022, 1, 1, 10, 30, tzinfo=UTC)
# (pixels per side, files per layout) per profile.
SIZES = {"small": (1536, 5), "large": (1536, 5), "bench": (4096, 40)}
STRIP_ROWS = 16
RESOLUTION_M = 10.0
UL = (600000.0, 5700000.0)  # EPSG:32631, over Belgium


def collections() -> list[EmuCollection]:
    return [EmuCollection(COLLECTION, URN, "Raster layouts for read-path tests (emulator only)",
                          FIRST_DAY.replace(hour=0, minute=0), None, (2.0, 49.0, 7.0, 52.0))]


def plan_layouts(profile: str) -> list[PlannedProduct]:
    side, count = SIZES[profile]
    out = []
    for i in range(count):
        when = FIRST_DAY + timedelta(days=i)
        title = f"LT_{when:%Y%m%dT%H%M%S}_31UFS_LAYOUTS_V100"
        rel_dir = f"TERRASCOPE_LayoutsTest/V1/{when:%Y/%m/%d}/{title}"
        dl_dir = f"LayoutsTest/V1/{when:%Y/%m/%d}/{title}"
        files = []
        for layout in LAYOUTS:
            name = f"LT_{when:%Y%m%dT%H%M%S}_31UFS_{layout.upper()}_V100.tif"
            spec = RasterSpec(side, side, 1, "uint16", "EPSG:32631",
                              (UL[0], RESOLUTION_M, 0.0, UL[1], 0.0, -RESOLUTION_M), seed(f"{rel_dir}/{name}"),
                              nodata=0, layout=layout)
            files.append(raster_file(rel_dir, dl_dir, name, spec, group="data", key=layout.upper(), roles=("data",),
                                     title=layout.upper(), gsd=RESOLUTION_M))
        extra = {"platform": "S2A", "platform_short": "Sentinel-2", "constellation": "sentinel-2", "epsg": 32631,
                 "product_version": "V100", "gsd": RESOLUTION_M}
        out.append(PlannedProduct(dict(id=title, title=title, collection=COLLECTION, datetime=when, tile_id="31UFS",
                                       cloud_cover=None, product_type="LAYOUTS", bbox=(3.0, 50.5, 4.5, 51.5),
                                       published=when + timedelta(days=1), updated=when + timedelta(days=1),
                                       extra=extra), files))
    return out


def creation_options(spec: RasterSpec) -> dict:
    """rasterio/GDAL creation options of a layout."""
    if spec.layout == "cog":
        return dict(driver="COG", compress="DEFLATE", blocksize=512, overview_resampling="average")
    if spec.layout == "tiled":
        return dict(driver="GTiff", compress="LZW", tiled=True, blockxsize=256, blockysize=256)
    if spec.layout == "striped":
        return dict(driver="GTiff", compress="DEFLATE", tiled=False, blockysize=STRIP_ROWS)
    raise ValueError(f"unknown raster layout {spec.layout!r}")


def pixels(spec: RasterSpec):
    """uint16 pixels: structure plus noise of varying strength, filled in strips."""
    import numpy as np

    rng = np.random.default_rng(spec.seed)
    h, w = spec.height, spec.width
    out = np.empty((spec.count, h, w), dtype=np.uint16)
    xx = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    phase = (spec.seed % 1000) / 100.0
    rows = 512
    for r0 in range(0, h, rows):
        n = min(rows, h - r0)
        yy = np.linspace(r0 / h, (r0 + n) / h, n, endpoint=False, dtype=np.float32)[:, None]
        field = 3000 + 2500 * np.sin(xx * 7.0 + phase) * np.cos(yy * 5.0 - phase) + 1500 * xx * yy
        # Noise from near nothing to strong, in blobs: tiles differ in how well they compress.
        strength = 5 + 150 * (0.5 + 0.5 * np.sin(xx * 5.0 + yy * 3.0 + phase)) ** 3
        noise = rng.normal(0.0, 1.0, size=(n, w)).astype(np.float32) * strength
        out[0, r0:r0 + n, :] = np.clip(field + noise, 1, 65534).astype(np.uint16)
    return out
