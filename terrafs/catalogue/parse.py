"""Values shared by the STAC and OpenSearch backends: a record's pieces made safe.

Turns the pieces of a catalogue record (dates, sizes, hrefs, local paths,
titles) into the safe, typed values of catalogue/model.py. Every function is
total: a malformed value (a zone of +99:99, a year past 9999, a size of 2^64,
a name with control or bidi characters) becomes None or a safe value, never an
exception that would hide a whole listing; names are NFC-normalised. Nothing
here knows STAC or OpenSearch field names (stac.py, opensearch.py) or sends
requests (fetch.py). Every catalogue string that reaches a log line passes
through text.shown (no forged lines, no terminal tricks).

Everything tolerates the forms the real services have been seen to use (and a
few plausible ones more): the client must keep working on the real services
where a detail is unconfirmed.
"""
from __future__ import annotations

import json
import logging
import posixpath
import re
import sys
import unicodedata
from collections import Counter
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Callable, Iterable, Mapping

from terrafs.catalogue.links import Link, href_path, http_url, local_path, place  # noqa: F401 (re-exported)
from terrafs.catalogue.model import Filter, Product, ProductFile
from terrafs.text import UNSAFE_CHARS, SizeTooLarge, parse_size, shown

log = logging.getLogger(__name__)

# "2022-02-11T11:33:21.024Z", "2023-02-20T07:49:41.024000Z", "...999999999Z",
# "2020-01-01T00:00:00+00:00", "2020-01-01 10:00:00", "2020-01-01".
_DATETIME = re.compile(
    r"^\s*(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"\s*(Z|z|[+-]\d{2}:?\d{2}|[+-]\d{2})?\s*$"
)
_MAX_NAME_BYTES = 255  # NAME_MAX on Linux filesystems

def safe_name(s: Any) -> str | None:
    """`s` as one safe path component, or None when it cannot be made safe.

    NFC-normalised (one spelling of "é", as a shell types it); control
    characters (C0, C1, NUL) and bidi overrides/isolates/marks are dropped;
    "/" and "\\" become "_"; "", "." and ".." and names longer than NAME_MAX
    bytes are refused.
    """
    if not isinstance(s, str):
        return None
    if not (s.isascii() and s.isprintable()):  # else NFC and UNSAFE_CHARS leave it as it is
        s = UNSAFE_CHARS.sub("", unicodedata.normalize("NFC", s))
    name = s.replace("/", "_").replace("\\", "_").strip()
    if name in ("", ".", ".."):
        return None
    if len(name.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES:
        return None
    return name


def parse_datetime(value: Any, end_of_day: bool = False) -> datetime | None:
    """A UTC-aware datetime from an ISO-8601 string, or None.

    Accepts Z / +00:00 / +0000 / no zone (taken as UTC), fractional seconds of
    any length (truncated to microseconds), and date-only strings (midnight, or
    the last microsecond of the day with `end_of_day`).
    """
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, date):
        return _day_bound(value, end_of_day)
    if not isinstance(value, str):
        return None
    m = _DATETIME.match(value)
    if not m:
        return None
    y, mo, d, hh, mm, ss, frac, zone = m.groups()
    try:
        if hh is None:
            return _day_bound(date(int(y), int(mo), int(d)), end_of_day)
        micro = int((frac or "0")[:6].ljust(6, "0"))
        dt = datetime(int(y), int(mo), int(d), int(hh), int(mm), int(ss or 0), micro)
        # A zone of +99:99 (ValueError), or 9999-12-31T23:00-02:00 (past year 9999: OverflowError).
        return dt.replace(tzinfo=_zone(zone)).astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None


def _day_bound(d: date, end_of_day: bool) -> datetime:
    t = time(23, 59, 59, 999999) if end_of_day else time(0, 0)
    return datetime.combine(d, t, tzinfo=timezone.utc)


def _zone(zone: str | None) -> timezone:
    if zone is None or zone in ("Z", "z"):
        return timezone.utc
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:].replace(":", "")
    minutes = int(digits[:2]) * 60 + (int(digits[2:4]) if len(digits) > 2 else 0)
    return timezone(sign * timedelta(minutes=minutes))


def parse_interval(value: Any) -> tuple[datetime | None, datetime | None]:
    """OpenSearch `date`: "start/", "start/end", "../end" or one instant (start only)."""
    if not isinstance(value, str):
        return None, None
    if "/" not in value:
        return parse_datetime(value), None
    first, _, second = value.partition("/")
    return parse_datetime(first), parse_datetime(second, end_of_day=True)


def format_datetime(dt: datetime) -> str:
    """UTC, whole seconds unless there is a fraction, with Z: what both services take."""
    dt = dt.astimezone(timezone.utc)
    if dt.microsecond:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def record_text(raw: Any) -> str | None:
    """A record as compact JSON text; None for one nested too deep to write back
    (it parsed, but at the edge of the recursion limit: that item is skipped)."""
    try:
        return json.dumps(raw, separators=(",", ":"))
    except (RecursionError, ValueError):
        return None


def link_size(value: Any) -> int | None:
    """A byte count from file:size / length (int, integral float, digit string); None when
    absent or garbage. Raises SizeTooLarge beyond 2^63 - 1: that file is refused."""
    if value is None:
        return None
    try:
        return parse_size(value)
    except SizeTooLarge:
        raise
    except ValueError:
        return None


