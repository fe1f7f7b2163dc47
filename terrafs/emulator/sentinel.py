"""The emulator's core collections and their products: Sentinel-2 TOC and LAI, Sentinel-1
sigma0 and WorldCover (their datatakes, bands, raster sides and the Sentinel-2 product fields
that shapes.py and daily.py reuse).

It plans only (PlannedProduct, PlannedFile): it must not write files, serve HTTP, know about STAC
or OpenSearch JSON, or import anything from the client side of terrafs.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from terrafs.emulator.archive import EmuCollection
from terrafs.emulator.plan import (
    S2_TILE_SIZE_M,
    S2_TILES,
    UTC,
    PlannedProduct,
    RasterSpec,
    cloud_cover,
    lonlat_bounds,
    lonlat_raster,
    metadata_file,
    raster_file,
    seed,
    stamp_time,
    utm_raster,
)

# (platform, acquisition time, relative orbit, tiles, product version) per S2 datatake.
S2_DATATAKES = [
    ("S2A", "20200101T105431", 51, ("31UFS", "31UES", "31UFT"), "V210"),
    ("S2B", "20200102T104429", 8, ("31UFS", "31UES"), "V210"),
    ("S2A", "20200215T105021", 51, ("31UFS", "31UES", "31UFT"), "V210"),
    ("S2B", "20210630T104619", 8, ("31UFS", "31UFT"), "V220"),
    ("S2A", "20210701T103631", 8, ("31UES",), "V220"),
    # An older version of one acquisition, side by side with its V210 in one date folder.
    ("S2A", "20200215T105021", 51, ("31UFS",), "V200"),
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
# Reflectances are int16; CLOUDMASK exists from V220 on.
TOC_BANDS = (
    [(b, 10, "int16", "data", None, b, ("data",)) for b in ("B02", "B03", "B04", "B08")]
    + [(b, 20, "int16", "data", None, b, ("data",)) for b in ("B05", "B06", "B07", "B8A", "B11", "B12")]
    + [("B01", 60, "int16", "data", None, "B01", ("data",))]
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
RASTER_SIDE["bench"] = RASTER_SIDE["large"]
S2_WMS_LAYERS = {"TOC": "CGS_S2_RADIOMETRY", "NDVI": "CGS_S2_NDVI"}


def collections() -> list[EmuCollection]:
    return [
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


def s2_product_fields(platform: str, stamp: str, rel_orbit: int, tile: str, title: str, ptype: str,
                      collection: str, resolution: int | None = None, wms: str | None = None,
                      corner: tuple[int, float, float] | None = None) -> dict:
    """EmuProduct keywords of a Sentinel-2 product (tile geometry, orbits, MGRS); `corner`
    (EPSG, upper-left x, y) for a tile that S2_TILES does not have."""
    epsg, ulx, uly = corner or S2_TILES[tile]
    when = stamp_time(stamp)
    bbox = lonlat_bounds(epsg, ulx, uly - S2_TILE_SIZE_M, ulx + S2_TILE_SIZE_M, uly)
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
    if wms:
        extra["wms_layer"] = wms
    return dict(id=title, title=title, collection=collection, datetime=when, tile_id=tile,
                cloud_cover=cloud_cover(title), product_type=ptype, bbox=bbox,
                published=when + timedelta(days=2, hours=3), updated=when + timedelta(days=2, hours=3),
                extra=extra)


def plan_toc(profile: str) -> list[PlannedProduct]:
    urn = "urn:eop:VITO:TERRASCOPE_S2_TOC_V2"
    sides = RASTER_SIDE[profile]
    first = S2_DATATAKES[0]
    datatakes = S2_DATATAKES if profile == "small" else [(first[0], first[1], first[2], ("31UFS",), first[4])]
    out = []
    for platform, stamp, orbit, tiles, version in datatakes:
        for tile in tiles:
            out.append(toc_product(urn, sides, platform, stamp, orbit, tile, version))
    return out


def toc_product(urn: str, sides: dict, platform: str, stamp: str, orbit: int, tile: str,
                 version: str, corner: tuple[int, float, float] | None = None) -> PlannedProduct:
    stem = f"{platform}_{stamp}_{tile}"
    title = f"{stem}_TOC_{version}"
    when = stamp_time(stamp)
    rel_dir = f"TERRASCOPE_Sentinel2/TOC_V2/{when:%Y/%m/%d}/{title}"
    dl_dir = f"Sentinel2/TOC_V2/{when:%Y/%m/%d}/{title}"
    epsg, ulx, uly = corner or S2_TILES[tile]
    files = []
    for band, res, dtype, group, category, key, roles in TOC_BANDS:
        if band == "CLOUDMASK" and version < "V220":
            continue
        name = f"{stem}_TOC-{band}_{res}M_{version}.tif" if group == "data" else f"{stem}_{band}_{res}M_{version}.tif"
        nodata = 32767 if dtype in ("uint16", "int16") else None
        spec = utm_raster(epsg, ulx, uly, sides[res], 1, dtype, f"{rel_dir}/{name}", nodata)
        ftitle = f"TOC-{band}_{res}M" if group == "data" else f"{band}_{res}M"
        scale = 0.0001 if dtype == "int16" else 0.001 if group == "related" and dtype == "uint16" else 1.0
        # "sentinel2": a COG in 256 x 256 deflate tiles (10980 x 10980 for 10 m bands in the large profile).
        files.append(raster_file(rel_dir, dl_dir, name, spec, group=group, key=key, roles=roles, title=ftitle,
                                 category=category, gsd=float(res), scale=scale, layout="sentinel2"))
    ql = f"{stem}_TOC_QUICKLOOK_{version}.tif"
    spec = utm_raster(epsg, ulx, uly, sides["ql"], 3, "uint8", f"{rel_dir}/{ql}")
    files.append(raster_file(rel_dir, dl_dir, ql, spec, group="previews", key="QUICKLOOK", roles=("thumbnail",),
                             title="QUICKLOOK", category="QUICKLOOK"))
    files.append(metadata_file(rel_dir, dl_dir, f"{title}.xml", title, urn, when))
    prod = s2_product_fields(platform, stamp, orbit, tile, title, "TOC", "terrascope-s2-toc-v2",
                             wms=S2_WMS_LAYERS["TOC"], corner=corner)
    return PlannedProduct(prod, files)


def plan_lai() -> list[PlannedProduct]:
    """LAI: the 10 m and 20 m products share one folder, each in its resolution
    sub-folder, with a scene classification and a quicklook of the same name in both."""
    urn = "urn:eop:VITO:TERRASCOPE_S2_LAI_V2"
    out = []
    for platform, stamp, orbit, tiles, _ in LAI_DATATAKES:
        for tile in tiles:
            stem = f"{platform}_{stamp}_{tile}"
            folder = f"{stem}_LAI_V200"
            when = stamp_time(stamp)
            epsg, ulx, uly = S2_TILES[tile]
            for res, side in ((10, 512), (20, 256)):
                title = f"{stem}_LAI_{res}M_V200"
                rel_dir = f"TERRASCOPE_Sentinel2/LAI_V2/{when:%Y/%m/%d}/{folder}/{res}M"
                dl_dir = f"Sentinel2/LAI_V2/{when:%Y/%m/%d}/{folder}/{res}M"
                name, scl, ql = f"{title}.tif", f"{stem}_SCENECLASSIFICATION_20M_V200.tif", f"{stem}_LAI_QUICKLOOK_V200.tif"
                spec = utm_raster(epsg, ulx, uly, side, 1, "uint16", f"{rel_dir}/{name}", 65535)
                scl_spec = utm_raster(epsg, ulx, uly, 128, 1, "uint8", f"{rel_dir}/{scl}")
                ql_spec = utm_raster(epsg, ulx, uly, 64, 3, "uint8", f"{rel_dir}/{ql}")
                files = [
                    # Older STAC item form: asset keys are the file names.
                    raster_file(rel_dir, dl_dir, name, spec, group="data", key=name, roles=("data",),
                                title=f"LAI_{res}M", gsd=float(res), stac_title="LAI"),
                    raster_file(rel_dir, dl_dir, scl, scl_spec, group="related", key=scl, roles=("data",),
                                title="SCENECLASSIFICATION_20M", category="QUALITY", gsd=20.0, stac_title="SCL"),
                    raster_file(rel_dir, dl_dir, ql, ql_spec, group="previews", key=ql, roles=("thumbnail",),
                                title="QUICKLOOK", category="QUICKLOOK", stac_title="QUICKLOOK"),
                    # No length anywhere in the catalogue: clients must HEAD it.
                    metadata_file(rel_dir, dl_dir, f"{title}.xml", title, urn, when, asset_key=f"{title}.xml",
                                  size_in_catalogue=False),
                ]
                prod = s2_product_fields(platform, stamp, orbit, tile, title, "LAI", "terrascope-s2-lai-v2", res)
                out.append(PlannedProduct(prod, files))
    return out


def plan_s1() -> list[PlannedProduct]:
    urn = "urn:eop:VITO:CGS_S1_GRD_SIGMA0_L1"
    epsg, ulx, uly, width_m = 32631, 450000.0, 5720000.0, 250000.0
    bbox = lonlat_bounds(epsg, ulx, uly - width_m, ulx + width_m, uly)
    out = []
    for platform, stamp, direction, orbit, code in S1_PRODUCTS:
        when = stamp_time(stamp)
        title = f"{platform}_IW_GRDH_SIGMA0_DV_{stamp}_{direction}_{orbit}_{code}_V110"
        rel_dir = f"CGS_S1/CGS_S1_GRD_SIGMA0_L1/{when:%Y/%m/%d}/{title}"
        dl_dir = f"CGS_S1_GRD_SIGMA0_L1/{when:%Y/%m/%d}/{title}"
        files = []
        for band, side in (("VV", 256), ("VH", 256), ("angle", 128)):
            name = f"{title}_{band}.tif"
            res = width_m / side
            spec = RasterSpec(side, side, 1, "float32", f"EPSG:{epsg}", (ulx, res, 0.0, uly, 0.0, -res),
                              seed(f"{rel_dir}/{name}"))
            # angle is a data link too (OpenSearch), as VV and VH.
            files.append(raster_file(rel_dir, dl_dir, name, spec, group="data", key=band, roles=("data",),
                                     title=band, gsd=10.0))
        files.append(metadata_file(rel_dir, dl_dir, f"{title}.xml", title, urn, when))
        extra = {"platform": platform, "platform_short": "Sentinel-1", "constellation": "sentinel-1",
                 "instrument": "c-sar", "epsg": epsg, "relative_orbit": orbit,
                 "absolute_orbit": 30000 + (when - datetime(2017, 1, 1, tzinfo=UTC)).days * 15 + orbit,
                 "orbit_direction": direction, "product_version": "V110",
                 "proj_bbox": [ulx, uly - width_m, ulx + width_m, uly], "gsd": 10,
                 "acquisition": {"operationalMode": "IW", "polarisationMode": "D", "polarisationChannels": "VV, VH"}}
        prod = dict(id=title, title=title, collection="terrascope-s1-grd-sigma0-v1", datetime=when, tile_id=None,
                    cloud_cover=None, product_type="SIGMA0", bbox=bbox, published=when + timedelta(hours=6),
                    updated=when + timedelta(hours=6), extra=extra)
        out.append(PlannedProduct(prod, files))
    return out


def plan_worldcover() -> list[PlannedProduct]:
    """WorldCover 2020: flat tile folders, a title without "_Map", no platform,
    dated at the end of its year, with an InputQuality file beside the map."""
    out = []
    when = datetime(2020, 12, 31, 23, 59, 59, tzinfo=UTC)
    for tile in WORLDCOVER_TILES:
        lat = int(tile[1:3]) * (1 if tile[0] == "N" else -1)
        lon = int(tile[4:7]) * (1 if tile[3] == "E" else -1)
        title = f"ESA_WorldCover_10m_2020_v100_{tile}"
        rel_dir = f"WORLDCOVER/ESA_WORLDCOVER_10M_2020_V100/MAP/{title}_Map"
        name, quality = f"{title}_Map.tif", f"{title}_InputQuality.tif"
        spec = lonlat_raster(float(lon), float(lat + 3), 3.0, 512, "uint8", f"{rel_dir}/{name}", 0)
        q_spec = RasterSpec(64, 64, 3, "int16", "EPSG:4326", (float(lon), 3.0 / 64, 0.0, float(lat + 3), 0.0, -3.0 / 64),
                            seed(f"{rel_dir}/{quality}"))
        files = [raster_file(rel_dir, rel_dir, name, spec, group="data", key="ESA_WORLDCOVER_10M_MAP", roles=("data",),
                             title="ESA_WORLDCOVER_10M_MAP", gsd=10.0),
                 raster_file(rel_dir, rel_dir, quality, q_spec, group="related", key="ESA_WORLDCOVER_10M_INPUTQUALITY",
                             roles=("data",), title="ESA_WORLDCOVER_10M_INPUTQUALITY", category="QUALITY", gsd=60.0)]
        extra = {"epsg": 4326, "product_version": "V100", "gsd": 10,
                 "proj_bbox": [float(lon), float(lat), float(lon + 3), float(lat + 3)]}
        prod = dict(id=title, title=title, collection="esa-worldcover-10m-2020-v1", datetime=when, tile_id=tile,
                    cloud_cover=None, product_type="ESA_WORLDCOVER_10M",
                    bbox=(float(lon), float(lat), float(lon + 3), float(lat + 3)),
                    published=datetime(2021, 10, 20, tzinfo=UTC), updated=datetime(2021, 10, 20, tzinfo=UTC),
                    extra=extra)
        out.append(PlannedProduct(prod, files))
    return out
