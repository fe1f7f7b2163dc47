"""The archive profile's Sentinel-2 TOC collection at the real archive's size,
made on demand: about 100 products a day for 2020-01-01..2020-03-31 (about
9 000 products, 190 000 files), none of them written to disk.

Products are planned per day from a hash (same input, same products): each day
covers a fifth of a pool of 500 real MGRS tile ids (UTM zones 29-35, latitude
bands T, U, V: a tile is seen every 5 days), minus about 4 % (clouds, gaps),
half by S2A, half by S2B. Each product has the TOC V220 files of the small
profile (21 STAC assets with the WMS preview, items of about 19 kB).

File bytes come from six template GeoTIFFs (one per band kind: 10, 20 and 60 m
reflectance, the 20 m masks, the 60 m auxiliary bands, the quicklook) written
once into the data directory. A file serves its template with the georeferencing
patched in place (the UTM zone's EPSG code, the tile's upper-left corner), so
every file's size is its template's size, equal in the catalogue and on the
download service, and GDAL reads each tile where it is. The Inspire xml is
generated text. Days are kept in a small LRU cache.

DailyCollection answers Archive's questions for its collection (products of a
time window, a product by id, a file by download path). This module plans and
serves bytes; it knows nothing of STAC or OpenSearch JSON and imports nothing
from the client side of terrafs.
"""
from __future__ import annotations

import hashlib
import re
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import partial
from pathlib import Path

from terrafs.emulator.archive import EmuFile, EmuProduct
from terrafs.emulator.plan import MTDA, UTC, RasterSpec, seed, utm_raster
from terrafs.emulator.sentinel import RASTER_SIDE, S2_WMS_LAYERS, TOC_BANDS, toc_product
from terrafs.emulator.writer import write_raster

STAC_ID = "terrascope-s2-toc-v2"
URN = "urn:eop:VITO:TERRASCOPE_S2_TOC_V2"
FIRST_DAY = date(2020, 1, 1)
LAST_DAY = date(2020, 3, 31)
POOL_SIZE = 500
REVISIT_DAYS = 5
VERSION = "V220"
TEMPLATE_VERSION = 1  # bump when the templates' content changes
CACHED_DAYS = 92  # every day of the profile: about 400 MB once all are made
# The template's own georeferencing (31UFS), patched per tile when served.
_TEMPLATE_TILE = ("31UFS", 32631, 600000.0, 5700000.0)
_COLUMNS = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")
_ROWS = "ABCDEFGHJKLMNPQRSTUV"
_BANDS = "CDEFGHJKLMNPQRSTUVWX"
_METRES_PER_DEGREE = 110946.0
_DAY_PATH = re.compile(r"^Sentinel2/TOC_V2/(\d{4})/(\d{2})/(\d{2})/")
_TITLE_DAY = re.compile(r"^S2[AB]_(\d{8})T\d{6}_")


def tile_corner(tile: str) -> tuple[int, float, float]:
    """(EPSG, upper-left x, upper-left y) of an MGRS tile id such as "31UFS"."""
    zone, band, col, row = int(tile[:2]), tile[2], tile[3], tile[4]
    ulx = (_COLUMNS[(zone - 1) % 3].index(col) + 1) * 100000.0
    row_index = (_ROWS.index(row) - (5 if zone % 2 == 0 else 0)) % 20
    band_middle = (-80 + 8 * _BANDS.index(band) + 4) * _METRES_PER_DEGREE
    south = min((row_index * 100000.0 + k * 2000000.0 for k in range(5)), key=lambda n: abs(n - band_middle))
    return 32600 + zone, ulx, south + 100000.0


def tile_pool() -> list[str]:
    """POOL_SIZE real MGRS ids over Europe, in a fixed order."""
    tiles = []
    for zone in range(29, 36):
        for band in "TUV":
            lo = (-80 + 8 * _BANDS.index(band)) * _METRES_PER_DEGREE
            for col in _COLUMNS[(zone - 1) % 3][1:7]:
                for row in _ROWS:
                    tile = f"{zone}{band}{col}{row}"
                    south = tile_corner(tile)[2] - 100000.0
                    if lo <= south < lo + 8 * _METRES_PER_DEGREE:
                        tiles.append(tile)
    tiles.sort(key=lambda t: seed("pool" + t))
    return sorted(tiles[:POOL_SIZE])


