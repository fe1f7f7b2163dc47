"""What the mount measures of its link and of the kernel, for the cost model (cost.py).

`LinkMeter` keeps the time to first byte and the throughput of recent answers;
`KernelMeter` keeps how far past a program's read the kernel asks (the FUSE
reads this mount receives); `Gauges` puts them together for one reader: it
times the downloader's answers (a response hook on its session gives each
answer's time to first byte, limiter waits excluded) and asks the limiter for
its budget. The meters' locks are leaves: safe to call under any lock of the
read path; `Gauges.conditions` may read the limiter's state file (never under one).

Must not: fetch, decide, or keep more than a few dozen numbers.
"""
from __future__ import annotations

import dataclasses
import statistics
import threading
import time
from collections import deque
from typing import Callable, Iterable, Iterator

from terrafs.remote.limiter import BudgetState
from terrafs.read.cost import DOCUMENTED, Conditions, Link
from terrafs.read.stats import LinkStats

#: Before the first answer: a modest link (what the policy assumed before it measured).
ASSUMED = Link(ttfb=0.03, throughput=8e6)
_SAMPLES = 16
_TRUSTED = 8  # runs of FUSE reads seen before the kernel's measured reach replaces the assumed one
_PAGE = 4096
_FLOW_SAMPLE = 64 << 10  # answers this large time the link's throughput (smaller: mostly latency)
#: Seconds the limiter's answer is reused: the kernel's reads of one program read come within
#: ms, and asking a file budget reads its state file (~1 ms of a loaded CPU per read otherwise).
_BUDGET_FRESH = 0.05


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
        """Bytes to fetch past a read for the kernel: the most it asked of late (a page at least).

        What one run shows depends on where the tiles end within the kernel's 128 KiB reads,
        so until a few runs were seen the assumed reach stays a floor: a margin too short
        costs a request of its own, and the run it starts fetches whole tiles again.
        """
        with self._lock:
            seen = list(self._seen)
        if not seen:
            return self._assumed
        most = max(seen) if len(seen) >= _TRUSTED else max(self._assumed, max(seen))
        return max(_PAGE, -(-most // _PAGE) * _PAGE)


class Gauges:
    """The cost model's inputs for one reader: its link, its budget, the kernel's reach."""

    def __init__(self, downloader: object, assumed: Conditions) -> None:
        self._assumed = assumed
        self.link = LinkMeter(assumed.link)
        self.kernel = KernelMeter(assumed.kernel_ahead)
        self._timing = threading.local()
        self._limiter = getattr(downloader, "limiter", None)
        self._budget: tuple[float, BudgetState] = (-1e9, DOCUMENTED)  # (when asked, what the limiter said)
        hooks = getattr(getattr(downloader, "session", None), "hooks", None)
        self._measured = isinstance(hooks, dict)
        if isinstance(hooks, dict):
            hooks.setdefault("response", []).append(self._on_response)

    def conditions(self) -> Conditions:
        """The link, budget and kernel read-ahead now (may read the limiter's state file)."""
        if not self._measured:  # a downloader that cannot be timed: the policy's fixed prices
            return dataclasses.replace(self._assumed, kernel_ahead=self.kernel.ahead())
        now = time.monotonic()
        at, budget = self._budget
        if now - at > _BUDGET_FRESH:
            ask = getattr(self._limiter, "budget", None)
            budget = (ask() if callable(ask) else None) or DOCUMENTED
            self._budget = (now, budget)  # one tuple: a plain read elsewhere is consistent
        return Conditions(self.link.now(), budget, self.kernel.ahead())

    def answer(self, it: Iterable[bytes], check: Callable[[object], None],
               count: Callable[[int], None]) -> Iterator[bytes]:
        """The chunks of one ranged answer: `check(info)` before the first is trusted, each one
        `count`ed; its body, timed from the moment its head arrived, is a throughput sample."""
        n = 0
        try:
            for chunk in it:
                if not n:
                    check(getattr(it, "info", None))
                n += len(chunk)
                count(len(chunk))
                yield chunk
            head_at = getattr(self._timing, "head_at", None)
            if head_at is not None and n >= _FLOW_SAMPLE:
                self.link.flowed(n, time.monotonic() - head_at)
        finally:
            self._timing.head_at = None
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def stats(self) -> LinkStats:
        link = self.link.now()
        return LinkStats(round(link.ttfb * 1e3, 2), int(link.throughput), self.kernel.ahead())

    def _on_response(self, response: object, *args: object, **kwargs: object) -> None:
        """The session got an answer's head: its time to first byte (no limiter wait in it)."""
        elapsed = getattr(response, "elapsed", None)
        if elapsed is not None:
            self.link.first_byte(elapsed.total_seconds())
        self._timing.head_at = time.monotonic()
