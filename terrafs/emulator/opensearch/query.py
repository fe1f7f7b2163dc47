"""OpenSearch query parameters: which are allowed, integers, intervals ("[0,50[", "60]"),
instants, areas (bbox, WKT, lat/lon/radius), sortKeys, accessedFrom and the product filter; the
OpenSearchError every OpenSearch module raises.

It parses and filters only: no documents, no paging, nothing from the client side of terrafs.
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Callable

from terrafs.emulator.archive import EmuCollection, EmuProduct
from terrafs.emulator.common import bboxes_intersect, parse_bbox, parse_instant

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


def int_param(args: Any, name: str, default: int, minimum: int) -> int:
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


def instant_param(args: Any, name: str, end: bool) -> datetime | None:
    raw = args.get(name)
    if raw in (None, ""):
        return None
    try:
        return parse_instant(raw, end_of_day=end)
    except ValueError:
        raise OpenSearchError(name, f"Invalid value '{raw}' for parameter {name}: not a date or date-time") from None


def area_param(args: Any) -> tuple[float, float, float, float] | None:
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


def check_params(args: Any, allowed: set[str]) -> None:
    for key in args.keys():
        if key not in allowed:
            raise OpenSearchError(key, f"Unsupported parameter '{key}'")


def sort_keys(raw: str | None) -> tuple[str, bool] | None:
    """"title", "start", "start,,0" -> (field, ascending)."""
    if not raw:
        return None
    parts = raw.split(",")
    name = parts[0]
    if name not in ("title", "start", "date", "end", "updated", "published", "cloudCover"):
        raise OpenSearchError("sortKeys", f"Unsupported sort key '{name}'")
    asc = not (len(parts) >= 3 and parts[2] == "0")
    return name, asc


def sort_echo(raw: str) -> str:
    name, asc = sort_keys(raw) or ("", True)
    return f"{name},,{1 if asc else 0},0,highValue"


def product_filter(args: Any, coll: EmuCollection) -> Callable[[EmuProduct], bool]:
    start = instant_param(args, "start", False)
    end = instant_param(args, "end", True)
    area = area_param(args)
    cloud = _interval_param(args, "cloudCover", _float_bound)
    pub = _interval_param(args, "publicationDate", _date_bound)
    mod = _interval_param(args, "modificationDate", _date_bound)
    title, uid = args.get("title"), args.get("uid")
    ptype, tile = args.get("productType"), args.get("tileId")
    group, platform = args.get("productGroupId"), args.get("platform")
    orbit = int_param(args, "relativeOrbitNumber", -1, 0) if args.get("relativeOrbitNumber") else None
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


def accessed_from(args: Any) -> bool:
    raw = (args.get("accessedFrom") or "").strip()
    if raw.upper() == "MEP":
        return True
    if raw.upper() in ("", "HTTP", "HTTPS"):
        return False
    raise OpenSearchError("accessedFrom", f"Unsupported data access method '{raw}'")
