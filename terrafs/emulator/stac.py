"""The emulator's STAC API, shaped like terra-stac-api (SFEOS) at stac.terrascope.be.

handle_stac() answers one request below /stac: landing page, conformance,
collections, items (current and older item form), GET and POST /search with
token paging, datetime/bbox/ids, `query`, CQL2 `filter` and the fields extension
(fields.py; handle_stac's fields_extension=False serves a STAC API without it). It also holds the
small parsing helpers (instants, bboxes, JSON responses) that opensearch.py shares.

It must not serve downloads or tokens, check authentication, or import anything
from the client side of terrafs.
"""
from __future__ import annotations

import base64
import json
import logging
import re
from datetime import datetime, time, timezone
from typing import Any, Callable, Iterable
from urllib.parse import urlencode

from werkzeug.wrappers import Request, Response

from terrafs.emulator import fields as fields_ext
from terrafs.emulator.archive import Archive, EmuCollection, EmuFile, EmuProduct

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 10  # SFEOS default page size
MAX_LIMIT = 10000  # larger limits are clamped (the real maximum is not documented)
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
OLD_TIFF_TYPE = "image/tiff; application=geotiff"
GEOJSON = "application/geo+json"
CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
    "https://api.stacspec.org/v1.0.0/item-search#sort",
    "https://api.stacspec.org/v1.0.0/item-search#fields",
    "https://api.stacspec.org/v1.0.0-rc.2/item-search#filter",
    "https://api.stacspec.org/v1.0.0/ogcapi-features#query",
    "https://api.stacspec.org/v1.0.0/ogcapi-features#sort",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/features-filter",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text",
]
ITEM_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
    "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "https://stac-extensions.github.io/product/v0.1.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.1.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
    "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v2.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/alternate-assets/v1.2.0/schema.json",
    "https://stac-extensions.github.io/authentication/v1.1.0/schema.json",
]
OLD_ITEM_EXTENSIONS = [
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
    "https://stac-extensions.github.io/alternate-assets/v1.1.0/schema.json",
]


class BadRequest(Exception):
    """A client error; turned into a 400 (or the given status) JSON answer."""

    def __init__(self, description: str, status: int = 400, code: str = "BadRequest"):
        super().__init__(description)
        self.description = description
        self.status = status
        self.code = code


# ---------------------------------------------------------------------------------------------
# Helpers shared with opensearch.py

_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_FRACTION = re.compile(r"(\.\d+)")


def parse_instant(text: str, end_of_day: bool = False) -> datetime:
    """RFC 3339 / ISO instant or a bare date (start or end of that day) -> aware UTC datetime.

    Fractions beyond microseconds (openEO sends nanoseconds) are truncated.
    Raises ValueError on anything else.
    """
    t = text.strip()
    if _DATE_ONLY.match(t):
        d = datetime.strptime(t, "%Y-%m-%d").date()
        return datetime.combine(d, time.max if end_of_day else time.min, tzinfo=timezone.utc)
    t = t.replace(" ", "T")
    if t[-1:] in ("Z", "z"):
        t = t[:-1] + "+00:00"
    # Python 3.10's fromisoformat wants exactly 3 or 6 fraction digits.
    t = _FRACTION.sub(lambda m: m.group(1)[:7].ljust(7, "0"), t, count=1)
    dt = datetime.fromisoformat(t)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def iso_z(dt: datetime, digits: int = 6) -> str:
    """UTC instant with `digits` fraction digits (0, 3 or 6) and a Z."""
    dt = dt.astimezone(timezone.utc)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if digits == 0:
        return base + "Z"
    return base + "." + f"{dt.microsecond:06d}"[:digits] + "Z"


