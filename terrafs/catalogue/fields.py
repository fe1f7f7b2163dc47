"""The STAC API fields extension: whether a service has it, and what the tree asks for with it.

A listing needs an item's id, dates, the properties the filters read and its assets (files);
which days of a month have items needs ids and dates only. Everything else (geometry, links,
the other properties) is left out of the answer where the service conforms to the extension.
Servers that ignore the request send whole items, which parse the same.
Must not: parse items, or know about the tree.
"""
from __future__ import annotations

import logging

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
