"""Date folders (YYYY/MM/DD) of a dated collection, each from the query that costs least.

- A day's folder comes from that day's query (one page of a day's products);
  reaching it needs no listing of its month: a lookup of one day below a month
  not listed yet asks for that day alone.
- A month's folder (which days have products) comes from the catalogue's
  cheapest answer: ids and dates only where the service offers it
  (Catalogue.acquisitions, the STAC fields extension), else the month's full
  listing, whose products then fill every day of the month.
- A walk over a month (find, du, a glob over days): once WALK_DAYS distinct
  days of one month have been asked within WALK_SECONDS, the next day asked
  lists the rest of the month (from the first to the last day not asked yet:
  a walk in either order reads no day twice) in one paged query, in pages of
  the service's largest size, and the month's other days come from that answer.
- Where the folders are not the products' acquisition days (the platform
  layout of a collection whose platform paths name another day, as S1
  coherence's second acquisition), and for YYYY/MM and YYYY folders, the month
  (or year) is listed whole, as before.
Every answer is kept in the listing store (per day, and the month's days), so
a listing dropped from RAM comes back from the disk cache.

Must not: know about FUSE or HTTP; keep catalogue records in RAM.
"""
from __future__ import annotations

import calendar
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from terrafs.catalogue import Collection, Product
from terrafs.tree.dating import platform_date
from terrafs.errors import CatalogueError
from terrafs.tree.nodes import DirNode, Node, _ts, give_back_memory, product_folders

log = logging.getLogger(__name__)

# No Earth-observation archive reaches further back (Landsat 1 flew in 1972).
EARLIEST = datetime(1950, 1, 1, tzinfo=timezone.utc)
WALK_DAYS = 3  # distinct days of one month asked within WALK_SECONDS: the next lists the month
WALK_SECONDS = 60.0
_DAY_NAME = re.compile(r"\d\d")


@dataclass(frozen=True)
class Placement:
    collection: Collection
    prefix: tuple[str, ...]
    dated: bool
    depth: int = 3  # date folders below the prefix: 3 = YYYY/MM/DD, 2 = YYYY/MM, 1 = YYYY
    shifted: bool = False  # platform paths name another day than the acquisition's


@dataclass(frozen=True)
class Source:
    """Where the products (with their records) of a listing come from again."""

    collection: Collection
    products: Callable[[], list[Product]]


def _utc_day(p: Product) -> tuple[int, int, int]:
    d = p.datetime.astimezone(timezone.utc)
    return d.year, d.month, d.day


