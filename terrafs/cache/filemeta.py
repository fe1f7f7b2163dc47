"""Per-file facts that must outlive the daemon and never be evicted: one door to them.

- the identity (ETag, Last-Modified) the server gave last for a URL: the identity guard
  (read/identity.py) compares every answer with it, and the shared tier says from it which
  version this node holds;
- the size a HEAD request found for a file the catalogue lists without one (asked once, ever);
- the size the server gives a file republished at another size than its listing's.

They live in the block cache's metadata store (never evicted, so eviction of blocks cannot make
the guard forget a version), as JSON text under string keys; a cache that could not be opened
keeps them in RAM. Every entry read is input: malformed ones read as unknown.
Must not: fetch, hold blocks, or decide what a changed identity means.
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Any, Protocol

log = logging.getLogger(__name__)

Identity = tuple[Any, Any]  # (etag, last_modified); either may be None, never both in a record


class TextStore(Protocol):
    """The block cache's metadata: text values under string keys (BlockCache, MemoryOnlyCache)."""

    def get_meta(self, key: str) -> Any: ...

    def set_meta(self, key: str, value: Any) -> None: ...


class FileMeta:
    """Thread-safe as its store is (diskcache and a dict both are, per call)."""

    def __init__(self, store: TextStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._resized: dict[str, tuple[int, int]] | None = None  # url -> (listed, now), once read

    # -- identity ---------------------------------------------------------------

    def identity(self, url: str) -> Identity | None:
        got = self._load("ident:" + url)
        if (isinstance(got, list) and len(got) == 2 and all(v is None or isinstance(v, str) for v in got)
                and got != [None, None]):
            return got[0], got[1]
        return None

    def set_identity(self, url: str, ident: Identity | None) -> None:
        """Record the version seen last (None: forget it, e.g. its blocks were dropped)."""
        self._save("ident:" + url, None if ident is None else [ident[0], ident[1]])

    # -- sizes ------------------------------------------------------------------

    def head_size(self, url: str) -> int | None:
        got = self._load("size:" + url)
        return got if _count(got) else None

    def set_head_size(self, url: str, size: int) -> None:
        self._save("size:" + url, size)

    def size_change(self, url: str) -> tuple[int, int] | None:
        """(size listed, size the server gives) of a file republished at another size, or None.
        Asked at every stat, so kept in RAM too (they are few); read from the store once."""
        with self._lock:
            if self._resized is None:
                got = self._load("resized")
                self._resized = {u: (v[0], v[1]) for u, v in got.items()
                                 if isinstance(v, list) and len(v) == 2 and all(_count(n) for n in v)} \
                    if isinstance(got, dict) else {}
            return self._resized.get(url)

    def set_size_change(self, url: str, listed: int, now: int) -> None:
        """Remembered here even when the store cannot write it (a full disk)."""
        self.size_change(url)
        with self._lock:
            assert self._resized is not None
            self._resized[url] = (listed, now)
            text = {u: list(v) for u, v in self._resized.items()}
        self._save("resized", text)

    # -- text -------------------------------------------------------------------

    def _load(self, key: str) -> Any:
        text = self._store.get_meta(key)
        if not isinstance(text, str):
            return None
        try:
            return json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: brackets nested deeper than the parser goes
            return None

    def _save(self, key: str, value: Any) -> None:
        self._store.set_meta(key, json.dumps(value))


def _count(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0
