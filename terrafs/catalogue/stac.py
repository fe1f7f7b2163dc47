"""The STAC API backend (stac.terrascope.be, terra-stac-api / stac-fastapi).

Lists collections and searches items with POST /search, following every
`next` link (GET links, and POST links with body and merge), and parses items
into catalogue/model.py values. It must not leak STAC JSON upwards and must
not know about the tree, the cache or FUSE.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterator
from urllib.parse import quote

import requests

from terrafs.catalogue.model import CatalogueLimits, Collection, Filter, Product
from terrafs.catalogue.fields import INDEX_FIELDS, SAMPLE_ITEMS, TREE_FIELDS, AssetTrim, conforms_to_fields
from terrafs.catalogue.fetch import CatalogueHTTPError, JsonRequester, SeenRequests, first_page, walk_pages
from terrafs.catalogue.parse import (
    Link, ProductSelection, build_product, format_datetime, link_size, local_path, parse_datetime,
    properties_of, query_range, record_text, safe_name, to_float, unique_collections,
)
from terrafs.errors import CatalogueError
from terrafs.text import SizeTooLarge, shown

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 1000
INDEX_PAGE_SIZE = 10000  # items of ids and dates only (~120 bytes each): stac-fastapi's largest limit
LONG_RANGE = timedelta(days=2)  # whole items (no fields) over a longer range: pages of LONG_RANGE_PAGE_SIZE
LONG_RANGE_PAGE_SIZE = 200
# Elasticsearch's default cap on counted hits: a numberMatched of exactly this
# may mean "at least", so it must not stop the walk.
_CAPPED_COUNT = 10000
# Statuses that mean "this service has no POST /search": fall back to GET items.
_NO_POST_SEARCH = (404, 405, 501)


class StacCatalogue:
    """Catalogue over a STAC API root (URL ending with "/")."""

    PAGE_SIZE = DEFAULT_PAGE_SIZE  # asked for unless the service is known to refuse it

    def __init__(self, url: str, session: requests.Session, page_size: int = PAGE_SIZE,
                 limits: CatalogueLimits = CatalogueLimits(), fields: str = "off"):
        self.url = url if url.endswith("/") else url + "/"
        self._request = JsonRequester(session, limits)
        self._page_size = max(1, page_size)
        self._index_size = INDEX_PAGE_SIZE
        self._post_search = True
        # fields "auto": the fields extension where the API conforms to it (None: not known yet)
        self._fields: bool | None = None if fields == "auto" else False
        self._trim = AssetTrim()  # asset members the tree does not read, learnt per collection

    @property
    def uses_fields(self) -> bool:
        """Whether searches ask for fields (the conformance classes are read once, on first use)."""
        if self._fields is None:
            self._fields = conforms_to_fields(self._request, self.url)
        return self._fields

    def assume_fields(self, known: object) -> None:
        """What an earlier look at the conformance classes found (ignored unless a bool)."""
        if self._fields is None and isinstance(known, bool):
            self._fields = known

    trims_records = uses_fields  # listed records are then trimmed: record() gives the full one

    @property
    def requests_made(self) -> int:
        return self._request.count

    # -- collections ---------------------------------------------------------

    def collections(self) -> list[Collection]:
        url = self.url + "collections"
        state = _Walk(size=self._page_size)
        state.seen.first_time("GET", url)

        def first() -> Any:
            try:
                return self._request("GET", url, params={"limit": state.size})
            except CatalogueHTTPError as e:
                if e.status != 400:
                    raise
                # Some servers refuse a large limit on /collections; their default is fine.
                return self._request("GET", url)

        pages = walk_pages(lambda: _rename(first(), "collections"),
                           lambda page: _rename(self._follow(page, state), "collections"),
                           lambda page: None, "STAC collections", self._request.limits.max_pages)
        return unique_collections(pages, parse_collection)

    # -- products ------------------------------------------------------------

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
        size = self._page_size if limit is None else max(1, min(self._page_size, limit))
        fields = self._trim.fields(collection.remote_id, TREE_FIELDS) if limit is None and self.uses_fields else None
        if fields is None and limit is None and start is not None and end is not None and end - start > LONG_RANGE:
            # A month of whole items in pages of 1000 parses into hundreds of MB at once, and
            # the RAM stays with the process: smaller pages keep the daemon small (a day fits one).
            size = min(size, LONG_RANGE_PAGE_SIZE)
        selection = ProductSelection(start, end, flt, limit)
        for i, raw in enumerate(self._search(collection, start, end, flt, size, fields, ahead=limit is None)):
            if i < SAMPLE_ITEMS and fields is not None:
                self._trim.learn(collection.remote_id, raw)
            props = properties_of(raw)
            product = parse_item(raw, collection.id, with_record=fields is None)
            if selection.add(product, to_float(props.get("eo:cloud_cover")), item_tile_id(props)):
                break
        log.debug("STAC %s %s..%s: %d products, %d requests so far",
                  shown(collection.remote_id), start, end, len(selection.products), self.requests_made)
        return selection.products

    def acquisitions(self, collection: Collection, start: datetime | None, end: datetime | None,
                     flt: Filter | None = None) -> list[datetime] | None:
        """Acquisition times of the products in [start, end], from items that carry ids and
        dates only; None where the service offers no such answer (no fields extension)."""
        if not self.uses_fields:
            return None
        start, end, nonempty = query_range(start, end, flt)
        if not nonempty:
            return []
        selection = ProductSelection(start, end, flt, None)
        size = max(self._page_size, self._index_size)  # ids and dates: a month in one page where allowed
        for raw in self._search(collection, start, end, flt, size, INDEX_FIELDS):
            props = properties_of(raw)
            item_id = raw.get("id")
            when = parse_datetime(props.get("datetime")) or parse_datetime(props.get("start_datetime"))
            if not isinstance(item_id, str) or not item_id or when is None:
                continue
            title = props.get("title") if isinstance(props.get("title"), str) else item_id
            selection.add(Product(item_id, title, collection.id, when, item_id),
                          to_float(props.get("eo:cloud_cover")), item_tile_id(props))
        return [p.datetime for p in selection.products]

    def record(self, collection: Collection, item_id: str) -> str | None:
        """The full record of one item (GET .../items/{id}); None when the service has none."""
        url = f"{self.url}collections/{quote(collection.remote_id, safe='')}/items/{quote(item_id, safe='')}"
        try:
            raw = self._request("GET", url)
        except CatalogueHTTPError as e:
            if e.status == 404:
                return None
            raise
        if not isinstance(raw, dict) or raw.get("id") != item_id:
            raise CatalogueError(f"STAC answered another item for {shown(item_id, 200)}")
        return record_text(raw)

    def _search(self, collection: Collection, start: datetime | None, end: datetime | None,
                flt: Filter | None, size: int, fields: dict | None = None,
                ahead: bool = False) -> Iterator[dict]:
        state = _Walk(size=size, fields=fields)

        def first() -> Any:
            def ask(n: int) -> Any:
                state.size = n
                return self._first_search(collection, start, end, flt, state)

            asked = state.size
            try:
                page, used = first_page(ask, asked, f"STAC items of {collection.remote_id}")
            except CatalogueHTTPError as e:
                if state.fields is None or e.status not in (400, 422):
                    raise
                log.info("STAC refused the fields extension (HTTP %d); asking for whole items", e.status)
                self._fields, state.fields = False, None
                page, used = first_page(ask, asked, f"STAC items of {collection.remote_id}")
            if used != asked and asked > self._page_size:
                self._index_size = self._page_size  # a page larger than listings ask was refused
            elif used != asked:
                self._page_size = used
            return page

        def next_page(page: Any) -> Any | None:
            feats = page.get("features") or []
            if 0 < len(feats) < state.size and _next_link(page) is not None:
                # A short page that still has a successor: the server caps the limit.
                log.info("STAC serves at most %d items a page; using that", len(feats))
                state.size = len(feats)
                self._page_size = min(self._page_size, len(feats))
            return self._follow(page, state)

        return walk_pages(first, next_page, _matched, f"STAC items of {collection.remote_id}",
                          self._request.limits.max_pages, ahead=ahead)

    def _first_search(self, collection: Collection, start: datetime | None, end: datetime | None,
                      flt: Filter | None, state: "_Walk") -> Any:
        body: dict[str, Any] = {"collections": [collection.remote_id], "limit": state.size}
        if start is not None or end is not None:
            body["datetime"] = (f"{format_datetime(start) if start else '..'}/"
                                f"{format_datetime(end) if end else '..'}")
        if flt is not None and flt.bbox is not None:
            body["bbox"] = list(flt.bbox)
        if flt is not None and flt.cloud_cover_max is not None:
            body["query"] = {"eo:cloud_cover": {"lte": flt.cloud_cover_max}}
        if state.fields is not None:
            body["fields"] = state.fields
        if self._post_search:
            url = self.url + "search"
            state.seen.first_time("POST", url, body)
            state.body = body
            try:
                return self._request("POST", url, body=body)
            except CatalogueHTTPError as e:
                if e.status not in _NO_POST_SEARCH:
                    raise
                log.info("STAC has no POST /search (HTTP %d); using GET .../items", e.status)
                self._post_search = False
        # Cloud cover is then filtered here only: a GET `query` is not portable.
        url = f"{self.url}collections/{quote(collection.remote_id, safe='')}/items"
        params: dict[str, Any] = {"limit": state.size}
        if "datetime" in body:
            params["datetime"] = body["datetime"]
        if "bbox" in body:
            params["bbox"] = ",".join(f"{v:g}" for v in body["bbox"])
        if state.fields is not None:
            params["fields"] = ",".join([*state.fields["include"], *("-" + k for k in state.fields["exclude"])])
        state.seen.first_time("GET", url, params)
        state.body = None
        return self._request("GET", url, params=params)

    def _follow(self, page: Any, state: "_Walk") -> Any | None:
        """The page the `next` link of `page` points to, or None."""
        link = _next_link(page)
        href = link.get("href") if link is not None else None
        if not isinstance(href, str) or not href:
            return None
        if str(link.get("method") or "GET").upper() == "POST":
            body = link.get("body")
            if not isinstance(body, dict):
                body = dict(state.body or {})
            elif link.get("merge") and state.body:
                body = {**state.body, **body}
            if not state.seen.first_time("POST", href, body):
                return None
            state.body = body
            return self._request("POST", href, body=body)
        if not state.seen.first_time("GET", href):
            return None
        return self._request("GET", href)


@dataclass
class _Walk:
    """What one paged walk remembers: page size, last POST body, requests sent."""

    size: int
    fields: dict | None = None  # the fields extension's include/exclude, when asked
    body: dict | None = None
    seen: SeenRequests = field(default_factory=SeenRequests)


def _matched(page: Any) -> int | None:
    matched = page.get("numberMatched")
    if matched is None and isinstance(page.get("context"), dict):
        matched = page["context"].get("matched")  # STAC API before 1.0
    if isinstance(matched, int) and not isinstance(matched, bool) and matched != _CAPPED_COUNT:
        return matched
    return None


def _next_link(page: Any) -> dict | None:
    links = page.get("links") if isinstance(page, dict) else None
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("rel") == "next":
            return link
    return None


def _rename(page: Any, key: str) -> Any:
    """A page listing `key` (e.g. "collections") in the walk's "features" form."""
    if page is None:
        return None
    if isinstance(page, list):  # a bare list of collections
        return {"features": page}
    if isinstance(page, dict) and key in page and "features" not in page:
        return {**page, "features": page[key]}
    if isinstance(page, dict) and "features" not in page:
        raise CatalogueError(f"STAC answer has no '{key}' list")
    return page


