"""The layout of a TIFF (GeoTIFF, COG, BigTIFF) from bytes already cached.

A TIFF says where every tile or strip of every image (full resolution,
overviews, masks) lies: the TileOffsets/TileByteCounts (or Strip...) arrays of
each IFD in the chain. Knowing them, the read policy fetches whole tiles, and
whole runs of adjacent tiles, when a program enters one, instead of guessing
with fixed-size pieces.

This parser reads only through a `peek(offset, length)` callable that answers
from what is cached and returns None for bytes it does not hold: it never costs
a request. It is deliberately small and bounded (IFD count, array lengths, IFD
loops): the file is input from the network.

Must not: fetch, cache, lock, or trust a count it has not bounded.
"""
from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass
from typing import Callable

Peek = Callable[[int, int], "bytes | None"]

MAX_IFDS = 256  # full resolution, overviews and masks: real files have a few dozen at most
MAX_SEGMENTS = 4_000_000  # tiles or strips in one IFD (a 16 GiB-pixel image in 64 px tiles)

_TILE_WIDTH, _TILE_LENGTH = 322, 323
_IMAGE_WIDTH, _IMAGE_LENGTH = 256, 257
_OFFSETS = (273, 324)  # StripOffsets, TileOffsets
_COUNTS = (279, 325)  # StripByteCounts, TileByteCounts
_TYPES = {3: ("H", 2), 4: ("I", 4), 16: ("Q", 8), 13: ("I", 4), 18: ("Q", 8)}  # SHORT LONG LONG8 IFD IFD8


class NotTiff(Exception):
    """The bytes are not a TIFF we can read (permanent for this file)."""


class Incomplete(Exception):
    """A byte the parser needs is not cached yet (try again when it is)."""


@dataclass(frozen=True)
class Segment:
    """One tile or strip: bytes [offset, offset + length) of the file."""

    offset: int
    length: int
    image: int  # which IFD of the chain (0 = full resolution)
    index: int  # its number in that IFD's arrays

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class TiffLayout:
    """Every tile or strip of every image, sorted by offset."""

    segments: tuple[Segment, ...]
    across: tuple[int, ...]  # tiles (or 1 strip) per row, per image

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", [s.offset for s in self.segments])

    def at(self, pos: int) -> int | None:
        """Index into `segments` of the segment holding byte pos, or None."""
        i = bisect.bisect_right(self._starts, pos) - 1  # type: ignore[attr-defined]
        if i >= 0 and self.segments[i].offset <= pos < self.segments[i].end:
            return i
        return None

    def after(self, pos: int) -> int | None:
        """Index of the first segment that starts at or after pos, or None."""
        i = bisect.bisect_left(self._starts, pos)  # type: ignore[attr-defined]
        return i if i < len(self.segments) else None


class _Bytes:
    def __init__(self, peek: Peek, size: int):
        self._peek, self._size = peek, size

    def get(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise NotTiff(f"reference to bytes {offset}+{length} outside a file of {self._size}")
        data = self._peek(offset, length)
        if data is None:
            raise Incomplete(f"bytes {offset}+{length} not cached")
        if len(data) != length:
            raise NotTiff("short read")
        return data


def parse(peek: Peek, size: int) -> TiffLayout:
    """The layout of the TIFF of `size` bytes that peek reads. Raises NotTiff or Incomplete."""
    src = _Bytes(peek, size)
    head = src.get(0, min(16, size)) if size >= 8 else b""
    if head[:2] == b"II":
        order = "<"
    elif head[:2] == b"MM":
        order = ">"
    else:
        raise NotTiff("no TIFF byte-order mark")
    (magic,) = struct.unpack(order + "H", head[2:4])
    if magic == 42:
        big, (first,) = False, struct.unpack(order + "I", head[4:8])
    elif magic == 43 and len(head) >= 16:
        big, (first,) = True, struct.unpack(order + "Q", head[8:16])
    else:
        raise NotTiff(f"TIFF magic {magic}")
    segments: list[Segment] = []
    across: list[int] = []
    seen: set[int] = set()
    ifd = first
    while ifd and len(across) < MAX_IFDS:
        if ifd in seen:
            raise NotTiff("IFD loop")
        seen.add(ifd)
        tags, ifd = _read_ifd(src, order, big, ifd)
        image = len(across)
        across.append(_tiles_across(src, order, big, tags))
        offsets = _array(src, order, big, tags, _OFFSETS)
        counts = _array(src, order, big, tags, _COUNTS)
        if len(offsets) != len(counts):
            raise NotTiff("offset and byte-count arrays differ in length")
        for n, (off, cnt) in enumerate(zip(offsets, counts)):
            if cnt > 0 and off + cnt <= size:
                segments.append(Segment(off, cnt, image, n))
    if not across:
        raise NotTiff("no image directory")
    segments.sort(key=lambda s: s.offset)
    return TiffLayout(tuple(segments), tuple(across))


def _read_ifd(src: _Bytes, order: str, big: bool, pos: int) -> tuple[dict, int]:
    count_fmt, count_len, entry_len, next_fmt = ("Q", 8, 20, "Q") if big else ("H", 2, 12, "I")
    (n,) = struct.unpack(order + count_fmt, src.get(pos, count_len))
    if n > 4096:
        raise NotTiff(f"IFD of {n} entries")
    raw = src.get(pos + count_len, n * entry_len + struct.calcsize(next_fmt))
    tags: dict[int, tuple[int, int, bytes]] = {}
    for k in range(n):
        e = raw[k * entry_len : (k + 1) * entry_len]
        if big:
            tag, typ, cnt = struct.unpack(order + "HHQ", e[:12])
            value = e[12:20]
        else:
            tag, typ, cnt = struct.unpack(order + "HHI", e[:8])
            value = e[8:12]
        tags[tag] = (typ, cnt, value)
    (nxt,) = struct.unpack(order + next_fmt, raw[n * entry_len :])
    return tags, nxt


def _values(src: _Bytes, order: str, big: bool, entry: tuple[int, int, bytes]) -> list[int]:
    typ, cnt, value = entry
    if typ not in _TYPES:
        raise NotTiff(f"unexpected TIFF type {typ} for an offset array")
    if cnt > MAX_SEGMENTS:
        raise NotTiff(f"array of {cnt} entries")
    fmt, width = _TYPES[typ]
    length = cnt * width
    if length <= len(value):
        data = value[:length]
    else:
        (where,) = struct.unpack(order + ("Q" if big else "I"), value)
        data = src.get(where, length)
    return list(struct.unpack(f"{order}{cnt}{fmt}", data))


def _array(src: _Bytes, order: str, big: bool, tags: dict, choices: tuple[int, int]) -> list[int]:
    for tag in choices:
        if tag in tags:
            return _values(src, order, big, tags[tag])
    return []


def _tiles_across(src: _Bytes, order: str, big: bool, tags: dict) -> int:
    """Tiles per row of the image (1 for strips): to tell rows of tiles apart."""
    if _TILE_WIDTH not in tags or _IMAGE_WIDTH not in tags:
        return 1
    (width,) = _values(src, order, big, tags[_IMAGE_WIDTH])[:1] or [0]
    (tile,) = _values(src, order, big, tags[_TILE_WIDTH])[:1] or [0]
    return max(1, -(-width // tile)) if tile > 0 else 1
