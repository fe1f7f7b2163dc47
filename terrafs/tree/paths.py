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

How date folders are asked for is tree/days.py's job; nodes and the RAM budget
are tree/nodes.py's. Listings are kept in memory (within the budget) and in the
disk cache with lifetimes; catalogue records are read back from there (or from
the catalogue) when a `user.terrafs.record` is asked for.

This module knows nothing of FUSE or HTTP; it raises NotFound, CatalogueError.
"""
from __future__ import annotations

import logging
import math
import posixpath
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Callable

from terrafs.catalogue import Catalogue, Collection, Filter, Product
from terrafs.catalogue.parse import safe_name
from terrafs.tree.dating import date_folders
from terrafs.errors import CatalogueError, TerrafsError
from terrafs.cache.listings import ListingStore
from terrafs.text import shown
from terrafs.tree.days import EARLIEST, DatedFolders, Placement, Source
from terrafs.tree.nodes import DirNode, FileNode, MemoryBudget, Node, _ts, product_folders

__all__ = ["DirNode", "FileNode", "Node", "NotFound", "Placement", "Tree", "platform_placement",
           "product_folders", "split_path"]
log = logging.getLogger(__name__)

DEFAULT_MEMORY = 64 << 20  # bytes of listings kept in RAM (config cache.listing_memory)


class NotFound(TerrafsError):
    """No such path in the tree."""


def split_path(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise NotFound(path)
    return parts


class Tree(DatedFolders):
    def __init__(
        self,
        catalogue: Catalogue,
        *,
        selection: dict[str, Filter] | None,
        layout: str = "default",
        store: ListingStore | None = None,
        sampler: Catalogue | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        memory: int = DEFAULT_MEMORY,
    ):
        super().__init__()
        self.catalogue = catalogue
        # Learning platform prefixes needs local paths, which OpenSearch only
        # gives on request (accessedFrom=MEP): a separate catalogue may do that.
        self.sampler = sampler or catalogue
        self.selection = selection  # collection id -> filter; None: every collection
        self.layout = layout
        self.store = store or ListingStore(None, "", 0, 0)
        self.budget = MemoryBudget(memory)
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
            child = self._child(node, name)
            if child is None:
                raise NotFound(path)
            node = child
        return node

    def listdir(self, path: str) -> list[str]:
        node = self.lookup(path)
        if not isinstance(node, DirNode):
            raise NotFound(path)
        return sorted(self._children(node))

    def entries(self, path: str) -> list[tuple[str, bool]]:
        """(name, is a folder) of each child, sorted: a directory listing that tells folders from
        files, so that a walk (find) need not look each file up."""
        node = self.lookup(path)
        if not isinstance(node, DirNode):
            raise NotFound(path)
        return sorted((name, isinstance(child, DirNode)) for name, child in self._children(node).items())

    def placements(self) -> list[Placement]:
        with self._lock:
            if self._placements is None:
                self._placements = self._learn_placements()
            return self._placements

    def record(self, path: str) -> str:
        """The catalogue record (JSON text) of the product of a product folder or file: from the
        disk cache while it holds it, else from the catalogue."""
        node = self.lookup(path)
        p = node.product
        if p is None:
            raise NotFound(path)
        if isinstance(node, FileNode):  # its folder knows where the records are
            node = self.lookup(path.rstrip("/").rsplit("/", 1)[0])
        source = node.source if isinstance(node, DirNode) else None
        if not isinstance(source, Source):
            return p.record or "{}"
        if getattr(self.catalogue, "trims_records", False):
            found = self.store.query(f"record:{source.collection.remote_id}:{p.id}",
                                     lambda: self.catalogue.record(source.collection, p.id) or "{}",
                                     recent=False)
            return found if isinstance(found, str) else "{}"
        return next((q.record for q in source.products() if q.id == p.id), "{}")

    # ---- building ----------------------------------------------------
    def _child(self, node: DirNode, name: str) -> Node | None:
        children = node.children
        if children is not None and time.monotonic() < node.expires:
            if node.weighed:
                self.budget.touched(node)
            return children.get(name)
        if node.find is not None:
            hit = node.found.get(name)
            if hit is not None and time.monotonic() < hit[0]:
                return hit[1]
            return node.find(name)
        return self._children(node).get(name)

    def _children(self, node: DirNode) -> dict[str, Node]:
        children = node.children
        if children is not None and time.monotonic() < node.expires:
            if node.weighed:
                self.budget.touched(node)
            return children
        with node.lock:
            children = node.children
            if children is not None and time.monotonic() < node.expires:
                return children
            assert node.loader is not None
            try:
                children = node.loader()
            except CatalogueError:
                if children is None:
                    raise
                log.warning("keeping an expired listing: the catalogue failed")
            node.children = children
            node.expires = time.monotonic() + node.ttl
        if node.weighed:
            self.budget.loaded(node, children)
        return children

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
            sample = self.sampler.products(c, None, None, None, limit=1)
            found = platform_placement(c, sample)
            if not found:
                return [], 0, False
            return list(found.prefix), found.depth if found.dated else 0, self.shifted(found, sample)

        prefix, depth, *shift = self.store.query(f"placement-depth:{c.remote_id}", learn, recent=False)
        if not prefix:
            log.warning("collection %s: the catalogue gives no usable platform path; left out of the platform "
                        "layout", shown(c.id))
            return None
        return Placement(c, tuple(prefix), depth > 0, depth or 3, bool(shift and shift[0]))

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
        node = DirNode(mtime=mtime, ttl=self._ttl(recent=True), weighed=True)
        node.loader = lambda: self._load_flat(pl)
        return node

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

    def _load_flat(self, pl: Placement) -> dict[str, Node]:
        flt = self._filter_for(pl.collection)
        start, end = self._extent(pl)
        key = f"flat:{pl.collection.remote_id}:{flt!r}"

        def products() -> list[Product]:
            return self.store.query(key, lambda: self.catalogue.products(pl.collection, start, end, flt),
                                    recent=True)
        return product_folders(products(), Source(pl.collection, products))

    def _is_recent(self, last: datetime) -> bool:
        # The archive still fills the last few days (late products, reprocessing).
        return last > self._now() - timedelta(days=3)

    def _ttl(self, recent: bool) -> float:
        ttl = self.store.recent_ttl if recent else self.store.ttl
        return ttl if ttl > 0 else math.inf


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
