"""The emulator's archive: collections, products and file bytes.

Contract shared by the catalogue side (stac/, opensearch/) and the server
side (app.py, download.py). data.py builds an Archive (synthetic, deterministic).
A collection may be generated on demand (a GeneratedCollection, e.g. daily.py's
archive-size TOC): the catalogues then ask for a time window (products_between)
or one product, and never walk all of it unless asked to.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Callable, Iterable, Protocol

_RESOLUTION_DIR = re.compile(r"^\d+M$")


@dataclass(frozen=True)
class EmuFile:
    name: str  # base name, e.g. "S2A_..._TOC-B02_10M_V210.tif"
    platform_path: str  # "/data/MTDA/TERRASCOPE_Sentinel2/TOC_V2/2020/01/01/<prod>/<name>"
    download_path: str  # below /download/: "Sentinel2/TOC_V2/2020/01/01/<prod>/<name>"
    size: int
    group: str  # OpenSearch link group: data | related | previews | alternates
    asset_key: str  # STAC asset key (band name, or the file name in the older item form)
    roles: tuple[str, ...]  # STAC roles: data, data-mask, cloud, thumbnail, metadata
    title: str
    type: str  # media type
    category: str | None = None  # OpenSearch category: QUICKLOOK, QUALITY, CLOUD
    # Bytes of [start, start+length); either from a file on disk or generated.
    read: Callable[[int, int], bytes] = field(compare=False, repr=False, default=None)  # type: ignore[assignment]
    # Added by the catalogue side (optional): False = the catalogues give no
    # length / file:size for this file, so clients must learn it with HEAD.
    size_in_catalogue: bool = True
    # Catalogue-only details (STAC title, data_type, proj:shape, proj:transform, gsd...).
    extra: dict = field(default_factory=dict, compare=False, repr=False)
    # How a raster is laid out (sentinel2, cog, tiled, striped), for benchmarks; None: not a raster.
    layout: str | None = None


@dataclass(frozen=True)
class EmuProduct:
    id: str  # STAC item id == product title, e.g. "S2A_20200101T105431_31UFS_TOC_V210"
    title: str
    collection: str  # EmuCollection.stac_id
    datetime: datetime  # UTC-aware
    tile_id: str | None
    cloud_cover: float | None
    product_type: str
    bbox: tuple[float, float, float, float]  # lon/lat
    files: tuple[EmuFile, ...]
    published: datetime | None = None
    updated: datetime | None = None
    # The end of the acquisition when it spans time (S1 coherence: the second
    # acquisition); temporal filters match the whole span.
    end_datetime: datetime | None = None
    # Catalogue-only details (platform, orbits, EPSG code...), optional.
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def overlaps(self, start: datetime | None, end: datetime | None) -> bool:
        """Whether the acquisition (datetime to end_datetime) meets [start, end] (None: open)."""
        last = self.end_datetime or self.datetime
        return not (start is not None and last < start or end is not None and self.datetime > end)


@dataclass(frozen=True)
class EmuCollection:
    stac_id: str  # "terrascope-s2-toc-v2"
    urn: str  # "urn:eop:VITO:TERRASCOPE_S2_TOC_V2"
    title: str
    start: datetime
    end: datetime | None
    bbox: tuple[float, float, float, float]
    older_item_form: bool = False  # STAC items as in the older form (file-name keys, alternate.MEP, no file:size)
    in_stac: bool = True  # WorldCover is OpenSearch-only on the real platform


class GeneratedCollection(Protocol):
    """A collection whose products are made on demand (see daily.py)."""

    stac_id: str

    def products_between(self, start: datetime | None, end: datetime | None) -> list[EmuProduct]: ...

    def all_products(self) -> list[EmuProduct]: ...

    def product(self, product_id: str) -> EmuProduct | None: ...

    def file(self, download_path: str) -> EmuFile | None: ...


class Archive:
    """What the emulator serves. Products are sorted by (datetime, title)."""

    def __init__(self, collections: list[EmuCollection], products: list[EmuProduct],
                 generated: Iterable[GeneratedCollection] = ()):
        self.collections = list(collections)
        self.generated = {g.stac_id: g for g in generated}
        self._by_collection: dict[str, list[EmuProduct]] = {c.stac_id: [] for c in collections}
        self._files: dict[str, EmuFile] = {}
        for p in sorted(products, key=lambda p: (p.datetime, p.title)):
            self._by_collection[p.collection].append(p)
            for f in p.files:
                self._files[f.download_path] = f

    def collection(self, key: str) -> EmuCollection | None:
        """By STAC id or URN."""
        for c in self.collections:
            if key in (c.stac_id, c.urn):
                return c
        return None

    def products(self, collection_stac_id: str) -> list[EmuProduct]:
        """Every product of a collection (a generated one makes them all: prefer products_between)."""
        gen = self.generated.get(collection_stac_id)
        if gen is not None:
            return gen.all_products()
        return self._by_collection.get(collection_stac_id, [])

    def products_between(self, collection_stac_id: str, start: datetime | None,
                         end: datetime | None) -> list[EmuProduct]:
        """Products that may meet [start, end] (None: open); callers still filter with overlaps()."""
        gen = self.generated.get(collection_stac_id)
        if gen is not None:
            return gen.products_between(start, end)
        return self._by_collection.get(collection_stac_id, [])

    def product(self, collection_stac_id: str, product_id: str) -> EmuProduct | None:
        gen = self.generated.get(collection_stac_id)
        if gen is not None:
            return gen.product(product_id)
        return next((p for p in self._by_collection.get(collection_stac_id, []) if p.id == product_id), None)

    def file(self, download_path: str) -> EmuFile | None:
        """The file served at /download/<download_path>, or None."""
        found = self._files.get(download_path)
        if found is None:
            for gen in self.generated.values():
                found = gen.file(download_path)
                if found is not None:
                    break
        return found

    def replace_file(self, new: EmuFile) -> EmuFile:
        """Serve and list `new` in place of the file at its download path; returns the one replaced."""
        old = self._files[new.download_path]
        self._files[new.download_path] = new
        for products in self._by_collection.values():
            for i, p in enumerate(products):
                if any(f is old for f in p.files):
                    products[i] = replace(p, files=tuple(new if f is old else f for f in p.files))
        return old

    def all_files(self) -> list[EmuFile]:
        return list(self._files.values())

    def file_listing(self, base_url: str, collection: str | None = None) -> list[dict[str, Any]]:
        """Every served file with where it is: download URL, platform path and
        its path in terrafs's default layout (STAC and OpenSearch folder names).
        A generated collection is listed only when `collection` names it."""
        rows = []
        for c in self.collections:
            if collection is not None and collection not in (c.stac_id, c.urn):
                continue
            if c.stac_id in self.generated and collection is None:
                continue
            for p in self.products(c.stac_id):
                for f in p.files:
                    below = f"{p.datetime:%Y/%m/%d}/{product_relpath(f.platform_path)}"
                    rows.append({
                        "path": f.download_path, "size": f.size, "type": f.type, "name": f.name,
                        "url": f"{base_url}/download/{f.download_path}", "platform_path": f.platform_path,
                        "default_path": f"{c.stac_id}/{below}",
                        "default_path_opensearch": f"{c.urn.rsplit(':', 1)[-1]}/{below}",
                        "layout": f.layout, "collection": c.stac_id, "collection_urn": c.urn, "product": p.id,
                    })
        return rows


def product_relpath(platform_path: str) -> str:
    """"<product folder>/<file>" of a platform path, with a resolution folder kept
    ("<product folder>/10M/<file>"): how the default layout names a file."""
    parts = platform_path.split("/")
    if len(parts) >= 4 and _RESOLUTION_DIR.match(parts[-2]):
        return "/".join(parts[-3:])
    return "/".join(parts[-2:])
