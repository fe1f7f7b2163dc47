"""The emulator's OpenSearch catalogue, shaped like services.terrascope.be/catalogue.

handle_opensearch() answers /collections, /products and /description (each also
with .geojson): 1-based startIndex + count paging with first/previous/next/last
links, the 100 000-result pagination cap, count=0 (totals only), interval
syntax for cloudCover and dates, accessedFrom=MEP (file:// hrefs), and an
OpenSearch exception body for unknown or invalid parameters.

It must not serve downloads or check authentication, and imports nothing from the
client side of terrafs.
"""
from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Any, Callable
from urllib.parse import urlencode
from xml.sax.saxutils import escape

from werkzeug.wrappers import Request, Response

from terrafs.emulator.archive import Archive, EmuCollection, EmuProduct
from terrafs.emulator.stac import (
    bbox_polygon,
    bboxes_intersect,
    iso_z,
    json_response,
    parse_bbox,
    parse_instant,
    wms_preview_url,
)

log = logging.getLogger(__name__)

DEFAULT_COUNT = 100  # the real default page size
# The real maximum page size is unknown; 1000 is accepted, larger values are clamped.
MAX_COUNT = 1000
# Only the first 100 000 results can be paged to (real `last` link: startIndex=99901 at count 100).
RESULT_CAP = 100_000
GEOJSON = "application/geo+json"
CONTEXT = "http://schemas.opengis.net/os-geojson/1.0/os-geojson.jsonld"
PROFILES = [{"href": "http://www.opengis.net/spec/owc-geojson/1.0/req/core"},
            {"href": "http://www.opengis.net/spec/os-geojson/1.0/req/core"}]
# A fixed "server time" keeps responses deterministic.
SERVER_UPDATED = "2024-01-01T00:00:00Z"

COMMON_PARAMS = {"startIndex", "count", "clientId", "httpAccept", "start", "end", "bbox", "geometry",
                 "lat", "lon", "radius", "uid", "title", "platform", "sortKeys"}
PRODUCT_PARAMS = COMMON_PARAMS | {
    "collection", "productType", "tileId", "relativeOrbitNumber", "orbitDirection", "productGroupId",
    "resolution", "cloudCover", "publicationDate", "modificationDate", "accessedFrom",
}
COLLECTION_PARAMS = COMMON_PARAMS | {"accessedFrom", "collection"}


class OpenSearchError(Exception):
    """An OpenSearch exception report: 400 with {"exceptions": [{"locator", "exceptionText"}]}."""

    def __init__(self, locator: str, text: str, status: int = 400):
        super().__init__(text)
        self.locator = locator
        self.text = text
        self.status = status


# ---------------------------------------------------------------------------------------------
# Parameter parsing


def _int_param(args: Any, name: str, default: int, minimum: int) -> int:
    raw = args.get(name)
    if raw in (None, ""):
        return default
    try:
        val = int(raw)
    except ValueError:
        raise OpenSearchError(name, f"Invalid value '{raw}' for parameter {name}: not an integer") from None
    if val < minimum:
        raise OpenSearchError(name, f"Invalid value '{raw}' for parameter {name}: must be >= {minimum}")
    return val


def parse_interval(text: str, conv: Callable[[str, bool], Any]) -> tuple[Any, bool, Any, bool]:
    """OpenSearch interval syntax -> (low, low inclusive, high, high inclusive); None = open.

    "60]" (<= 60), "60[" (< 60), "[0" (>= 0), "]0" (> 0), "[1.0,78]", "[10,20[", "]a,b]",
    "[a,]", plain "5" (== 5). conv(value, is_high_end) converts one bound.
    """
    t = text.strip()
    if not t:
        raise ValueError("empty interval")
    left = t[0] if t[0] in "[]" else None
    right = t[-1] if len(t) > 1 and t[-1] in "[]" else None
    inner = t[1 if left else 0: -1 if right else None].strip()
    if "," in inner:
        a, b = (s.strip() for s in inner.split(",", 1))
        lo = conv(a, False) if a else None
        hi = conv(b, True) if b else None
        if lo is None and hi is None:
            raise ValueError("interval without bounds")
        return lo, left != "]", hi, right != "["
    if not inner:
        raise ValueError("interval without bounds")
    if left and not right:
        return conv(inner, False), left == "[", None, True
    if right and not left:
        return None, True, conv(inner, True), right == "]"
    return conv(inner, False), True, conv(inner, True), True


