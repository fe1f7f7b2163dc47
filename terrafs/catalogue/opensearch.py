"""The OpenSearch backend (services.terrascope.be/catalogue, deprecated by VITO).

Searches /collections and /products with startIndex/count paging, follows
properties.links.next until the end, de-duplicates features repeated across
pages, and parses GeoJSON features into catalogue/model.py values. It must not
leak OpenSearch JSON upwards and must not know about the tree, cache or FUSE.
"""
from __future__ import annotations

import logging
import posixpath
from datetime import datetime
from typing import Any, Iterator, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit

import requests

from terrafs.catalogue.model import CatalogueLimits, Collection, Filter, Product
from terrafs.catalogue.fetch import JsonRequester, SeenRequests, first_page, walk_pages
from terrafs.catalogue.parse import (
    Link,
    ProductSelection,
    build_product,
    format_datetime,
    link_size,
    local_path,
    parse_datetime,
    parse_interval,
    properties_of,
    query_range,
    record_text,
    safe_name,
    to_float,
    unique_collections,
)
from terrafs.text import SizeTooLarge, shown

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 1000  # the real maximum is unknown; see parse.first_page
LINK_GROUPS = ("data", "related", "previews", "alternates", "alternate")


class OpenSearchCatalogue:
    """Catalogue over an OpenSearch root (".../catalogue/", ending with "/").

    With `with_local_paths`, each page is asked a second time with
    accessedFrom=MEP (same order and start index) to learn platform paths.
    """

    PAGE_SIZE = DEFAULT_PAGE_SIZE  # asked for unless the service is known to refuse it

    def __init__(self, url: str, session: requests.Session, page_size: int = PAGE_SIZE,
                 with_local_paths: bool = False, limits: CatalogueLimits = CatalogueLimits()):
        self.url = url if url.endswith("/") else url + "/"
        self._request = JsonRequester(session, limits)
        self._page_size = max(1, page_size)
        self.with_local_paths = with_local_paths

    @property
    def requests_made(self) -> int:
        return self._request.count

    def collections(self) -> list[Collection]:
        return unique_collections(self._walk(self.url + "collections", {}, "OpenSearch collections"),
                                  parse_collection)

    def products(
        self,
        collection: Collection,
        start: datetime | None,
        end: datetime | None,
        flt: Filter | None = None,
        limit: int | None = None,
    ) -> list[Product]:
        start, end, nonempty = query_range(start, end, flt)
        if not nonempty:
            return []
        params: dict[str, Any] = {"collection": collection.remote_id}
        if start is not None:
            params["start"] = format_datetime(start)
        if end is not None:
            params["end"] = format_datetime(end)
        if flt is not None and flt.bbox is not None:
            params["bbox"] = ",".join(f"{v:g}" for v in flt.bbox)
        if flt is not None and flt.cloud_cover_max is not None:
            params["cloudCover"] = f"{flt.cloud_cover_max:g}]"
        # Paging needs a deterministic order (openEO does the same).
        params["sortKeys"] = "title"
        tiles: list[str | None] = list(flt.tile_ids) if flt is not None and flt.tile_ids else [None]
        selection = ProductSelection(start, end, flt, limit)
        what = f"OpenSearch products of {collection.remote_id}"
        for tile in tiles:
            locals_by_id: dict[str, dict[str, str]] = {}
            pages = self._walk(self.url + "products", dict(params, tileId=tile) if tile else params,
                               what, limit, locals_by_id)
            for raw in pages:
                props = properties_of(raw)
                product = parse_feature(raw, collection.id, locals_by_id.get(str(raw.get("id"))))
                if selection.add(product, feature_cloud_cover(props), feature_tile_id(props)):
                    return selection.products
        log.debug("OpenSearch %s %s..%s: %d products, %d requests so far",
                  shown(collection.remote_id), start, end, len(selection.products), self.requests_made)
        return selection.products

    def _walk(self, url: str, params: Mapping[str, Any], what: str, limit: int | None = None,
              locals_by_id: dict[str, dict[str, str]] | None = None) -> Iterator[dict]:
        """Every feature of a paged search, each once."""
        seen = SeenRequests()
        size = self._page_size if limit is None else max(1, min(self._page_size, limit))

        def fetch(target: str, query: Mapping[str, Any] | None) -> Any:
            page = self._request("GET", target, params=query)
            if locals_by_id is not None and self.with_local_paths:
                locals_by_id.update(self._local_paths(target, query))
            return page

        def first() -> Any:
            nonlocal size

            def ask(n: int) -> Any:
                query = dict(params, startIndex=1, count=n)
                seen.first_time(url, query)
                return fetch(url, query)

            page, used = first_page(ask, size, what)
            if used != size:
                size = self._page_size = used
            return page

        def next_page(page: Any) -> Any | None:
            href = _next_href(page)
            if href is None or not seen.first_time(href, None):
                return None
            return fetch(href, None)

        return walk_pages(first, next_page, _total, what, self._request.limits.max_pages)

    def _local_paths(self, url: str, query: Mapping[str, Any] | None) -> dict[str, dict[str, str]]:
        """Platform paths by feature id and base name, from the same page asked with accessedFrom=MEP."""
        parts = urlsplit(url)
        merged = dict(parse_qsl(parts.query, keep_blank_values=True))
        merged.update({k: str(v) for k, v in (query or {}).items()})
        merged["accessedFrom"] = "MEP"
        mep_url = parts._replace(query=urlencode(merged)).geturl()
        page = self._request("GET", mep_url)
        feats = page.get("features") if isinstance(page, dict) else None
        found: dict[str, dict[str, str]] = {}
        for f in feats if isinstance(feats, list) else []:
            if not isinstance(f, dict) or not isinstance(f.get("id"), str):
                continue
            paths = {}
            for link in feature_links(f.get("properties")):
                if not link.is_http and link.local_path:
                    paths[posixpath.basename(link.local_path)] = link.local_path
            found[f["id"]] = paths
        return found