# --------------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class Template:
    """A template GeoTIFF in memory and where its georeferencing sits."""

    data: bytes
    tiepoint_at: tuple[int, ...]  # offsets of the 6-double ModelTiepoint (0,0,0,ulx,uly,0)
    epsg_at: tuple[int, ...]  # offsets of the ProjectedCSTypeGeoKey value (uint16)
    zone_text_at: tuple[int, ...]  # offsets of "zone 31N" in citations

    def read(self, epsg: int, ulx: float, uly: float, start: int, length: int) -> bytes:
        """Bytes [start, start+length) of this template placed at (epsg, ulx, uly)."""
        end = min(len(self.data), start + max(0, length))
        if start >= end:
            return b""
        patches = [(at, struct.pack("<6d", 0.0, 0.0, 0.0, ulx, uly, 0.0)) for at in self.tiepoint_at]
        patches += [(at, struct.pack("<H", epsg)) for at in self.epsg_at]
        patches += [(at, f"zone {epsg - 32600:02d}N".encode()) for at in self.zone_text_at]
        chunk = bytearray(self.data[start:end])
        for at, value in patches:
            lo, hi = max(at, start), min(at + len(value), end)
            if lo < hi:
                chunk[lo - start:hi - start] = value[lo - at:hi - at]
        return bytes(chunk)


def _offsets(data: bytes, needle: bytes) -> tuple[int, ...]:
    out, at = [], data.find(needle)
    while at >= 0:
        out.append(at)
        at = data.find(needle, at + 1)
    return tuple(out)


