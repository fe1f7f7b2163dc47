"""The emulator's synthetic archive: which collections, products and files exist.

build_archive() plans a small deterministic Terrascope-like archive (same input,
same catalogue, same bytes), writes its files once into a data directory (real
GeoTIFFs: cloud-optimized UTM tiles, deflate, overviews; small netCDF and XML
files) and returns the Archive that the catalogue and download handlers serve.
Bulk products (for listing tests) are generated from a hash and never touch
the disk.

This module puts the archive together: sentinel.py plans the core collections
(Sentinel-2 TOC and LAI, Sentinel-1 sigma0, WorldCover), shapes.py the archive's
other path shapes, layouts.py the raster layouts for benchmarks, daily.py the
archive profile's day-by-day TOC collection, bulk.py the bulk products, and
writer.py writes every file.

It must not serve HTTP, know about STAC or OpenSearch JSON, or import anything
from the client side of terrafs.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from terrafs.emulator import layouts, sentinel, shapes
from terrafs.emulator.archive import Archive, EmuFile, EmuProduct
from terrafs.emulator.bulk import bulk_products as make_bulk_products
from terrafs.emulator.daily import DailyCollection
from terrafs.emulator.plan import MTDA
from terrafs.emulator.writer import ensure_files, read_disk

# small: the tests' archive; large: full-size Sentinel-2 bands (the read-path bench);
# bench: large plus full-size raster layouts (4096 x 4096, >= 40 files per layout).
# archive: the small profile with the S2 TOC collection at the real archive's size
# (about 100 products a day for three months, bytes made on demand: daily.py).
PROFILES = ("small", "large", "bench", "archive")


def build_archive(data_dir: Path, profile: str = "small", bulk_products: int = 0) -> Archive:
    """Plan the archive, write its files into data_dir/<profile>/ once, return it."""
    if profile not in PROFILES:
        raise ValueError(f"unknown emulator profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if bulk_products < 0:
        raise ValueError("bulk_products must be >= 0")
    root = Path(data_dir) / profile
    root.mkdir(parents=True, exist_ok=True)
    daily = []
    if profile == "archive":
        # Its templates live beside the profile's directory, which keeps only planned files.
        daily.append(DailyCollection(Path(data_dir) / "archive-templates"))
    planned = ([] if daily else sentinel.plan_toc(profile)) + (
        sentinel.plan_lai() + sentinel.plan_s1() + sentinel.plan_worldcover()
        + shapes.plan_shapes() + layouts.plan_layouts("small" if daily else profile))
    sizes = ensure_files(root, planned)
    products = []
    for pp in planned:
        files = tuple(
            EmuFile(
                name=pf.rel.rsplit("/", 1)[1], platform_path=MTDA + pf.rel, download_path=pf.download_path,
                size=sizes[pf.rel], group=pf.group, asset_key=pf.asset_key, roles=pf.roles, title=pf.title,
                type=pf.type, category=pf.category, read=partial(read_disk, str(root / pf.rel)),
                size_in_catalogue=pf.size_in_catalogue, extra=pf.extra, layout=pf.layout,
            )
            for pf in pp.files
        )
        products.append(EmuProduct(files=files, **pp.product))
    products.extend(make_bulk_products(bulk_products))
    return Archive(sentinel.collections() + shapes.collections() + layouts.collections(), products, daily)