# -- parsing -----------------------------------------------------------------


def parse_collection(raw: dict) -> Collection | None:
    """A STAC collection; None (with a warning) when it has no usable id."""
    cid = raw.get("id")
    folder = safe_name(cid)
    if not isinstance(cid, str) or folder is None or folder != cid:
        log.warning("skipping STAC collection with an unusable id %s", shown(cid, 100))
        return None
    start = end = None
    extent = raw.get("extent")
    temporal = extent.get("temporal") if isinstance(extent, dict) else None
    intervals = temporal.get("interval") if isinstance(temporal, dict) else None
    if isinstance(intervals, list) and intervals:
        first = intervals[0]
        if isinstance(first, list) and len(first) == 2:
            start, end = parse_datetime(first[0]), parse_datetime(first[1], end_of_day=True)
    title = raw.get("title")
    return Collection(id=folder, remote_id=cid, title=title if isinstance(title, str) else "",
                      start=start, end=end)


def parse_item(raw: dict, collection_id: str, with_record: bool = True) -> Product | None:
    """A STAC item as a Product; None (with a warning) when it is unusable. Without `with_record`
    (an item trimmed by the fields extension: record() gives the whole one) its record is ""."""
    item_id = raw.get("id")
    props = raw.get("properties")
    if not isinstance(item_id, str) or not item_id or not isinstance(props, dict):
        log.warning("skipping a STAC item without id or properties")
        return None
    when = parse_datetime(props.get("datetime")) or parse_datetime(props.get("start_datetime"))
    if when is None:
        log.warning("skipping STAC item %s: no datetime (or a malformed one)", shown(item_id, 200))
        return None
    record = record_text(raw) if with_record else ""
    if record is None:
        log.warning("skipping STAC item %s: nested too deep", shown(item_id, 200))
        return None
    title = props.get("title") if isinstance(props.get("title"), str) else item_id
    assets = raw.get("assets")
    links = [_asset_link(key, a) for key, a in assets.items()] if isinstance(assets, dict) else []
    return build_product(
        id=item_id, title=title, collection=collection_id, when=when,
        links=[link for link in links if link is not None],
        record=record,
    )


