"""Per-client-IP sliding-window rate limiter of the emulator's download service.

The real service documents "80 requests per 10 seconds; 200 requests per 60
seconds" per IP address; the windows here come from the settings at each call,
so tests can switch them at runtime. This module only decides; it builds no
HTTP response and knows nothing about paths.

Choice: a rejected request does NOT count against the windows. A client that
honours Retry-After therefore gets through at the announced time, which is the
behaviour the client's limiter is tested against.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Sequence


class SlidingWindowLimiter:
    """Remembers when each client's accepted requests arrived."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, deque[float]] = {}

    def check(self, client: str, windows: Sequence[tuple[int, float]], now: float | None = None) -> float | None:
        """Record and accept a request (None), or reject it: the seconds until
        it would pass every window. `windows` is [(max_requests, seconds), ...];
        empty means no limit."""
        if not windows:
            return None
        now = time.monotonic() if now is None else now
        longest = max(w for _, w in windows)
        with self._lock:
            seen = self._seen.setdefault(client, deque())
            while seen and seen[0] <= now - longest:
                seen.popleft()
            wait = 0.0
            for limit, window in windows:
                if limit <= 0:
                    # A zero limit closes the door for a whole window.
                    wait = max(wait, window)
                    continue
                in_window = [t for t in seen if t > now - window]
                if len(in_window) >= limit:
                    # It passes once the limit-th newest request leaves the window.
                    wait = max(wait, in_window[-limit] + window - now)
            if wait > 0:
                return wait
            seen.append(now)
            return None

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()


def retry_after_header(wait: float) -> str:
    """Retry-After is whole seconds; round up so a client that obeys it passes."""
    return str(max(1, math.ceil(wait)))


def parse_rate_limits(text: str) -> list[tuple[int, float]]:
    """"80/10,200/60" -> [(80, 10.0), (200, 60.0)]; "off" or "" -> []."""
    text = text.strip().lower()
    if text in ("", "off", "none", "0"):
        return []
    windows = []
    for part in text.split(","):
        count, sep, seconds = part.strip().partition("/")
        if not sep:
            raise ValueError(f"rate limit {part!r} is not COUNT/SECONDS")
        n, w = int(count), float(seconds)
        if n < 0 or w <= 0:
            raise ValueError(f"rate limit {part!r} needs COUNT >= 0 and SECONDS > 0")
        windows.append((n, w))
    return windows
