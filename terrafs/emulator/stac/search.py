"""The STAC API's searching and routing: handle_stac() answers one request below /stac.

GET and POST /search and a collection's items (datetime, bbox, intersects, ids, CQL2 `filter`,
`query`, sortby, the fields extension, token paging), the collections list, one collection or
item, the landing page, conformance and queryables; errors as SFEOS's JSON bodies.

It must not serve downloads or tokens, check authentication, or import anything from the client
side of terrafs.
"""
from __future__ import annotations

import json
import logging

from werkzeug.wrappers import Request, Response

from terrafs.emulator import fields as fields_ext
from terrafs.emulator.archive import Archive, EmuCollection, EmuProduct
from terrafs.emulator.common import bboxes_intersect, geometry_bbox, json_response, parse_bbox
from terrafs.emulator.stac.cql2 import cql2_eval, filter_param, query_ext_match
from terrafs.emulator.stac.documents import (
    GEOJSON,
    collection_json,
    conformance,
    item_json,
    item_properties,
    landing,
    queryables,
    stac_root,
)
from terrafs.emulator.stac.paging import decode_token, encode_token, get_next_link, get_params, item_collection
from terrafs.emulator.stac.params import BadRequest, as_list, parse_datetime_param, parse_limit, parse_sortby, sort

log = logging.getLogger(__name__)


def search(archive: Archive, base_url: str, params: dict, fields_extension: bool = True
            ) -> tuple[list[dict], int, int]:
    """-> (items of the page, number matched, offset of the next page or -1)."""
    try:
        # A server without the extension ignores the parameter, as stac-fastapi does.
        fields = fields_ext.parse_fields(params.get("fields")) if fields_extension else None
    except fields_ext.FieldsError as exc:
        raise BadRequest(str(exc)) from None
    collections = as_list(params.get("collections"))
    if collections:
        cols = [c for c in (archive.collection(k) for k in collections) if c is not None and c.in_stac]
        cols = [c for c in cols if c.stac_id in collections]
    else:
        cols = [c for c in archive.collections if c.in_stac]
    ids = set(as_list(params.get("ids")))
    start = end = None
    if params.get("datetime"):
        start, end = parse_datetime_param(str(params["datetime"]))
    bbox = None
    if params.get("bbox") not in (None, ""):
        try:
            bbox = parse_bbox(params["bbox"])
        except ValueError:
            raise BadRequest(f"Invalid bbox: {params['bbox']!r}") from None
    if params.get("intersects"):
        geom = params["intersects"]
        try:
            geom = json.loads(geom) if isinstance(geom, str) else geom
            ibox = geometry_bbox(geom["coordinates"])
        except (ValueError, KeyError, TypeError):
            raise BadRequest("Invalid intersects geometry") from None
        bbox = ibox if bbox is None else bbox
    limit = parse_limit(params.get("limit"))
    offset = decode_token(str(params["token"])) if params.get("token") else 0
    cql = filter_param(params)
    query = params.get("query")
    if isinstance(query, str) and query:
        try:
            query = json.loads(query)
        except ValueError:
            raise BadRequest("Invalid query parameter (not JSON)") from None
    if query is not None and not isinstance(query, dict):
        raise BadRequest("query must be an object")

    matched: list[tuple[EmuProduct, EmuCollection]] = []
    for c in cols:
        if ids and c.stac_id in archive.generated:
            # A generated collection finds ids without making every day's products.
            candidates = [p for p in (archive.product(c.stac_id, i) for i in sorted(ids)) if p is not None]
        else:
            candidates = archive.products_between(c.stac_id, start, end)
        for p in candidates:
            if ids and p.id not in ids:
                continue
            if not p.overlaps(start, end):
                continue
            if bbox and not bboxes_intersect(p.bbox, bbox):
                continue
            matched.append((p, c))
    if cql is not None or query:
        # Properties only where a property filter needs them: bulk archives are large.
        kept = []
        for p, c in matched:
            item = {"id": p.id, "collection": c.stac_id, "bbox": list(p.bbox),
                    "properties": item_properties(p, base_url, False)}
            if (cql is None or cql2_eval(cql, item)) and (not query or query_ext_match(query, item)):
                kept.append((p, c))
        matched = kept
    sort(matched, parse_sortby(params.get("sortby")))
    page = matched[offset:offset + limit]
    nxt = offset + limit if offset + limit < len(matched) else -1
    assets = fields is None or fields.keeps("assets")
    return [fields_ext.apply(item_json(p, c, base_url, assets), fields) for p, c in page], len(matched), nxt


def _search_get(request: Request, archive: Archive, base_url: str, url: str, params: dict,
                fields_extension: bool = True) -> Response:
    items, matched, nxt = search(archive, base_url, params, fields_extension)
    root = stac_root(base_url)
    links = [{"rel": "root", "type": "application/json", "href": root},
             {"rel": "self", "type": GEOJSON, "href": request.url}]
    if nxt >= 0:
        links.append(get_next_link(url, request, encode_token(nxt)))
    return json_response(item_collection(items, matched, links), content_type=GEOJSON)


