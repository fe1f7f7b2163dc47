"""Counters of one component under one leaf lock, so threads never lose an increment.

A component (the downloader, the reader, the shared tier, ...) keeps its
counters in one `Counters` and gives a frozen snapshot to whoever reads its
figures (metrics, the control socket). The lock is a leaf: `add` may be called
under any other lock, and nothing else is taken under it.
Must not: know what it counts, or call out while holding its lock.
"""
from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any


class Counters:
    """Named numbers under one leaf lock (safe to bump under any other lock)."""

    def __init__(self, **initial: int | float) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int | float] = dict(initial)

    def add(self, name: str, n: int | float = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def get(self, name: str) -> int | float:
        with self._lock:
            return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int | float]:
        """A copy, taken under the lock."""
        with self._lock:
            return dict(self._values)

    def reset(self, values: Mapping[str, int | float] | None = None) -> None:
        with self._lock:
            self._values = {k: 0 for k in self._values} if values is None else dict(values)


class StatusCounts:
    """Responses by HTTP status, as a requests response hook (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def hook(self, response: Any, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self._counts[str(response.status_code)] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


# The catalogue sessions are made deep inside build.py, one per catalogue
# object; like prometheus_client's own default registry, one count per process
# is the simple way to see them all (build.catalogue_session registers the hook).
CATALOGUE_RESPONSES = StatusCounts()