def build_product(
    *,
    id: str,
    title: str,
    collection: str,
    when: datetime,
    links: Iterable[Link],
    record: str,
    local_paths: Mapping[str, str] | None = None,
) -> Product | None:
    """A Product from parsed links; None (with a warning) when no safe names exist.

    `local_paths` maps file base names to platform paths learnt elsewhere (the
    OpenSearch accessedFrom=MEP answer); file:// links of the record itself are
    paired with http links of the same base name.
    """
    links = list(links)
    known = dict(local_paths or {})
    for link in links:
        if not link.is_http and link.local_path:
            known.setdefault(posixpath.basename(link.local_path), link.local_path)
    # Each link's platform path and its place: worked out once, for the vote and for the file.
    lps = [link.local_path or known.get(link.basename) for link in links]
    placed = [place(lp) if lp else None for lp in lps]
    folder = _folder(links, placed) or safe_name(title)
    if folder is None:
        log.warning("skipping product %s: no safe folder name", shown(id))
        return None
    files: list[ProductFile] = []
    seen_hrefs: set[str] = set()
    seen_paths: set[str] = set()
    for link, lp, at in zip(links, lps, placed):
        if not link.is_http or link.href in seen_hrefs or link.has_query:
            continue  # a query string: a rendering service (the WMS preview), never a file; not worth a warning
        seen_hrefs.add(link.href)
        pf = _product_file(link, lp, at or place(link.path))
        if pf is None:
            log.warning("product %s: skipping a file whose name cannot be made safe", shown(folder))
            continue
        if pf.relpath in seen_paths:
            log.warning("product %s: two files named %s; keeping the first", shown(folder), shown(pf.relpath))
            continue
        seen_paths.add(pf.relpath)
        files.append(pf)
    return Product(
        id=id, title=title, collection=collection, datetime=when,
        folder=folder, files=tuple(files), record=record,
    )


def _folder(links: list[Link], placed: list[tuple[str | None, str | None] | None]) -> str | None:
    """The product folder: from platform paths (their `placed`) if any, else from download URL paths.

    A majority vote, so that one odd link (a WMS preview at /wms/v2) does not
    decide the folder of the whole product.
    """
    places = [at for at in placed if at is not None]
    if not places:
        places = [place(link.path) for link in links if link.is_http and not link.has_query]
    votes = Counter(f for f, _ in places if f)
    for name, _ in votes.most_common():
        safe = safe_name(name)
        if safe:
            return safe
    return None


def _product_file(link: Link, lp: str | None, at: tuple[str | None, str | None]) -> ProductFile | None:
    """The file of `link`, at its platform path `lp` (if any) whose place() is `at`."""
    if link.has_query:
        # A rendering service (the WMS GetMap preview), not an archive file: it has
        # no stable size and no Range support, so it gets no place in the tree.
        return None
    name = safe_name(link.basename)
    if name is None:
        return None
    res = at[1]
    relpath = f"{res}/{name}" if res else name
    # Types, roles and titles repeat in every product: one copy each in RAM.
    return ProductFile(
        relpath=relpath, href=link.href, size=link.size, local_path=lp,
        type=_interned(link.type), role=_interned(link.role), title=_interned(link.title),
    )


def _interned(s: str | None) -> str | None:
    return sys.intern(s) if isinstance(s, str) and len(s) < 200 else s


def post_filter(
    product: Product,
    start: datetime | None,
    end: datetime | None,
    cloud_cover: float | None,
    tile_id: str | None,
    flt: Filter | None,
) -> bool:
    """Whether a product passes the filters the service may have ignored.

    Values the record does not carry (no cloud cover, no tile id field) pass:
    the client cannot tell, and the service was asked to filter anyway.
    """
    if start is not None and product.datetime < start:
        return False
    if end is not None and product.datetime > end:
        return False
    if flt is None:
        return True
    if flt.cloud_cover_max is not None and cloud_cover is not None and cloud_cover > flt.cloud_cover_max:
        return False
    if flt.tile_ids:
        wanted = {t.upper() for t in flt.tile_ids}
        if tile_id is not None:
            return tile_id.upper() in wanted
        # No tile field: the tile is a token of Sentinel-2 style titles (..._31UFS_...).
        tokens = set(re.split(r"[_\-.]", product.title.upper()))
        return bool(tokens & wanted)
    return True


class ProductSelection:
    """Products of one query: each once, only those passing post_filter, at most `limit`."""

    def __init__(self, start: datetime | None, end: datetime | None, flt: Filter | None,
                 limit: int | None):
        self.products: list[Product] = []
        self._ids: set[str] = set()
        self._args = (start, end, flt)
        self._limit = limit

    def add(self, product: Product | None, cloud_cover: float | None, tile_id: str | None) -> bool:
        """Keeps `product` if it passes; True once the limit is reached."""
        start, end, flt = self._args
        if product is not None and product.id not in self._ids and \
                post_filter(product, start, end, cloud_cover, tile_id, flt):
            self._ids.add(product.id)
            self.products.append(product)
        return self._limit is not None and len(self.products) >= self._limit


def unique_collections(raws: Iterable[dict], parse: Callable[[dict], Any]) -> list:
    """Parsed collections, each folder id once, in the service's order."""
    out = []
    ids: set[str] = set()
    for raw in raws:
        c = parse(raw)
        if c is not None and c.id not in ids:
            ids.add(c.id)
            out.append(c)
    return out


def properties_of(raw: Mapping[str, Any]) -> dict:
    props = raw.get("properties")
    return props if isinstance(props, dict) else {}


def query_range(
    start: datetime | None, end: datetime | None, flt: Filter | None
) -> tuple[datetime | None, datetime | None, bool]:
    """The query's range intersected with the filter's; the flag is False when empty."""
    if flt is not None:
        if flt.start is not None:
            start = flt.start if start is None else max(start, flt.start)
        if flt.end is not None:
            end = flt.end if end is None else min(end, flt.end)
    if start is not None and end is not None and start > end:
        return start, end, False
    return start, end, True


def to_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
