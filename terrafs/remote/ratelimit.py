"""The download rate limiter, shared by every terrafs process of the user on the host.

Every download request (HEAD included) passes `RateLimiter.acquire` before it is
sent. The limiter keeps the send times of recent requests and admits a request
only when it fits in EVERY window (the documented service limits are
80 requests / 10 s and 200 requests / 60 s per client IP), so all mounts and
`terrafs` commands of one user share one budget through a small state file.
It must not know anything about HTTP: http.py calls `acquire` and, after a 429,
`pause` (the limiter.Limiter protocol; the waiting loop is limiter.Waiters,
shared with the Redis budget, and `take` is the one try it repeats).

Why hand-written and not a library: `limits` only offers shared storage through
servers (Redis, Memcached, MongoDB, Etcd), nothing file-based for processes on one
host; `pyrate-limiter` has a SQLite bucket with a file lock that would share
sliding windows, but it has no priorities (user reads must go before read-ahead,
which may only use spare capacity) and no shared "everybody pause until T" after
a 429, and both would be bolted on around it with a second lock. What we need is
a list of timestamps in a JSON file under fcntl.flock: ~150 lines, no dependency.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from terrafs.remote.limiter import (
    DEFAULT_MAX_PAUSE,
    SAFETY_MARGIN,
    UNBOUNDED,
    BudgetState,
    LimiterStats,
    Waiters,
    reserve,
)
from terrafs.localfs import make_parents, open_private_file

# Re-exported: the names other modules imported from here before limiter.py held them.
__all__ = ["DEFAULT_MAX_PAUSE", "SAFETY_MARGIN", "UNBOUNDED", "BudgetState", "RateLimiter"]

log = logging.getLogger(__name__)

# A state file is a few KiB (one timestamp per request of the longest window);
# anything much larger was not written by us and is not read.
_MAX_STATE_BYTES = 1 << 20


@dataclass
class _State:
    sends: list[float] = field(default_factory=list)
    paused_until: float = 0.0


class RateLimiter:
    """Sliding-window limiter over actual send times, optionally shared through a file.

    windows: (requests, seconds) pairs that must all hold; () disables limiting.
    state_path: file shared by the processes (None: this process only).
    max_pause: the longest pause a 429 may impose, here and through the shared
    file (default: the longest window, at least DEFAULT_MAX_PAUSE), so that a server asking for years, or a
    state file saying so, costs at most that.
    clock/sleep are injectable for tests; the clock must be wall-clock time
    (time.time) when a state file is shared between processes.
    The state file is opened without following symlinks, and refused when it
    belongs to another user (localfs.py).
    """

    def __init__(
        self,
        windows: Sequence[tuple[int, float]],
        state_path: Path | None = None,
        *,
        margin: float = SAFETY_MARGIN,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        max_pause: float | None = None,
    ) -> None:
        for limit, seconds in windows:
            if limit < 1 or seconds <= 0:
                raise ValueError(f"invalid rate-limit window {limit}/{seconds}s")
        self.windows: tuple[tuple[int, float], ...] = tuple((int(n), float(s)) for n, s in windows)
        self.state_path = Path(state_path) if state_path is not None else None
        self.margin = margin
        self._clock = clock
        self._lock = threading.Lock()  # threads of this process; flock covers processes
        self._memory = _State()
        self._waiters = Waiters(sleep)
        self._horizon = max((s for _, s in self.windows), default=0.0) + margin
        longest = max((s for _, s in self.windows), default=0.0)
        self.max_pause = float(max_pause) if max_pause is not None else max(longest, DEFAULT_MAX_PAUSE)
        if self.state_path is not None:
            make_parents(self.state_path)
            os.close(open_private_file(self.state_path, os.O_RDWR))  # refused now, not at the first request

    def __repr__(self) -> str:
        return f"RateLimiter(windows={self.windows!r}, state_path={self.state_path!r})"

    # -- public -----------------------------------------------------------------

    def acquire(self, urgent: bool = True) -> None:
        """Block until one request may be sent now, and record it as sent."""
        if self.windows:
            self._waiters.acquire(self.take, urgent)

    def take(self, urgent: bool = True) -> float:
        """One try: record a send now and return 0 if every window admits it, else the seconds to wait."""
        if not self.windows:
            return 0.0
        result: list[float] = []

        def take(state: _State) -> None:
            now = self._clock()
            wait = self._wait_for(state, now, urgent)
            if wait <= 0:
                state.sends.append(now)
            result.append(wait)

        self._with_state(take)
        return result[0]

    def stats(self) -> LimiterStats:
        """Wait counters of this budget's acquires (metrics)."""
        return self._waiters.stats(None)

    @property
    def waits(self) -> int:
        return self.stats().waits

    @property
    def waiting(self) -> int:
        return self.stats().waiting

    @property
    def waited_seconds(self) -> float:
        return self.stats().waited_seconds

    def close(self) -> None:
        """Nothing to release: the state file is opened per call."""

    def pause(self, seconds: float) -> None:
        """Make every caller of every process wait `seconds` from now (after a 429)."""
        if not seconds > 0:  # also NaN
            return
        seconds = min(seconds, self.max_pause)
        until = self._clock() + seconds
        log.info("download requests paused for %.1f s (server asked us to slow down)", seconds)

        def update(state: _State) -> None:
            state.paused_until = max(state.paused_until, until)

        self._with_state(update)

    def record(self, sends: "list[float]") -> None:
        """Count requests sent through another budget (at these times of this limiter's clock)
        without checking them: a shared budget that goes away leaves this one complete."""
        if sends:
            self._with_state(lambda state: state.sends.extend(sends))

    def wait_time(self, urgent: bool = True) -> float:
        """Seconds until a request could be sent (0 when now); for logs and tests."""
        if not self.windows:
            return 0.0
        result: list[float] = []
        self._with_state(lambda st: result.append(self._wait_for(st, self._clock(), urgent)))
        return result[0]

    def budget(self, urgent: bool = True) -> BudgetState:
        """The windows' state now (room, wait, the binding window's spacing); takes no slot."""
        if not self.windows:
            return UNBOUNDED
        result: list[BudgetState] = []
        self._with_state(lambda st: result.append(self._budget_of(st, self._clock(), urgent)))
        return result[0]

    # -- internals --------------------------------------------------------------

    def _budget_of(self, state: _State, now: float, urgent: bool) -> BudgetState:
        wait = self._wait_for(state, now, urgent)
        best: tuple[int, float, float] | None = None  # (room, spacing, used) of the tightest window
        for limit, seconds in self.windows:
            capacity = limit if urgent else limit - reserve(limit)
            inside = sum(1 for t in state.sends if t > now - seconds - self.margin)
            room, spacing = capacity - inside, seconds / limit
            if best is None or room < best[0] or (room == best[0] and spacing > best[1]):
                best = (room, spacing, inside / max(1, capacity))
        assert best is not None
        return BudgetState(max(0, best[0]), max(0.0, wait), best[1], min(1.0, max(0.0, best[2])))

    def _wait_for(self, state: _State, now: float, urgent: bool) -> float:
        """Seconds to wait before a request fits every window; <= 0 means go."""
        state.sends = [t for t in state.sends if t > now - self._horizon]
        wait = state.paused_until - now
        ordered = sorted(state.sends)
        for limit, seconds in self.windows:
            capacity = limit if urgent else limit - reserve(limit)
            span = seconds + self.margin
            inside = [t for t in ordered if t > now - span]
            if len(inside) >= capacity:
                # The oldest sends must leave the window until one slot is free.
                freeing = inside[len(inside) - capacity]
                wait = max(wait, freeing + span - now)
        return wait

    def _with_state(self, fn: Callable[[_State], None]) -> None:
        with self._lock:
            if self.state_path is None:
                fn(self._memory)
                return
            fd = open_private_file(self.state_path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                state = self._bounded(self._read(fd))
                before = (list(state.sends), state.paused_until)
                fn(state)
                if (state.sends, state.paused_until) != before:
                    self._write(fd, state)
            finally:
                os.close(fd)  # closing releases the flock

    def _bounded(self, state: _State) -> _State:
        """State from disk made harmless: no pause beyond max_pause, no send in the future
        (another process's clock, or a planted file, must not stop us for longer)."""
        now = self._clock()
        if not state.paused_until <= now + self.max_pause:  # also NaN
            state.paused_until = now + self.max_pause if math.isfinite(state.paused_until) else 0.0
        state.sends = [min(t, now) for t in state.sends if math.isfinite(t)]
        return state

    def _read(self, fd: int) -> _State:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        size = 0
        while size <= _MAX_STATE_BYTES and (chunk := os.read(fd, 65536)):
            chunks.append(chunk)
            size += len(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            return _State()
        try:
            if size > _MAX_STATE_BYTES:
                raise ValueError(f"larger than {_MAX_STATE_BYTES} bytes")
            data = json.loads(raw)
            sends = [float(t) for t in data.get("sends", [])]
            return _State(sends=sends, paused_until=float(data.get("paused_until", 0.0)))
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            # A half-written file (crash mid-write) only costs us the history.
            log.warning("rate-limit state %s unreadable (%s); starting afresh", self.state_path, exc)
            return _State()

    def _write(self, fd: int, state: _State) -> None:
        payload = json.dumps({"sends": [round(t, 4) for t in state.sends],
                              "paused_until": state.paused_until}).encode()
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, payload)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            log.warning("rate-limit state %s not written: disk full", self.state_path)
