"""The archive's unusual path shapes, planned for the emulator (facts:
terrascope-api.md sections 7 and 10; marked [I] where a detail is inferred).

- S2 NDVI V2: product "<stem>_NDVI_10M_V200" in folder "<stem>_NDVI_V200" with its 4 files.
- S1 coherence: the date folder is the second acquisition's date; the product's
  datetime is the first's, its end_datetime the second's.
- Sentinel-5P L3 daily: year/month folders only (no day folder).
- AgERA5: YYYY/YYYYMMDD/ with the files straight in the date folder (no product folder).
- CGLS FAPAR 300 m netCDF: YYYY/YYYYMMDD/ with several RT versions (each its own
  product) side by side in one date folder, no product folder.
- Copernicus DEM 30 m: <tile>/<tile>.tif, no dates at all.
Download URLs: Sentinel1/ and Sentinel5P/ drop the TERRASCOPE_ prefix [I]; the rest
are the platform path with /data/MTDA/ swapped for /download/.

Everything is small (tens of KiB): these collections exist to pin paths, not
to be read fast. Nothing here writes files or serves HTTP, and nothing is
imported from the client side of terrafs.
"""
from __future__ import annotations

import struct
from datetime import datetime, timedelta

from terrafs.emulator.archive import EmuCollection
from terrafs.emulator.plan import (
    NETCDF,
    S2_TILES,
    UTC,
    GridSpec,
    PlannedFile,
    PlannedProduct,
    RasterSpec,
    lonlat_raster,
    metadata_file,
    raster_file,
    seed,
    stamp_time,
    utm_raster,
)
from terrafs.emulator.sentinel import S2_WMS_LAYERS, s2_product_fields

WORLD = (-180.0, -90.0, 180.0, 90.0)
EUROPE = (-25.0, 30.0, 45.0, 72.0)
NDVI_PRODUCTS = [("S2A", "20200101T105431", 51, "31UFS"), ("S2A", "20200101T105431", 51, "31UES"),
                 ("S2B", "20200102T104429", 8, "31UFS")]
COHERENCE_PAIRS = [("20200103T172616", "20200109T172534"), ("20200115T172615", "20200121T172533")]
S5P_DAYS = ["20200101", "20200102", "20200201", "20210115"]
AGERA5_DAYS = ["20200101", "20200102", "20210615"]
AGERA5_VARIABLES = ("dewpoint-temperature", "precipitation-flux", "temperature-mean")
# (day, RT versions published for it): several versions share one date folder.
CGLS_DAYS = [("20200110", (0, 1, 2)), ("20200120", (0,)), ("20210110", (0, 6))]
DEM_TILES = [(50, 4), (51, 4), (50, 5)]


def collections() -> list[EmuCollection]:
    def coll(stac_id: str, urn: str, title: str, start: datetime, bbox=WORLD) -> EmuCollection:
        return EmuCollection(stac_id, urn, title, start, None, bbox)

    return [
        coll("terrascope-s2-ndvi-v2", "urn:eop:VITO:TERRASCOPE_S2_NDVI_V2", "Sentinel-2 NDVI V2",
             datetime(2015, 7, 6, tzinfo=UTC), (-180.0, -84.0, 180.0, 84.0)),
        coll("terrascope-s1-slc-coherence-v1", "urn:eop:VITO:TERRASCOPE_S1_SLC_COHERENCE_V1",
             "Sentinel-1 SLC coherence V1", datetime(2019, 1, 1, tzinfo=UTC), EUROPE),
        coll("terrascope-s5p-l3-co-td-v1", "urn:eop:VITO:TERRASCOPE_S5P_L3_CO_TD_V1",
             "Sentinel-5P L3 CO daily V1", datetime(2018, 7, 1, tzinfo=UTC)),
        coll("agera5-v1", "urn:eop:VITO:AGERA5_V1", "AgERA5 daily meteorology (emulated id)",
             datetime(2019, 1, 1, tzinfo=UTC)),
        coll("cgls-fapar300-v1-global", "urn:eop:VITO:CGLS_FAPAR300_V1_GLOBAL",
             "CGLS FAPAR 300 m V1 global, netCDF (emulated id)", datetime(2019, 1, 1, tzinfo=UTC)),
        coll("cop-dem-glo-30m-cog", "urn:eop:VITO:COP_DEM_GLO_30M_COG", "Copernicus DEM GLO-30 COG",
             datetime(2021, 4, 22, tzinfo=UTC)),
    ]


