"""Values that travel from the catalogue backends to the tree.

Backends parse service JSON into these once, at the edge; nothing above the
catalogue package sees STAC or OpenSearch JSON.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Collection:
    id: str  # folder name: the STAC id, or the last part of the OpenSearch URN
    remote_id: str  # what the service calls it: STAC id or full URN
    title: str = ""
    start: datetime | None = None  # temporal extent, UTC-aware
    end: datetime | None = None  # None: open (until now)


@dataclass(frozen=True, slots=True)  # many thousands in RAM: no __dict__ each
class ProductFile:
    relpath: str  # path below the product folder: "x.tif" or "10M/x.tif"; made safe
    href: str  # http(s) download URL
    size: int | None = None  # bytes, from file:size or the link's length
    local_path: str | None = None  # platform path "/data/MTDA/...", without file://
    type: str | None = None
    role: str | None = None  # OpenSearch link group or first STAC role
    title: str | None = None


@dataclass(frozen=True, slots=True)
class Product:
    id: str  # STAC item id or OpenSearch feature id (URN)
    title: str
    collection: str  # Collection.id
    datetime: datetime  # UTC-aware acquisition time
    folder: str  # product folder name (platform dir; multi-resolution products share one)
    files: tuple[ProductFile, ...] = ()
    record: str = field(default="{}", compare=False, repr=False)  # catalogue record, JSON text


@dataclass(frozen=True)
class Filter:
    """A collection's selection from the config; every field optional."""

    bbox: tuple[float, float, float, float] | None = None  # west, south, east, north
    start: datetime | None = None
    end: datetime | None = None
    cloud_cover_max: float | None = None
    tile_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class CatalogueLimits:
    """Bounds on what one catalogue query may cost (config `catalogue_limits`).

    A query's pages are followed up to max_pages (a hostile or broken `next`
    chain otherwise holds an `ls` for hours); a response body larger than
    max_response_size is refused before it is parsed (memory).
    """

    max_pages: int = 1000  # 1000 pages of 1000 items: far beyond any month of any collection
    max_response_size: int = 64 << 20  # a page of 1000 Sentinel-2 items is about 5 MB