def parse_bbox(text: str | Iterable[float]) -> tuple[float, float, float, float]:
    """'w,s,e,n' (or a 6-value 3D bbox, or a list) -> (w, s, e, n); ValueError if malformed."""
    vals = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    if len(vals) == 6:
        vals = [vals[0], vals[1], vals[3], vals[4]]
    if len(vals) != 4 or vals[1] > vals[3]:
        raise ValueError("bbox needs west,south,east,north")
    return vals[0], vals[1], vals[2], vals[3]


def bboxes_intersect(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def geometry_bbox(coords: Any) -> tuple[float, float, float, float]:
    """Bounding box of any nested coordinate list (GeoJSON) -- enough for the emulator."""
    xs: list[float] = []
    ys: list[float] = []

    def walk(c: Any) -> None:
        if isinstance(c, (list, tuple)) and c and isinstance(c[0], (int, float)):
            xs.append(float(c[0]))
            ys.append(float(c[1]))
        elif isinstance(c, (list, tuple)):
            for sub in c:
                walk(sub)

    walk(coords)
    if not xs:
        raise ValueError("geometry has no coordinates")
    return min(xs), min(ys), max(xs), max(ys)


def bbox_polygon(b: tuple[float, float, float, float]) -> dict:
    w, s, e, n = b
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def json_response(doc: Any, status: int = 200, content_type: str = "application/json",
                  headers: dict | None = None) -> Response:
    return Response(json.dumps(doc), status=status, content_type=content_type, headers=headers)


# ---------------------------------------------------------------------------------------------
# Documents


def _stac_root(base_url: str) -> str:
    return base_url + "/stac/"


def _asset_type(f: EmuFile, old: bool) -> str:
    if f.type == "image/tiff":
        return OLD_TIFF_TYPE if old else COG_TYPE
    if "xml" in f.type:
        return "text/xml" if old else "application/xml"
    return f.type


# Roles of assets that carry no auth:refs (seen on the real items: quicklooks, metadata).
_NO_AUTH_ROLES = ("thumbnail", "metadata", "overview")


def _asset(f: EmuFile, p: EmuProduct, base_url: str, old: bool) -> dict:
    ex = f.extra or {}
    a: dict[str, Any] = {"href": f"{base_url}/download/{f.download_path}", "type": _asset_type(f, old)}
    title = ex.get("stac_title", f.title)
    if title and not (old and "metadata" in f.roles):
        a["title"] = title
    if old:
        if "data_type" in ex:
            band = {"data_type": ex["data_type"], "scale": 1.0, "offset": 0.0, "sampling": "area"}
            if ex.get("nodata") is not None:
                band["nodata"] = float(ex["nodata"])
            a["raster:bands"] = [band]
        if "proj_shape" in ex:
            a["proj:shape"] = ex["proj_shape"]
            a["proj:transform"] = ex["proj_transform"]
        a["alternate"] = {"MEP": {"href": f.platform_path}}
    else:
        a.update(_current_asset_fields(f, p))
        a["alternate"] = {"local": {"href": "file://" + f.platform_path}}
        if not any(r in _NO_AUTH_ROLES for r in f.roles):
            a["auth:refs"] = ["oidc"]
    a["roles"] = list(f.roles)
    return a


def _current_asset_fields(f: EmuFile, p: EmuProduct) -> dict:
    """file:size, updated and the raster details of an asset in the current item form."""
    ex = f.extra or {}
    a: dict[str, Any] = {}
    if f.size_in_catalogue:
        a["file:size"] = f.size
    if p.updated:
        a["updated"] = iso_z(p.updated)
    a["description"] = f.title
    if "data_type" in ex:
        a["data_type"] = ex["data_type"]
        a["raster:scale"] = ex.get("scale", 1.0)
        a["raster:offset"] = ex.get("offset", 0.0)
        a["raster:sampling"] = "area"
        a["bands"] = [{"name": name} for name in ex.get("bands", [])]
        a["unit"] = ex.get("unit", "1")
    if ex.get("nodata") is not None:
        a["nodata"] = ex["nodata"]
    if "proj_shape" in ex:
        a["proj:shape"] = ex["proj_shape"]
        a["proj:transform"] = ex["proj_transform"]
    # 10 m assets carry no gsd of their own (the item's gsd says it).
    if "gsd" in ex and ex["gsd"] != 10.0:
        a["gsd"] = ex["gsd"]
    return a


def wms_preview_url(p: EmuProduct, base_url: str) -> str | None:
    """The WMS GetMap link of a product with a WMS layer: a rendering service
    (query string, no length), which clients must not treat as a file."""
    layer = (p.extra or {}).get("wms_layer")
    if not layer:
        return None
    w, s, e, n = p.bbox
    query = urlencode({"SERVICE": "WMS", "REQUEST": "getMap", "VERSION": "1.3.0", "CRS": "EPSG:4326",
                       "BBOX": f"{s},{w},{n},{e}", "LAYERS": layer, "TIME": f"{p.datetime:%Y-%m-%d}",
                       "WIDTH": 80, "HEIGHT": 80, "FORMAT": "image/png", "TRANSPARENT": "true"})
    return f"{base_url}/wms/v2?{query}"


def _properties(p: EmuProduct, base_url: str, old: bool) -> dict:
    ex = p.extra or {}
    when = iso_z(p.datetime)
    props: dict[str, Any] = {"title": p.title, "datetime": when, "start_datetime": when,
                             "end_datetime": iso_z(p.end_datetime or p.datetime)}
    if p.published:
        props["created"] = iso_z(p.published)
    if p.updated:
        props["updated"] = iso_z(p.updated)
    if "platform" in ex:
        props["platform"] = ex["platform"].lower().replace("s2", "sentinel-2").replace("s1", "sentinel-1")
    if "instrument" in ex:
        props["instruments"] = [ex["instrument"]]
    if "constellation" in ex:
        props["constellation"] = ex["constellation"]
    if not old and "gsd" in ex:
        props["gsd"] = ex["gsd"]
    if p.cloud_cover is not None:
        props["eo:cloud_cover"] = p.cloud_cover
    if "absolute_orbit" in ex:
        props["sat:absolute_orbit"] = ex["absolute_orbit"]
    if "relative_orbit" in ex:
        props["sat:relative_orbit"] = ex["relative_orbit"]
    if "orbit_direction" in ex:
        props["sat:orbit_state"] = ex["orbit_direction"].lower()
    if not old:
        props["product:type"] = p.product_type
    if "mgrs" in ex:
        zone, band, square = ex["mgrs"]
        props.update({"mgrs:utm_zone": zone, "mgrs:latitude_band": band, "mgrs:grid_square": square})
    if old:
        return props
    if p.tile_id:
        props["grid:code"] = (f"MGRS-{p.tile_id}" if "mgrs" in ex or p.collection.startswith("terrascope-s2")
                              else f"WORLDCOVER-{p.tile_id}")
    if "product_version" in ex:
        props["processing:version"] = ex["product_version"].lstrip("V")
    if "epsg" in ex:
        props["proj:code"] = f"EPSG:{ex['epsg']}"
    if "proj_bbox" in ex:
        props["proj:bbox"] = ex["proj_bbox"]
    props["auth:schemes"] = {"oidc": {
        "type": "openIdConnect",
        "description": "Authenticate with Terrascope OpenID Connect",
        "openIdConnectUrl": base_url + "/auth/realms/terrascope/.well-known/openid-configuration",
    }}
    return props


def item_json(p: EmuProduct, coll: EmuCollection, base_url: str, with_assets: bool = True) -> dict:
    """The STAC item of a product, in the collection's item form (without its assets when
    the fields asked for leave them out: they are most of an item's cost)."""
    old = coll.older_item_form
    root = _stac_root(base_url)
    doc: dict[str, Any] = {
        "type": "Feature",
        "stac_version": "1.0.0" if old else "1.1.0",
        "stac_extensions": OLD_ITEM_EXTENSIONS if old else ITEM_EXTENSIONS,
        "id": p.id,
        "collection": coll.stac_id,
        "bbox": list(p.bbox),
        "geometry": bbox_polygon(p.bbox),
        "properties": _properties(p, base_url, old),
    }
    if old:
        # The older form carried only a bare, underscored collection link (see the real fixture).
        doc["links"] = [{"rel": "collection", "href": coll.stac_id.replace("-", "_"), "type": "application/json"}]
    else:
        coll_url = f"{root}collections/{coll.stac_id}"
        doc["links"] = [
            {"rel": "self", "type": GEOJSON, "href": f"{coll_url}/items/{p.id}"},
            {"rel": "parent", "type": "application/json", "href": coll_url},
            {"rel": "collection", "type": "application/json", "href": coll_url},
            {"rel": "root", "type": "application/json", "href": root},
        ]
    if not with_assets:
        return doc
    doc["assets"] = {f.asset_key: _asset(f, p, base_url, old) for f in p.files}
    wms = None if old else wms_preview_url(p, base_url)
    if wms:
        doc["assets"]["preview"] = {"href": wms, "type": "image/png", "title": "WMS", "roles": ["overview"]}
    return doc


def collection_json(c: EmuCollection, base_url: str) -> dict:
    root = _stac_root(base_url)
    url = f"{root}collections/{c.stac_id}"
    return {
        "type": "Collection",
        "id": c.stac_id,
        "stac_version": "1.1.0",
        "stac_extensions": [],
        "title": c.title,
        "description": f"{c.title} (Terrascope emulator)",
        "license": "proprietary",
        "keywords": ["terrascope", "emulator"],
        "providers": [{"name": "VITO", "roles": ["producer", "processor", "host"], "url": "https://terrascope.be"}],
        "extent": {
            "spatial": {"bbox": [list(c.bbox)]},
            "temporal": {"interval": [[iso_z(c.start), iso_z(c.end) if c.end else None]]},
        },
        "summaries": {"opensearch:identifier": [c.urn]},
        "links": [
            {"rel": "self", "type": "application/json", "href": url},
            {"rel": "parent", "type": "application/json", "href": root},
            {"rel": "root", "type": "application/json", "href": root},
            {"rel": "items", "type": GEOJSON, "href": f"{url}/items"},
            {"rel": "queryables", "type": "application/schema+json", "href": f"{url}/queryables"},
        ],
    }


def conformance(fields_extension: bool = True) -> list[str]:
    """The conformance classes served (without the fields class when that extension is off)."""
    return [c for c in CONFORMANCE if fields_extension or c != fields_ext.CONFORMANCE_CLASS]


def _landing(base_url: str, fields_extension: bool = True) -> dict:
    root = _stac_root(base_url)
    return {
        "type": "Catalog",
        "id": "terra-stac-api",
        "title": "Terrascope",
        "description": "Terrascope STAC API",
        "stac_version": "1.0.0",
        "conformsTo": conformance(fields_extension),
        "links": [
            {"rel": "self", "type": "application/json", "href": root},
            {"rel": "root", "type": "application/json", "href": root},
            {"rel": "data", "type": "application/json", "href": root + "collections"},
            {"rel": "conformance", "type": "application/json", "href": root + "conformance"},
            {"rel": "search", "type": GEOJSON, "method": "GET", "href": root + "search"},
            {"rel": "search", "type": GEOJSON, "method": "POST", "href": root + "search"},
            {"rel": "http://www.opengis.net/def/rel/ogc/1.0/queryables", "type": "application/schema+json",
             "href": root + "queryables"},
            {"rel": "service-desc", "type": "application/vnd.oai.openapi+json;version=3.0", "href": root + "api"},
        ],
    }


def _queryables(base_url: str, coll: str | None) -> dict:
    props = {
        "id": {"type": "string"}, "collection": {"type": "string"},
        "datetime": {"type": "string", "format": "date-time"},
        "eo:cloud_cover": {"type": "number", "minimum": 0, "maximum": 100},
        "grid:code": {"type": "string"}, "mgrs:utm_zone": {"type": "integer"},
        "mgrs:latitude_band": {"type": "string"}, "mgrs:grid_square": {"type": "string"},
        "platform": {"type": "string"}, "sat:relative_orbit": {"type": "integer"},
        "sat:orbit_state": {"type": "string"}, "product:type": {"type": "string"},
    }
    sfx = f"collections/{coll}/queryables" if coll else "queryables"
    return {"$schema": "https://json-schema.org/draft/2019-09/schema", "$id": _stac_root(base_url) + sfx,
            "type": "object", "title": "Queryables", "properties": props, "additionalProperties": True}


# ---------------------------------------------------------------------------------------------
# Search parameters


def _parse_datetime_param(text: str) -> tuple[datetime | None, datetime | None]:
    """STAC datetime: instant, 'a/b', '../b', 'a/..', 'a/', '/b' -> (start, end), inclusive."""
    try:
        if "/" not in text:
            start = parse_instant(text)
            # A bare date means that whole day (lenient: the spec wants full instants).
            return start, parse_instant(text, end_of_day=True) if _DATE_ONLY.match(text.strip()) else start
        a, b = text.split("/", 1)
        start = None if a.strip() in ("", "..") else parse_instant(a)
        end = None if b.strip() in ("", "..") else parse_instant(b, end_of_day=True)
    except ValueError as exc:
        raise BadRequest(f"Invalid datetime parameter: {text!r}: {exc}") from None
    if start is None and end is None and text.strip() not in ("../..", "/", "../", "/.."):
        raise BadRequest(f"Invalid datetime parameter: {text!r}")
    if start and end and start > end:
        raise BadRequest(f"Invalid datetime interval (start after end): {text!r}")
    return start, end


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def _decode_token(token: str) -> int:
    try:
        pad = "=" * (-len(token) % 4)
        offset = int(json.loads(base64.urlsafe_b64decode(token + pad))["o"])
    except (ValueError, KeyError, TypeError):
        raise BadRequest("Invalid pagination token") from None
    if offset < 0:
        raise BadRequest("Invalid pagination token")
    return offset


def _as_list(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return [str(s) for s in v]


def _parse_limit(v: Any) -> int:
    if v in (None, ""):
        return DEFAULT_LIMIT
    try:
        limit = int(v)
    except (TypeError, ValueError):
        raise BadRequest(f"Invalid limit: {v!r}") from None
    if limit < 1:
        raise BadRequest("limit must be at least 1")
    return min(limit, MAX_LIMIT)


def _parse_sortby(v: Any) -> list[tuple[str, bool]]:
    """-> [(field, descending)]; GET '-properties.datetime,+id' or POST [{field, direction}]."""
    out = []
    if isinstance(v, str):
        for part in _as_list(v):
            desc = part.startswith("-")
            out.append((part.lstrip("+- "), desc))
    elif isinstance(v, list):
        for s in v:
            if not isinstance(s, dict) or "field" not in s:
                raise BadRequest("sortby entries need a field")
            out.append((s["field"], str(s.get("direction", "asc")).lower().startswith("desc")))
    return out


# --- CQL2 ------------------------------------------------------------------------------------

_CMP: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b, "eq": lambda a, b: a == b,
    "<>": lambda a, b: a != b, "!=": lambda a, b: a != b, "neq": lambda a, b: a != b,
    "<": lambda a, b: a < b, "lt": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, "lte": lambda a, b: a <= b,
    ">": lambda a, b: a > b, "gt": lambda a, b: a > b,
    ">=": lambda a, b: a >= b, "gte": lambda a, b: a >= b,
}


def _prop(item: dict, name: str) -> Any:
    name = name[len("properties."):] if name.startswith("properties.") else name
    if name in ("id", "collection"):
        return item[name]
    val = item["properties"].get(name)
    if name in ("datetime", "start_datetime", "end_datetime", "created", "updated") and isinstance(val, str):
        return parse_instant(val)
    return val


def _cql_value(arg: Any, item: dict) -> Any:
    if isinstance(arg, dict):
        if "property" in arg:
            return _prop(item, arg["property"])
        if "timestamp" in arg:
            return parse_instant(arg["timestamp"])
        if "date" in arg:
            return parse_instant(arg["date"])
        if "interval" in arg:
            return [None if v == ".." else parse_instant(v) for v in arg["interval"]]
        if "coordinates" in arg or "bbox" in arg:
            return geometry_bbox(arg["coordinates"]) if "coordinates" in arg else parse_bbox(arg["bbox"])
    if isinstance(arg, list):
        return [_cql_value(a, item) for a in arg]
    return arg


def cql2_eval(expr: Any, item: dict) -> bool:
    """Evaluate a CQL2-JSON expression (the basic subset plus like/in/between and bbox-level spatial ops)."""
    if isinstance(expr, bool):
        return expr
    if not isinstance(expr, dict) or "op" not in expr:
        raise BadRequest("Invalid CQL2 filter expression")
    op = str(expr["op"]).lower()
    args = expr.get("args", [])
    if op == "and":
        return all(cql2_eval(a, item) for a in args)
    if op == "or":
        return any(cql2_eval(a, item) for a in args)
    if op == "not":
        return not cql2_eval(args[0], item)
    vals = [_cql_value(a, item) for a in args]
    try:
        if op in _CMP:
            return vals[0] is not None and vals[1] is not None and _CMP[op](vals[0], vals[1])
        if op == "in":
            return vals[0] in vals[1]
        if op == "between":
            return vals[0] is not None and vals[1] <= vals[0] <= vals[2]
        if op == "like":
            pattern = "^" + re.escape(str(vals[1])).replace("%", ".*").replace("_", ".") + "$"
            return vals[0] is not None and re.match(pattern, str(vals[0])) is not None
        if op in ("isnull", "is null"):
            return vals[0] is None
        if op in ("s_intersects", "intersects"):
            return bboxes_intersect(tuple(item["bbox"]), vals[1])
        if op in ("t_intersects", "anyinteracts"):
            when = vals[0]
            lo, hi = (vals[1] if isinstance(vals[1], list) else [vals[1], vals[1]])
            return (lo is None or when >= lo) and (hi is None or when <= hi)
    except (TypeError, IndexError):
        raise BadRequest(f"Invalid arguments for CQL2 operator {op!r}") from None
    raise BadRequest(f"Unsupported CQL2 operator {op!r}")


_TEXT_CLAUSE = re.compile(
    r"^\s*\(?\s*([A-Za-z_][\w:.\-]*)\s*(<=|>=|<>|!=|=|<|>)\s*('(?:[^']*)'|[-+]?\d+(?:\.\d+)?)\s*\)?\s*$")


def cql2_text_to_json(text: str) -> dict:
    """The small CQL2-text subset: `prop OP value [AND prop OP value ...]`."""
    clauses = re.split(r"\s+AND\s+", text.strip(), flags=re.IGNORECASE)
    args = []
    for c in clauses:
        m = _TEXT_CLAUSE.match(c)
        if not m:
            raise BadRequest(f"Unsupported CQL2-text filter: {text!r}")
        name, op, raw = m.groups()
        value: Any = raw[1:-1] if raw.startswith("'") else float(raw)
        args.append({"op": op, "args": [{"property": name}, value]})
    return args[0] if len(args) == 1 else {"op": "and", "args": args}


def _query_ext_match(query: dict, item: dict) -> bool:
    """STAC `query` extension: {"eo:cloud_cover": {"lte": 10}, "grid:code": {"eq": "MGRS-31UFS"}}."""
    for name, ops in query.items():
        val = _prop(item, name)
        if not isinstance(ops, dict):
            ops = {"eq": ops}
        for op, arg in ops.items():
            op = op.lower()
            if op in _CMP:
                if val is None or not _CMP[op](val, arg):
                    return False
            elif op == "in":
                if val not in arg:
                    return False
            elif op == "startswith":
                if not str(val).startswith(str(arg)):
                    return False
            elif op == "endswith":
                if not str(val).endswith(str(arg)):
                    return False
            elif op == "contains":
                if str(arg) not in str(val):
                    return False
            else:
                raise BadRequest(f"Unsupported query operator {op!r}")
    return True


# ---------------------------------------------------------------------------------------------
# Searching


def _search(archive: Archive, base_url: str, params: dict, fields_extension: bool = True
            ) -> tuple[list[dict], int, int]:
    """-> (items of the page, number matched, offset of the next page or -1)."""
    try:
        # A server without the extension ignores the parameter, as stac-fastapi does.
        fields = fields_ext.parse_fields(params.get("fields")) if fields_extension else None
    except fields_ext.FieldsError as exc:
        raise BadRequest(str(exc)) from None
    collections = _as_list(params.get("collections"))
    if collections:
        cols = [c for c in (archive.collection(k) for k in collections) if c is not None and c.in_stac]
        cols = [c for c in cols if c.stac_id in collections]
    else:
        cols = [c for c in archive.collections if c.in_stac]
    ids = set(_as_list(params.get("ids")))
    start = end = None
    if params.get("datetime"):
        start, end = _parse_datetime_param(str(params["datetime"]))
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
    limit = _parse_limit(params.get("limit"))
    offset = _decode_token(str(params["token"])) if params.get("token") else 0
    cql = _filter_param(params)
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
                    "properties": _properties(p, base_url, False)}
            if (cql is None or cql2_eval(cql, item)) and (not query or _query_ext_match(query, item)):
                kept.append((p, c))
        matched = kept
    _sort(matched, _parse_sortby(params.get("sortby")))
    page = matched[offset:offset + limit]
    nxt = offset + limit if offset + limit < len(matched) else -1
    assets = fields is None or fields.keeps("assets")
    return [fields_ext.apply(item_json(p, c, base_url, assets), fields) for p, c in page], len(matched), nxt


