"""The read path's figures as frozen dataclasses: what metrics and the control socket read, by name.

Each part gives its own (Lookup: HeldStats, WriteBehind: WriteBehindStats, the
shared tier: SharedTierStats, the link gauges: LinkStats); `Reader.stats()`
nests them in one ReaderStats, so that no two parts' counters share a key
(the reader's unit hits are not the block cache's hits).
Must not: count anything itself, or import the parts it describes.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HeldStats:
    """Lookup: units found held (RAM, pending writes, spool, disk) or not, bytes served from them, RAM held."""

    hits: int
    misses: int
    bytes_from_cache: int
    hot_bytes: int
    hot_open_files: int


@dataclass(frozen=True)
class WriteBehindStats:
    pending_blocks: int  # blocks waiting for their disk cache write
    spooled_blocks: int  # of which in the spool file, not RAM
    degraded: str | None  # why cache writes fail now, if they do


@dataclass(frozen=True)
class SharedTierStats:
    """The cluster's shared block tier (sharedtier.py, sharedfetch.py)."""

    hits: int
    misses: int
    bytes_read: int
    bytes_written: int
    puts: int
    waits: int  # fetches that waited for another node's claimed fetch
    wait_seconds: float
    claims: int
    stale_dropped: int
    corrupt: int
    available: bool  # its Redis answers now


@dataclass(frozen=True)
class LinkStats:
    ttfb_ms: float
    throughput: int  # bytes/s
    kernel_ahead: int  # bytes the kernel reads ahead


@dataclass(frozen=True)
class ReaderStats:
    reads: int
    bytes_from_network: int
    open_streams: int
    held: HeldStats
    write_behind: WriteBehindStats
    link: LinkStats
    shared: SharedTierStats | None = None  # None: the config names no shared tier
