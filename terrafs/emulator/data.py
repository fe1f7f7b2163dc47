"""The emulator's synthetic archive: which collections, products and files exist.

build_archive() plans a small deterministic Terrascope-like archive (same input,
same catalogue, same bytes), writes its rasters once as real cloud-optimized
GeoTIFFs (UTM tiles, deflate, overviews) into a data directory and returns the
Archive that the catalogue and download handlers serve. Bulk products (for
listing tests) are generated from a hash and never touch the disk.

It must not serve HTTP, know about STAC or OpenSearch JSON, or import anything
from the client side of terrafs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path

from terrafs.emulator.archive import Archive, EmuCollection, EmuFile, EmuProduct

log = logging.getLogger(__name__)

# Bump when the planned content changes, so old data directories are rebuilt.
DATA_VERSION = 1
PROFILES = ("small", "large")
MTDA = "/data/MTDA/"
TIFF = "image/tiff"
XML_INSPIRE = "application/vnd.iso.19139+xml"
UTC = timezone.utc

# Sentinel-2 tiles (MGRS) with their real upper-left UTM corner; 109.8 km wide.
S2_TILE_SIZE_M = 109800.0
S2_TILES = {
    "31UFS": (32631, 600000.0, 5700000.0),
    "31UES": (32631, 499980.0, 5700000.0),
    "31UFT": (32631, 600000.0, 5800020.0),
}
# (platform, acquisition time, relative orbit, tiles) per S2 datatake.
S2_DATATAKES = [
    ("S2A", "20200101T105431", 51, ("31UFS", "31UES", "31UFT")),
    ("S2B", "20200102T104429", 8, ("31UFS", "31UES")),
    ("S2A", "20200215T105021", 51, ("31UFS", "31UES", "31UFT")),
    ("S2B", "20210630T104619", 8, ("31UFS", "31UFT")),
    ("S2A", "20210701T103631", 8, ("31UES",)),
]
LAI_DATATAKES = S2_DATATAKES[:2]
S1_PRODUCTS = [
    ("S1A", "20200101T172614", "ASCENDING", 88, "2F1C"),
    ("S1B", "20200102T055849", "DESCENDING", 110, "22F3"),
    ("S1A", "20200215T172608", "ASCENDING", 88, "31A0"),
    ("S1A", "20210630T055912", "DESCENDING", 110, "4B7E"),
]
WORLDCOVER_TILES = ("N48E000", "N51E000", "N51E003")

# TOC bands: (band, resolution m, dtype, OpenSearch group, category, STAC key, roles).
TOC_BANDS = (
    [(b, 10, "uint16", "data", None, b, ("data",)) for b in ("B02", "B03", "B04", "B08")]
    + [(b, 20, "uint16", "data", None, b, ("data",)) for b in ("B05", "B06", "B07", "B8A", "B11", "B12")]
    + [
        ("SCENECLASSIFICATION", 20, "uint8", "related", "QUALITY", "SCL", ("data-mask",)),
        ("CLOUDMASK", 20, "uint8", "related", "CLOUD", "CLOUDMASK", ("data-mask", "cloud")),
    ]
    + [(b, 60, "uint16", "related", "QUALITY", b, ("data",)) for b in ("AOT", "SZA", "VZA", "RAA", "WVP")]
)
# Pixels per side for each resolution, per profile ("large" = the real sizes).
RASTER_SIDE = {
    "small": {10: 512, 20: 256, 60: 128, "ql": 128},
    "large": {10: 10980, 20: 5490, 60: 1830, "ql": 686},
}
COG_BLOCK = 256


@dataclass(frozen=True)
class RasterSpec:
    """How to generate one GeoTIFF; everything that decides its bytes."""

    width: int
    height: int
    count: int
    dtype: str
    crs: str
    transform: tuple[float, float, float, float, float, float]  # gdal order
    seed: int
    nodata: float | None = None


@dataclass
class _PlannedFile:
    rel: str  # path below the data directory == platform path without /data/MTDA/
    download_path: str
    group: str
    asset_key: str
    roles: tuple[str, ...]
    title: str
    type: str
    category: str | None = None
    raster: RasterSpec | None = None
    text: str | None = None  # content of generated non-raster files
    size_in_catalogue: bool = True
    extra: dict = field(default_factory=dict)


@dataclass
class _PlannedProduct:
    product: dict  # EmuProduct keyword arguments except files
    files: list[_PlannedFile]


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _cloud_cover(title: str) -> float:
    return round((_seed("cc" + title) % 100000) / 1000.0, 3)


def _dt(stamp: str) -> datetime:
    """'20200101T105431' -> aware datetime with the usual .024 s fraction."""
    return datetime.strptime(stamp, "%Y%m%dT%H%M%S").replace(microsecond=24000, tzinfo=UTC)


def _lonlat_bounds(epsg: int, left: float, bottom: float, right: float, top: float) -> tuple[float, float, float, float]:
    from rasterio.warp import transform_bounds

    w, s, e, n = transform_bounds(f"EPSG:{epsg}", "EPSG:4326", left, bottom, right, top)
    return (round(w, 7), round(s, 7), round(e, 7), round(n, 7))


def _utm_raster(epsg: int, ulx: float, uly: float, side: int, count: int, dtype: str, seed_text: str,
                nodata: float | None = None) -> RasterSpec:
    res = S2_TILE_SIZE_M / side
    return RasterSpec(side, side, count, dtype, f"EPSG:{epsg}", (ulx, res, 0.0, uly, 0.0, -res), _seed(seed_text), nodata)


def _raster_extra(spec: RasterSpec, stac_title: str, gsd: float | None = None) -> dict:
    ulx, resx, _, uly, _, resy = spec.transform
    return {
        "stac_title": stac_title,
        "data_type": spec.dtype,
        "proj_shape": [spec.height, spec.width],
        "proj_transform": [resx, 0.0, ulx, 0.0, resy, uly, 0.0, 0.0, 1.0],
        "gsd": gsd if gsd is not None else resx,
        "nodata": spec.nodata,
    }


def _inspire_xml(title: str, collection_urn: str, when: datetime) -> str:
    # Small but well-formed ISO 19139-ish record; its content only has to be stable.
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<gmd:MD_Metadata xmlns:gmd="http://www.isotc211.org/2005/gmd" '
        'xmlns:gco="http://www.isotc211.org/2005/gco">\n'
        f"  <gmd:fileIdentifier><gco:CharacterString>{collection_urn}:{title}</gco:CharacterString></gmd:fileIdentifier>\n"
        f"  <gmd:parentIdentifier><gco:CharacterString>{collection_urn}</gco:CharacterString></gmd:parentIdentifier>\n"
        f"  <gmd:dateStamp><gco:DateTime>{when.strftime('%Y-%m-%dT%H:%M:%SZ')}</gco:DateTime></gmd:dateStamp>\n"
        "  <gmd:contact><gco:CharacterString>VITO (emulated)</gco:CharacterString></gmd:contact>\n"
        "</gmd:MD_Metadata>\n"
    )


# ---------------------------------------------------------------------------------------------
# Collections


def _collections(bulk_products: int) -> list[EmuCollection]:
    cols = [
        EmuCollection("terrascope-s2-toc-v2", "urn:eop:VITO:TERRASCOPE_S2_TOC_V2",
                      "Sentinel-2 top-of-canopy reflectance V2", datetime(2015, 7, 6, tzinfo=UTC), None,
                      (-180.0, -84.0, 180.0, 84.0)),
        EmuCollection("terrascope-s2-lai-v2", "urn:eop:VITO:TERRASCOPE_S2_LAI_V2",
                      "Sentinel-2 leaf area index V2", datetime(2015, 7, 6, tzinfo=UTC), None,
                      (-180.0, -84.0, 180.0, 84.0), older_item_form=True),
        EmuCollection("terrascope-s1-grd-sigma0-v1", "urn:eop:VITO:CGS_S1_GRD_SIGMA0_L1",
                      "Sentinel-1 GRD sigma0 backscatter", datetime(2014, 10, 3, tzinfo=UTC), None,
                      (-180.0, -90.0, 180.0, 90.0)),
        # in_stac=True although the real STAC may not list it, so both backends can be tested on it.
        EmuCollection("esa-worldcover-10m-2020-v1", "urn:eop:VITO:ESA_WorldCover_10m_2020_V1",
                      "ESA WorldCover 10 m 2020 V1", datetime(2020, 1, 1, tzinfo=UTC),
                      datetime(2020, 12, 31, 23, 59, 59, tzinfo=UTC), (-180.0, -60.0, 180.0, 84.0)),
    ]
    if bulk_products > 0:
        cols.append(EmuCollection("terrascope-s2-ndvi-v2", "urn:eop:VITO:TERRASCOPE_S2_NDVI_V2",
                                  "Sentinel-2 NDVI V2", datetime(2015, 7, 6, tzinfo=UTC), None,
                                  (-180.0, -84.0, 180.0, 84.0)))
    return cols


def _s2_product_fields(platform: str, stamp: str, rel_orbit: int, tile: str, title: str, ptype: str,
                       collection: str, resolution: int | None = None) -> dict:
    epsg, ulx, uly = S2_TILES[tile]
    when = _dt(stamp)
    bbox = _lonlat_bounds(epsg, ulx, uly - S2_TILE_SIZE_M, ulx + S2_TILE_SIZE_M, uly)
    extra = {
        "platform": platform, "platform_short": "Sentinel-2", "constellation": "sentinel-2",
        "instrument": "msi", "epsg": epsg, "relative_orbit": rel_orbit,
        "absolute_orbit": 10000 + (when - datetime(2017, 1, 1, tzinfo=UTC)).days * 14 + rel_orbit,
        "orbit_direction": "DESCENDING", "product_version": title.rsplit("_", 1)[1],
        "proj_bbox": [ulx, uly - S2_TILE_SIZE_M, ulx + S2_TILE_SIZE_M, uly],
        "mgrs": (int(tile[:2]), tile[2], tile[3:]), "gsd": resolution or 10,
    }
    if resolution:
        extra["resolution"] = resolution
    return dict(id=title, title=title, collection=collection, datetime=when, tile_id=tile,
                cloud_cover=_cloud_cover(title), product_type=ptype, bbox=bbox,
                published=when + timedelta(days=2, hours=3), updated=when + timedelta(days=2, hours=3),
                extra=extra)


def _plan_toc(profile: str) -> list[_PlannedProduct]:
    urn = "urn:eop:VITO:TERRASCOPE_S2_TOC_V2"
    sides = RASTER_SIDE[profile]
    datatakes = S2_DATATAKES if profile == "small" else [(S2_DATATAKES[0][0], S2_DATATAKES[0][1], S2_DATATAKES[0][2], ("31UFS",))]
    out = []
    for platform, stamp, orbit, tiles in datatakes:
        for tile in tiles:
            stem = f"{platform}_{stamp}_{tile}"
            title = f"{stem}_TOC_V210"
            when = _dt(stamp)
            rel_dir = f"TERRASCOPE_Sentinel2/TOC_V2/{when:%Y/%m/%d}/{title}"
            dl_dir = f"Sentinel2/TOC_V2/{when:%Y/%m/%d}/{title}"
            epsg, ulx, uly = S2_TILES[tile]
            files = []
            for band, res, dtype, group, category, key, roles in TOC_BANDS:
                name = f"{stem}_TOC-{band}_{res}M_V210.tif" if group == "data" else f"{stem}_{band}_{res}M_V210.tif"
                nodata = 32767 if dtype == "uint16" else None
                spec = _utm_raster(epsg, ulx, uly, sides[res], 1, dtype, f"{rel_dir}/{name}", nodata)
                ftitle = f"TOC-{band}_{res}M" if group == "data" else f"{band}_{res}M"
                files.append(_PlannedFile(f"{rel_dir}/{name}", f"{dl_dir}/{name}", group, key, roles, ftitle, TIFF,
                                          category, raster=spec, extra=_raster_extra(spec, key, float(res))))
            ql = f"{stem}_TOC_QUICKLOOK_V210.tif"
            spec = _utm_raster(epsg, ulx, uly, sides["ql"], 3, "uint8", f"{rel_dir}/{ql}")
            files.append(_PlannedFile(f"{rel_dir}/{ql}", f"{dl_dir}/{ql}", "previews", "QUICKLOOK", ("thumbnail",),
                                      "QUICKLOOK", TIFF, "QUICKLOOK", raster=spec, extra=_raster_extra(spec, "QUICKLOOK")))
            xml = f"{title}.xml"
            files.append(_PlannedFile(f"{rel_dir}/{xml}", f"{dl_dir}/{xml}", "alternates", "Inspire metadata",
                                      ("metadata",), "Inspire metadata", XML_INSPIRE,
                                      text=_inspire_xml(title, urn, when), extra={"stac_title": "Inspire metadata"}))
            prod = _s2_product_fields(platform, stamp, orbit, tile, title, "TOC", "terrascope-s2-toc-v2")
            out.append(_PlannedProduct(prod, files))
    return out


def _plan_lai() -> list[_PlannedProduct]:
    urn = "urn:eop:VITO:TERRASCOPE_S2_LAI_V2"
    out = []
    for platform, stamp, orbit, tiles in LAI_DATATAKES:
        for tile in tiles:
            stem = f"{platform}_{stamp}_{tile}"
            folder = f"{stem}_LAI_V200"
            when = _dt(stamp)
            epsg, ulx, uly = S2_TILES[tile]
            for res, side in ((10, 512), (20, 256)):
                title = f"{stem}_LAI_{res}M_V200"
                rel_dir = f"TERRASCOPE_Sentinel2/LAI_V2/{when:%Y/%m/%d}/{folder}/{res}M"
                dl_dir = f"Sentinel2/LAI_V2/{when:%Y/%m/%d}/{folder}/{res}M"
                name = f"{title}.tif"
                spec = _utm_raster(epsg, ulx, uly, side, 1, "uint16", f"{rel_dir}/{name}", 65535)
                files = [
                    # Older STAC item form: asset keys are the file names.
                    _PlannedFile(f"{rel_dir}/{name}", f"{dl_dir}/{name}", "data", name, ("data",), f"LAI_{res}M",
                                 TIFF, raster=spec, extra=_raster_extra(spec, "LAI", float(res))),
                    # No length anywhere in the catalogue: clients must HEAD it.
                    _PlannedFile(f"{rel_dir}/{title}.xml", f"{dl_dir}/{title}.xml", "alternates", f"{title}.xml",
                                 ("metadata",), "Inspire metadata", XML_INSPIRE,
                                 text=_inspire_xml(title, urn, when), size_in_catalogue=False,
                                 extra={"stac_title": "Inspire metadata"}),
                ]
                prod = _s2_product_fields(platform, stamp, orbit, tile, title, "LAI", "terrascope-s2-lai-v2", res)
                out.append(_PlannedProduct(prod, files))
    return out


def _plan_s1() -> list[_PlannedProduct]:
    urn = "urn:eop:VITO:CGS_S1_GRD_SIGMA0_L1"
    epsg, ulx, uly, width_m = 32631, 450000.0, 5720000.0, 250000.0
    bbox = _lonlat_bounds(epsg, ulx, uly - width_m, ulx + width_m, uly)
    out = []
    for platform, stamp, direction, orbit, code in S1_PRODUCTS:
        when = _dt(stamp)
        title = f"{platform}_IW_GRDH_SIGMA0_DV_{stamp}_{direction}_{orbit}_{code}_V110"
        rel_dir = f"CGS_S1/CGS_S1_GRD_SIGMA0_L1/{when:%Y/%m/%d}/{title}"
        dl_dir = f"CGS_S1_GRD_SIGMA0_L1/{when:%Y/%m/%d}/{title}"
        files = []
        for band, side in (("VV", 256), ("VH", 256), ("angle", 128)):
            name = f"{title}_{band}.tif"
            res = width_m / side
            spec = RasterSpec(side, side, 1, "float32", f"EPSG:{epsg}", (ulx, res, 0.0, uly, 0.0, -res),
                              _seed(f"{rel_dir}/{name}"))
            group = "data" if band != "angle" else "related"
            files.append(_PlannedFile(f"{rel_dir}/{name}", f"{dl_dir}/{name}", group, band, ("data",), band, TIFF,
                                      raster=spec, extra=_raster_extra(spec, band, 10.0)))
        # The product xml has no length / file:size in either catalogue (HEAD fallback, current STAC form).
        files.append(_PlannedFile(f"{rel_dir}/{title}.xml", f"{dl_dir}/{title}.xml", "alternates", "metadata",
                                  ("metadata",), "Product metadata", "application/xml",
                                  text=_inspire_xml(title, urn, when), size_in_catalogue=False,
                                  extra={"stac_title": "Product metadata"}))
        extra = {"platform": platform, "platform_short": "Sentinel-1", "constellation": "sentinel-1",
                 "instrument": "c-sar", "epsg": epsg, "relative_orbit": orbit,
                 "absolute_orbit": 30000 + (when - datetime(2017, 1, 1, tzinfo=UTC)).days * 15 + orbit,
                 "orbit_direction": direction, "product_version": "V110",
                 "proj_bbox": [ulx, uly - width_m, ulx + width_m, uly], "gsd": 10,
                 "acquisition": {"operationalMode": "IW", "polarisationMode": "D", "polarisationChannels": "VV, VH"}}
        prod = dict(id=title, title=title, collection="terrascope-s1-grd-sigma0-v1", datetime=when, tile_id=None,
                    cloud_cover=None, product_type="GRD", bbox=bbox, published=when + timedelta(hours=6),
                    updated=when + timedelta(hours=6), extra=extra)
        out.append(_PlannedProduct(prod, files))
    return out


def _plan_worldcover() -> list[_PlannedProduct]:
    out = []
    when = datetime(2020, 1, 1, tzinfo=UTC)
    for tile in WORLDCOVER_TILES:
        lat = int(tile[1:3]) * (1 if tile[0] == "N" else -1)
        lon = int(tile[4:7]) * (1 if tile[3] == "E" else -1)
        title = f"ESA_WorldCover_10m_2020_v100_{tile}_Map"
        rel_dir = f"WORLDCOVER/ESA_WORLDCOVER_10M_2020_V100/MAP/{title}"
        name = f"{title}.tif"
        side = 512
        res = 3.0 / side
        spec = RasterSpec(side, side, 1, "uint8", "EPSG:4326", (float(lon), res, 0.0, float(lat + 3), 0.0, -res),
                          _seed(f"{rel_dir}/{name}"), 0)
        files = [_PlannedFile(f"{rel_dir}/{name}", f"{rel_dir}/{name}", "data", "ESA_WORLDCOVER_10M_MAP", ("data",),
                              "ESA_WORLDCOVER_10M_MAP", TIFF, raster=spec,
                              extra=_raster_extra(spec, "ESA_WORLDCOVER_10M_MAP", 10.0))]
        extra = {"platform_short": "Sentinel-1/2", "epsg": 4326, "product_version": "V100", "gsd": 10,
                 "proj_bbox": [float(lon), float(lat), float(lon + 3), float(lat + 3)]}
        prod = dict(id=title, title=title, collection="esa-worldcover-10m-2020-v1", datetime=when, tile_id=tile,
                    cloud_cover=None, product_type="MAP", bbox=(float(lon), float(lat), float(lon + 3), float(lat + 3)),
                    published=datetime(2021, 10, 20, tzinfo=UTC), updated=datetime(2021, 10, 20, tzinfo=UTC),
                    extra=extra)
        out.append(_PlannedProduct(prod, files))
    return out


# ---------------------------------------------------------------------------------------------
# Bulk products: generated bytes, nothing on disk


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


def _bulk_products(n: int) -> list[EmuProduct]:
    out = []
    base = datetime(2021, 6, 15, 0, 0, 0, tzinfo=UTC)
    for i in range(n):
        when = base + timedelta(seconds=i % 86400)
        tile = _bulk_tile(i)
        platform = "S2A" if i % 2 == 0 else "S2B"
        stamp = when.strftime("%Y%m%dT%H%M%S")
        title = f"{platform}_{stamp}_{tile}_NDVI_V200"
        name = f"{platform}_{stamp}_{tile}_NDVI_10M_V200.tif"
        rel = f"TERRASCOPE_Sentinel2/NDVI_V2/2021/06/15/{title}/{name}"
        dl = f"Sentinel2/NDVI_V2/2021/06/15/{title}/{name}"
        size = 1024 + _seed(rel) % 3072
        ef = EmuFile(name, MTDA + rel, dl, size, "data", "NDVI", ("data",), "NDVI_10M", TIFF,
                     read=partial(_generated_read, rel, size), extra={"stac_title": "NDVI", "gsd": 10.0})
        lon = -180.0 + (i * 7.3) % 355.0
        lat = -60.0 + (i * 3.1) % 140.0
        extra = {"platform": platform, "platform_short": "Sentinel-2", "constellation": "sentinel-2",
                 "instrument": "msi", "relative_orbit": 1 + i % 143, "orbit_direction": "DESCENDING",
                 "product_version": "V200", "gsd": 10}
        out.append(EmuProduct(id=title, title=title, collection="terrascope-s2-ndvi-v2", datetime=when,
                              tile_id=tile, cloud_cover=_cloud_cover(title), product_type="NDVI",
                              bbox=(round(lon, 4), round(lat, 4), round(lon + 1.2, 4), round(lat + 1.0, 4)),
                              files=(ef,), published=when + timedelta(days=1), updated=when + timedelta(days=1),
                              extra=extra))
    return out


# ---------------------------------------------------------------------------------------------
# Writing files


def _pixels(spec: RasterSpec):
    """A smooth gradient plus noise: compressible, but not trivially."""
    import numpy as np

    rng = np.random.default_rng(spec.seed)
    h, w = spec.height, spec.width
    phase = (spec.seed % 1000) / 100.0
    if spec.dtype == "uint8":
        lo, amp, noise = 10, 200, 12
    elif spec.dtype == "float32":
        lo, amp, noise = -25, 20, 2
    else:
        lo, amp, noise = 200, 6000, 60
    out = np.empty((spec.count, h, w), dtype=spec.dtype)
    xx = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    rows = 1024  # fill in strips so the large profile does not need float copies of the whole band
    for b in range(spec.count):
        for r0 in range(0, h, rows):
            yy = np.linspace(r0 / h, min(h, r0 + rows) / h, min(rows, h - r0), endpoint=False, dtype=np.float32)[:, None]
            smooth = 0.45 * xx + 0.35 * yy + 0.2 * (np.sin(xx * 9.0 + phase + b) * np.cos(yy * 7.0 - phase)) * 0.5 + 0.1
            vals = lo + amp * smooth + rng.normal(0.0, noise, size=(yy.shape[0], w)).astype(np.float32)
            if spec.dtype != "float32":
                info = np.iinfo(spec.dtype)
                top = info.max - 1 if spec.nodata is None else min(info.max, spec.nodata) - 1
                vals = np.clip(vals, info.min, top)
            out[b, r0:r0 + yy.shape[0], :] = vals.astype(spec.dtype)
    return out


def _write_raster(path: Path, spec: RasterSpec) -> None:
    import rasterio
    from affine import Affine

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    profile = dict(driver="COG", width=spec.width, height=spec.height, count=spec.count, dtype=spec.dtype,
                   crs=spec.crs, transform=Affine.from_gdal(*spec.transform), compress="DEFLATE",
                   blocksize=COG_BLOCK, overview_resampling="average", num_threads="ALL_CPUS")
    if spec.nodata is not None:
        profile["nodata"] = spec.nodata
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(_pixels(spec))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(text.encode())
    os.replace(tmp, path)


def _read_disk(path: str, start: int, length: int) -> bytes:
    if length <= 0:
        return b""
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(length)


def _ensure_files(root: Path, planned: list[_PlannedProduct]) -> dict[str, int]:
    """Write missing files (each atomically) and return rel path -> size."""
    marker = root / ".complete.json"
    wanted = [pf for pp in planned for pf in pp.files]
    try:
        done = json.loads(marker.read_text())
    except FileNotFoundError:
        done = None
    except (OSError, ValueError):
        done = {}
    if done and done.get("version") == DATA_VERSION:
        sizes = done.get("sizes", {})
        if all(pf.rel in sizes and (root / pf.rel).is_file() for pf in wanted):
            return {pf.rel: int(sizes[pf.rel]) for pf in wanted}
    # Files are renamed into place only when complete, so existing ones are kept,
    # unless a marker from another data version says they may differ.
    stale = done is not None and done.get("version") != DATA_VERSION
    log.info("writing emulator archive files into %s", root)
    sizes = {}
    for pf in wanted:
        path = root / pf.rel
        if stale or not path.is_file():
            if pf.raster is not None:
                _write_raster(path, pf.raster)
            else:
                _write_text(path, pf.text or "")
        sizes[pf.rel] = path.stat().st_size
    tmp = marker.with_name(f".complete.json.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"version": DATA_VERSION, "sizes": sizes}, sort_keys=True))
    os.replace(tmp, marker)
    return sizes


def build_archive(data_dir: Path, profile: str = "small", bulk_products: int = 0) -> Archive:
    """Plan the archive, write its files into data_dir/<profile>/ once, return it."""
    if profile not in PROFILES:
        raise ValueError(f"unknown emulator profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if bulk_products < 0:
        raise ValueError("bulk_products must be >= 0")
    root = Path(data_dir) / profile
    root.mkdir(parents=True, exist_ok=True)
    planned = _plan_toc(profile) + _plan_lai() + _plan_s1() + _plan_worldcover()
    sizes = _ensure_files(root, planned)
    products = []
    for pp in planned:
        files = tuple(
            EmuFile(
                name=pf.rel.rsplit("/", 1)[1], platform_path=MTDA + pf.rel, download_path=pf.download_path,
                size=sizes[pf.rel], group=pf.group, asset_key=pf.asset_key, roles=pf.roles, title=pf.title,
                type=pf.type, category=pf.category, read=partial(_read_disk, str(root / pf.rel)),
                size_in_catalogue=pf.size_in_catalogue, extra=pf.extra,
            )
            for pf in pp.files
        )
        products.append(EmuProduct(files=files, **pp.product))
    products.extend(_bulk_products(bulk_products))
    return Archive(_collections(bulk_products), products)
