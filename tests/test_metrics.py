"""The metrics collector over the parts' own counters (no mount: the mount test is in test_ops.py)."""
from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest

from terrafs.remote.http import DownloadStats
from terrafs.mount.metrics import Collector, Figures
from terrafs.remote.ratelimit import RateLimiter


def exposition(daemon, auth=None) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(Figures(daemon, auth)))
    return generate_latest(registry).decode()


def test_limiter_waits_are_counted_in_real_time():
    limiter = RateLimiter([(1, 0.2)], margin=0.0)
    limiter.acquire()
    assert (limiter.waits, limiter.waiting, limiter.waited_seconds) == (0, 0, 0.0)
    limiter.acquire()  # the window is full: sleeps until the first send leaves it
    assert (limiter.waits, limiter.waiting) == (1, 0) and 0.15 <= limiter.waited_seconds < 2.0
    text = exposition(SimpleNamespace(reader=object(), downloader=SimpleNamespace(limiter=limiter)))
    assert "terrafs_limiter_waits_total 1.0" in text
    assert "terrafs_limiter_queue 0.0" in text


def test_requests_without_an_answer_are_counted_as_status_none():
    downloader = SimpleNamespace(stats=lambda: DownloadStats(requests=7, by_status={"206": 4, "503": 2}),
                                 limiter=None)
    text = exposition(SimpleNamespace(reader=object(), downloader=downloader))
    for line in ('terrafs_download_requests_total{status="206"} 4.0',
                 'terrafs_download_requests_total{status="503"} 2.0',
                 'terrafs_download_requests_total{status="none"} 1.0'):
        assert line in text, text


def test_parts_without_counters_are_left_out_not_fatal():
    class Broken:
        def stats(self):
            raise RuntimeError("boom")

    assert "terrafs_cache_size_bytes" not in exposition(SimpleNamespace(reader=object()))
    limiter = RateLimiter([(5, 1.0)])
    text = exposition(SimpleNamespace(reader=Broken(), downloader=SimpleNamespace(limiter=limiter)))  # a failing part: the rest still answers
    assert "terrafs_limiter_waits_total 0.0" in text, text
