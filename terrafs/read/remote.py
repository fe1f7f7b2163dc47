"""What the read path knows of a remote file, and how it is cut into units.

A file is cached in one of two unit sizes: whole blocks (the cache's block
size, for copies) or pieces (small, for probes and random reads). Each unit
size has its own cache key, so blocks and pieces never mix. `Units` gives the
keys, counts and lengths of one file in one unit size, so that no other part
does arithmetic on keys.

Must not: fetch, cache or lock anything (Downloader only says what a fetcher offers).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator, Protocol


class Downloader(Protocol):
    """What the read path needs of terrafs.remote.http.Downloader (the one place that sends requests)."""

    def get_range(self, url: str, start: int, end: int, *, urgent: bool = True) -> tuple[bytes, object]:
        ...

    def stream(self, url: str, start: int, end: int, *, urgent: bool = True,
               chunk_size: int = 1 << 20) -> Iterator[bytes]:
        ...


@dataclass(frozen=True)
class RemoteFile:
    url: str  # download URL, never with credentials in it
    size: int
    key: str  # stable identity for the cache (URL + size), no secrets


@dataclass(frozen=True)
class Units:
    """One file seen in units of `unit` bytes, cached under `key`."""

    file: RemoteFile
    unit: int
    key: str

    @property
    def url(self) -> str:
        return self.file.url

    @property
    def size(self) -> int:
        return self.file.size

    def count(self) -> int:
        return (self.file.size + self.unit - 1) // self.unit

    def length(self, i: int) -> int:
        """Bytes in unit i (the last one may be shorter)."""
        return max(0, min(self.unit, self.file.size - i * self.unit))

    def span(self, start: int, end: int) -> range:
        """The units that hold bytes [start, end)."""
        if end <= start:
            return range(0)
        return range(start // self.unit, (end - 1) // self.unit + 1)


# Cached: a FUSE read asks for these several times, and a cold copy makes ~1600 reads
# of a 211 MB band whose every microsecond of daemon CPU shows in its throughput.
@functools.lru_cache(maxsize=4096)
def blocks_of(f: RemoteFile, block_size: int) -> Units:
    return Units(f, block_size, f.key)


@functools.lru_cache(maxsize=4096)
def pieces_of(f: RemoteFile, piece_size: int) -> Units:
    return Units(f, piece_size, f"{f.key}#p{piece_size}")


def unit_keys(f: RemoteFile, piece_size: int) -> tuple[str, str]:
    """Every cache key a file's bytes may live under (blocks, pieces)."""
    return f.key, pieces_of(f, piece_size).key
