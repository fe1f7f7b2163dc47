"""Paths of the mount mapped to catalogue queries, and back.

Two layouts share one mechanism:
- default:  <collection>/<YYYY>/<MM>/<DD>/<product>/<file>
- platform: the mount's root stands for /data, and every file sits at its
  platform path (MTDA/TERRASCOPE_Sentinel2/TOC_V2/2020/01/01/<product>/<file>).

A collection is placed at a *prefix* (a tuple of folder names) and is either
dated (date folders below the prefix: YYYY/MM/DD; in the platform layout also
YYYY/MM or YYYY, see dating.py) or flat (product folders straight below it, as
WorldCover's tiles). In the default layout the prefix is the
collection id; in the platform layout it is learnt from the catalogue's own
local paths, one sample product per collection, so new collections need no
release.

A month is the unit of querying: listing a month (or a day in it) costs one
paged catalogue query whose results fill every day of that month. Listings are
kept in memory and in the disk cache with lifetimes.

This module knows nothing of FUSE or HTTP; it raises NotFound, CatalogueError.
"""
from __future__ import annotations

import calendar
import logging
import math
import posixpath
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable

from terrafs.catalogue import Catalogue, Collection, Filter, Product, ProductFile
from terrafs.dating import date_folders, platform_date
from terrafs.errors import CatalogueError, TerrafsError
from terrafs.catalogue.parse import safe_name
from terrafs.listings import ListingStore
from terrafs.text import shown

log = logging.getLogger(__name__)

# No Earth-observation archive reaches further back (Landsat 1 flew in 1972).
EARLIEST = datetime(1950, 1, 1, tzinfo=timezone.utc)


class NotFound(TerrafsError):
    """No such path in the tree."""


@dataclass
class DirNode:
    mtime: float = 0.0
    children: dict[str, "Node"] | None = None  # None: not loaded yet
    loader: Callable[[], dict[str, "Node"]] | None = field(default=None, repr=False)
    product: Product | None = None  # set on product folders (for xattrs)
    ttl: float = math.inf  # seconds a loaded listing is kept in memory
    expires: float = math.inf  # time.monotonic() deadline of the loaded listing
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass(frozen=True)
class FileNode:
    file: ProductFile
    product: Product
    mtime: float


Node = DirNode | FileNode


@dataclass(frozen=True)
class Placement:
    collection: Collection
    prefix: tuple[str, ...]
    dated: bool
    depth: int = 3  # date folders below the prefix: 3 = YYYY/MM/DD, 2 = YYYY/MM, 1 = YYYY