class DatedFolders:
    """The date-folder half of terrafs.tree.paths.Tree (a mixin: it uses the tree's catalogue,
    store, budget, layout, extent and filters)."""

    def __init__(self) -> None:
        self._asked: dict[tuple, dict[int, float]] = {}  # month -> day -> when its query was sent
        self._pending: dict[str, list[Product]] = {}  # day key -> products from one month listing
        self._walk_lock = threading.Lock()

    # ---- years and months -------------------------------------------
    def _load_years(self, pl: Placement) -> dict[str, Node]:
        start, end = self._extent(pl)
        return {
            f"{y:04d}": DirNode(
                mtime=_ts(datetime(y, 1, 1, tzinfo=timezone.utc)),
                loader=lambda y=y: self._load_months(pl, y) if pl.depth > 1 else self._load_span(pl, y),
                weighed=pl.depth == 1,
            )
            for y in range(start.year, end.year + 1)
        }

    def _load_months(self, pl: Placement, year: int) -> dict[str, Node]:
        start, end = self._extent(pl)
        out: dict[str, Node] = {}
        for m in range(1, 13):
            first = datetime(year, m, 1, tzinfo=timezone.utc)
            last = first + timedelta(days=calendar.monthrange(year, m)[1]) - timedelta(microseconds=1)
            if last < start or first > end:
                continue
            node = DirNode(mtime=_ts(first), ttl=self._ttl(recent=self._is_recent(last)))
            if pl.depth == 2:
                node.loader, node.weighed = (lambda m=m: self._load_span(pl, year, m)), True
            elif self._by_month(pl):
                node.loader = lambda m=m, node=node: self._load_month_whole(pl, year, m, node)
            else:
                node.loader = lambda m=m, node=node: self._load_days(pl, year, m, node)
                node.find = lambda name, m=m, node=node: self._find_day(pl, year, m, name, node)
            out[f"{m:02d}"] = node
        return out

    def _by_month(self, pl: Placement) -> bool:
        return self.layout == "platform" and pl.shifted

    def shifted(self, pl: Placement, sample: list[Product]) -> bool:
        """Whether a sample product's platform path names another day than its acquisition's."""
        return any(self._date_of(pl, p) != _utc_day(p) for p in sample) if pl.depth == 3 else False

    def _date_of(self, pl: Placement, p: Product) -> tuple[int, int, int]:
        """The date folders that hold `p`: its platform path's in the platform layout."""
        found = self.layout == "platform" and platform_date(pl.depth, p.folder,
                                                            (f.local_path or f.href for f in p.files))
        return found or _utc_day(p)

    def _key(self, kind: str, pl: Placement, span: str) -> str:
        return f"{kind}:{pl.collection.remote_id}:{span}:{self._filter_for(pl.collection)!r}"

    def _bounds(self, pl: Placement, first: datetime, days: int) -> tuple[datetime, datetime, datetime]:
        """(query start, query end, last instant) of `days` days from `first`, within the extent."""
        last = first + timedelta(days=days) - timedelta(microseconds=1)
        start, end = self._extent(pl)
        return max(first, start), min(last, end), last

    # ---- a month's days ---------------------------------------------
    def _load_days(self, pl: Placement, year: int, month: int, node: DirNode) -> dict[str, Node]:
        """Which days of a month have products: the catalogue's cheapest answer."""
        first = datetime(year, month, 1, tzinfo=timezone.utc)
        q_start, q_end, last = self._bounds(pl, first, calendar.monthrange(year, month)[1])
        flt = self._filter_for(pl.collection)

        def index() -> list[int]:
            ask = getattr(self.catalogue, "acquisitions", None)
            times = ask(pl.collection, q_start, q_end, flt) if ask is not None else None
            if times is None:
                return self._fill_month(pl, year, month)
            return sorted({t.day for t in (x.astimezone(timezone.utc) for x in times)
                           if (t.year, t.month) == (year, month)})

        days = self.store.query(self._key("days", pl, f"{year:04d}-{month:02d}"), index,
                                recent=self._is_recent(last))
        out: dict[str, Node] = {}
        last_day = calendar.monthrange(year, month)[1]
        for d in days if isinstance(days, list) else ():
            if not isinstance(d, int) or isinstance(d, bool) or not 1 <= d <= last_day:
                continue  # a damaged cache entry: no such day
            name = f"{d:02d}"
            hit = node.found.get(name)
            out[name] = hit[1] if hit is not None and hit[1] is not None else self._day_node(pl, year, month, d)
        node.found.clear()
        return out

    def _find_day(self, pl: Placement, year: int, month: int, name: str, node: DirNode) -> Node | None:
        """One day's folder of a month not listed yet, from that day's query (None: no products)."""
        if not _DAY_NAME.fullmatch(name) or not 1 <= int(name) <= calendar.monthrange(year, month)[1]:
            return None
        day = self._day_node(pl, year, month, int(name))
        q_start, q_end, _ = self._bounds(pl, datetime(year, month, int(name), tzinfo=timezone.utc), 1)
        found = day if q_start <= q_end and self._children(day) else None
        node.found[name] = (time.monotonic() + node.ttl, found)
        return found

    def _day_node(self, pl: Placement, year: int, month: int, day: int) -> DirNode:
        first = datetime(year, month, day, tzinfo=timezone.utc)
        _, _, last = self._bounds(pl, first, 1)
        node = DirNode(mtime=_ts(first), ttl=self._ttl(recent=self._is_recent(last)), weighed=True)
        node.loader = lambda: self._day_folders(pl, year, month, day)
        return node

    def _day_folders(self, pl: Placement, year: int, month: int, day: int) -> dict[str, Node]:
        products = self._day_products(pl, year, month, day)
        if self.layout == "platform" and self.shifted(pl, products):
            log.info("collection %s: platform paths name other days than the acquisitions; listing its "
                     "months whole", pl.collection.id)
            pl = Placement(pl.collection, pl.prefix, pl.dated, pl.depth, True)
            return self._shifted_day(pl, year, month, day)
        source = Source(pl.collection, lambda: self._day_products(pl, year, month, day, pending=False))
        return product_folders((p for p in products if self._date_of(pl, p) == (year, month, day)), source)

    def _day_products(self, pl: Placement, year: int, month: int, day: int,
                      pending: bool = True) -> list[Product]:
        key = self._key("day", pl, f"{year:04d}-{month:02d}-{day:02d}")
        if pending:
            with self._walk_lock:
                found = self._pending.pop(key, None)
            if found is not None:
                return found
        found = self.store.get(key)
        if found is not None:
            return found
        walk = self._walking(pl, year, month, day) if pending else None
        if walk is not None:
            try:
                self._fill_month(pl, year, month, walk)
            except CatalogueError as exc:
                log.info("listing a whole month failed (%s); asking for the day", exc)
            with self._walk_lock:
                found = self._pending.pop(key, None)
            if found is not None:
                return found
        q_start, q_end, last = self._bounds(pl, datetime(year, month, day, tzinfo=timezone.utc), 1)
        if q_start > q_end:
            return []
        flt = self._filter_for(pl.collection)
        return self.store.query(key, lambda: self.catalogue.products(pl.collection, q_start, q_end, flt),
                                recent=self._is_recent(last))

    def _walking(self, pl: Placement, year: int, month: int, day: int) -> tuple[int, int] | None:
        """Whether the days asked so far say a walk reads this month (see the module's docstring):
        None, or the days (first, last) the walk has yet to read, `day` among them."""
        now = time.monotonic()
        with self._walk_lock:
            if len(self._asked) > 64:
                self._asked.clear()
            asked = self._asked.setdefault((pl.collection.remote_id, year, month), {})
            for d in [d for d, t in asked.items() if now - t > WALK_SECONDS]:
                del asked[d]
            asked[day] = now
            if len(asked) <= WALK_DAYS:
                return None
            left = [d for d in range(1, calendar.monthrange(year, month)[1] + 1) if d == day or d not in asked]
            return left[0], left[-1]

    def _fill_month(self, pl: Placement, year: int, month: int, span: tuple[int, int] | None = None) -> list[int]:
        """A month's full listing (or of its days `span`, first and last), kept per day (store, and
        in RAM until each day is asked); the days that have products."""
        days = calendar.monthrange(year, month)[1]
        first, final = span or (1, days)
        q_start, q_end, last = self._bounds(pl, datetime(year, month, first, tzinfo=timezone.utc),
                                            final - first + 1)
        flt = self._filter_for(pl.collection)
        products = self.catalogue.products(pl.collection, q_start, q_end, flt) if q_start <= q_end else []
        by_day: dict[int, list[Product]] = {d: [] for d in range(first, final + 1)}
        for p in products:
            y, m, d = _utc_day(p)
            if (y, m) == (year, month) and first <= d <= final:
                by_day[d].append(p)
        del products
        recent = self._is_recent(last)
        pending: dict[str, list[Product]] = {}
        for d, found in by_day.items():
            key = self._key("day", pl, f"{year:04d}-{month:02d}-{d:02d}")
            self.store.put(key, found, recent)
            pending[key] = [Product(p.id, p.title, p.collection, p.datetime, p.folder, p.files, "")
                            for p in found]  # records are read back from the store when asked
        with self._walk_lock:
            self._pending = pending  # one month at a time: RAM stays bounded
        listed = [d for d, found in by_day.items() if found]
        if span is None:  # the whole month: which days have products, too
            self.store.put(self._key("days", pl, f"{year:04d}-{month:02d}"), listed, recent)
        del by_day
        give_back_memory()
        return listed

    # ---- whole months and spans (as listed before) --------------------
    def _load_month_whole(self, pl: Placement, year: int, month: int, node: DirNode) -> dict[str, Node]:
        by_day: dict[int, list[Product]] = {}
        for p in self._span_products(pl, year, month):
            y, m, d = self._date_of(pl, p)
            if (y, m) == (year, month):  # the service may return products outside the range (facts §1.2)
                by_day.setdefault(d, []).append(p)
        out: dict[str, Node] = {}
        for d, prods in sorted(by_day.items()):
            day = DirNode(mtime=_ts(datetime(year, month, d, tzinfo=timezone.utc)), ttl=node.ttl, weighed=True)
            day.loader = lambda d=d: self._shifted_day(pl, year, month, d)
            day.children = self._shifted_day(pl, year, month, d, prods)
            day.expires = time.monotonic() + day.ttl
            self.budget.loaded(day, day.children)
            out[f"{d:02d}"] = day
        return out

    def _shifted_day(self, pl: Placement, year: int, month: int, day: int,
                     products: list[Product] | None = None) -> dict[str, Node]:
        source = Source(pl.collection, lambda: self._span_products(pl, year, month))
        if products is None:
            products = [p for p in self._span_products(pl, year, month)
                        if self._date_of(pl, p) == (year, month, day)]
        return product_folders(products, source)

    def _load_span(self, pl: Placement, year: int, month: int | None = None) -> dict[str, Node]:
        """Product folders of a month (YYYY/MM platform paths) or a year (YYYY/YYYYMMDD)."""
        want = (year, month) if month else (year,)
        source = Source(pl.collection, lambda: self._span_products(pl, year, month))
        products = self._span_products(pl, year, month)
        return product_folders((p for p in products if self._date_of(pl, p)[: len(want)] == want), source)

    def _span_products(self, pl: Placement, year: int, month: int | None) -> list[Product]:
        """Products of a month, or of a whole year when month is None (one paged query)."""
        first = datetime(year, month or 1, 1, tzinfo=timezone.utc)
        days = calendar.monthrange(year, month)[1] if month else 365 + calendar.isleap(year)
        q_start, q_end, last = self._bounds(pl, first, days)
        flt = self._filter_for(pl.collection)
        span = f"{year:04d}-{month:02d}" if month else f"{year:04d}"
        return self.store.query(
            self._key("month", pl, span),
            lambda: self.catalogue.products(pl.collection, q_start, q_end, flt),
            recent=self._is_recent(last),
        )