def _filter_param(params: dict) -> Any:
    flt = params.get("filter")
    if flt in (None, ""):
        return None
    lang = str(params.get("filter-lang") or params.get("filter_lang") or "").lower()
    if isinstance(flt, dict):
        return flt
    text = str(flt).strip()
    if lang == "cql2-json" or (not lang and text.startswith("{")):
        try:
            return json.loads(text)
        except ValueError:
            raise BadRequest("Invalid CQL2-JSON filter") from None
    return cql2_text_to_json(text)


def _sort(matched: list[tuple[EmuProduct, EmuCollection]], sortby: list[tuple[str, bool]]) -> None:
    # SFEOS default: newest first, then id.
    keys = sortby or [("properties.datetime", True), ("id", True)]
    for name, desc in reversed(keys):
        name = name[len("properties."):] if name.startswith("properties.") else name
        if name == "datetime":
            getter: Callable = lambda pc: pc[0].datetime  # noqa: E731
        elif name in ("id", "title"):
            getter = lambda pc: pc[0].id  # noqa: E731
        elif name == "eo:cloud_cover":
            getter = lambda pc: pc[0].cloud_cover if pc[0].cloud_cover is not None else -1.0  # noqa: E731
        elif name == "collection":
            getter = lambda pc: pc[1].stac_id  # noqa: E731
        else:
            raise BadRequest(f"Cannot sort by {name!r}")
        matched.sort(key=getter, reverse=desc)


