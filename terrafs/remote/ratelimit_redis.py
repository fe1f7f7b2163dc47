"""The download budget shared through Redis by every terrafs process on every host behind one address.

`rate_limit_state: redis://HOST:PORT/DB` (rediss:// for TLS, a password in the
URL) makes mount.make_limiter build a RedisRateLimiter instead of the file-based
RateLimiter. Both are a limiter.Limiter, and both admit a request through the
one acquire loop there (limiter.Waiters); this module gives it one try at a time.

What it keeps of the local limiter, across hosts:
- Every window in one atomic step on the Redis server's clock: one short
  server-side script reads Redis TIME, checks the pause and every window over
  one sorted set of send times, and records the send. Why our own script and
  not PyrateLimiter's RedisBucket or `limits` (both measured, see the README
  and scripts/measure-redis-limiters): RedisBucket checks every window in one
  script but takes the time from the caller, and reading Redis TIME first
  leaves a round trip in which another host's later send is not counted
  (measured: windows exceeded at every refill); `limits` checks one window per
  call, so a send admitted by one window and refused by the next leaks a slot,
  and it too uses the caller's clock. Neither has priorities or a shared pause.
- Priorities: reads a program waits on may fill every window; read-ahead and
  prefetch only up to the window minus the urgent reserve (the script takes
  the capacities), so every host's urgent reads find room.
- A 429 pauses everyone: a pause deadline in server time, bounded as the
  local limiter bounds it (rate_limit_max_pause, else the longest window),
  that the same script checks before every send.
- Redis unreachable: one warning, then the local file limiter with each
  window divided among the hosts that shared Redis lately (so the hosts
  together stay within the budget). Every send counted in Redis is entered in
  the host's local file too, so that budget is complete when Redis goes.
  Every RETRY_EVERY seconds a try; once Redis answers, the process's sends of
  the last window are entered in its windows under their own names (at their
  times on Redis's clock: a Redis restarted empty counts them, none is counted
  twice), and for one window a send must fit the local budget as well, since
  processes of the host that have not yet seen Redis return still spend it.

Must not: know HTTP; put the URL's password in any message; stop a read
because Redis is slow or away (timeouts are short and end in the fallback).
"""
from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from terrafs.remote.limiter import SAFETY_MARGIN, UNBOUNDED, BudgetState, LimiterStats, Waiters, reserve
from terrafs.remote.ratelimit import RateLimiter

log = logging.getLogger(__name__)

KEY_PREFIX = "terrafs:ratelimit"
# Seconds between attempts to reach Redis again while the local budget is in use.
RETRY_EVERY = 5.0
# A Redis that does not answer in this long counts as away: a read must not wait on it.
REDIS_TIMEOUT = 1.0
# How often (ms) a process notes itself as a sharer of the budget.
_MEMBER_EVERY_MS = 5000

# KEYS: sends (sorted set of send times, ms), pause (deadline, ms).
# ARGV: mode ("take", "peek" or "pause"), then for take/peek a unique member and
# (capacity, span ms) per window, for pause the pause in ms and its bound.
# Returns {ms to wait (0: sent), the server's time in ms}.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if ARGV[1] == 'pause' then
  local untl = now + tonumber(ARGV[2])
  if untl > paused then redis.call('SET', KEYS[2], untl, 'PX', tonumber(ARGV[3])) end
  return {0, now}
end
local wait = math.max(0, paused - now)
local longest = 0
for i = 3, #ARGV, 2 do
  local capacity, span = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  longest = math.max(longest, span)
  if redis.call('ZCOUNT', KEYS[1], '(' .. (now - span), '+inf') >= capacity then
    -- the send that must leave the window before one more fits
    local freeing = redis.call('ZREVRANGE', KEYS[1], capacity - 1, capacity - 1, 'WITHSCORES')
    wait = math.max(wait, tonumber(freeing[2]) + span - now)
  end
end
if wait > 0 or ARGV[1] == 'peek' then return {wait, now} end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - longest)
redis.call('PEXPIRE', KEYS[1], longest)
return {0, now}
"""


@dataclass(frozen=True)
class _Send:
    at: float  # time.monotonic()
    name: str  # its member in Redis's sorted set


def redis_client(url: str) -> redis.Redis:
    """A client that gives up fast: one immediate retry (a pooled connection a restarted Redis closed), then
    the caller's error. redis-py's own default retries with backoff for seconds, which a read cannot wait."""
    return redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT,
                                retry=Retry(NoBackoff(), 1))


def redact_redis_url(url: str) -> str:
    """scheme://host:port/db, without user or password: the only form that goes in a message."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path or ''}"


