"""Helpers shared by the STAC and OpenSearch backends.

Turns the pieces of a catalogue record (dates, sizes, hrefs, local paths,
titles) into the safe, typed values of catalogue/model.py, and holds the two
bits of plumbing both backends need: one JSON request wrapper (counting,
timeouts, one-line CatalogueErrors) and the page walk (de-duplication, stop on
empty or repeated pages). Nothing here knows STAC or OpenSearch field names;
those live in stac.py and opensearch.py. Never logs or raises with secrets:
credentials travel in the session's auth, never in URLs.

Everything tolerates the forms the real services have been seen to use (and a
few plausible ones more): the client must keep working on the real services
where a detail is unconfirmed.
"""
from __future__ import annotations

import json
import logging
import posixpath
import re
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import unquote, urlsplit

import requests

from terrafs.catalogue.model import Filter, Product, ProductFile
from terrafs.errors import CatalogueError

log = logging.getLogger(__name__)

# "2022-02-11T11:33:21.024Z", "2023-02-20T07:49:41.024000Z", "...999999999Z",
# "2020-01-01T00:00:00+00:00", "2020-01-01 10:00:00", "2020-01-01".
_DATETIME = re.compile(
    r"^\s*(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"\s*(Z|z|[+-]\d{2}:?\d{2}|[+-]\d{2})?\s*$"
)
# Resolution sub-folders between a product folder and its files (FAPAR/LAI: 10M/, 20M/).
_RESOLUTION_DIR = re.compile(r"^\d+M$", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_NAME_BYTES = 255  # NAME_MAX on Linux filesystems
_HTTP_SCHEMES = ("http", "https")



def safe_name(s: Any) -> str | None:
    """`s` as one safe path component, or None when it cannot be made safe.

    Control characters (NUL included) are dropped, "/" and "\\" become "_";
    "", "." and ".." and names longer than NAME_MAX bytes are refused.
    """
    if not isinstance(s, str):
        return None
    name = _CONTROL.sub("", s).replace("/", "_").replace("\\", "_").strip()
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
    except ValueError:
        return None
    return dt.replace(tzinfo=_zone(zone)).astimezone(timezone.utc)


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


def parse_size(value: Any) -> int | None:
    """A byte count from file:size / length: int, integral float or digit string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float):
        return int(value) if value >= 0 and value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text) if any(c in text for c in ".eE") else int(text)
        except ValueError:
            return None
        return parse_size(number)
    return None


def http_url(href: Any) -> bool:
    return isinstance(href, str) and urlsplit(href).scheme.lower() in _HTTP_SCHEMES


def local_path(href: Any) -> str | None:
    """A platform path from "file:///data/..." or a bare "/data/..."; else None."""
    if not isinstance(href, str) or not href:
        return None
    parts = urlsplit(href)
    if parts.scheme.lower() == "file":
        path = unquote(parts.path)
    elif parts.scheme == "" and href.startswith("/"):
        path = href
    else:
        return None
    path = posixpath.normpath(path)
    if not path.startswith("/") or "\x00" in path:
        return None
    return path


def href_path(href: str) -> str:
    """The URL-unquoted path of an href."""
    return unquote(urlsplit(href).path)


def place(path: str) -> tuple[str | None, str | None]:
    """(product folder, resolution sub-folder) of a file at `path`.

    ".../<PROD>/10M/<file>" -> ("<PROD>", "10M"); ".../<PROD>/<file>" -> ("<PROD>", None).
    """
    parts = [p for p in path.split("/") if p]
    if len(parts) < 2:
        return None, None
    parent = parts[-2]
    if _RESOLUTION_DIR.match(parent) and len(parts) >= 3:
        return parts[-3], parent.upper()
    return parent, None


@dataclass(frozen=True)
class Link:
    """One file of a record before it becomes a ProductFile (any scheme)."""

    href: str  # as given: http(s), file:// or a bare platform path
    local_path: str | None = None
    size: int | None = None
    type: str | None = None
    role: str | None = None
    title: str | None = None

    @property
    def is_http(self) -> bool:
        return http_url(self.href)

    @property
    def basename(self) -> str:
        return posixpath.basename(href_path(self.href).rstrip("/"))


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
    folder = _folder(links, known) or safe_name(title)
    if folder is None:
        log.warning("skipping product %r: no safe folder name", id[:200])
        return None
    files: list[ProductFile] = []
    seen_hrefs: set[str] = set()
    seen_paths: set[str] = set()
    for link in links:
        if not link.is_http or link.href in seen_hrefs or urlsplit(link.href).query:
            continue  # a query string: a rendering service (the WMS preview), never a file; not worth a warning
        seen_hrefs.add(link.href)
        pf = _product_file(link, known)
        if pf is None:
            log.warning("product %s: skipping a file whose name cannot be made safe", folder)
            continue
        if pf.relpath in seen_paths:
            log.warning("product %s: two files named %s; keeping the first", folder, pf.relpath)
            continue
        seen_paths.add(pf.relpath)
        files.append(pf)
    return Product(
        id=id, title=title, collection=collection, datetime=when,
        folder=folder, files=tuple(files), record=record,
    )


def _folder(links: list[Link], known: Mapping[str, str]) -> str | None:
    """The product folder: from platform paths if any, else from download URL paths.

    A majority vote, so that one odd link (a WMS preview at /wms/v2) does not
    decide the folder of the whole product.
    """
    platform = [link.local_path or known.get(link.basename) for link in links]
    paths = [p for p in platform if p]
    if not paths:
        paths = [href_path(link.href) for link in links if link.is_http and not urlsplit(link.href).query]
    votes = Counter(f for f in (place(p)[0] for p in paths) if f)
    for name, _ in votes.most_common():
        safe = safe_name(name)
        if safe:
            return safe
    return None


def _product_file(link: Link, known: Mapping[str, str]) -> ProductFile | None:
    if urlsplit(link.href).query:
        # A rendering service (the WMS GetMap preview), not an archive file: it has
        # no stable size and no Range support, so it gets no place in the tree.
        return None
    name = safe_name(link.basename)
    if name is None:
        return None
    lp = link.local_path or known.get(link.basename)
    _, res = place(lp) if lp else place(href_path(link.href))
    relpath = f"{res}/{name}" if res else name
    return ProductFile(
        relpath=relpath, href=link.href, size=link.size, local_path=lp,
        type=link.type, role=link.role, title=link.title,
    )


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


def redact_url(url: str) -> str:
    """The URL for a message: no user info, and cut short."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    text = parts._replace(netloc=netloc).geturl()
    return text if len(text) <= 300 else text[:300] + "..."


ACCEPT = "application/geo+json, application/json"
TIMEOUT = (10, 60)  # connect, read: catalogue searches can be slow


class CatalogueHTTPError(CatalogueError):
    """The service answered with a non-2xx status (kept for page-size fallbacks)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


FALLBACK_PAGE_SIZE = 100  # the services' documented default page size: known to work


def first_page(fetch: Callable[[int], Any], size: int, what: str) -> tuple[Any, int]:
    """The first page of a walk asked with `size`, and the page size that worked.

    A service that refuses a large page gets one more try with FALLBACK_PAGE_SIZE.
    """
    try:
        return fetch(size), size
    except CatalogueHTTPError as e:
        if not may_be_page_size(e.status) or size <= FALLBACK_PAGE_SIZE:
            raise
        log.info("%s: a page of %d was refused (HTTP %d); using %d from now on",
                 what, size, e.status, FALLBACK_PAGE_SIZE)
        return fetch(FALLBACK_PAGE_SIZE), FALLBACK_PAGE_SIZE


def may_be_page_size(status: int) -> bool:
    """Whether an error status may be the service refusing our page size.

    What the real services answer to a too-large page is unknown (400? 500?),
    so every error except "who are you", "no such thing" and "slow down" gets
    one retry with a smaller page.
    """
    return status not in (401, 403, 404, 429)


class JsonRequester:
    """Sends catalogue requests through one session and counts them."""

    def __init__(self, session: requests.Session):
        self._session = session
        self._count = 0
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return self._count

    def __call__(self, method: str, url: str, params: Mapping[str, Any] | None = None,
                 body: Any = None) -> Any:
        with self._lock:
            self._count += 1
        where = f"{method} {redact_url(url)}"
        try:
            r = self._session.request(
                method, url, params=params, json=body, headers={"Accept": ACCEPT}, timeout=TIMEOUT
            )
        except requests.RequestException as e:
            raise CatalogueError(f"catalogue request failed ({type(e).__name__}): {where}") from None
        shown = f"{method} {redact_url(r.url or url)}"
        if not 200 <= r.status_code < 300:
            raise CatalogueHTTPError(
                f"catalogue answered HTTP {r.status_code}{_reason(r)}: {shown}", r.status_code
            )
        try:
            return r.json()
        except ValueError:
            kind = r.headers.get("Content-Type", "?").split(";")[0]
            raise CatalogueError(f"catalogue answered non-JSON ({kind}): {shown}") from None


def _reason(r: requests.Response) -> str:
    """A short reason from an error body (OpenSearch exceptions, STAC detail)."""
    try:
        data = r.json()
    except ValueError:
        return ""
    text = None
    if isinstance(data, dict):
        exc = data.get("exceptions")
        if isinstance(exc, list) and exc and isinstance(exc[0], dict):
            text = exc[0].get("exceptionText")
        text = text or data.get("detail") or data.get("description") or data.get("message")
    if not isinstance(text, str) or not text:
        return ""
    text = _CONTROL.sub(" ", text).strip()
    return f" ({text[:150]})"


def walk_pages(
    first: Callable[[], Any],
    next_page: Callable[[Any], Any | None],
    total: Callable[[Any], int | None],
    what: str,
) -> Iterator[dict]:
    """Features of every page, each once.

    `first()` fetches the first page; `next_page(page)` the one after `page`, or
    None when there is none. The walk stops on an empty page, on a page that
    brings nothing new (a service repeating itself), or once as many features
    as `total(page)` announces have been seen.
    """
    page = first()
    seen: set[str] = set()
    raw = 0
    while True:
        feats = page.get("features") if isinstance(page, dict) else None
        if not isinstance(feats, list):
            raise CatalogueError(f"catalogue answer for {what} has no 'features' list")
        raw += len(feats)
        new = 0
        for f in feats:
            if not isinstance(f, dict):
                log.warning("%s: skipping a feature that is not an object", what)
                continue
            fid = f.get("id")
            key = fid if isinstance(fid, str) else json.dumps(f, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            new += 1
            yield f
        if not feats:
            return
        if new == 0:
            log.warning("%s: a page repeated features already seen; stopping", what)
            return
        announced = total(page)
        if announced is not None and raw >= announced:
            return
        page = next_page(page)
        if page is None:
            if announced is not None:
                # OpenSearch serves at most 100 000 results of one query.
                log.warning("%s: %d results announced but only %d served; narrow the query "
                            "(a smaller date range or a filter) to see the rest", what, announced, raw)
            return


class SeenRequests:
    """Remembers requests already sent, so a looping next link ends the walk."""

    def __init__(self) -> None:
        self._keys: set[str] = set()

    def first_time(self, *parts: Any) -> bool:
        key = json.dumps(parts, sort_keys=True, default=str)
        if key in self._keys:
            log.warning("catalogue next link points to a page already read; stopping")
            return False
        self._keys.add(key)
        return True