def _item_collection(items: list[dict], matched: int, links: list[dict]) -> dict:
    return {"type": "FeatureCollection", "features": items, "links": links,
            "numberMatched": matched, "numberReturned": len(items)}


def _get_params(request: Request) -> dict:
    params: dict[str, Any] = {}
    for key in request.args:
        vals = request.args.getlist(key)
        params[key] = ",".join(vals) if key in ("collections", "ids") else vals[-1]
    return params


def _get_next_link(url: str, request: Request, token: str) -> dict:
    pairs = [(k, v) for k, v in request.args.items(multi=True) if k != "token"] + [("token", token)]
    return {"rel": "next", "type": GEOJSON, "method": "GET", "href": url + "?" + urlencode(pairs)}


def _search_get(request: Request, archive: Archive, base_url: str, url: str, params: dict,
                fields_extension: bool = True) -> Response:
    items, matched, nxt = _search(archive, base_url, params, fields_extension)
    root = _stac_root(base_url)
    links = [{"rel": "root", "type": "application/json", "href": root},
             {"rel": "self", "type": GEOJSON, "href": request.url}]
    if nxt >= 0:
        links.append(_get_next_link(url, request, _encode_token(nxt)))
    return json_response(_item_collection(items, matched, links), content_type=GEOJSON)


