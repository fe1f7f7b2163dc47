"""The tree's nodes, product folders built from products, and the RAM budget of listings.

A folder is a DirNode whose children are loaded on first use by its loader; a
file is a FileNode. Product folders hold products without their catalogue
record (Product.record is "" here: the tree reads a record from the disk cache
or the catalogue when asked), so RAM holds what the folders show and no more.
Listings of products (a day's folder, a month's or a flat collection's) are
weighed when loaded; beyond the budget the least recently used ones are
dropped from RAM, and their loader brings them back (from the disk cache while
it is fresh).

Must not: query catalogues, touch the disk cache, or know about FUSE.
"""
from __future__ import annotations

import ctypes
import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterable

from terrafs.catalogue import Product, ProductFile
from terrafs.text import shown

log = logging.getLogger(__name__)

# Estimated RAM of one file of a listing (FileNode, ProductFile and its strings, dict slot),
# measured with tracemalloc on S2 TOC listings, and of one product (its folder and Product).
FILE_BYTES = 900
PRODUCT_BYTES = 1200


@dataclass
class DirNode:
    mtime: float = 0.0
    children: dict[str, "Node"] | None = None  # None: not loaded yet (or dropped from RAM)
    loader: Callable[[], dict[str, "Node"]] | None = field(default=None, repr=False)
    product: Product | None = None  # set on product folders (for xattrs); its record is ""
    ttl: float = math.inf  # seconds a loaded listing is kept in memory
    expires: float = math.inf  # time.monotonic() deadline of the loaded listing
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # One child found without loading every child (a day below a month not listed yet):
    # (name, _) -> the node, or None when there is no such child; with its deadline.
    find: Callable[[str], "Node | None"] | None = field(default=None, repr=False)
    found: dict[str, tuple[float, "Node | None"]] = field(default_factory=dict, repr=False)
    weighed: bool = False  # a listing of products: counted against the RAM budget
    source: object = field(default=None, repr=False)  # where its products' records are (tree's)


@dataclass(frozen=True, slots=True)
class FileNode:
    file: ProductFile
    product: Product
    mtime: float


Node = DirNode | FileNode


def _ts(dt: datetime | None) -> float:
    return dt.timestamp() if dt is not None else 0.0


def product_folders(products: Iterable[Product], source: object = None) -> dict[str, Node]:
    """Product folders of one day; multi-resolution products share a folder.

    Where two products of one folder name the same file, the first by (title, id)
    keeps the name (stable whatever the catalogue's order) and a warning names both.
    Records are left out of the nodes; `source` tells the tree where to find them.
    """
    folders: dict[str, Node] = {}
    for p in sorted(products, key=lambda p: (p.title, p.id)):
        if p.record:
            p = Product(p.id, p.title, p.collection, p.datetime, p.folder, p.files, "")
        folder = folders.get(p.folder)
        if not isinstance(folder, DirNode):
            folder = DirNode(mtime=_ts(p.datetime), children={}, product=p, source=source)
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
        sub = DirNode(mtime=node.mtime, children={}, product=node.product, source=folder.source)
        folder.children[parts[0]] = sub
    _place_file(sub, parts[1:], node)


def weight(children: dict[str, Node]) -> int:
    """Estimated bytes of RAM a listing of product folders holds."""
    total, stack = 0, list(children.values())
    while stack:
        node = stack.pop()
        if isinstance(node, FileNode):
            total += FILE_BYTES
        else:
            total += PRODUCT_BYTES if node.product is not None else 200
            stack.extend((node.children or {}).values())
    return total


class MemoryBudget:
    """Loaded listings, least recently used first; beyond `limit` bytes the oldest are dropped
    (their loaders bring them back)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._lru: OrderedDict[int, tuple[DirNode, int]] = OrderedDict()
        self._lock = threading.Lock()

    def loaded(self, node: DirNode, children: dict[str, Node]) -> None:
        cost = weight(children)
        with self._lock:
            old = self._lru.pop(id(node), None)
            if old is not None:
                self.used -= old[1]
            self._lru[id(node)] = (node, cost)
            self.used += cost
            dropped = []
            while self.used > self.limit and len(self._lru) > 1:
                _, (victim, vcost) = self._lru.popitem(last=False)
                self.used -= vcost
                dropped.append(victim)
        for victim in dropped:
            if victim.loader is not None:
                victim.children = None  # readers holding the old dict keep it; the next one reloads

    def touched(self, node: DirNode) -> None:
        with self._lock:
            if id(node) in self._lru:
                self._lru.move_to_end(id(node))


_libc: object = None
_M_ARENA_MAX = -8  # glibc mallopt parameter
MALLOC_ARENAS = 2  # FUSE's threads each parse listings: one heap each would keep RAM many times over


def _glibc():
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL("libc.so.6")
            _libc = lib if hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt") else False
        except OSError:
            _libc = False
    return _libc


def limit_malloc_arenas() -> None:
    """At most MALLOC_ARENAS malloc heaps for the process (glibc; elsewhere nothing): call before
    the threads start."""
    lib = _glibc()
    if lib:
        lib.mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def give_back_memory() -> None:
    """Heap pages freed by a large listing back to the OS (glibc's malloc_trim; elsewhere nothing)."""
    lib = _glibc()
    if lib:
        lib.malloc_trim(0)
