"""The download budget's contract: the `Limiter` protocol and the one acquire loop its budgets share.

Two budgets implement `Limiter`: the file-based `ratelimit.RateLimiter` (every
process of the user on the host) and `ratelimit_redis.RedisRateLimiter` (every
process behind one Redis). Both admit a request through `Waiters.acquire`, which
owns what is common: urgent callers go first, a sleep never lasts longer than
MAX_SLEEP (a pause or freed slots caused by another process are noticed), and
the wait counters that metrics read, under a leaf lock.
Must not: know HTTP, files or Redis; a budget gives it only a `take(urgent)`
that tries once and says how long to wait (<= 0: taken).
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

# A request occupies its window for seconds + SAFETY_MARGIN: our clock, the
# moment the request reaches the server and the server's own bookkeeping never
# line up exactly, and being a quarter second conservative is cheaper than a 429.
SAFETY_MARGIN = 0.25
# Share of each window kept for urgent requests (reads somebody waits for):
# read-ahead and prefetch may only use the rest.
URGENT_RESERVE = 0.2
# How long a waiting non-urgent caller sleeps before looking again while urgent
# callers of this process are queued.
YIELD_TO_URGENT = 0.02
# Upper bound of one sleep, so a waiter notices a pause or freed slots that
# another process caused without sleeping through them.
MAX_SLEEP = 1.0
# The shortest bound on the pause a 429 may impose (the documented limits'
# longest window): a server asking for longer is asked again after this.
DEFAULT_MAX_PAUSE = 60.0


def reserve(limit: int) -> int:
    """Slots of a window that non-urgent requests must leave free."""
    if limit <= 1:
        return 0
    return max(1, math.ceil(limit * URGENT_RESERVE))


@dataclass(frozen=True)
class BudgetState:
    """What the windows allow now, read without taking a slot (the read path prices requests by it)."""

    room: int  # requests every window admits now without waiting
    wait: float  # seconds before one more request could be sent (0 while there is room)
    spacing: float  # seconds of its window one request occupies, in the window with the least room
    used: float  # share of that window spent, 0..1


#: No windows: a request costs no budget at all.
UNBOUNDED = BudgetState(room=1 << 30, wait=0.0, spacing=0.0, used=0.0)


@dataclass(frozen=True)
class LimiterStats:
    """A budget's wait counters (metrics): acquires that slept, callers waiting now, seconds slept."""

    waits: int = 0
    waiting: int = 0
    waited_seconds: float = 0.0
    shared: bool | None = None  # None: the file budget; True/False: Redis shared now / its local fallback


class Limiter(Protocol):
    """What http.Downloader, the cost model and metrics ask of a download budget."""

    windows: tuple[tuple[int, float], ...]
    max_pause: float

    def acquire(self, urgent: bool = True) -> None: ...
    def pause(self, seconds: float) -> None: ...
    def record(self, sends: list[float]) -> None: ...
    def wait_time(self, urgent: bool = True) -> float: ...
    def budget(self, urgent: bool = True) -> BudgetState | None: ...  # None: cannot say cheaply
    def stats(self) -> LimiterStats: ...
    def close(self) -> None: ...


class Waiters:
    """The one acquire loop: urgent callers first, sleeps bounded by MAX_SLEEP, wait counters under a leaf lock."""

    def __init__(self, sleep: Callable[[float], None] = time.sleep) -> None:
        self._sleep = sleep
        self._lock = threading.Lock()  # leaf: nothing else is taken under it
        self._urgent = 0
        self._waiting = 0
        self._waits = 0
        self._waited = 0.0

    def acquire(self, take: Callable[[bool], float], urgent: bool) -> None:
        """Call take(urgent) until it returns <= 0 (taken), sleeping what it asks (at most MAX_SLEEP)
        in between; a non-urgent caller yields while urgent callers of this budget wait."""
        started, slept = time.monotonic(), False
        with self._lock:
            self._urgent += urgent
            self._waiting += 1
        try:
            while True:
                if not urgent and self._urgent > 0:
                    slept = True
                    self._sleep(YIELD_TO_URGENT)
                    continue
                wait = take(urgent)
                if wait <= 0:
                    return
                slept = True
                self._sleep(min(wait, MAX_SLEEP))
        finally:
            with self._lock:
                self._urgent -= urgent
                self._waiting -= 1
                self._waits += slept
                self._waited += (time.monotonic() - started) if slept else 0.0

    def stats(self, shared: bool | None = None) -> LimiterStats:
        with self._lock:
            return LimiterStats(self._waits, self._waiting, self._waited, shared)
