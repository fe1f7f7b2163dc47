"""Catalogue answers kept on disk between mounts, as JSON that cannot run code.

The store lives in the meta cache (a diskcache.Cache in the private cache
folder). Values are JSON text of the catalogue model (collections, products,
placements); the cache's Disk refuses pickled rows, so an entry written by an
older terrafs (pickled) or planted by someone else is a miss, never unpickled.
Entries carry their own lifetime instead of a diskcache expiry, so that an
expired answer can still be served when the catalogue is unreachable.

Must not: know about trees, HTTP or FUSE; store anything but JSON text here.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import fields
from datetime import datetime
from typing import Any, Callable

import diskcache

from terrafs.catalogue.model import Collection, Product, ProductFile
from terrafs.errors import CatalogueError
from terrafs.text import shown

log = logging.getLogger(__name__)

FORMAT = 1  # bumped when the JSON layout changes: older entries are then misses
_KINDS: dict[str, type] = {"Collection": Collection, "Product": Product, "ProductFile": ProductFile}
_FIELDS = {cls: (cls.__name__, tuple(f.name for f in fields(cls))) for cls in _KINDS.values()}


class NoPickleDisk(diskcache.Disk):
    """diskcache's Disk that never unpickles: a pickled row reads as a miss.

    Reading a pickle runs whatever code it names; our own values are numbers
    and JSON text, so a pickled value can only be an old entry or a planted one.
    """

    def fetch(self, mode, filename, value, read):
        if mode == diskcache.core.MODE_PICKLE:
            # diskcache.Cache.get treats an OSError as "gone": the caller sees a miss.
            raise OSError("pickled cache entry ignored")
        return super().fetch(mode, filename, value, read)

    def get(self, key, raw):
        if not raw:
            raise OSError("pickled cache key ignored")
        return super().get(key, raw)


def encode(value: Any) -> str:
    """JSON text of model values (dataclasses, datetimes, lists, tuples, str, numbers)."""
    return json.dumps(value, default=_default, separators=(",", ":"))


def decode(text: str) -> Any:
    return json.loads(text, object_hook=_hook)


def _default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return {"$dt": obj.isoformat()}
    kind = _FIELDS.get(type(obj))
    if kind is not None:
        out = {"$": kind[0]}
        for name in kind[1]:
            out[name] = getattr(obj, name)
        return out
    raise TypeError(f"cannot store a {type(obj).__name__} in the listing cache")


def _hook(obj: dict) -> Any:
    if "$dt" in obj:
        return datetime.fromisoformat(obj["$dt"])
    kind = obj.pop("$", None)
    if kind is None:
        return obj
    cls = _KINDS[kind]
    if cls is Product:
        obj["files"] = tuple(obj.get("files") or ())
    return cls(**obj)


class ListingStore:
    """Catalogue answers on disk (in a diskcache.Cache opened with NoPickleDisk, or None)."""

    def __init__(self, cache, namespace: str, ttl: float, recent_ttl: float):
        self._cache = cache
        self._ns = namespace
        self.ttl = ttl
        self.recent_ttl = recent_ttl

    def storage_key(self, key: str) -> str:
        """The key in the disk cache under which the answer for `key` is stored."""
        return f"listing:{FORMAT}:{self._ns}:{key}"

    def _read(self, key: str) -> tuple[float, float, Any] | None:
        if self._cache is None:
            return None
        try:
            text = self._cache.get(self.storage_key(key))
            if text is None:
                return None
            entry = decode(text)
            return float(entry["stored"]), float(entry["ttl"]), entry["value"]
        except Exception as exc:  # a damaged cache must not take the mount down
            log.warning("listing cache entry %s unreadable (%s); asking the catalogue", shown(key), shown(exc))
            return None

    def get(self, key: str):
        """The stored answer while it is fresh, else None."""
        entry = self._read(key)
        if entry is None:
            return None
        stored_at, ttl, value = entry
        return value if time.time() - stored_at < ttl else None

    def get_stale(self, key: str):
        """The stored answer however old (for when the catalogue is gone)."""
        entry = self._read(key)
        return None if entry is None else entry[2]

    def put(self, key: str, value, recent: bool) -> None:
        if self._cache is None:
            return
        try:
            ttl = self.recent_ttl if recent else self.ttl
            self._cache.set(self.storage_key(key), encode({"stored": time.time(), "ttl": ttl, "value": value}))
        except Exception as exc:
            log.warning("listing cache write failed: %s", shown(exc))

    def query(self, key: str, fetch: Callable[[], object], *, recent: bool):
        """A fresh stored answer, else fetch and store one; a stale one if fetching fails."""
        value = self.get(key)
        if value is not None:
            return value
        try:
            value = fetch()
        except CatalogueError as exc:
            stale = self.get_stale(key)
            if stale is None:
                raise
            log.warning("catalogue failed (%s); serving the cached listing %s", exc, shown(key))
            return stale
        self.put(key, value, recent)
        return value
