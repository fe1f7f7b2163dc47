"""The emulator's bulk products (for listing tests): NDVI products generated from a hash,
their bytes a stream of sha256 blocks made on demand; nothing touches the disk.

It must not serve HTTP, know about STAC or OpenSearch JSON, or import anything from the client
side of terrafs.
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from functools import partial

from terrafs.emulator.archive import EmuFile, EmuProduct
from terrafs.emulator.plan import MTDA, TIFF, UTC, cloud_cover, seed


def _bulk_tile(i: int) -> str:
    letters = "CDEFGHJKLMNPQRSTUVWX"
    squares = "ABCDEFGHJKLMNPQRSTUVWXYZ"
    zone = 1 + i % 60
    band = letters[(i // 60) % len(letters)]
    sq = squares[(i // 1200) % 24] + squares[(i // 28800) % 24]
    return f"{zone:02d}{band}{sq}"


def _generated_read(seed_text: str, size: int, start: int, length: int) -> bytes:
    """Bytes [start, start+length) of a stream of sha256 blocks keyed by the path."""
    if start >= size or length <= 0:
        return b""
    end = min(size, start + length)
    first, last = start // 32, (end - 1) // 32
    buf = b"".join(hashlib.sha256(f"{seed_text}:{k}".encode()).digest() for k in range(first, last + 1))
    off = start - first * 32
    return buf[off:off + end - start]


def bulk_products(n: int) -> list[EmuProduct]:
    out = []
    base = datetime(2021, 6, 15, 0, 0, 0, tzinfo=UTC)
    for i in range(n):
        when = base + timedelta(seconds=i % 86400)
        tile = _bulk_tile(i)
        platform = "S2A" if i % 2 == 0 else "S2B"
        stamp = when.strftime("%Y%m%dT%H%M%S")
        # Real NDVI naming: the product is "..._NDVI_10M_V200", its folder "..._NDVI_V200".
        title = f"{platform}_{stamp}_{tile}_NDVI_10M_V200"
        folder = f"{platform}_{stamp}_{tile}_NDVI_V200"
        name = f"{title}.tif"
        rel = f"TERRASCOPE_Sentinel2/NDVI_V2/2021/06/15/{folder}/{name}"
        dl = f"Sentinel2/NDVI_V2/2021/06/15/{folder}/{name}"
        size = 1024 + seed(rel) % 3072
        ef = EmuFile(name, MTDA + rel, dl, size, "data", "NDVI", ("data",), "NDVI_10M", TIFF,
                     read=partial(_generated_read, rel, size), extra={"stac_title": "NDVI", "gsd": 10.0})
        lon = -180.0 + (i * 7.3) % 355.0
        lat = -60.0 + (i * 3.1) % 140.0
        extra = {"platform": platform, "platform_short": "Sentinel-2", "constellation": "sentinel-2",
                 "instrument": "msi", "relative_orbit": 1 + i % 143, "orbit_direction": "DESCENDING",
                 "product_version": "V200", "gsd": 10}
        out.append(EmuProduct(id=title, title=title, collection="terrascope-s2-ndvi-v2", datetime=when,
                              tile_id=tile, cloud_cover=cloud_cover(title), product_type="NDVI",
                              bbox=(round(lon, 4), round(lat, 4), round(lon + 1.2, 4), round(lat + 1.0, 4)),
                              files=(ef,), published=when + timedelta(days=1), updated=when + timedelta(days=1),
                              extra=extra))
    return out
