"""The vocabulary in which the emulator's archive is planned: what a file to
write looks like (a raster spec, a text, or a netCDF grid), what a planned
product is, and small deterministic helpers (seeds, times, UTM grids, the
catalogue-only raster details).

sentinel.py (the core collections), shapes.py (the archive's unusual path
shapes) and layouts.py (raster layouts for benchmarks) plan with these;
writer.py writes what they plan. Nothing here writes files, serves HTTP or imports from the client side
of terrafs.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache

MTDA = "/data/MTDA/"
TIFF = "image/tiff"
NETCDF = "application/x-netcdf"
XML_INSPIRE = "application/vnd.iso.19139+xml"
UTC = timezone.utc
# Sentinel-2 tiles (MGRS) with their real upper-left UTM corner; 109.8 km wide.
S2_TILE_SIZE_M = 109800.0
S2_TILES = {
    "31UFS": (32631, 600000.0, 5700000.0),
    "31UES": (32631, 499980.0, 5700000.0),
    "31UFT": (32631, 600000.0, 5800020.0),
}


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
    # None: a COG in 256 x 256 deflate tiles with overviews (the archive's usual form);
    # else a layout of layouts.py ("cog", "tiled", "striped"), with its own options and pixels.
    layout: str | None = None


@dataclass(frozen=True)
class GridSpec:
    """A small classic netCDF file: one byte variable on a lat/lon grid."""

    name: str  # the variable
    rows: int
    cols: int
    seed: int
    title: str


@dataclass
class PlannedFile:
    rel: str  # path below the data directory == platform path without /data/MTDA/
    download_path: str
    group: str  # OpenSearch link group: data | related | previews | alternates
    asset_key: str  # STAC asset key
    roles: tuple[str, ...]
    title: str
    type: str
    category: str | None = None
    raster: RasterSpec | None = None
    grid: GridSpec | None = None
    text: str | None = None  # content of generated text files
    size_in_catalogue: bool = True
    extra: dict = field(default_factory=dict)
    layout: str | None = None  # for /_emulator/files?layout=


@dataclass
class PlannedProduct:
    product: dict  # EmuProduct keyword arguments except files
    files: list[PlannedFile]


def seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def cloud_cover(title: str) -> float:
    return round((seed("cc" + title) % 100000) / 1000.0, 3)


def stamp_time(stamp: str) -> datetime:
    """'20200101T105431' -> aware datetime with the usual .024 s fraction."""
    return datetime.strptime(stamp, "%Y%m%dT%H%M%S").replace(microsecond=24000, tzinfo=UTC)


@lru_cache(maxsize=4096)  # pure; the archive profile asks for the same tiles every few days
def lonlat_bounds(epsg: int, left: float, bottom: float, right: float, top: float) -> tuple[float, float, float, float]:
    from rasterio.warp import transform_bounds

    w, s, e, n = transform_bounds(f"EPSG:{epsg}", "EPSG:4326", left, bottom, right, top)
    return (round(w, 7), round(s, 7), round(e, 7), round(n, 7))


def utm_raster(epsg: int, ulx: float, uly: float, side: int, count: int, dtype: str, seed_text: str,
               nodata: float | None = None) -> RasterSpec:
    """A raster covering one Sentinel-2 tile at `side` pixels."""
    res = S2_TILE_SIZE_M / side
    return RasterSpec(side, side, count, dtype, f"EPSG:{epsg}", (ulx, res, 0.0, uly, 0.0, -res), seed(seed_text),
                      nodata)


def lonlat_raster(west: float, north: float, degrees: float, side: int, dtype: str, seed_text: str,
                  nodata: float | None = None) -> RasterSpec:
    """A square raster in EPSG:4326 of `degrees` per side."""
    res = degrees / side
    return RasterSpec(side, side, 1, dtype, "EPSG:4326", (west, res, 0.0, north, 0.0, -res), seed(seed_text),
                      nodata)


def raster_extra(spec: RasterSpec, stac_title: str, gsd: float | None = None, **more) -> dict:
    """Catalogue-only details of a raster (STAC title, data type, shape, transform, gsd...)."""
    ulx, resx, _, uly, _, resy = spec.transform
    out = {
        "stac_title": stac_title,
        "data_type": spec.dtype,
        "proj_shape": [spec.height, spec.width],
        "proj_transform": [resx, 0.0, ulx, 0.0, resy, uly, 0.0, 0.0, 1.0],
        "gsd": gsd if gsd is not None else resx,
        "nodata": spec.nodata,
        "epsg": int(spec.crs.split(":")[1]),
        "bands": [stac_title],
    }
    out.update(more)
    return out


def inspire_xml(title: str, collection_urn: str, when: datetime) -> str:
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


def metadata_file(rel_dir: str, dl_dir: str, name: str, title: str, urn: str, when: datetime, *,
                  asset_key: str = "metadata", size_in_catalogue: bool = True) -> PlannedFile:
    """A product's Inspire metadata xml (OpenSearch: alternates, "Inspire metadata")."""
    return PlannedFile(f"{rel_dir}/{name}", f"{dl_dir}/{name}", "alternates", asset_key, ("metadata",),
                       "Inspire metadata", XML_INSPIRE, text=inspire_xml(title, urn, when),
                       size_in_catalogue=size_in_catalogue, extra={"stac_title": "Inspire metadata"})


def raster_file(rel_dir: str, dl_dir: str, name: str, spec: RasterSpec, *, group: str, key: str,
                roles: tuple[str, ...], title: str, category: str | None = None, gsd: float | None = None,
                layout: str | None = None, **extra) -> PlannedFile:
    """A GeoTIFF of a product; `layout` names its raster layout for /_emulator/files."""
    return PlannedFile(f"{rel_dir}/{name}", f"{dl_dir}/{name}", group, key, roles, title, TIFF, category,
                       raster=spec, extra=raster_extra(spec, extra.pop("stac_title", key), gsd, **extra),
                       layout=layout or spec.layout)
