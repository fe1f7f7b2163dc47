"""What the emulator's STAC API and OpenSearch catalogue share: instants, bounding boxes,
JSON answers and the WMS preview link of a product.

Pure helpers: no routing, no documents of either API. It must not serve downloads or check
authentication, or import anything from the client side of terrafs.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, time, timezone
from typing import Any, Iterable
from urllib.parse import urlencode

from werkzeug.wrappers import Response

from terrafs.emulator.archive import EmuProduct

DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_FRACTION = re.compile(r"(\.\d+)")


def parse_instant(text: str, end_of_day: bool = False) -> datetime:
    """RFC 3339 / ISO instant or a bare date (start or end of that day) -> aware UTC datetime.

    Fractions beyond microseconds (openEO sends nanoseconds) are truncated.
    Raises ValueError on anything else.
    """
    t = text.strip()
    if DATE_ONLY.match(t):
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
