"""Prometheus metrics of a running mount (`metrics: {listen: HOST:PORT}` in the config).

The figures are read at scrape time from the counters the components keep
anyway (a custom collector): the downloader's requests by status, the
reader's bytes and hits, the block cache, the limiter's waits, the token
manager's renewals, the catalogue session's responses. Nothing here runs
per read, so the read path carries no metrics code.

Must not: label a series with a URL, a path or anything from a credential;
fail the mount when a component lacks a counter (older parts: the figure is
left out). prometheus_client is imported only when metrics are switched on.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterator

from terrafs.counters import CATALOGUE_RESPONSES
from terrafs.errors import TerrafsError
from terrafs.remote.limiter import LimiterStats
from terrafs.text import split_listen

if TYPE_CHECKING:
    from terrafs.cache.blocks import BlockCacheStats
    from terrafs.read.stats import ReaderStats, SharedTierStats

log = logging.getLogger(__name__)


def _guarded(empty: Any):
    """A figure whose part fails is left out of this scrape (logged), not the whole scrape."""

    def wrap(method):
        def call(self: "Figures") -> Any:
            try:
                return method(self)
            except Exception:
                log.exception("metrics: %s failed", method.__name__)
                return empty

        return call

    return wrap


class Figures:
    """Plain numbers from the daemon's parts; each guarded, so that a part without a counter is skipped."""

    def __init__(self, daemon: Any, auth: Any) -> None:
        self.daemon = daemon
        self.auth = auth

    @_guarded({})
    def downloads(self) -> dict[str, int]:
        """Download requests by status; 'none' for those that got no response (connection failures)."""
        dl = self.daemon.downloader
        if dl is None:
            return {}
        stats = dl.stats()
        return {**stats.by_status, **({"none": stats.unanswered} if stats.unanswered else {})}

    @_guarded(None)
    def reader(self) -> ReaderStats | None:
        return self.daemon.reader.stats()

    @_guarded(None)
    def cache(self) -> BlockCacheStats | None:
        blocks = self.daemon.blocks
        return blocks.stats() if blocks is not None else None

    @_guarded(None)
    def limiter(self) -> LimiterStats | None:
        dl = self.daemon.downloader
        return dl.limiter.stats() if dl is not None and dl.limiter is not None else None

    @_guarded(None)
    def renewals(self) -> int | None:
        manager = getattr(self.auth, "manager", None)  # Bearer auth has a token manager; Basic auth has none
        return manager.stats().renewals if manager is not None else None


def _families(f: Figures) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    downloads = f.downloads()
    c = CounterMetricFamily("terrafs_download_requests", "Download requests sent (retries, redirects "
                            "and resends included), by HTTP status", labels=["status"])
    for status, n in sorted(downloads.items()):
        c.add_metric([status], n)
    yield c
    yield CounterMetricFamily("terrafs_download_throttled", "Download responses with HTTP 429",
                              value=downloads.get("429", 0))
    reader = f.reader()
    if reader is not None:
        yield CounterMetricFamily("terrafs_download_bytes", "Bytes received from the download service",
                                  value=reader.bytes_from_network)
        served = CounterMetricFamily("terrafs_served_bytes", "Bytes the reader took for reads and prefetches, "
                                     "by source: the disk cache or the network", labels=["source"])
        served.add_metric(["cache"], reader.held.bytes_from_cache)
        served.add_metric(["network"], reader.bytes_from_network)
        yield served
        yield GaugeMetricFamily("terrafs_open_streams", "Download streams open now", value=reader.open_streams)
        if reader.shared is not None:
            yield from _shared_families(reader.shared)
    cache = f.cache()
    # The reader's own count of units found held (RAM, pending writes, spool, disk) where there is a
    # reader; the disk cache's persisted counters otherwise.
    hits_misses = (reader.held.hits, reader.held.misses) if reader is not None else (
        (cache.hits, cache.misses) if cache is not None else None)
    if hits_misses is not None:
        yield CounterMetricFamily("terrafs_cache_hits", "Block cache hits", value=hits_misses[0])
        yield CounterMetricFamily("terrafs_cache_misses", "Block cache misses", value=hits_misses[1])
    if cache is not None:
        yield GaugeMetricFamily("terrafs_cache_size_bytes", "Bytes in the disk cache", value=cache.size)
        yield GaugeMetricFamily("terrafs_cache_blocks", "Blocks in the disk cache", value=cache.entries)
    yield from _limiter_families(f.limiter())
    renewals = f.renewals()
    if renewals is not None:
        yield CounterMetricFamily("terrafs_token_renewals", "Access tokens obtained from the token endpoint",
                                  value=renewals)
    cat = CounterMetricFamily("terrafs_catalogue_requests", "Catalogue responses, by HTTP status",
                              labels=["status"])
    for status, n in sorted(CATALOGUE_RESPONSES.snapshot().items()):
        cat.add_metric([status], n)
    yield cat