def _asset_link(key: str, asset: Any) -> Link | None:
    if not isinstance(asset, dict) or not isinstance(asset.get("href"), str):
        return None
    roles = asset.get("roles")
    try:
        size = link_size(asset.get("file:size"))
        if size is None:
            size = link_size(asset.get("length"))
    except SizeTooLarge:
        log.warning("skipping asset %s: its size is beyond 2^63 - 1", shown(asset["href"]))
        return None
    title = asset.get("title")
    return Link(
        href=asset["href"],
        local_path=_alternate_local(asset.get("alternate")) or local_path(asset["href"]),
        size=size,
        type=asset.get("type") if isinstance(asset.get("type"), str) else None,
        role=roles[0] if isinstance(roles, list) and roles and isinstance(roles[0], str) else None,
        title=title if isinstance(title, str) else str(key),
    )


def _alternate_local(alternate: Any) -> str | None:
    """alternate.local.href or alternate.MEP.href (any case), with or without file://."""
    if not isinstance(alternate, dict):
        return None
    for name, value in alternate.items():
        if isinstance(name, str) and name.lower() in ("local", "mep"):
            href = value.get("href") if isinstance(value, dict) else value
            path = local_path(href)
            if path:
                return path
    return None


def item_tile_id(props: dict) -> str | None:
    """The MGRS tile of an item, from whichever field the record carries."""
    for key in ("tileId", "s2:mgrs_tile", "tile_id"):
        if isinstance(props.get(key), str):
            return props[key]
    code = props.get("grid:code")
    if isinstance(code, str) and code.upper().startswith("MGRS-"):
        return code[5:]
    zone, band, square = (props.get(k) for k in ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square"))
    if zone is not None and isinstance(band, str) and isinstance(square, str):
        try:
            return f"{int(zone):02d}{band}{square}"
        except (TypeError, ValueError):
            return None
    return None