def load_templates(folder: Path, specs: dict[str, RasterSpec]) -> dict[str, Template]:
    """The templates for `specs` (kind -> RasterSpec at _TEMPLATE_TILE), written into
    `folder` once, read into memory, their georeferencing located."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    _, epsg, ulx, uly = _TEMPLATE_TILE
    for kind, spec in specs.items():
        key = hashlib.sha256(repr((TEMPLATE_VERSION, spec)).encode()).hexdigest()[:16]
        path = folder / f"{kind}-{key}.tif"
        if not path.is_file():
            write_raster(path, spec)
        data = path.read_bytes()
        template = Template(data, _offsets(data, struct.pack("<6d", 0.0, 0.0, 0.0, ulx, uly, 0.0)),
                            tuple(at + 6 for at in _offsets(data, struct.pack("<4H", 3072, 0, 1, epsg))),
                            _offsets(data, b"zone 31N"))
        if len(template.tiepoint_at) != 1 or len(template.epsg_at) != 1:
            raise RuntimeError(f"template {path} has no single tiepoint and EPSG key to patch")
        out[kind] = template
    return out


# --------------------------------------------------------------------------------- products


def _text_read(data: bytes, start: int, length: int) -> bytes:
    return data[start:start + max(0, length)]


class DailyCollection:
    """The generated TOC collection: products by day, by id and by file path."""

    stac_id = STAC_ID

    def __init__(self, templates: Path, first: date = FIRST_DAY, last: date = LAST_DAY, cached_days: int = CACHED_DAYS):
        self.first, self.last = first, last
        self.pool = tile_pool()
        self._corners = {t: tile_corner(t) for t in self.pool}
        self._sides = RASTER_SIDE["small"]
        self._res_by_side = {side: res for res, side in self._sides.items() if res != "ql"}
        _, epsg, ulx, uly = _TEMPLATE_TILE
        specs = {}
        for band, res, dtype, _group, _cat, _key, _roles in TOC_BANDS:
            nodata = 32767 if dtype in ("uint16", "int16") else None
            specs.setdefault(_kind(band, res, dtype), utm_raster(epsg, ulx, uly, self._sides[res], 1, dtype,
                                                                 f"template-{band}", nodata))
        specs["ql"] = utm_raster(epsg, ulx, uly, self._sides["ql"], 3, "uint8", "template-ql")
        self.templates = load_templates(templates, specs)
        self._days: OrderedDict[date, tuple[list[EmuProduct], dict[str, EmuFile]]] = OrderedDict()
        self._cached_days = cached_days
        self._lock = threading.Lock()

    def _template_kind(self, spec: RasterSpec) -> str:
        if spec.count == 3:
            return "ql"
        return _kind("", self._res_by_side[spec.width], spec.dtype)

    # -- planning -------------------------------------------------------------
    def days(self) -> list[date]:
        return [self.first + timedelta(days=i) for i in range((self.last - self.first).days + 1)]

    def tiles_on(self, day: date) -> list[tuple[str, str]]:
        """[(platform, tile)] acquired on `day`."""
        ordinal = day.toordinal()
        tiles = [t for i, t in enumerate(self.pool) if i % REVISIT_DAYS == ordinal % REVISIT_DAYS
                 and seed(f"gap{t}{day}") % 25 != 0]
        return [("S2A" if seed(f"sat{t}{ordinal // REVISIT_DAYS}") % 2 == 0 else "S2B", t) for t in tiles]

    def _plan_day(self, day: date) -> tuple[list[EmuProduct], dict[str, EmuFile]]:
        products, files = [], {}
        for platform, tile in self.tiles_on(day):
            zone = int(tile[:2])
            # One datatake per platform and UTM zone: eastern zones are passed over earlier.
            start = datetime.combine(day, time(10, 0), tzinfo=UTC) + timedelta(
                minutes=(35 - zone) * 9 + (3 if platform == "S2B" else 0), seconds=seed(f"{platform}{day}") % 50)
            stamp = start.strftime("%Y%m%dT%H%M%S")
            orbit = 1 + (zone * 29 + (0 if platform == "S2A" else 71)) % 143
            corner = self._corners[tile]
            planned = toc_product(URN, self._sides, platform, stamp, orbit, tile, VERSION, corner=corner)
            efiles = []
            for pf in planned.files:
                if pf.raster is not None:
                    template = self.templates[self._template_kind(pf.raster)]
                    read = partial(template.read, corner[0], corner[1], corner[2])
                    size = len(template.data)
                else:
                    data = (pf.text or "").encode()
                    read, size = partial(_text_read, data), len(data)
                f = EmuFile(name=pf.rel.rsplit("/", 1)[1], platform_path=MTDA + pf.rel,
                            download_path=pf.download_path, size=size, group=pf.group, asset_key=pf.asset_key,
                            roles=pf.roles, title=pf.title, type=pf.type, category=pf.category, read=read,
                            size_in_catalogue=pf.size_in_catalogue, extra=pf.extra, layout=pf.layout)
                efiles.append(f)
                files[f.download_path] = f
            kwargs = dict(planned.product)
            kwargs["extra"] = dict(kwargs["extra"], wms_layer=S2_WMS_LAYERS["TOC"])
            products.append(EmuProduct(files=tuple(efiles), **kwargs))
        products.sort(key=lambda p: (p.datetime, p.title))
        return products, files

    def _day(self, day: date) -> tuple[list[EmuProduct], dict[str, EmuFile]]:
        with self._lock:
            hit = self._days.get(day)
            if hit is not None:
                self._days.move_to_end(day)
                return hit
        planned = self._plan_day(day)
        with self._lock:
            self._days[day] = planned
            while len(self._days) > self._cached_days:
                self._days.popitem(last=False)
        return planned

    # -- Archive's questions --------------------------------------------------
    def products_between(self, start: datetime | None, end: datetime | None) -> list[EmuProduct]:
        """Products whose acquisition meets [start, end] (None: open), oldest first."""
        lo = max(self.first, start.astimezone(UTC).date()) if start else self.first
        hi = min(self.last, end.astimezone(UTC).date()) if end else self.last
        out: list[EmuProduct] = []
        day = lo
        while day <= hi:
            out.extend(p for p in self._day(day)[0] if p.overlaps(start, end))
            day += timedelta(days=1)
        return out

    def all_products(self) -> list[EmuProduct]:
        return self.products_between(None, None)

    def product(self, product_id: str) -> EmuProduct | None:
        m = _TITLE_DAY.match(product_id)
        day = _date(m.group(1)[:4], m.group(1)[4:6], m.group(1)[6:]) if m else None
        if day is None or not self.first <= day <= self.last:
            return None
        return next((p for p in self._day(day)[0] if p.id == product_id), None)

    def file(self, download_path: str) -> EmuFile | None:
        m = _DAY_PATH.match(download_path)
        day = _date(*m.groups()) if m else None
        if day is None or not self.first <= day <= self.last:
            return None
        return self._day(day)[1].get(download_path)

    def count(self) -> int:
        return sum(len(self.tiles_on(d)) for d in self.days())


def _date(y: str, m: str, d: str) -> date | None:
    try:
        return date(int(y), int(m), int(d))
    except ValueError:
        return None


def _kind(band: str, res: int, dtype: str) -> str:
    return f"{res}m-{dtype}"