def _search_post(request: Request, archive: Archive, base_url: str, fields_extension: bool = True) -> Response:
    try:
        body = json.loads(request.get_data(as_text=True) or "{}")
    except ValueError:
        raise BadRequest("Request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object")
    items, matched, nxt = search(archive, base_url, body, fields_extension)
    root = stac_root(base_url)
    links = [{"rel": "root", "type": "application/json", "href": root},
             {"rel": "self", "type": GEOJSON, "href": root + "search"}]
    if nxt >= 0:
        nbody = dict(body)
        nbody["token"] = encode_token(nxt)
        links.append({"rel": "next", "type": GEOJSON, "method": "POST", "href": root + "search",
                      "body": nbody, "merge": False})
    return json_response(item_collection(items, matched, links), content_type=GEOJSON)


def _collections(request: Request, archive: Archive, base_url: str) -> Response:
    root = stac_root(base_url)
    cols = [c for c in archive.collections if c.in_stac]
    limit = parse_limit(request.args.get("limit"))
    offset = decode_token(request.args["token"]) if request.args.get("token") else 0
    page = cols[offset:offset + limit]
    links = [{"rel": "root", "type": "application/json", "href": root},
             {"rel": "parent", "type": "application/json", "href": root},
             {"rel": "self", "type": "application/json", "href": request.url}]
    if offset + limit < len(cols):
        links.append(get_next_link(root + "collections", request, encode_token(offset + limit)))
    return json_response({"collections": [collection_json(c, base_url) for c in page], "links": links,
                          "numberMatched": len(cols), "numberReturned": len(page)})


def _stac_collection(archive: Archive, cid: str) -> EmuCollection:
    c = archive.collection(cid)
    if c is None or not c.in_stac or c.stac_id != cid:
        raise BadRequest(f"Collection {cid} not found", 404, "NotFoundError")
    return c


def _route(request: Request, archive: Archive, base_url: str, subpath: str, fx: bool) -> Response:
    parts = [p for p in subpath.split("/") if p]
    method = request.method
    root = stac_root(base_url)
    if method not in ("GET", "HEAD") and parts != ["search"]:
        raise BadRequest("Method not allowed", 405, "MethodNotAllowed")
    if not parts:
        return json_response(landing(base_url, fx))
    if parts == ["conformance"]:
        return json_response({"conformsTo": conformance(fx)})
    if parts == ["queryables"]:
        return json_response(queryables(base_url, None), content_type="application/schema+json")
    if parts in (["_mgmt", "ping"], ["_mgmt", "health"]):
        return json_response({"message": "PONG"})
    if parts == ["search"]:
        if method == "POST":
            return _search_post(request, archive, base_url, fx)
        if method in ("GET", "HEAD"):
            return _search_get(request, archive, base_url, root + "search", get_params(request), fx)
        raise BadRequest("Method not allowed", 405, "MethodNotAllowed")
    if parts[0] != "collections":
        raise BadRequest(f"Not found: /stac{subpath}", 404, "NotFoundError")
    if len(parts) == 1:
        return _collections(request, archive, base_url)
    c = _stac_collection(archive, parts[1])
    if len(parts) == 2:
        return json_response(collection_json(c, base_url))
    if parts[2:] == ["queryables"]:
        return json_response(queryables(base_url, c.stac_id), content_type="application/schema+json")
    if parts[2] == "items" and len(parts) == 3:
        params = get_params(request)
        params["collections"] = c.stac_id
        params.pop("ids", None)
        return _search_get(request, archive, base_url, f"{root}collections/{c.stac_id}/items", params, fx)
    if parts[2] == "items" and len(parts) == 4:
        found = archive.product(c.stac_id, parts[3])
        if found is not None:
            return json_response(item_json(found, c, base_url), content_type=GEOJSON)
        raise BadRequest(f"Item {parts[3]} in collection {c.stac_id} not found", 404, "NotFoundError")
    raise BadRequest(f"Not found: /stac{subpath}", 404, "NotFoundError")


def handle_stac(request: Request, archive: Archive, base_url: str, subpath: str,
                fields_extension: bool = True) -> Response:
    """Answer one STAC API request; `subpath` is the path after "/stac" ("/", "/search", ...).
    fields_extension=False: a server without the fields extension (no conformance class,
    `fields` ignored)."""
    try:
        return _route(request, archive, base_url.rstrip("/"), subpath or "/", fields_extension)
    except BadRequest as exc:
        log.info("STAC %s %s -> %d: %s", request.method, subpath, exc.status, exc.description)
        return json_response({"code": exc.code, "description": exc.description}, status=exc.status)
