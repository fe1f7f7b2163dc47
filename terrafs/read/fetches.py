"""Single-flight, batched ranged fetches.

Readers of one file that miss units at about the same time share one request:
the first becomes the leader of a batch, waits `plug` seconds for the others
(the kernel cuts one large read into concurrent 128 KiB FUSE reads) to add
what they miss, then fetches the batch, adjacent units as one range and runs
a cached gap apart as one range when refetching the gap is cheaper than a
request (policy.ranges). Readers of units in flight wait for that fetch.

Locking: the in-flight table and batches are guarded by the reader's
condition (shared with streams.py); nothing is fetched or stored while it is held.
Must not: decide how far to fetch (policy.py), or touch the disk cache.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from terrafs.errors import FetchError
from terrafs.read.policy import ReadPolicy, ranges
from terrafs.read.remote import Units

Key = tuple[str, int]


class Fetch:
    """A batch of ranged fetches of one file; readers of its units wait on `done`."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.wanted: set[int] = set()
        self.open = True  # others may still add units
        self.blocks: dict[int, bytes] = {}
        self.error: BaseException | None = None


class Fetches:
    def __init__(self, cond: threading.Condition, policy: ReadPolicy):
        self._cond = cond
        self._p = policy
        self._inflight: dict[Key, Fetch] = {}
        self._batches: dict[str, Fetch] = {}

    def in_flight(self, key: Key) -> bool:
        """Caller holds cond."""
        return key in self._inflight

    def claim(self, u: Units, missing: list[int], extra: list[int],
              elsewhere: Callable[[int], bool]) -> tuple[Fetch | None, dict[int, Fetch], list[int]]:
        """Split missing units into a batch I lead, fetches to wait on, and units coming otherwise.

        Caller holds cond. `elsewhere(i)` says whether unit i is on its way by
        other means (held in RAM, or a stream brings it soon; it may move the
        stream on). `extra` units join the batch only if this read fetches
        anyway and nothing brings them yet; nobody waits for them.
        """
        mine: list[int] = []
        theirs: dict[int, Fetch] = {}
        coming: list[int] = []
        for i in missing:
            fetch = self._inflight.get((u.key, i))
            if fetch is not None:
                theirs[i] = fetch
            elif elsewhere(i):
                coming.append(i)
            else:
                mine.append(i)
        lead = None
        if mine:
            batch = self._batches.get(u.key)
            if batch is None or not batch.open:
                batch = lead = self._batches[u.key] = Fetch()
            for i in mine:
                batch.wanted.add(i)
                self._inflight[(u.key, i)] = batch
                if lead is None:
                    theirs[i] = batch
            for i in extra:
                if (u.key, i) not in self._inflight and not elsewhere(i):
                    batch.wanted.add(i)
                    self._inflight[(u.key, i)] = batch
        return lead, theirs, coming

    def run(self, u: Units, fetch: Fetch, get_range: Callable[[int, int], bytes],
            store: Callable[[int, bytes], None]) -> dict[int, bytes]:
        """Lead a batch: let others join, fetch its ranges, store each wanted unit, wake the waiters."""
        if self._p.plug > 0:
            time.sleep(self._p.plug)
        with self._cond:
            fetch.open = False
            if self._batches.get(u.key) is fetch:
                del self._batches[u.key]
            wanted = sorted(fetch.wanted)
        got: dict[int, bytes] = {}
        try:
            for a, b in ranges(wanted, self._p.merge_gap // u.unit):
                start, end = a * u.unit, min(b * u.unit, u.size)
                data = get_range(start, end)
                if len(data) != end - start:
                    raise FetchError(f"got {len(data)} bytes of {u.url} for a range of {end - start}")
                for i in range(a, b):
                    if i in fetch.wanted:
                        block = data[(i - a) * u.unit: (i - a) * u.unit + u.length(i)]
                        store(i, block)
                        got[i] = block
            fetch.blocks = got
        except FetchError as exc:
            fetch.error = exc
            raise
        except Exception as exc:
            fetch.error = exc
            raise FetchError(f"fetch of {u.url} failed: {exc}") from exc
        finally:
            with self._cond:
                for i in wanted:
                    self._inflight.pop((u.key, i), None)
            fetch.done.set()
        return got