def plan_shapes() -> list[PlannedProduct]:
    return _ndvi() + _coherence() + _s5p() + _agera5() + _cgls() + _dem()


def _product(collection: str, title: str, when: datetime, ptype: str, bbox: tuple, files: list[PlannedFile],
             end: datetime | None = None, **extra) -> PlannedProduct:
    fields = dict(id=title, title=title, collection=collection, datetime=when, tile_id=extra.pop("tile", None),
                  cloud_cover=extra.pop("cloud", None), product_type=ptype, bbox=bbox,
                  published=(end or when) + timedelta(days=1), updated=(end or when) + timedelta(days=1),
                  end_datetime=end, extra=extra)
    return PlannedProduct(fields, files)


def _ndvi() -> list[PlannedProduct]:
    urn = "urn:eop:VITO:TERRASCOPE_S2_NDVI_V2"
    out = []
    for platform, stamp, orbit, tile in NDVI_PRODUCTS:
        stem = f"{platform}_{stamp}_{tile}"
        title, folder = f"{stem}_NDVI_10M_V200", f"{stem}_NDVI_V200"
        when = stamp_time(stamp)
        rel_dir = f"TERRASCOPE_Sentinel2/NDVI_V2/{when:%Y/%m/%d}/{folder}"
        dl_dir = f"Sentinel2/NDVI_V2/{when:%Y/%m/%d}/{folder}"
        epsg, ulx, uly = S2_TILES[tile]
        name, scl, ql = f"{title}.tif", f"{stem}_SCENECLASSIFICATION_20M_V200.tif", f"{stem}_NDVI_QUICKLOOK_V200.tif"
        files = [
            raster_file(rel_dir, dl_dir, name, utm_raster(epsg, ulx, uly, 128, 1, "uint8", f"{rel_dir}/{name}", 255),
                        group="data", key="NDVI", roles=("data",), title="NDVI_10M", gsd=10.0, scale=0.004,
                        offset=-0.08),
            raster_file(rel_dir, dl_dir, scl, utm_raster(epsg, ulx, uly, 64, 1, "uint8", f"{rel_dir}/{scl}"),
                        group="related", key="SCL", roles=("data-mask",), title="SCENECLASSIFICATION_20M",
                        category="QUALITY", gsd=20.0),
            raster_file(rel_dir, dl_dir, ql, utm_raster(epsg, ulx, uly, 64, 3, "uint8", f"{rel_dir}/{ql}"),
                        group="previews", key="QUICKLOOK", roles=("thumbnail",), title="QUICKLOOK",
                        category="QUICKLOOK"),
            metadata_file(rel_dir, dl_dir, f"{title}.xml", title, urn, when),
        ]
        prod = s2_product_fields(platform, stamp, orbit, tile, title, "NDVI", "terrascope-s2-ndvi-v2",
                                 wms=S2_WMS_LAYERS["NDVI"])
        out.append(PlannedProduct(prod, files))
    return out