def split_path(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise NotFound(path)
    return parts


def _ts(dt: datetime | None) -> float:
    return dt.timestamp() if dt is not None else 0.0


class Tree:
    def __init__(
        self,
        catalogue: Catalogue,
        *,
        selection: dict[str, Filter] | None,
        layout: str = "default",
        store: ListingStore | None = None,
        sampler: Catalogue | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ):
        self.catalogue = catalogue
        # Learning platform prefixes needs local paths, which OpenSearch only
        # gives on request (accessedFrom=MEP): a separate catalogue may do that.
        self.sampler = sampler or catalogue
        self.selection = selection  # collection id -> filter; None: every collection
        self.layout = layout
        self.store = store or ListingStore(None, "", 0, 0)
        self._now = now
        self._lock = threading.Lock()
        self._root: DirNode | None = None
        self._placements: list[Placement] | None = None
        self.mount_time = time.time()

    # ---- public API -------------------------------------------------
    def lookup(self, path: str) -> Node:
        node: Node = self._root_node()
        for name in split_path(path):
            if not isinstance(node, DirNode):
                raise NotFound(path)
            children = self._children(node)
            if name not in children:
                raise NotFound(path)
            node = children[name]
        return node

    def listdir(self, path: str) -> list[str]:
        node = self.lookup(path)
        if not isinstance(node, DirNode):
            raise NotFound(path)
        return sorted(self._children(node))

    def placements(self) -> list[Placement]:
        with self._lock:
            if self._placements is None:
                self._placements = self._learn_placements()
            return self._placements

    # ---- building ----------------------------------------------------
    def _children(self, node: DirNode) -> dict[str, Node]:
        if node.children is not None and time.monotonic() < node.expires:
            return node.children
        with node.lock:
            if node.children is not None and time.monotonic() < node.expires:
                return node.children
            assert node.loader is not None
            try:
                node.children = node.loader()
            except CatalogueError:
                if node.children is None:
                    raise
                log.warning("keeping an expired listing: the catalogue failed")
            node.expires = time.monotonic() + node.ttl
            return node.children

    def _root_node(self) -> DirNode:
        if self._root is None:
            with self._lock:
                if self._root is None:
                    self._root = DirNode(mtime=self.mount_time, loader=self._load_root, ttl=self.store.ttl or math.inf)
        return self._root

    def collections(self) -> list[Collection]:
        """Every collection of the catalogue (kept in the store like any listing)."""
        return self.store.query("collections", self.catalogue.collections, recent=False)

    def _selected_collections(self) -> list[Collection]:
        found = self.collections()
        if self.selection is None:
            return found
        by_id = {c.id: c for c in found}
        out = []
        for cid in self.selection:
            if cid in by_id:
                out.append(by_id[cid])
            else:
                log.warning("collection %s from the config is not in the catalogue", shown(cid))
        return out

    def _filter_for(self, collection: Collection) -> Filter | None:
        return None if self.selection is None else self.selection.get(collection.id)

    def _learn_placements(self) -> list[Placement]:
        collections = self._selected_collections()
        if self.layout != "platform":
            return [Placement(c, (c.id,), True) for c in collections]
        out = []
        for c in collections:
            placement = self._learn_platform_placement(c)
            if placement is not None:
                out.append(placement)
        return out

    def _learn_platform_placement(self, c: Collection) -> Placement | None:
        def learn():
            found = platform_placement(c, self.sampler.products(c, None, None, None, limit=1))
            return (list(found.prefix), found.depth if found.dated else 0) if found else ([], 0)

        prefix, depth = self.store.query(f"placement-depth:{c.remote_id}", learn, recent=False)
        if not prefix:
            log.warning("collection %s: the catalogue gives no usable platform path; left out of the platform "
                        "layout", shown(c.id))
            return None
        return Placement(c, tuple(prefix), depth > 0, depth or 3)

    def _load_root(self) -> dict[str, Node]:
        # Build the folder trie of every placement's prefix.
        with self._lock:
            self._placements = None  # collections may have come or gone
        root: dict[str, Node] = {}
        claimed: dict[tuple[str, ...], str] = {}
        # By id, so that which of two collections claiming one prefix is shown does not
        # depend on the catalogue's order.
        for pl in sorted(self.placements(), key=lambda p: p.collection.id):
            owner = claimed.setdefault(pl.prefix, pl.collection.id)
            if owner != pl.collection.id:
                log.warning("collections %s and %s both claim /data/%s; showing %s, leaving %s out",
                            shown(owner), shown(pl.collection.id), shown("/".join(pl.prefix)),
                            shown(owner), shown(pl.collection.id))
                continue
            level = root
            for i, name in enumerate(pl.prefix):
                last = i == len(pl.prefix) - 1
                existing = level.get(name)
                if last:
                    node = self._collection_node(pl)
                    if isinstance(existing, DirNode) and existing.children:
                        # another collection's prefix lies below this one: keep both
                        merged = dict(existing.children)
                        merged.update(self._children(node))
                        node = DirNode(mtime=node.mtime, children=merged)
                    level[name] = node
                    break
                if not isinstance(existing, DirNode):
                    existing = DirNode(mtime=self.mount_time, children={})
                    level[name] = existing
                level = self._children(existing)
        return root

    def _collection_node(self, pl: Placement) -> DirNode:
        mtime = _ts(pl.collection.start) or self.mount_time
        if pl.dated:
            return DirNode(mtime=mtime, loader=lambda: self._load_years(pl))
        return DirNode(mtime=mtime, loader=lambda: self._load_flat(pl), ttl=self._ttl(recent=True))

    def _extent(self, pl: Placement) -> tuple[datetime, datetime]:
        """The collection's time extent, within the filter's and within EARLIEST..next year:
        an extent from the catalogue saying year 1 or 9999 must not make thousands of folders."""
        flt = self._filter_for(pl.collection)
        start = max(pl.collection.start or EARLIEST, EARLIEST)
        end = min(pl.collection.end or self._now(), self._now() + timedelta(days=366))
        if flt is not None:
            if flt.start is not None and flt.start > start:
                start = flt.start
            if flt.end is not None and flt.end < end:
                end = flt.end
        return start, end

    def _load_years(self, pl: Placement) -> dict[str, Node]:
        start, end = self._extent(pl)
        return {
            f"{y:04d}": DirNode(
                mtime=_ts(datetime(y, 1, 1, tzinfo=timezone.utc)),
                loader=lambda y=y: self._load_months(pl, y) if pl.depth > 1 else self._load_span(pl, y),
            )
            for y in range(start.year, end.year + 1)
        }

    def _load_months(self, pl: Placement, year: int) -> dict[str, Node]:
        start, end = self._extent(pl)
        out: dict[str, Node] = {}
        for m in range(1, 13):
            first = datetime(year, m, 1, tzinfo=timezone.utc)
            last = first + timedelta(days=calendar.monthrange(year, m)[1]) - timedelta(microseconds=1)
            if last < start or first > end:
                continue
            load = self._load_days if pl.depth > 2 else self._load_span
            out[f"{m:02d}"] = DirNode(mtime=_ts(first), loader=lambda m=m, load=load: load(pl, year, m),
                                      ttl=self._ttl(recent=self._is_recent(last)))
        return out

    def _date_of(self, pl: Placement, p: Product) -> tuple[int, int, int]:
        """The date folders that hold `p`: its platform path's in the platform layout."""
        found = self.layout == "platform" and platform_date(pl.depth, p.folder,
                                                            (f.local_path or f.href for f in p.files))
        d = p.datetime.astimezone(timezone.utc)
        return found or (d.year, d.month, d.day)

    def _load_span(self, pl: Placement, year: int, month: int | None = None) -> dict[str, Node]:
        """Product folders of a month (YYYY/MM platform paths) or a year (YYYY/YYYYMMDD)."""
        want = (year, month) if month else (year,)
        products = self._span_products(pl, year, month)
        return product_folders(p for p in products if self._date_of(pl, p)[: len(want)] == want)

    def _load_days(self, pl: Placement, year: int, month: int) -> dict[str, Node]:
        products = self._span_products(pl, year, month)
        by_day: dict[str, list[Product]] = {}
        for p in products:
            y, m, d = self._date_of(pl, p)
            if (y, m) != (year, month):
                continue  # the service may return products outside the range (facts §1.2)
            by_day.setdefault(f"{d:02d}", []).append(p)
        return {
            day: DirNode(
                mtime=_ts(datetime(year, month, int(day), tzinfo=timezone.utc)),
                children=product_folders(prods),
            )
            for day, prods in sorted(by_day.items())
        }

    def _load_flat(self, pl: Placement) -> dict[str, Node]:
        flt = self._filter_for(pl.collection)
        start, end = self._extent(pl)
        products = self.store.query(
            f"flat:{pl.collection.remote_id}:{flt!r}",
            lambda: self.catalogue.products(pl.collection, start, end, flt),
            recent=True,
        )
        return product_folders(products)

    def _span_products(self, pl: Placement, year: int, month: int | None) -> list[Product]:
        """Products of a month, or of a whole year when month is None (one paged query)."""
        first = datetime(year, month or 1, 1, tzinfo=timezone.utc)
        days = calendar.monthrange(year, month)[1] if month else 365 + calendar.isleap(year)
        last = first + timedelta(days=days) - timedelta(microseconds=1)
        start, end = self._extent(pl)
        q_start, q_end = max(first, start), min(last, end)
        flt = self._filter_for(pl.collection)
        span = f"{year:04d}-{month:02d}" if month else f"{year:04d}"
        return self.store.query(
            f"month:{pl.collection.remote_id}:{span}:{flt!r}",
            lambda: self.catalogue.products(pl.collection, q_start, q_end, flt),
            recent=self._is_recent(last),
        )

    def _is_recent(self, last: datetime) -> bool:
        # The archive still fills the last few days (late products, reprocessing).
        return last > self._now() - timedelta(days=3)

    def _ttl(self, recent: bool) -> float:
        ttl = self.store.recent_ttl if recent else self.store.ttl
        return ttl if ttl > 0 else math.inf


def product_folders(products: Iterable[Product]) -> dict[str, Node]:
    """Product folders of one day; multi-resolution products share a folder.

    Where two products of one folder name the same file, the first by (title, id)
    keeps the name (stable whatever the catalogue's order) and a warning names both.
    """
    folders: dict[str, Node] = {}
    for p in sorted(products, key=lambda p: (p.title, p.id)):
        folder = folders.get(p.folder)
        if not isinstance(folder, DirNode):
            folder = DirNode(mtime=_ts(p.datetime), children={}, product=p)
            folders[p.folder] = folder
        for f in p.files:
            _place_file(folder, f.relpath.split("/"), FileNode(f, p, _ts(p.datetime)))
    return folders


def _place_file(folder: DirNode, parts: list[str], node: FileNode) -> None:
    assert folder.children is not None
    if len(parts) == 1:
        existing = folder.children.get(parts[0])
        if existing is not None:
            first = existing.product.id if isinstance(existing, FileNode) else "a folder"
            log.warning("products %s and %s both have a file %s in one folder; showing the first's",
                        shown(first), shown(node.product.id), shown(parts[0]))
            return
        folder.children[parts[0]] = node
        return
    sub = folder.children.get(parts[0])
    if not isinstance(sub, DirNode):
        if sub is not None:
            log.warning("product %s: a file and a folder both named %s; keeping the file",
                        shown(node.product.id), shown(parts[0]))
            return
        sub = DirNode(mtime=node.mtime, children={}, product=node.product)
        folder.children[parts[0]] = sub
    _place_file(sub, parts[1:], node)


def platform_placement(c: Collection, sample: list[Product]) -> Placement | None:
    """Where a collection's files live below /data, from one sample product."""
    for p in sample:
        for f in p.files:
            if not f.local_path or not f.local_path.startswith("/data/"):
                continue
            local = posixpath.normpath(f.local_path)
            tail = "/" + p.folder + "/" + f.relpath
            if not local.endswith(tail):
                continue
            container, depth = date_folders(local[: -len(tail)], p.folder)
            prefix = tuple(split_path(container[len("/data"):]))
            if not prefix or any(safe_name(part) != part for part in prefix):
                return None  # a name we would not show (control or bidi characters, not NFC)
            return Placement(c, prefix, depth > 0, depth or 3)
    return None
