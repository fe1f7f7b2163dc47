"""The download rate limiter: windows, priorities, pause, and sharing across processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from terrafs.remote.ratelimit import RateLimiter


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "the limiter slept a non-positive time (busy loop)"
        self.now += seconds
        self.slept += seconds


def limiter(windows, clock: FakeClock, path: Path | None = None, margin: float = 0.0) -> RateLimiter:
    return RateLimiter(windows, path, margin=margin, clock=clock, sleep=clock.sleep)


def test_no_windows_never_waits() -> None:
    clock = FakeClock()
    lim = limiter((), clock)
    for _ in range(1000):
        lim.acquire()
    assert clock.slept == 0


def test_requests_within_the_window_go_at_once_then_wait_for_the_oldest() -> None:
    clock = FakeClock()
    lim = limiter([(3, 1.0)], clock)
    for _ in range(3):
        lim.acquire()
    assert clock.slept == 0
    lim.acquire()
    assert clock.slept == pytest.approx(1.0), "4th request must wait until the 1st leaves the 1 s window"


def test_sends_recorded_from_another_budget_count_without_a_check() -> None:
    clock = FakeClock()
    lim = limiter([(3, 1.0)], clock)
    lim.record([clock.now - 0.5, clock.now - 0.25, clock.now])  # sent through a shared budget
    assert clock.slept == 0, "recording does not wait"
    assert lim.wait_time() == pytest.approx(0.5), "the oldest recorded send frees a slot in 0.5 s"
    lim.acquire()
    assert clock.slept == pytest.approx(0.5)


def test_every_window_must_hold() -> None:
    clock = FakeClock()
    lim = limiter([(2, 1.0), (3, 10.0)], clock)
    for _ in range(3):
        lim.acquire()
    # 3 sends: the 3rd waited 1 s for the short window; a 4th must wait for the long one.
    t_before = clock.now
    lim.acquire()
    assert clock.now - (t_before - 1.0) == pytest.approx(10.0)


def test_safety_margin_extends_the_window() -> None:
    clock = FakeClock()
    lim = limiter([(1, 1.0)], clock, margin=0.25)
    lim.acquire()
    lim.acquire()
    assert clock.slept == pytest.approx(1.25)


def test_non_urgent_requests_leave_a_reserve_for_urgent_ones() -> None:
    clock = FakeClock()
    lim = limiter([(5, 1.0)], clock)
    for _ in range(4):
        lim.acquire(urgent=False)
    assert clock.slept == 0
    assert lim.wait_time(urgent=False) > 0, "prefetch must not take the last (reserved) slot"
    assert lim.wait_time(urgent=True) <= 0
    lim.acquire(urgent=True)
    assert clock.slept == 0, "an urgent request may use the reserved slot"


def test_pause_delays_everybody() -> None:
    clock = FakeClock()
    lim = limiter([(100, 1.0)], clock)
    lim.pause(3.0)
    lim.acquire()
    assert clock.slept == pytest.approx(3.0)


def test_pause_is_shared_through_the_state_file(tmp_path: Path) -> None:
    clock = FakeClock()
    state = tmp_path / "rl" / "ratelimit.json"
    a = limiter([(100, 1.0)], clock, state)
    b = limiter([(100, 1.0)], clock, state)
    a.pause(2.0)
    b.acquire()
    assert clock.slept == pytest.approx(2.0), "a pause set by one limiter must hold for another"


def test_windows_are_shared_through_the_state_file(tmp_path: Path) -> None:
    clock = FakeClock()
    state = tmp_path / "ratelimit.json"
    a = limiter([(4, 1.0)], clock, state)
    b = limiter([(4, 1.0)], clock, state)
    a.acquire()
    a.acquire()
    b.acquire()
    b.acquire()
    assert clock.slept == 0
    b.acquire()
    assert clock.slept == pytest.approx(1.0), "the 5th request over both limiters must wait"


def test_state_file_is_private_and_json(tmp_path: Path) -> None:
    clock = FakeClock()
    state = tmp_path / "ratelimit.json"
    limiter([(4, 1.0)], clock, state).acquire()
    mode = stat.S_IMODE(os.stat(state).st_mode)
    assert mode & 0o077 == 0, f"state file mode {oct(mode)} is readable by others"
    assert len(json.loads(state.read_text())["sends"]) == 1


def test_corrupt_state_file_is_replaced(tmp_path: Path) -> None:
    clock = FakeClock()
    state = tmp_path / "ratelimit.json"
    state.write_text("{not json")
    lim = limiter([(2, 1.0)], clock, state)
    lim.acquire()
    assert json.loads(state.read_text())["sends"] == [pytest.approx(clock.now)]


def test_old_sends_are_forgotten(tmp_path: Path) -> None:
    clock = FakeClock()
    state = tmp_path / "ratelimit.json"
    lim = limiter([(3, 1.0), (5, 10.0)], clock, state)
    for _ in range(3):
        lim.acquire()
    clock.now += 60
    lim.acquire()
    assert len(json.loads(state.read_text())["sends"]) == 1


def test_invalid_window_is_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter([(0, 1.0)])
    with pytest.raises(ValueError):
        RateLimiter([(5, 0.0)])


def test_urgent_waiter_goes_before_a_later_non_urgent_one() -> None:
    lim = RateLimiter([(1, 0.3)], margin=0.0)
    lim.acquire()
    order: list[str] = []

    def take(name: str, urgent: bool) -> None:
        lim.acquire(urgent)
        order.append(name)

    # The non-urgent caller starts first but must yield to the urgent one.
    low = threading.Thread(target=take, args=("prefetch", False))
    low.start()
    time.sleep(0.05)
    high = threading.Thread(target=take, args=("read", True))
    high.start()
    high.join(5)
    low.join(5)
    assert order == ["read", "prefetch"]


def _worker(state: str, count: int, out: "multiprocessing.Queue[float]") -> None:
    lim = RateLimiter([(10, 1.0)], Path(state), margin=0.05)
    for _ in range(count):
        lim.acquire()
        out.put(time.time())


def test_two_processes_sharing_a_state_file_never_exceed_the_window(tmp_path: Path) -> None:
    state = str(tmp_path / "ratelimit.json")
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(state, 13, out)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        times = sorted(out.get(timeout=20) for _ in range(26))
    finally:
        for p in procs:
            p.join(10)
    assert all(p.exitcode == 0 for p in procs)
    worst = max(sum(1 for t in times if s <= t < s + 1.0) for s in times)
    assert worst <= 10, f"{worst} requests were sent within one second (limit 10)"
    assert times[-1] - times[0] >= 2.0, "26 requests at 10/s must take at least 2 s"
