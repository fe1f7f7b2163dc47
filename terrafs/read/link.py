"""What the mount measures of its link and of the kernel, for the cost model (cost.py).

`LinkMeter` keeps the time to first byte and the throughput of recent answers
(ranged fetches and streams, timed by the reader); `KernelMeter` keeps how far
past a program's read the kernel asks (the FUSE reads this mount receives).
Both are leaf locks: safe to call under any other lock of the read path.

Must not: fetch, decide, or keep more than a few dozen numbers.
"""
from __future__ import annotations

import statistics
import threading
from collections import deque

from terrafs.read.cost import Link

#: Before the first answer: a modest link (what the policy assumed before it measured).
ASSUMED = Link(ttfb=0.03, throughput=8e6)
_SAMPLES = 16
_PAGE = 4096


class LinkMeter:
    """Recent answers' time to first byte and throughput."""

    def __init__(self, assumed: Link = ASSUMED) -> None:
        self._lock = threading.Lock()
        self._ttfb: deque[float] = deque(maxlen=_SAMPLES)
        self._flow: deque[tuple[int, float]] = deque(maxlen=_SAMPLES)
        self._now = assumed

    def first_byte(self, seconds: float) -> None:
        """A request's first byte came `seconds` after it was sent (no budget wait in between)."""
        if seconds >= 0:
            with self._lock:
                self._ttfb.append(seconds)
                self._update()

    def flowed(self, nbytes: int, seconds: float) -> None:
        """`nbytes` of an answer arrived over `seconds` after its first bytes."""
        if nbytes > 0 and seconds >= 0:
            with self._lock:
                self._flow.append((nbytes, max(seconds, 1e-6)))
                self._update()

    def now(self) -> Link:
        return self._now  # replaced whole under the lock: a plain read is consistent

    def _update(self) -> None:
        ttfb = statistics.median(self._ttfb) if self._ttfb else self._now.ttfb
        if self._flow:
            throughput = sum(n for n, _ in self._flow) / sum(s for _, s in self._flow)
        else:
            throughput = self._now.throughput
        self._now = Link(ttfb=ttfb, throughput=throughput)


class KernelMeter:
    """How far past a program's read the kernel asks, from the runs of FUSE reads of tiled files."""

    def __init__(self, assumed: int, limit: int = 1 << 20) -> None:
        self._lock = threading.Lock()
        self._seen: deque[int] = deque(maxlen=_SAMPLES)
        self._assumed = assumed
        self._limit = limit

    def overshoot(self, nbytes: int) -> None:
        """A run of FUSE reads went `nbytes` past the end of the tiles the program read."""
        if 0 <= nbytes <= self._limit:
            with self._lock:
                self._seen.append(nbytes)

    def ahead(self) -> int:
        """Bytes to fetch past a read for the kernel: the most it asked of late (a page at least)."""
        with self._lock:
            if not self._seen:
                return self._assumed
            most = max(self._seen)
        return max(_PAGE, -(-most // _PAGE) * _PAGE)
