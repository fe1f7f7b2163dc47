"""The STAC API fields extension: whether a service has it, and what the tree asks for with it.

A listing needs an item's id, dates, the properties the filters read and its assets (files);
which days of a month have items needs ids and dates only. Everything else (geometry, links,
the other properties) is left out of the answer where the service conforms to the extension.
Servers that ignore the request send whole items, which parse the same.

Assets are most of an item (about 17 of an S2 TOC item's 19 kB), and about half of each asset is what the
tree never reads (raster and projection fields, descriptions). The extension has no wildcard
("assets.*.proj:transform"), so AssetTrim learns, from a few items of each answer, which members
each asset key carries, and later listings of that collection exclude the largest of those the
tree does not read, by name ("assets.B02.proj:transform"). Only excludes: an asset or member
never seen comes whole, so nothing the tree reads can be left out.
Must not: parse items into products, or know about the tree.
"""
from __future__ import annotations

import logging
import re
import threading

from terrafs.catalogue.fetch import JsonRequester
from terrafs.errors import CatalogueError
from terrafs.text import shown

log = logging.getLogger(__name__)

FIELDS_CONFORMANCE = "item-search#fields"
# What the tree reads of an item (parse_item, item_tile_id, the filters): with the fields
# extension, a listing asks for these only. INDEX_FIELDS: enough to tell which days have items.
_READ_PROPERTIES = ["properties." + k for k in (
    "datetime", "start_datetime", "title", "eo:cloud_cover", "tileId", "s2:mgrs_tile", "tile_id",
    "grid:code", "mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square")]
TREE_FIELDS = {"include": ["id", *_READ_PROPERTIES, "assets"], "exclude": ["geometry", "bbox", "links"]}
INDEX_FIELDS = {"include": ["id", *_READ_PROPERTIES], "exclude": ["assets", "geometry", "bbox", "links"]}


# What the tree reads of an asset (stac.py _asset_link); every other member may be left out.
ASSET_READ = frozenset({"href", "type", "title", "file:size", "length", "alternate", "roles"})
MAX_ASSET_EXCLUDES = 150  # field names in one request stay well below what servers take
SAMPLE_ITEMS = 3  # items of each answer looked at
_PLAIN = re.compile(r"[A-Za-z0-9_:-]{1,64}")  # names a field path can carry as they are (no dots, commas)


class AssetTrim:
    """Per collection: asset members seen that the tree does not read, largest first."""

    def __init__(self, limit: int = MAX_ASSET_EXCLUDES) -> None:
        self._limit = limit
        self._seen: dict[str, dict[str, int]] = {}  # collection -> "assets.K.M" -> bytes seen at most
        self._lock = threading.Lock()

    def learn(self, collection: str, raw: object) -> None:
        """Notes the asset members of one raw STAC item (anything else is skipped); the caller
        shows it SAMPLE_ITEMS items of each answer."""
        found: dict[str, int] = {}
        assets = raw.get("assets") if isinstance(raw, dict) else None
        for key, asset in assets.items() if isinstance(assets, dict) else ():
            if not isinstance(key, str) or not isinstance(asset, dict) or not _PLAIN.fullmatch(key):
                continue
            for member, value in asset.items():
                if isinstance(member, str) and member not in ASSET_READ and _PLAIN.fullmatch(member):
                    found[f"assets.{key}.{member}"] = len(repr(value))
        if found:
            with self._lock:
                seen = self._seen.setdefault(collection, {})
                for name, size in found.items():
                    seen[name] = max(seen.get(name, 0), size)
                if len(seen) > 4 * self._limit:  # a hostile answer's thousands of members: keep the largest
                    keep = sorted(seen, key=lambda n: (-seen[n], n))[: 2 * self._limit]
                    self._seen[collection] = {n: seen[n] for n in keep}

    def fields(self, collection: str, base: dict) -> dict:
        """`base` (include/exclude) with the collection's largest unread asset members excluded."""
        with self._lock:
            seen = dict(self._seen.get(collection) or {})
        if not seen:
            return base
        largest = sorted(seen, key=lambda n: (-seen[n], n))[: self._limit]
        return {"include": list(base["include"]), "exclude": [*base["exclude"], *sorted(largest)]}


def conforms_to_fields(request: JsonRequester, root: str) -> bool:
    """Whether the STAC API at `root` lists the fields extension among its conformance classes
    (the landing page's conformsTo, else /conformance); False when neither answers."""
    for url in (root, root + "conformance"):
        try:
            doc = request("GET", url)
        except CatalogueError as exc:
            log.info("STAC conformance unreadable at %s (%s); not using the fields extension", shown(url), exc)
            return False
        classes = doc.get("conformsTo") if isinstance(doc, dict) else None
        if isinstance(classes, list) and classes:
            found = any(isinstance(c, str) and c.endswith(FIELDS_CONFORMANCE) for c in classes)
            log.info("STAC %s the fields extension", "conforms to" if found else "does not conform to")
            return found
    return False
