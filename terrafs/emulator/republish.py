"""Republished files: a file replaced on the server under the same name and
size, with new bytes, a new ETag and a new Last-Modified (a fault knob:
POST /_emulator/settings {"republish": "<download path>"}).

Version n of a file is its original bytes XOR a mask that depends on the path
and n, whose bytes are never 0 and never equal to version n-1's mask: every
byte of a new version differs from the same byte of the one before it, so a
copy that mixes versions is always caught. The catalogue keeps the file's size
(it does not change).

This module knows which version of which file is served; it builds no HTTP
response and imports nothing from the client side of terrafs.
"""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from terrafs.emulator.archive import EmuFile

_PERIOD = 65521  # a prime: the mask does not line up with power-of-two block sizes


@dataclass(frozen=True)
class Version:
    number: int  # 0: the original bytes
    modified: datetime | None  # when it was republished; None: the archive's own date


class Republisher:
    """The version each download path is served in. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[str, Version] = {}

    def republish(self, f: EmuFile) -> Version:
        """Serve `f` in a new version from now on."""
        # Whole seconds, one later than the last version at least: Last-Modified
        # has second resolution and must change with every version.
        with self._lock:
            old = self._versions.get(f.download_path)
            now = int(time.time())
            if old is not None and old.modified is not None:
                now = max(now, int(old.modified.timestamp()) + 1)
            new = Version((old.number if old else 0) + 1, datetime.fromtimestamp(now, timezone.utc))
            self._versions[f.download_path] = new
            return new

    def version(self, download_path: str) -> Version:
        with self._lock:
            return self._versions.get(download_path, Version(0, None))

    def reset(self) -> None:
        """Every file back to its original bytes."""
        with self._lock:
            self._versions.clear()


def etag(f: EmuFile, version: Version) -> str:
    """Strong and stable across restarts: the same path, size and version give the same tag."""
    digest = hashlib.sha1(f"{f.download_path}\0{f.size}\0{version.number}".encode()).hexdigest()[:20]
    return f'"{digest}"'


def read(f: EmuFile, version: Version, start: int, length: int) -> bytes:
    """Bytes [start, start+length) of `f` as served in `version`."""
    data = f.read(start, length)
    if version.number == 0 or not data:
        return data
    import numpy as np

    mask = _mask(f.download_path, version.number)
    index = np.arange(start, start + len(data), dtype=np.int64) % _PERIOD
    return (np.frombuffer(data, dtype=np.uint8) ^ mask[index]).tobytes()


_masks: dict[tuple[str, int], object] = {}
_masks_lock = threading.Lock()


def _mask(path: str, number: int):
    """Mask bytes in 1..255; version n's byte = (base + n) mod 255 + 1, so it
    differs from version n-1's at every position."""
    import numpy as np

    key = (path, number)
    with _masks_lock:
        mask = _masks.get(key)
        if mask is None:
            seed = int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big")
            base = np.random.default_rng(seed).integers(0, 255, size=_PERIOD, dtype=np.uint16)
            mask = ((base + number) % 255 + 1).astype(np.uint8)
            if len(_masks) > 64:
                _masks.clear()
            _masks[key] = mask
        return mask


def resized(f: EmuFile, size: int) -> EmuFile:
    """`f` republished at `size` bytes: its bytes up to the shorter of the two sizes, then
    bytes that depend on the path and the position (a file that grew has new bytes at its end)."""
    old_read, old_size = f.read, f.size
    seed = hashlib.sha256(f"grown:{f.download_path}".encode()).digest()

    def read(start: int, length: int) -> bytes:
        end = min(start + length, size)
        if end <= start:
            return b""
        head = old_read(start, max(0, min(end, old_size) - start)) if start < old_size else b""
        tail_from = max(start, old_size)
        tail = bytes(seed[i % len(seed)] ^ (i & 0xFF) for i in range(tail_from, end))
        return head + tail

    return replace(f, size=size, read=read)