def _next_href(page: Any) -> str | None:
    """properties.links.next[0].href (also a bare object, or a top-level rel=next link)."""
    props = page.get("properties") if isinstance(page, dict) else None
    links = props.get("links") if isinstance(props, dict) else None
    if isinstance(links, dict):
        nxt = links.get("next")
        if isinstance(nxt, list):
            nxt = nxt[0] if nxt else None
        if isinstance(nxt, dict) and isinstance(nxt.get("href"), str) and nxt["href"]:
            return nxt["href"]
        return None
    top = page.get("links") if isinstance(page, dict) else None
    if isinstance(top, list):
        for link in top:
            if isinstance(link, dict) and link.get("rel") == "next" and isinstance(link.get("href"), str):
                return link["href"]
    return None


def _total(page: Any) -> int | None:
    total = page.get("totalResults")
    return total if isinstance(total, int) and not isinstance(total, bool) else None


# -- parsing -----------------------------------------------------------------


def collection_folder(urn: str) -> str | None:
    """The folder name of a collection: the last part of its URN."""
    return safe_name(urn.rsplit(":", 1)[-1])


def parse_collection(raw: dict) -> Collection | None:
    """An OpenSearch collection feature; None (with a warning) when unusable."""
    props = properties_of(raw)
    urn = raw.get("id") if isinstance(raw.get("id"), str) else props.get("identifier")
    folder = collection_folder(urn) if isinstance(urn, str) else None
    if folder is None:
        log.warning("skipping OpenSearch collection with an unusable id %s", shown(urn, 100))
        return None
    start, end = parse_interval(props.get("date"))
    if start is None:
        start = _acquisition(props).get("beginningDateTime")
        start = parse_datetime(start)
    title = props.get("title")
    return Collection(id=folder, remote_id=urn, title=title if isinstance(title, str) else "",
                      start=start, end=end)


def parse_feature(raw: dict, collection_id: str,
                  local_paths: Mapping[str, str] | None = None) -> Product | None:
    """An OpenSearch product feature as a Product; None (with a warning) when unusable."""
    props = raw.get("properties")
    if not isinstance(props, dict):
        log.warning("skipping an OpenSearch feature without properties")
        return None
    fid = raw.get("id") if isinstance(raw.get("id"), str) else props.get("identifier")
    if not isinstance(fid, str) or not fid:
        log.warning("skipping an OpenSearch feature without id")
        return None
    title = props.get("title") if isinstance(props.get("title"), str) else fid.rsplit(":", 1)[-1]
    when = feature_datetime(props)
    if when is None:
        log.warning("skipping OpenSearch feature %s: no date (or a malformed one)", shown(fid, 200))
        return None
    record = record_text(raw)
    if record is None:
        log.warning("skipping OpenSearch feature %s: nested too deep", shown(fid, 200))
        return None
    return build_product(
        id=fid, title=title, collection=collection_id, when=when, links=feature_links(props),
        record=record, local_paths=local_paths,
    )


def feature_datetime(props: dict) -> datetime | None:
    """properties.date (an instant, or the start of "a/b"), else beginningDateTime."""
    date = props.get("date")
    when = parse_interval(date)[0] if isinstance(date, str) and "/" in date else parse_datetime(date)
    return when or parse_datetime(_acquisition(props).get("beginningDateTime"))


def _acquisition(props: dict) -> dict:
    """The first acquisitionParameters of acquisitionInformation (a list or one object)."""
    info = props.get("acquisitionInformation")
    for entry in info if isinstance(info, list) else [info]:
        if isinstance(entry, dict) and isinstance(entry.get("acquisitionParameters"), dict):
            return entry["acquisitionParameters"]
    return {}


def feature_tile_id(props: dict) -> str | None:
    tile = _acquisition(props).get("tileId")
    return tile if isinstance(tile, str) else None


def feature_cloud_cover(props: dict) -> float | None:
    info = props.get("productInformation")
    return to_float(info.get("cloudCover")) if isinstance(info, dict) else None


def feature_links(props: Any) -> list[Link]:
    groups = props.get("links") if isinstance(props, dict) else None
    if not isinstance(groups, dict):
        return []
    out: list[Link] = []
    for group in LINK_GROUPS:
        entries = groups.get(group)
        if isinstance(entries, dict):
            entries = [entries]
        if not isinstance(entries, list):
            continue
        role = "alternates" if group == "alternate" else group
        for e in entries:
            if not isinstance(e, dict) or not isinstance(e.get("href"), str):
                continue
            title = e.get("title")
            try:
                size = link_size(e.get("length"))
            except SizeTooLarge:
                log.warning("skipping link %s: its length is beyond 2^63 - 1", shown(e["href"]))
                continue
            out.append(Link(
                href=e["href"], local_path=local_path(e["href"]), size=size,
                type=e.get("type") if isinstance(e.get("type"), str) else None,
                role=role, title=title if isinstance(title, str) else None,
            ))
    return out