def _search_post(request: Request, archive: Archive, base_url: str, fields_extension: bool = True) -> Response:
    try:
        body = json.loads(request.get_data(as_text=True) or "{}")
    except ValueError:
        raise BadRequest("Request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object")
    items, matched, nxt = _search(archive, base_url, body, fields_extension)
    root = _stac_root(base_url)
    links = [{"rel": "root", "type": "application/json", "href": root},
             {"rel": "self", "type": GEOJSON, "href": root + "search"}]
    if nxt >= 0:
        nbody = dict(body)
        nbody["token"] = _encode_token(nxt)
        links.append({"rel": "next", "type": GEOJSON, "method": "POST", "href": root + "search",
                      "body": nbody, "merge": False})
    return json_response(_item_collection(items, matched, links), content_type=GEOJSON)


def _collections(request: Request, archive: Archive, base_url: str) -> Response:
    root = _stac_root(base_url)
    cols = [c for c in archive.collections if c.in_stac]
    limit = _parse_limit(request.args.get("limit"))
    offset = _decode_token(request.args["token"]) if request.args.get("token") else 0
    page = cols[offset:offset + limit]
    links = [{"rel": "root", "type": "application/json", "href": root},
             {"rel": "parent", "type": "application/json", "href": root},
             {"rel": "self", "type": "application/json", "href": request.url}]
    if offset + limit < len(cols):
        links.append(_get_next_link(root + "collections", request, _encode_token(offset + limit)))
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
    root = _stac_root(base_url)
    if method not in ("GET", "HEAD") and parts != ["search"]:
        raise BadRequest("Method not allowed", 405, "MethodNotAllowed")
    if not parts:
        return json_response(_landing(base_url, fx))
    if parts == ["conformance"]:
        return json_response({"conformsTo": conformance(fx)})
    if parts == ["queryables"]:
        return json_response(_queryables(base_url, None), content_type="application/schema+json")
    if parts in (["_mgmt", "ping"], ["_mgmt", "health"]):
        return json_response({"message": "PONG"})
    if parts == ["search"]:
        if method == "POST":
            return _search_post(request, archive, base_url, fx)
        if method in ("GET", "HEAD"):
            return _search_get(request, archive, base_url, root + "search", _get_params(request), fx)
        raise BadRequest("Method not allowed", 405, "MethodNotAllowed")
    if parts[0] != "collections":
        raise BadRequest(f"Not found: /stac{subpath}", 404, "NotFoundError")
    if len(parts) == 1:
        return _collections(request, archive, base_url)
    c = _stac_collection(archive, parts[1])
    if len(parts) == 2:
        return json_response(collection_json(c, base_url))
    if parts[2:] == ["queryables"]:
        return json_response(_queryables(base_url, c.stac_id), content_type="application/schema+json")
    if parts[2] == "items" and len(parts) == 3:
        params = _get_params(request)
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