def _in_interval(value: Any, iv: tuple[Any, bool, Any, bool]) -> bool:
    if value is None:
        return False
    lo, lo_inc, hi, hi_inc = iv
    if lo is not None and (value < lo or (value == lo and not lo_inc)):
        return False
    if hi is not None and (value > hi or (value == hi and not hi_inc)):
        return False
    return True


def _float_bound(v: str, _high: bool) -> float:
    return float(v)


def _date_bound(v: str, high: bool) -> datetime:
    return parse_instant(v, end_of_day=high)


def _interval_param(args: Any, name: str, conv: Callable[[str, bool], Any]) -> tuple | None:
    raw = args.get(name)
    if raw in (None, ""):
        return None
    try:
        return parse_interval(raw, conv)
    except ValueError:
        raise OpenSearchError(name, f"Invalid value '{raw}' for parameter {name}: not a valid interval") from None


def _instant_param(args: Any, name: str, end: bool) -> datetime | None:
    raw = args.get(name)
    if raw in (None, ""):
        return None
    try:
        return parse_instant(raw, end_of_day=end)
    except ValueError:
        raise OpenSearchError(name, f"Invalid value '{raw}' for parameter {name}: not a date or date-time") from None


def _area_param(args: Any) -> tuple[float, float, float, float] | None:
    """bbox, WKT geometry (its coordinates' bbox) or lat/lon/radius (metres) -> lon/lat bbox."""
    if args.get("bbox"):
        try:
            return parse_bbox(args["bbox"])
        except ValueError:
            raise OpenSearchError("bbox", f"Invalid value '{args['bbox']}' for parameter bbox") from None
    if args.get("geometry"):
        nums = [float(n) for n in re.findall(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", args["geometry"])]
        if not re.match(r"^\s*(MULTI)?(POLYGON|POINT|LINESTRING)", args["geometry"], re.I) or len(nums) < 2 or len(nums) % 2:
            raise OpenSearchError("geometry", f"Invalid WKT geometry '{args['geometry']}'")
        xs, ys = nums[0::2], nums[1::2]
        return min(xs), min(ys), max(xs), max(ys)
    if args.get("lat") or args.get("lon"):
        try:
            lat, lon = float(args["lat"]), float(args["lon"])
            radius = float(args.get("radius") or 0.0)
        except (KeyError, ValueError):
            raise OpenSearchError("lat", "lat and lon must both be numbers") from None
        d = radius / 111_000.0
        return lon - d, lat - d, lon + d, lat + d
    return None


def _check_params(args: Any, allowed: set[str]) -> None:
    for key in args.keys():
        if key not in allowed:
            raise OpenSearchError(key, f"Unsupported parameter '{key}'")


def _sort_keys(raw: str | None) -> tuple[str, bool] | None:
    """"title", "start", "start,,0" -> (field, ascending)."""
    if not raw:
        return None
    parts = raw.split(",")
    name = parts[0]
    if name not in ("title", "start", "date", "end", "updated", "published", "cloudCover"):
        raise OpenSearchError("sortKeys", f"Unsupported sort key '{name}'")
    asc = not (len(parts) >= 3 and parts[2] == "0")
    return name, asc


def _sort_echo(raw: str) -> str:
    name, asc = _sort_keys(raw) or ("", True)
    return f"{name},,{1 if asc else 0},0,highValue"


# ---------------------------------------------------------------------------------------------
# Paging and the response envelope


def _last_start(total: int, count: int) -> int:
    reach = min(total, RESULT_CAP - count + 1)
    return 1 if reach < 1 else 1 + ((reach - 1) // count) * count


def _page_href(request: Request, base_url: str, start_index: int) -> str:
    pairs = [(k, v) for k, v in request.args.items(multi=True) if k != "startIndex"]
    pairs.append(("startIndex", str(start_index)))
    return f"{base_url}/catalogue{request.path.split('/catalogue', 1)[-1]}?{urlencode(pairs)}"


def _link(href: str, title: str) -> list[dict]:
    return [{"href": href, "type": GEOJSON, "title": title}]


def _paging_links(request: Request, base_url: str, total: int, start: int, count: int) -> dict:
    links: dict[str, list[dict]] = {}
    if count == 0:
        return links
    last = _last_start(total, count)
    links["first"] = _link(_page_href(request, base_url, 1), "first")
    if start > 1:
        links["previous"] = _link(_page_href(request, base_url, max(1, start - count)), "previous")
    nxt = start + count
    if nxt <= min(total, RESULT_CAP) and nxt + count - 1 <= RESULT_CAP:
        links["next"] = _link(_page_href(request, base_url, nxt), "next")
    links["last"] = _link(_page_href(request, base_url, last), "last")
    return links


def _envelope(request: Request, title: str, total: int, start: int, features: list[dict],
              echo: dict, links: dict) -> dict:
    links["profiles"] = PROFILES
    return {
        "@context": CONTEXT,
        "type": "FeatureCollection",
        "id": request.url,
        "totalResults": total,
        "startIndex": start,
        "itemsPerPage": len(features),
        "queries": {"request": [echo]},
        "properties": {
            "title": title,
            "subtitle": f"Number of results: {total}",
            "creator": "VITO OpenSearch Service",
            "authors": [{"type": "Agent", "name": "VITO"}],
            "updated": SERVER_UPDATED,
            "lang": "en",
            "links": links,
        },
        "features": features,
    }


def _echo(args: Any, start: int) -> dict:
    names = {"bbox": "geo:box", "geometry": "geo:geometry", "accessedFrom": "referrer:accessedFrom",
             "uid": "geo:uid", "title": "eo:title", "productType": "eo:productType", "tileId": "eo:tileId",
             "cloudCover": "eo:cloudCover", "platform": "eo:platform", "count": "count",
             "relativeOrbitNumber": "eo:orbitNumber", "orbitDirection": "eo:orbitDirection",
             "publicationDate": "eo:publicationDate", "modificationDate": "eo:modificationDate",
             "resolution": "eo:resolution", "productGroupId": "eo:productGroupId"}
    echo: dict[str, Any] = {}
    for key, name in names.items():
        if args.get(key) not in (None, ""):
            echo[name] = int(args[key]) if key == "count" else args[key]
    echo["startIndex"] = start
    if args.get("sortKeys"):
        echo["sru:sortKeys"] = _sort_echo(args["sortKeys"])
    for key, name, end in (("start", "time:start", False), ("end", "time:end", True)):
        value = _instant_param(args, key, end)
        if value is not None:
            echo[name] = iso_z(value, 0)
    return echo


def _page(args: Any) -> tuple[int, int]:
    start = _int_param(args, "startIndex", 1, 1)
    count = min(_int_param(args, "count", DEFAULT_COUNT, 0), MAX_COUNT)
    if count > 0 and start + count - 1 > RESULT_CAP:
        raise OpenSearchError(
            "startIndex",
            f"The requested page (startIndex {start}, count {count}) is beyond the maximum of {RESULT_CAP} "
            "results that can be paged through; please narrow down your search.",
        )
    return start, count


# ---------------------------------------------------------------------------------------------
# Products


def _file_href(f: Any, base_url: str, mep: bool) -> str:
    return "file://" + f.platform_path if mep else f"{base_url}/download/{f.download_path}"


def _product_links(p: EmuProduct, base_url: str, mep: bool) -> dict:
    """Link groups; an empty group is sent as [] (as the real service does)."""
    groups: dict[str, list[dict]] = {"previews": [], "alternates": [], "related": [], "data": []}
    for f in p.files:
        link: dict[str, Any] = {"href": _file_href(f, base_url, mep), "type": f.type}
        if f.size_in_catalogue:
            link["length"] = f.size
        if f.title and f.group != "previews":
            link["title"] = f.title
        if f.category:
            link["category"] = f.category
        ex = f.extra or {}
        if "epsg" in ex:
            link["conformsTo"] = f"http://www.opengis.net/def/crs/EPSG/0/{ex['epsg']}"
        if ex.get("bands") and f.group in ("data", "related"):
            link["bandNames"] = list(ex["bands"])
        groups.setdefault(f.group, []).append(link)
    wms = wms_preview_url(p, base_url)
    if wms:
        # A rendering service: stays http(s) under accessedFrom=MEP, and has no length.
        groups["previews"].append({"href": wms, "type": "image/png", "title": "WMS", "category": "QUICKLOOK"})
    return groups


def product_feature(p: EmuProduct, coll: EmuCollection, base_url: str, mep: bool) -> dict:
    ex = p.extra or {}
    when = iso_z(p.datetime, 3)
    published = iso_z(p.published or p.datetime, 0)
    updated = iso_z(p.updated or p.datetime, 3)
    params: dict[str, Any] = {"acquisitionType": "NOMINAL"}
    if "orbit_direction" in ex:
        params["orbitDirection"] = ex["orbit_direction"]
    if "absolute_orbit" in ex:
        params["orbitNumber"] = ex["absolute_orbit"]
    if "relative_orbit" in ex:
        params["relativeOrbitNumber"] = ex["relative_orbit"]
    params["beginningDateTime"] = when
    params["endingDateTime"] = iso_z(p.end_datetime or p.datetime, 3)
    if p.tile_id:
        params["tileId"] = p.tile_id
    params.update(ex.get("acquisition", {}))
    acquisition: dict[str, Any] = {}
    if "platform_short" in ex:  # WorldCover has no platform
        acquisition["platform"] = {"platformShortName": ex["platform_short"]}
        if "platform" in ex:
            acquisition["platform"]["platformSerialIdentifier"] = ex["platform"]
    acquisition["acquisitionParameters"] = params
    info: dict[str, Any] = {}
    if p.cloud_cover is not None:
        info["cloudCover"] = p.cloud_cover
    info.update({"productType": p.product_type, "availabilityTime": published,
                 "productVersion": ex.get("product_version", "V100"), "processingCenter": "VITO",
                 "processingDate": updated})
    if "epsg" in ex:
        info["referenceSystemIdentifier"] = f"http://www.opengis.net/def/crs/EPSG/0/{ex['epsg']}"
    props: dict[str, Any] = {
        "date": when, "updated": updated, "available": published, "published": published,
        "status": "ARCHIVED", "parentIdentifier": coll.urn, "title": p.title,
        "identifier": f"{coll.urn}:{p.title}",
        "acquisitionInformation": [acquisition],
        "productInformation": info,
    }
    if "resolution" in ex:
        props["additionalAttributes"] = {"resolution": ex["resolution"]}
    props["links"] = _product_links(p, base_url, mep)
    return {"type": "Feature", "id": f"{coll.urn}:{p.title}", "geometry": bbox_polygon(p.bbox),
            "bbox": list(p.bbox), "properties": props}


def _product_filter(args: Any, coll: EmuCollection) -> Callable[[EmuProduct], bool]:
    start = _instant_param(args, "start", False)
    end = _instant_param(args, "end", True)
    area = _area_param(args)
    cloud = _interval_param(args, "cloudCover", _float_bound)
    pub = _interval_param(args, "publicationDate", _date_bound)
    mod = _interval_param(args, "modificationDate", _date_bound)
    title, uid = args.get("title"), args.get("uid")
    ptype, tile = args.get("productType"), args.get("tileId")
    group, platform = args.get("productGroupId"), args.get("platform")
    orbit = _int_param(args, "relativeOrbitNumber", -1, 0) if args.get("relativeOrbitNumber") else None
    direction = (args.get("orbitDirection") or "").upper() or None
    if direction and direction not in ("ASCENDING", "DESCENDING"):
        raise OpenSearchError("orbitDirection", f"Invalid value '{args['orbitDirection']}' for parameter orbitDirection")
    resolution = None
    if args.get("resolution"):
        try:
            resolution = float(args["resolution"])
        except ValueError:
            raise OpenSearchError("resolution", f"Invalid value '{args['resolution']}' for parameter resolution") from None

    def keep(p: EmuProduct) -> bool:
        ex = p.extra or {}
        if not p.overlaps(start, end):
            return False
        if area and not bboxes_intersect(p.bbox, area):
            return False
        if title and p.title != title:
            return False
        if uid and uid not in (p.title, f"{coll.urn}:{p.title}"):
            return False
        if ptype and p.product_type.upper() != ptype.upper():
            return False
        if tile and (p.tile_id or "").upper() != tile.upper():
            return False
        if group and ex.get("product_group") != group:
            return False
        if platform and platform.upper() not in (str(ex.get("platform_short", "")).upper(),
                                                 str(ex.get("platform", "")).upper()):
            return False
        if orbit is not None and ex.get("relative_orbit") != orbit:
            return False
        if direction and ex.get("orbit_direction") != direction:
            return False
        if resolution is not None and float(ex.get("resolution", ex.get("gsd", -1))) != resolution:
            return False
        if cloud and not _in_interval(p.cloud_cover, cloud):
            return False
        if pub and not _in_interval(p.published, pub):
            return False
        if mod and not _in_interval(p.updated, mod):
            return False
        return True

    return keep


def _accessed_from(args: Any) -> bool:
    raw = (args.get("accessedFrom") or "").strip()
    if raw.upper() == "MEP":
        return True
    if raw.upper() in ("", "HTTP", "HTTPS"):
        return False
    raise OpenSearchError("accessedFrom", f"Unsupported data access method '{raw}'")


def _products(request: Request, archive: Archive, base_url: str) -> Response:
    args = request.args
    _check_params(args, PRODUCT_PARAMS)
    if not args.get("collection"):
        raise OpenSearchError("collection", "Missing mandatory parameter 'collection'")
    start, count = _page(args)
    mep = _accessed_from(args)
    coll = archive.collection(args["collection"])
    keep = _product_filter(args, coll) if coll else None
    window = (_instant_param(args, "start", False), _instant_param(args, "end", True))
    matched = [p for p in archive.products_between(coll.stac_id, *window) if keep(p)] if coll and keep else []
    sort = _sort_keys(args.get("sortKeys"))
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
    links = _paging_links(request, base_url, total, start, count)
    search = f"{base_url}/catalogue/description.geojson?collection={args['collection']}"
    if mep:
        search += "?accessedFrom=MEP"  # the real server's double-'?' quirk
    links["search"] = _link(search, "search")
    doc = _envelope(request, "Product Search result", total, start, features, _echo(args, start), links)
    return json_response(doc, content_type=GEOJSON)


# ---------------------------------------------------------------------------------------------
# Collections and description


def collection_feature(c: EmuCollection, base_url: str) -> dict:
    date = iso_z(c.start, 0) + "/" + (iso_z(c.end, 0) if c.end else "")
    platform = ("Sentinel-1" if "S1" in c.urn else "Sentinel-2" if "S2" in c.urn else "Sentinel-1, Sentinel-2")
    return {
        "type": "Feature",
        "id": c.urn,
        "geometry": bbox_polygon(c.bbox),
        "bbox": list(c.bbox),
        "properties": {
            "title": c.title,
            "identifier": c.urn,
            "abstract": f"{c.title} (Terrascope emulator)",
            "rights": "Terrascope data policy",
            "date": date,
            "updated": SERVER_UPDATED,
            "lang": "en",
            "keyword": ["terrascope", "emulator"],
            "publisher": "VITO",
            "authors": [{"type": "Agent", "name": "VITO"}],
            "acquisitionInformation": [{"acquisitionParameters": {"beginningDateTime": iso_z(c.start, 0)},
                                        "platform": {"platformShortName": platform}}],
            "productInformation": {"format": "geotiff", "resolution": [10, 20, 60]},
            "links": {
                "search": [{"href": f"{base_url}/catalogue/description.geojson?collection={c.urn}",
                            "type": GEOJSON, "title": "OpenSearch Description Document"}],
                "describedby": [{"href": f"{base_url}/catalogue/collections?uid={c.urn}", "type": GEOJSON,
                                 "title": "Collection metadata"}],
            },
        },
    }


def _collections(request: Request, archive: Archive, base_url: str) -> Response:
    args = request.args
    _check_params(args, COLLECTION_PARAMS)
    start, count = _page(args)
    t0 = _instant_param(args, "start", False)
    t1 = _instant_param(args, "end", True)
    area = _area_param(args)
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
    links = _paging_links(request, base_url, len(cols), start, count)
    links["search"] = _link(f"{base_url}/catalogue/description.geojson", "search")
    doc = _envelope(request, "Collection Search result", len(cols), start,
                    [collection_feature(c, base_url) for c in page], _echo(args, start), links)
    return json_response(doc, content_type=GEOJSON)


def _description(request: Request, archive: Archive, base_url: str) -> Response:
    urn = request.args.get("collection")
    if urn:
        urn = urn.split("?", 1)[0]  # tolerate the server's own double-'?' search links
        if archive.collection(urn) is None:
            raise OpenSearchError("collection", f"Unknown collection '{urn}'", 404)
    names = sorted(PRODUCT_PARAMS if urn else COLLECTION_PARAMS)
    endpoint = "products" if urn else "collections"
    template = "&amp;".join(f"{n}={{{n}?}}" for n in names if n != "collection")
    prefix = f"collection={escape(urn)}&amp;" if urn else ""
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<OpenSearchDescription xmlns="http://a9.com/-/spec/opensearch/1.1/">\n'
        "  <ShortName>Terrascope</ShortName>\n"
        f"  <Description>Terrascope OpenSearch (emulator){' for ' + escape(urn) if urn else ''}</Description>\n"
        f'  <Url type="{GEOJSON}" rel="results" template="{base_url}/catalogue/{endpoint}?{prefix}{template}"/>\n'
        f'  <Url type="application/json" rel="results" template="{base_url}/catalogue/{endpoint}.geojson?{prefix}{template}"/>\n'
        "</OpenSearchDescription>\n"
    )
    return Response(xml, content_type="application/opensearchdescription+xml")


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
            return _description(request, archive, base_url)
        raise OpenSearchError("path", f"Not found: /catalogue/{name}", 404)
    except OpenSearchError as exc:
        log.info("OpenSearch %s -> %d: %s", subpath, exc.status, exc.text)
        return json_response({"exceptions": [{"locator": exc.locator, "exceptionText": exc.text}]},
                             status=exc.status)