def _coherence() -> list[PlannedProduct]:
    urn = "urn:eop:VITO:TERRASCOPE_S1_SLC_COHERENCE_V1"
    out = []
    for first, second in COHERENCE_PAIRS:
        t1, t2 = stamp_time(first), stamp_time(second)
        title = f"S1A_S1B_Coherence_{first}_{second}_ASC_161_V100"
        # The date folder is the second acquisition's.
        rel_dir = f"TERRASCOPE_Sentinel1/SLC_COHERENCE/{t2:%Y/%m/%d}/{title}"
        dl_dir = f"Sentinel1/SLC_COHERENCE/{t2:%Y/%m/%d}/{title}"
        files = [raster_file(rel_dir, dl_dir, f"{title}_{pol}.tif",
                             utm_raster(32631, 499980.0, 5700000.0, 96, 1, "uint8", f"{rel_dir}/{pol}", 0),
                             group="data", key=pol, roles=("data",), title=pol, gsd=20.0)
                 for pol in ("VV", "VH")]
        files.append(metadata_file(rel_dir, dl_dir, f"{title}.xml", title, urn, t1))
        out.append(_product("terrascope-s1-slc-coherence-v1", title, t1, "COHERENCE", (3.0, 50.5, 4.6, 51.5),
                            files, end=t2, platform="S1A", platform_short="Sentinel-1", instrument="c-sar",
                            epsg=32631, relative_orbit=161, orbit_direction="ASCENDING", product_version="V100"))
    return out


def _s5p() -> list[PlannedProduct]:
    out = []
    for day in S5P_DAYS:
        when = datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC)
        title = f"S5P_OFFL_L3_CO_TD_{day}_V100"
        # Year and month folders only: no day folder.
        rel_dir = f"TERRASCOPE_Sentinel5P/L3_CO_TD_V1/{when:%Y/%m}/{title}"
        dl_dir = f"Sentinel5P/L3_CO_TD_V1/{when:%Y/%m}/{title}"
        files = [raster_file(rel_dir, dl_dir, f"S5P_CO_TD_{day}_{var}_V100.tif",
                             lonlat_raster(-180.0, 90.0, 360.0, 72, "float32", f"{rel_dir}/{var}"),
                             group=group, key=var, roles=("data",), title=var, gsd=5000.0)
                 for var, group in (("CO", "data"), ("WEIGHT", "related"))]
        out.append(_product("terrascope-s5p-l3-co-td-v1", title, when, "L3_CO_TD", WORLD, files,
                            end=when + timedelta(hours=23, minutes=59, seconds=59), platform="S5P",
                            platform_short="Sentinel-5P", instrument="tropomi", epsg=4326, product_version="V100"))
    return out


def _agera5() -> list[PlannedProduct]:
    out = []
    for day in AGERA5_DAYS:
        when = datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC)
        # Files straight in the date folder: the folder stands for the product.
        rel_dir = f"AgERA5/{when:%Y}/{day}"
        files = [raster_file(rel_dir, rel_dir, f"AgERA5_{var}_{day}.tif",
                             lonlat_raster(-10.0, 60.0, 20.0, 80, "float32", f"{rel_dir}/{var}"),
                             group="data", key=var, roles=("data",), title=var, gsd=10000.0)
                 for var in AGERA5_VARIABLES]
        out.append(_product("agera5-v1", f"AgERA5_{day}", when, "AgERA5", (-10.0, 40.0, 10.0, 60.0), files,
                            epsg=4326, product_version="V100"))
    return out


def _cgls() -> list[PlannedProduct]:
    out = []
    for day, versions in CGLS_DAYS:
        when = datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC)
        rel_dir = f"BIOPAR/FAPAR300_V1_GLOBAL/{when:%Y}/{day}"
        for rt in versions:
            title = f"c_gls_FAPAR300-RT{rt}_{day}0000_GLOBE_OLCI_V1.1.{rt + 1}"
            name = f"{title}.nc"
            grid = GridSpec("FAPAR", 60, 120, seed(f"{rel_dir}/{name}"), title)
            files = [PlannedFile(f"{rel_dir}/{name}", f"{rel_dir}/{name}", "data", "FAPAR", ("data",), "FAPAR",
                                 NETCDF, grid=grid, extra={"stac_title": "FAPAR"})]
            out.append(_product("cgls-fapar300-v1-global", title, when, f"FAPAR300-RT{rt}", WORLD, files,
                                platform_short="Sentinel-3", product_version=f"RT{rt}"))
    return out