class RedisRateLimiter:
    """Sliding windows over the send times of every process that names the same Redis.

    windows: (requests, seconds) pairs that must all hold.
    url: redis:// or rediss:// URL (password allowed; never logged).
    fallback_path: the local limiter's state file used while Redis is away
    (None: this process only).
    member: this process's name among the sharers ("host:pid:random" by default;
    the part before the last two colons names its host).
    note_every: seconds between the notes that count the sharers.
    on_send: called with the Redis server's time (s) of every send Redis admits
    (tests record them to check the windows on the server's clock).
    """

    def __init__(
        self,
        windows: Sequence[tuple[int, float]],
        url: str,
        *,
        fallback_path: Path | None = None,
        margin: float = SAFETY_MARGIN,
        key: str = KEY_PREFIX,
        retry_every: float = RETRY_EVERY,
        sleep: Callable[[float], None] = time.sleep,
        max_pause: float | None = None,
        member: str | None = None,
        note_every: float = _MEMBER_EVERY_MS / 1000,
        on_send: Callable[[float], None] | None = None,
    ) -> None:
        self._fallback_path = fallback_path
        self._fallback_options = {} if max_pause is None else {"max_pause": max_pause}
        self._fallback = self._local(windows, margin)  # also validates the windows
        self.windows = self._fallback.windows
        self.margin = margin
        self.where = redact_redis_url(url)
        self._client = redis_client(url)
        self._script = self._client.register_script(_SCRIPT)
        self._keys = [f"{key}:sends", f"{key}:pause"]
        self._members_key = f"{key}:members"
        self._member = member or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._note_every_ms = int(note_every * 1000)
        self._on_send = on_send
        self._serial = count()
        self._retry_every = retry_every
        self._lock = threading.Lock()
        self._waiters = Waiters(sleep)
        self._down_until: float | None = None  # time.monotonic() of the next attempt while away
        self._peers = 1
        self._noted: int | None = None  # server ms when this process last noted itself as a sharer
        self._recent: deque[_Send] = deque()  # this process's sends within the longest window
        self._both_until = 0.0  # time.monotonic() until which a send must fit the local budget too
        self._longest_ms = self._ms(max((s for _, s in self.windows), default=0.0))
        # The longest pause a 429 may impose: the local limiter's bound where it has one
        # (rate_limit_max_pause), else the longest window.
        self.max_pause: float = getattr(self._fallback, "max_pause", self._longest_ms / 1000)

    def __repr__(self) -> str:
        return f"RedisRateLimiter(windows={self.windows!r}, redis={self.where!r})"

    def __getstate__(self) -> dict:
        raise TypeError("a RedisRateLimiter holds connections; build one per process")

    @property
    def shared(self) -> bool:
        """True while the budget is the one in Redis (False: the local fallback)."""
        return self._down_until is None

    @property
    def fallback(self) -> RateLimiter:
        """The local budget that stands in while Redis is away (its windows: this host's share)."""
        return self._fallback

    # -- public ---------------------------------------------------------------

    def acquire(self, urgent: bool = True) -> None:
        """Block until one request may be sent now, and record it as sent."""
        if self.windows:
            self._waiters.acquire(_Take(self), urgent)

    def stats(self) -> LimiterStats:
        """Wait counters of this budget's acquires, and whether Redis is the budget now."""
        return self._waiters.stats(self.shared)

    def record(self, sends: list[float]) -> None:
        """Count sends made through another budget (wall-clock times) in the local budget."""
        self._fallback.record(sends)

    def budget(self, urgent: bool = True) -> BudgetState | None:
        """None: this budget cannot say without a Redis round trip per read, so the read path
        prices requests by the documented service budget (as before the protocol asked)."""
        return None if self.windows else UNBOUNDED

    def pause(self, seconds: float) -> None:
        """Make every caller of every process on every host wait `seconds` from now (after a 429).

        Bounded by max_pause (the longest window unless configured): a server
        that asks for more may not stop the whole cluster for longer.
        """
        seconds = min(seconds, self.max_pause)
        if seconds <= 0:
            return
        self._fallback.pause(seconds)  # in force here too, should Redis go away now
        if self._away():
            return
        try:
            expire = self._ms(self.max_pause) + self._longest_ms
            self._script(keys=self._keys, args=["pause", self._ms(seconds), expire])
        except redis.RedisError as exc:
            self._lost(exc)

    def wait_time(self, urgent: bool = True) -> float:
        """Seconds until a request could be sent (0 when now); for logs and tests."""
        if not self.windows:
            return 0.0
        if not self._away():
            try:
                return self._run("peek", urgent)
            except redis.RedisError as exc:
                self._lost(exc)
        return self._fallback.wait_time(urgent)

    def close(self) -> None:
        self._client.close()

    # -- Redis ----------------------------------------------------------------

    def _run(self, mode: str, urgent: bool) -> float:
        """The script in mode take/peek: seconds to wait, 0 when sent (take) or sendable (peek)."""
        name = f"{self._member}:{next(self._serial)}"
        args: list = [mode, name]
        for limit, seconds in self.windows:
            args += [limit if urgent else max(1, limit - reserve(limit)), self._ms(seconds)]
        wait, now = self._script(keys=self._keys, args=args)
        if mode == "take" and wait == 0:
            self._remember(name)
            if self._on_send is not None:
                self._on_send(now / 1000)
        if self._noted is None or now - self._noted >= self._note_every_ms:
            self._note_member(now)
        return wait / 1000

    def _ms(self, seconds: float) -> int:
        # As in the local limiter, a send occupies its window a margin longer than
        # the server counts it: the time a request takes to arrive, and rounding.
        return int((seconds + self.margin) * 1000)

    def _note_member(self, now: int) -> None:
        """Note this process as a sharer, and count the sharers (for the fallback's share)."""
        self._noted = now
        keep = 6 * self._longest_ms + 2 * _MEMBER_EVERY_MS
        pipe = self._client.pipeline(transaction=False)
        pipe.zadd(self._members_key, {self._member: now})
        pipe.zremrangebyscore(self._members_key, "-inf", now - keep)
        pipe.pexpire(self._members_key, keep)
        pipe.zrangebyscore(self._members_key, now - self._longest_ms - 2 * _MEMBER_EVERY_MS, "+inf")
        # Hosts, not processes: the processes of one host share the local budget's file.
        self._peers = max(1, len({m.rsplit(b":", 2)[0] for m in pipe.execute()[-1]}))

    # -- away and back ----------------------------------------------------------

    def _local(self, windows: Sequence[tuple[int, float]], margin: float) -> RateLimiter:
        return RateLimiter(windows, self._fallback_path, margin=margin, **self._fallback_options)

    def _local_take(self, urgent: bool) -> float:
        wait = self._fallback.take(urgent)
        if wait <= 0:
            self._remember(f"{self._member}:{next(self._serial)}")
        return wait

    def _remember(self, name: str) -> None:
        """Keep the longest window's worth of this process's sends, for the moves between the budgets."""
        now = time.monotonic()
        with self._lock:
            self._recent.append(_Send(now, name))
            while self._recent and self._recent[0].at < now - self._longest_ms / 1000:
                self._recent.popleft()

    def _rejoin(self) -> None:
        """Put this process's recent sends in Redis's windows, at their times on its clock.

        Those made while it was away, and those it had counted before, should
        Redis have restarted empty (each under its own name: nothing counts twice).
        """
        secs, micros = self._client.time()  # raises while Redis is still away
        now_ms, now_mono = secs * 1000 + micros // 1000, time.monotonic()
        with self._lock:
            recent = list(self._recent)
        if recent:
            self._client.zadd(self._keys[0], {s.name: now_ms - int((now_mono - s.at) * 1000) for s in recent},
                              nx=True)

    def _away(self) -> bool:
        """True while the local budget stands in for Redis; tries Redis again every RETRY_EVERY seconds."""
        with self._lock:
            if self._down_until is None or time.monotonic() < self._down_until:
                return self._down_until is not None
            self._down_until = time.monotonic() + self._retry_every  # one prober at a time
        try:
            self._rejoin()
        except redis.RedisError:
            return True
        with self._lock:
            self._down_until = None
            self._both_until = time.monotonic() + self._longest_ms / 1000
        log.info("Redis at %s answers again: the download budget is shared again", self.where)
        return False

    def _lost(self, exc: Exception) -> None:
        with self._lock:
            if self._down_until is not None:
                return
            self._down_until = time.monotonic() + self._retry_every
            peers = self._peers
        # The other sharers fall back too: each keeps its part of the budget.
        share = tuple((max(1, math.floor(limit / peers)), seconds) for limit, seconds in self.windows)
        if share != self._fallback.windows:
            self._fallback = self._local(share, self.margin)
        log.warning("Redis at %s cannot be reached (%s: %s); using the local download budget %s until it answers",
                    self.where, type(exc).__name__, exc, f"{list(share)} ({peers} sharing processes)")


