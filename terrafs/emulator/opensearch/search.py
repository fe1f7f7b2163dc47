"""The OpenSearch endpoints: handle_opensearch() answers /products, /collections and
/description below /catalogue, and turns an OpenSearchError into the exception report.

It must not serve downloads or check authentication, or import anything from the client side
of terrafs.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from werkzeug.wrappers import Request, Response

from terrafs.emulator.archive import Archive, EmuProduct
from terrafs.emulator.common import bboxes_intersect, json_response
from terrafs.emulator.opensearch.documents import (
    GEOJSON,
    collection_feature,
    description,
    echo,
    envelope,
    product_feature,
)
from terrafs.emulator.opensearch.paging import link, paging_links, parse_page
from terrafs.emulator.opensearch.query import (
    COLLECTION_PARAMS,
    PRODUCT_PARAMS,
    OpenSearchError,
    accessed_from,
    area_param,
    check_params,
    instant_param,
    product_filter,
    sort_keys,
)

log = logging.getLogger(__name__)


def _products(request: Request, archive: Archive, base_url: str) -> Response:
    args = request.args
    check_params(args, PRODUCT_PARAMS)
    if not args.get("collection"):
        raise OpenSearchError("collection", "Missing mandatory parameter 'collection'")
    start, count = parse_page(args)
    mep = accessed_from(args)
    coll = archive.collection(args["collection"])
    keep = product_filter(args, coll) if coll else None
    window = (instant_param(args, "start", False), instant_param(args, "end", True))
    matched = [p for p in archive.products_between(coll.stac_id, *window) if keep(p)] if coll and keep else []
    sort = sort_keys(args.get("sortKeys"))
    if sort:
        name, asc = sort
        key: Callable[[EmuProduct], Any] = (
            (lambda p: p.title) if name == "title"
            else (lambda p: (p.cloud_cover if p.cloud_cover is not None else -1.0, p.title)) if name == "cloudCover"
            else (lambda p: (p.published or p.datetime, p.title)) if name == "published"
            else (lambda p: (p.updated or p.datetime, p.title)) if name == "updated"
            else (lambda p: (p.datetime, p.title))
        )
        matched.sort(key=key, reverse=not asc)
    total = len(matched)
    page = matched[start - 1: start - 1 + count] if count else []
    features = [product_feature(p, coll, base_url, mep) for p in page] if coll else []
    links = paging_links(request, base_url, total, start, count)
    search = f"{base_url}/catalogue/description.geojson?collection={args['collection']}"
    if mep:
        search += "?accessedFrom=MEP"  # the real server's double-'?' quirk
    links["search"] = link(search, "search")
    doc = envelope(request, "Product Search result", total, start, features, echo(args, start), links)
    return json_response(doc, content_type=GEOJSON)


def _collections(request: Request, archive: Archive, base_url: str) -> Response:
    args = request.args
    check_params(args, COLLECTION_PARAMS)
    start, count = parse_page(args)
    t0 = instant_param(args, "start", False)
    t1 = instant_param(args, "end", True)
    area = area_param(args)
    uid = args.get("uid") or args.get("collection")
    platform = (args.get("platform") or "").lower()
    cols = []
    for c in archive.collections:
        if uid and uid not in (c.urn, c.stac_id):
            continue
        if t1 and c.start > t1 or t0 and c.end and c.end < t0:
            continue
        if area and not bboxes_intersect(c.bbox, area):
            continue
        if args.get("title") and args["title"] != c.title:
            continue
        if platform and platform not in collection_feature(c, base_url)["properties"][
                "acquisitionInformation"][0]["platform"]["platformShortName"].lower():
            continue
        cols.append(c)
    page = cols[start - 1: start - 1 + count] if count else []
    links = paging_links(request, base_url, len(cols), start, count)
    links["search"] = link(f"{base_url}/catalogue/description.geojson", "search")
    doc = envelope(request, "Collection Search result", len(cols), start,
                    [collection_feature(c, base_url) for c in page], echo(args, start), links)
    return json_response(doc, content_type=GEOJSON)


def handle_opensearch(request: Request, archive: Archive, base_url: str, subpath: str) -> Response:
    """Answer one OpenSearch request; `subpath` is the path after "/catalogue"."""
    base_url = base_url.rstrip("/")
    name = (subpath or "/").strip("/")
    try:
        if request.method not in ("GET", "HEAD"):
            raise OpenSearchError("method", f"Method {request.method} not allowed", 405)
        if name in ("products", "products.geojson", "products.json"):
            return _products(request, archive, base_url)
        if name in ("collections", "collections.geojson", "collections.json"):
            return _collections(request, archive, base_url)
        if name in ("", "description", "description.geojson", "description.xml"):
            return description(request, archive, base_url)
        raise OpenSearchError("path", f"Not found: /catalogue/{name}", 404)
    except OpenSearchError as exc:
        log.info("OpenSearch %s -> %d: %s", subpath, exc.status, exc.text)
        return json_response({"exceptions": [{"locator": exc.locator, "exceptionText": exc.text}]},
                             status=exc.status)
