"""The STAC API's paging: opaque tokens (an offset), GET parameters, next links and the
FeatureCollection of one page.

It pages only: no searching, no routing, nothing from the client side of terrafs.
"""
from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlencode

from werkzeug.wrappers import Request

from terrafs.emulator.stac.documents import GEOJSON
from terrafs.emulator.stac.params import BadRequest


def encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def decode_token(token: str) -> int:
    try:
        pad = "=" * (-len(token) % 4)
        offset = int(json.loads(base64.urlsafe_b64decode(token + pad))["o"])
    except (ValueError, KeyError, TypeError):
        raise BadRequest("Invalid pagination token") from None
    if offset < 0:
        raise BadRequest("Invalid pagination token")
    return offset


def item_collection(items: list[dict], matched: int, links: list[dict]) -> dict:
    return {"type": "FeatureCollection", "features": items, "links": links,
            "numberMatched": matched, "numberReturned": len(items)}


def get_params(request: Request) -> dict:
    params: dict[str, Any] = {}
    for key in request.args:
        vals = request.args.getlist(key)
        params[key] = ",".join(vals) if key in ("collections", "ids") else vals[-1]
    return params


def get_next_link(url: str, request: Request, token: str) -> dict:
    pairs = [(k, v) for k, v in request.args.items(multi=True) if k != "token"] + [("token", token)]
    return {"rel": "next", "type": GEOJSON, "method": "GET", "href": url + "?" + urlencode(pairs)}