class _Take:
    """One acquire's try at the Redis budget (Waiters.acquire calls it until it returns <= 0).

    Redis away, or lost during this acquire: the local budget, to the end of the acquire.
    Admitted by Redis within a window of its return: the send must fit the local budget
    too (processes of this host that have not seen Redis return still spend it), so the
    next tries are the local budget's (which records the send there); Redis is not asked again.
    Admitted otherwise: the send is entered in the local budget, should Redis go away.
    """

    def __init__(self, limiter: RedisRateLimiter) -> None:
        self.limiter = limiter
        self.local = False  # the local budget only, from now on
        self.in_redis = False  # taken in Redis; the local budget must admit it too

    def __call__(self, urgent: bool) -> float:
        lim = self.limiter
        if self.in_redis:
            return lim._fallback.take(urgent)
        if self.local or lim._away():
            self.local = True
            return lim._local_take(urgent)
        try:
            wait = lim._run("take", urgent)
        except redis.RedisError as exc:
            lim._lost(exc)
            self.local = True
            return lim._local_take(urgent)
        if wait > 0:
            return wait
        if time.monotonic() < lim._both_until:
            self.in_redis = True
            return lim._fallback.take(urgent)
        _enter_local(lim._fallback, [time.monotonic()])
        return 0.0


def _enter_local(limiter: RateLimiter, sends: list[float]) -> None:
    """Put sends (time.monotonic()) in the local budget, at their wall-clock times, without a check.

    Sends counted in Redis go in the host's local budget too, so that it is
    complete the moment Redis goes away.
    """
    offset = time.time() - time.monotonic()
    limiter.record([t + offset for t in sends])