def _limiter_families(lim: LimiterStats | None) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    if lim is None:
        return
    yield CounterMetricFamily("terrafs_limiter_wait_seconds", "Time download requests waited for the "
                              "rate limiter", value=lim.waited_seconds)
    yield CounterMetricFamily("terrafs_limiter_waits", "Download requests that had to wait", value=lim.waits)
    yield GaugeMetricFamily("terrafs_limiter_queue", "Download requests waiting for the limiter now",
                            value=lim.waiting)
    if lim.shared is not None:
        yield GaugeMetricFamily("terrafs_limiter_shared", "1 while the download budget is the one shared "
                                "through Redis, 0 while its local fallback stands in", value=int(lim.shared))


def _shared_families(r: SharedTierStats) -> Iterator[Any]:
    """The cluster's shared block tier (read/sharedtier.py), when the config names one."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    yield CounterMetricFamily("terrafs_shared_hits", "Units found in the shared tier", value=r.hits)
    yield CounterMetricFamily("terrafs_shared_misses", "Units looked for in the shared tier and not found",
                              value=r.misses)
    b = CounterMetricFamily("terrafs_shared_bytes", "Bytes read from and written to the shared tier",
                            labels=["direction"])
    b.add_metric(["read"], r.bytes_read)
    b.add_metric(["written"], r.bytes_written)
    yield b
    yield CounterMetricFamily("terrafs_shared_waits", "Fetches that waited for another node's claimed fetch",
                              value=r.waits)
    yield CounterMetricFamily("terrafs_shared_wait_seconds", "Time spent waiting for other nodes' fetches",
                              value=r.wait_seconds)
    yield GaugeMetricFamily("terrafs_shared_available", "1 while the shared tier's Redis answers",
                            value=1 if r.available else 0)


class Collector:
    """A prometheus_client collector over the daemon's figures."""

    def __init__(self, figures: Figures) -> None:
        self.figures = figures

    def describe(self) -> list:
        return []  # the series depend on which parts keep counters; found at scrape time

    def collect(self) -> Iterator[Any]:
        try:
            yield from _families(self.figures)
        except Exception:  # a scrape must never take the mount down
            log.exception("collecting metrics failed")


class MetricsServer:
    """Serves /metrics (and /) over HTTP on `listen` (host:port) until stop()."""

    def __init__(self, listen: str, daemon: Any, auth: Any) -> None:
        self.host, self.port = split_listen(listen)
        self.figures = Figures(daemon, auth)
        self._httpd: Any = None

    def start(self) -> None:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.process_collector import ProcessCollector

        registry = CollectorRegistry(auto_describe=False)
        registry.register(Collector(self.figures))
        ProcessCollector(registry=registry)
        try:
            self._httpd, _thread = start_http_server(self.port, addr=self.host, registry=registry)
        except OSError as exc:
            raise TerrafsError(f"metrics.listen {self.host}:{self.port}: cannot listen ({exc.strerror})") from None
        self.port = self._httpd.server_port  # port 0: the one the system chose
        log.info("metrics at http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
