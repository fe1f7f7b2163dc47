"""Single-flight, batched ranged fetches, each unit handed over as it arrives.

Readers of one file that miss units at about the same time share one request:
the first becomes the leader of a batch, which a fetch thread runs: it waits
`plug` seconds for the others (the kernel cuts one large read into concurrent
128 KiB FUSE reads) to add what they miss, then fetches the batch, adjacent
units as one range and runs a cached gap apart as one range when refetching
the gap is cheaper than a request (policy.ranges). Readers of units in flight
(the leader's own included) wait for those units only, not for the whole
answer: the bytes a plan fetched past a read (the kernel's read-ahead, a
neighbouring tile) arrive behind the read's, and on a slow link the read is
answered while they flow. A plan's guess of the next tile row runs as a fetch
of its own (`alongside`), sent right after the read's.

Locking, pairwise: the reader's condition (shared with streams.py) guards the
in-flight table and batches; `Fetch._arrival` (a leaf) guards a fetch's
arrived units. Nothing is fetched or stored while either is held.
Must not: decide how far to fetch (policy.py), or touch the disk cache.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Iterable

from terrafs.errors import FetchError, SizeChanged
from terrafs.read.policy import ReadPolicy, ranges
from terrafs.read.remote import Units

Key = tuple[str, int]

#: Chunk size of a ranged fetch's body: a unit is handed over as soon as its bytes are in.
RANGE_CHUNK = 64 << 10


class Fetch:
    """A batch of ranged fetches of one file; readers of its units wait for them (`wait`)."""

    def __init__(self) -> None:
        self.done = threading.Event()  # every unit arrived, or the fetch failed
        self.wanted: set[int] = set()
        self.open = True  # others may still add units
        self.blocks: dict[int, bytes] = {}  # arrived units (guarded by _arrival)
        self.error: BaseException | None = None
        self._arrival = threading.Condition(threading.Lock())

    def wait(self, i: int, timeout: float) -> bool:
        """Until unit i arrived or the fetch ended (False: timed out)."""
        deadline = time.monotonic() + timeout
        with self._arrival:
            while i not in self.blocks and not self.done.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._arrival.wait(left)
            return True

    def arrived(self, i: int, block: bytes) -> None:
        with self._arrival:
            self.blocks[i] = block
            self._arrival.notify_all()

    def failure(self, url: str) -> FetchError:
        """A new error for one waiter of this failed fetch: a SizeChanged stays one (openfiles.py
        learns the file's new size from it), any other says which fetch failed."""
        err = self.error
        if isinstance(err, SizeChanged):
            return SizeChanged(err.url, err.size, err.expected)
        return FetchError(f"fetch of {url} failed: {err}")

    def finish(self, error: BaseException | None = None) -> None:
        with self._arrival:
            if error is not None:
                self.error = error
            self.done.set()
            self._arrival.notify_all()


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
        anyway and nothing brings them yet; nobody waits for them. The
        caller waits for its own units of a batch it leads too (`start` runs it).
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
                theirs[i] = batch
            for i in extra:
                if (u.key, i) not in self._inflight and not elsewhere(i):
                    batch.wanted.add(i)
                    self._inflight[(u.key, i)] = batch
        return lead, theirs, coming

    def alongside(self, u: Units, span: tuple[int, int], elsewhere: Callable[[int], bool],
                  chunks: Callable[[int, int], Iterable[bytes]], store: Callable[[int, bytes], None]) -> None:
        """Fetch the units of bytes `span` that nothing brings yet in a request of their own, which
        nobody waits for (a plan's guess of the next tile row): reads that want them later join it.
        Caller does not hold cond; `elsewhere` as for `claim`."""
        fetch = Fetch()
        fetch.open = False  # its own request: it neither joins a read's batch nor is joined
        with self._cond:
            for i in u.span(*span):
                if (u.key, i) not in self._inflight and not elsewhere(i):
                    fetch.wanted.add(i)
                    self._inflight[(u.key, i)] = fetch
        if fetch.wanted:
            self.start(u, fetch, chunks, store)

    def start(self, u: Units, fetch: Fetch, chunks: Callable[[int, int], Iterable[bytes]],
              store: Callable[[int, bytes], None]) -> None:
        """Run a batch this reader leads on a fetch thread (its waiters, the leader too, wait per unit)."""
        threading.Thread(target=self.run, args=(u, fetch, chunks, store), name="terrafs-fetch",
                         daemon=True).start()

    def run(self, u: Units, fetch: Fetch, chunks: Callable[[int, int], Iterable[bytes]],
            store: Callable[[int, bytes], None]) -> None:
        """Let others join, fetch the batch's ranges, store and hand over each wanted unit as it arrives."""
        if self._p.plug > 0:
            time.sleep(self._p.plug)
        with self._cond:
            fetch.open = False
            if self._batches.get(u.key) is fetch:
                del self._batches[u.key]
            wanted = sorted(fetch.wanted)
        error: BaseException | None = None
        try:
            for a, b in ranges(wanted, self._p.merge_gap // u.unit):
                self._range(u, fetch, a, b, chunks, store)
        except FetchError as exc:
            error = exc
        except Exception as exc:  # a bug or a cache failure must not strand the readers waiting
            error = FetchError(f"fetch of {u.url} failed: {exc}")
        finally:
            with self._cond:
                for i in wanted:
                    self._inflight.pop((u.key, i), None)
            fetch.finish(error)

    def _range(self, u: Units, fetch: Fetch, a: int, b: int, chunks: Callable[[int, int], Iterable[bytes]],
               store: Callable[[int, bytes], None]) -> None:
        """Units a..b-1 in one request, each stored and handed over once its bytes are in."""
        start, end = a * u.unit, min(b * u.unit, u.size)
        buf, base, i = bytearray(), start, a  # buf holds bytes [base, base + len(buf)) of the file
        for chunk in chunks(start, end):
            buf += chunk
            if base + len(buf) > end:
                raise FetchError(f"got more than {end - start} bytes of {u.url} for a range")
            while i < b and i * u.unit + u.length(i) <= base + len(buf):
                lo = i * u.unit - base
                if i in fetch.wanted:
                    block = bytes(buf[lo: lo + u.length(i)])
                    store(i, block)
                    fetch.arrived(i, block)
                i += 1
            used = i * u.unit - base
            if used > 0:
                del buf[:used]
                base += used
        if i < b:
            raise FetchError(f"got {base + len(buf) - start} bytes of {u.url} for a range of {end - start}")