def _dem() -> list[PlannedProduct]:
    out = []
    when = datetime(2021, 4, 22, tzinfo=UTC)
    for lat, lon in DEM_TILES:
        tile = f"Copernicus_DSM_COG_10_N{lat:02d}_00_E{lon:03d}_00_DEM"
        # No date folders at all.
        rel_dir = f"DEM/COPERNICUS-DEM-30/{tile}"
        spec = RasterSpec(90, 90, 1, "float32", "EPSG:4326", (float(lon), 1 / 90, 0.0, float(lat + 1), 0.0, -1 / 90),
                          seed(f"{rel_dir}/{tile}"))
        files = [raster_file(rel_dir, rel_dir, f"{tile}.tif", spec, group="data", key="DEM", roles=("data",),
                             title="DEM", gsd=30.0)]
        out.append(_product("cop-dem-glo-30m-cog", tile, when, "DEM", (float(lon), float(lat), lon + 1.0, lat + 1.0),
                            files, epsg=4326, product_version="V100", tile=f"N{lat:02d}E{lon:03d}"))
    return out


# ---------------------------------------------------------------------------------------------
# netCDF


def netcdf_bytes(grid: GridSpec) -> bytes:
    """A classic netCDF (CDF-1) file: dimensions lat and lon, coordinate
    variables, and one byte variable with noise and structure. Small enough
    to write by hand, so the emulator needs no netCDF library."""
    import numpy as np

    rng = np.random.default_rng(grid.seed)
    yy, xx = np.mgrid[0:grid.rows, 0:grid.cols]
    values = (100 + 80 * np.sin(xx / 9.0) * np.cos(yy / 7.0) + rng.normal(0, 10, yy.shape)).clip(0, 250)
    lat = np.linspace(90 - 90 / grid.rows, -90 + 90 / grid.rows, grid.rows).astype(">f4")
    lon = np.linspace(-180 + 180 / grid.cols, 180 - 180 / grid.cols, grid.cols).astype(">f4")
    data = values.astype(np.uint8).astype(">i1")
    variables = [("lat", (0,), 5, lat.tobytes(), {"units": "degrees_north"}),
                 ("lon", (1,), 5, lon.tobytes(), {"units": "degrees_east"}),
                 (grid.name, (0, 1), 1, data.tobytes(), {"long_name": grid.title})]
    return _cdf1([("lat", grid.rows), ("lon", grid.cols)], {"title": grid.title}, variables)


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _name(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">i", len(raw)) + _pad(raw)


def _attrs(attrs: dict[str, str]) -> bytes:
    if not attrs:
        return b"\0" * 8
    out = struct.pack(">ii", 12, len(attrs))  # NC_ATTRIBUTE
    for key, value in attrs.items():
        raw = value.encode()
        out += _name(key) + struct.pack(">ii", 2, len(raw)) + _pad(raw)  # NC_CHAR
    return out


def _cdf1(dims: list[tuple[str, int]], global_attrs: dict[str, str], variables: list) -> bytes:
    head = b"CDF\x01" + struct.pack(">i", 0)
    head += struct.pack(">ii", 10, len(dims)) + b"".join(_name(n) + struct.pack(">i", size) for n, size in dims)
    head += _attrs(global_attrs)
    # Variable entries hold their data's offset, which depends on the header's length:
    # build them with a zero offset first to learn it.
    def var_list(offsets: list[int]) -> bytes:
        out = struct.pack(">ii", 11, len(variables))
        for (name, dim_ids, nc_type, data, attrs), offset in zip(variables, offsets):
            out += _name(name) + struct.pack(">i", len(dim_ids)) + b"".join(struct.pack(">i", d) for d in dim_ids)
            out += _attrs(attrs) + struct.pack(">iii", nc_type, len(_pad(data)), offset)
        return out

    start = len(head) + len(var_list([0] * len(variables)))
    offsets, at = [], start
    for _, _, _, data, _ in variables:
        offsets.append(at)
        at += len(_pad(data))
    return head + var_list(offsets) + b"".join(_pad(v[3]) for v in variables)
