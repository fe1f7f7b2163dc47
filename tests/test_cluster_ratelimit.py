"""The Redis-shared download budget, against a real redis-server (no mount, no emulator)."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from clustering import redis_server  # noqa: F401  (fixture)
from terrafs.config import load_config
from terrafs.errors import ConfigError
from terrafs.build import make_limiter
from terrafs.remote.ratelimit_redis import RedisRateLimiter


def limiter(server, windows, tmp_path: Path, **kw) -> RedisRateLimiter:
    return RedisRateLimiter(windows, server.url, fallback_path=tmp_path / "local.state", margin=0.0, **kw)


def max_in_window(times: list[float], seconds: float) -> int:
    """Most sends in any [t, t + seconds) (in whole ms, as Redis records them)."""
    ms = sorted(round(t * 1000) for t in times)
    span = round(seconds * 1000)
    return max((sum(1 for u in ms[i:] if u < t + span) for i, t in enumerate(ms)), default=0)


def test_two_hosts_share_every_window(redis_server, tmp_path):
    """Two limiters (as on two hosts) together keep both windows; sends fill the budget."""
    windows = [(6, 1.0), (10, 3.0)]
    sent: list[float] = []
    a, b = (limiter(redis_server, windows, tmp_path, on_send=sent.append) for _ in range(2))

    def run(lim):
        for _ in range(8):
            lim.acquire(True)

    threads = [threading.Thread(target=run, args=(lim,)) for lim in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(sent) == 32
    assert max_in_window(sent, 1.0) <= 6, "the 1 s window was exceeded across the two limiters"
    assert max_in_window(sent, 3.0) <= 10, "the 3 s window was exceeded across the two limiters"
    # 32 sends at 10 per 3 s need at least 9 s: the budget was used, not starved.
    assert max(sent) - min(sent) < 10.5, f"32 sends took {max(sent) - min(sent):.1f} s (budget underused)"
    assert a.shared and b.shared


def test_send_times_are_the_redis_servers_clock(redis_server, tmp_path, monkeypatch):
    """A host whose clock is an hour off still records sends at Redis's time."""
    lim = limiter(redis_server, [(5, 1.0)], tmp_path)
    monkeypatch.setattr(time, "time", lambda: 3600.0 + time.monotonic())
    lim.acquire()
    secs, micros = redis_server.client().time()
    scores = [s for _, s in redis_server.client().zrange("terrafs:ratelimit:sends", 0, -1, withscores=True)]
    assert len(scores) == 1 and abs(scores[0] / 1000 - (secs + micros / 1e6)) < 2.0


def test_read_ahead_leaves_the_reserve_to_reads_on_every_host(redis_server, tmp_path):
    host_a, host_b = limiter(redis_server, [(10, 30.0)], tmp_path), limiter(redis_server, [(10, 30.0)], tmp_path)
    for _ in range(8):  # 10 - reserve of 2
        host_a.acquire(urgent=False)
    assert host_b.wait_time(urgent=False) > 20, "prefetch on another host must not take the reserved slots"
    assert host_b.wait_time(urgent=True) == 0
    t0 = time.monotonic()
    host_b.acquire(urgent=True)
    assert time.monotonic() - t0 < 0.5, "an urgent read waited although the reserve was free"


def test_a_429_pauses_every_host_bounded_by_the_longest_window(redis_server, tmp_path):
    a, b = limiter(redis_server, [(80, 10.0), (200, 60.0)], tmp_path), limiter(redis_server, [(80, 10.0)], tmp_path)
    a.pause(3.0)
    assert 2.0 < b.wait_time() <= 3.0
    a.pause(999_999_999)  # Retry-After from a hostile or broken server
    assert 50 < b.wait_time() <= 60.0, "a pause must not outlast the longest window"


def test_redis_away_local_budget_with_one_warning_then_shared_again(redis_server, tmp_path, caplog):
    lim = limiter(redis_server, [(50, 5.0)], tmp_path, retry_every=0.5)
    lim.acquire()
    redis_server.stop()
    caplog.set_level(logging.INFO, logger="terrafs.remote.ratelimit_redis")
    t0 = time.monotonic()
    for _ in range(20):
        lim.acquire()
    assert time.monotonic() - t0 < 3.0, "reads waited on an absent Redis"
    assert not lim.shared
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "127.0.0.1" in warnings[0].getMessage()
    assert (tmp_path / "local.state").stat().st_size > 0, "the local budget did not record the sends"
    redis_server.start()
    time.sleep(0.6)
    lim.acquire()
    lim.acquire()
    assert lim.shared, "the limiter did not rejoin Redis"
    # Redis restarted empty: the send before it went away and the 20 made meanwhile (all within the
    # window) count in it again, with the 2 since.
    assert redis_server.client().zcard("terrafs:ratelimit:sends") == 23


def test_redis_away_each_host_keeps_its_part(redis_server, tmp_path):
    """With 3 hosts sharing Redis, each falls back to a third of every window."""
    # As if each ran on a host of its own; the first counts the sharers at every send.
    lims = [limiter(redis_server, [(30, 10.0), (90, 60.0)], tmp_path, member=f"host{i}:1:p{i}",
                    note_every=0.0 if i == 0 else 5.0) for i in range(3)]
    for lim in lims:
        lim.acquire()  # the first send notes each process as a sharer
    lims[0].acquire()  # counts the three sharers
    redis_server.stop()
    lims[0].acquire()
    assert lims[0].fallback.windows == ((10, 10.0), (30, 60.0))


def test_redis_away_the_local_budget_knows_the_sends_just_made(redis_server, tmp_path):
    """Falling back, the local budget starts with the sends this process made through Redis."""
    lim = limiter(redis_server, [(5, 30.0)], tmp_path)
    for _ in range(5):
        lim.acquire()
    redis_server.stop()
    assert lim.wait_time() > 25, "the local budget started empty: a 429 right after Redis went away"


def test_config_names_redis_and_hides_its_password(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rate_limit_state: redis://:s3cret@127.0.0.1:6399/2\n")
    cfg.chmod(0o600)
    config = load_config(cfg, env={"HOME": str(tmp_path)})
    lim = make_limiter(config)
    assert isinstance(lim, RedisRateLimiter)
    assert "s3cret" not in repr(lim) and lim.where == "redis://127.0.0.1:6399/2"
    cfg.write_text("rate_limit_state: http://:s3cret@127.0.0.1:6399/2\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg, env={"HOME": str(tmp_path)})
    assert "s3cret" not in str(err.value) and "redis://" in str(err.value)
