"""The STAC API's search parameters: limits, datetime intervals, lists and sortby, and the
BadRequest error every STAC module raises.

It parses and sorts only: no documents, no routing, nothing from the client side of terrafs.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

from terrafs.emulator.archive import EmuCollection, EmuProduct
from terrafs.emulator.common import DATE_ONLY, parse_instant

DEFAULT_LIMIT = 10  # SFEOS default page size
MAX_LIMIT = 10000  # larger limits are clamped (the real maximum is not documented)


class BadRequest(Exception):
    """A client error; turned into a 400 (or the given status) JSON answer."""

    def __init__(self, description: str, status: int = 400, code: str = "BadRequest"):
        super().__init__(description)
        self.description = description
        self.status = status
        self.code = code


def parse_datetime_param(text: str) -> tuple[datetime | None, datetime | None]:
    """STAC datetime: instant, 'a/b', '../b', 'a/..', 'a/', '/b' -> (start, end), inclusive."""
    try:
        if "/" not in text:
            start = parse_instant(text)
            # A bare date means that whole day (lenient: the spec wants full instants).
            return start, parse_instant(text, end_of_day=True) if DATE_ONLY.match(text.strip()) else start
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


def as_list(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return [str(s) for s in v]


def parse_limit(v: Any) -> int:
    if v in (None, ""):
        return DEFAULT_LIMIT
    try:
        limit = int(v)
    except (TypeError, ValueError):
        raise BadRequest(f"Invalid limit: {v!r}") from None
    if limit < 1:
        raise BadRequest("limit must be at least 1")
    return min(limit, MAX_LIMIT)


def parse_sortby(v: Any) -> list[tuple[str, bool]]:
    """-> [(field, descending)]; GET '-properties.datetime,+id' or POST [{field, direction}]."""
    out = []
    if isinstance(v, str):
        for part in as_list(v):
            desc = part.startswith("-")
            out.append((part.lstrip("+- "), desc))
    elif isinstance(v, list):
        for s in v:
            if not isinstance(s, dict) or "field" not in s:
                raise BadRequest("sortby entries need a field")
            out.append((s["field"], str(s.get("direction", "asc")).lower().startswith("desc")))
    return out


def sort(matched: list[tuple[EmuProduct, EmuCollection]], sortby: list[tuple[str, bool]]) -> None:
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
