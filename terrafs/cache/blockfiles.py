"""How a block sits on disk: its value file, written in one go and removed if the write fails
(BlockDisk, diskcache's Disk with a cheaper store and key conversion), the tag kept in its row (length,
CRC32, store time), and reads of a verified block straight from its file (DiskBlock, read_fully).

Must not: decide what is cached or evicted (cache/blocks.py does), or know about HTTP, FUSE or read policy.
"""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import sqlite3
import threading
import zlib

import diskcache


class BlockDisk(diskcache.Disk):
    """diskcache's Disk with a cheaper store for block-sized bytes values.

    The stock one wraps bytes in a BytesIO and writes it line by line (thousands of tiny
    writes per MiB of binary data), and calls makedirs before every file. Blocks are written
    at download speed, so here: one write, directories made only when missing, and fewer of
    them; and a file whose write fails (a full disk) is removed, not left empty or torn.
    """

    def __init__(self, directory, **kwargs):
        super().__init__(directory, **kwargs)
        self.written = threading.local()  # .files: value files this thread wrote, while a caller records them

    def put(self, key):
        # Every lookup, read and write of a block converts its key; the stock conversion (pickle, then
        # pickletools.optimize) cost ~80 us a time, a fifth of the daemon's CPU in a loopback series.
        # A tuple of distinct str and int objects pickles to the same bytes without the memo (fast
        # mode), which is what optimize leaves: the keys of an existing cache still match.
        if type(key) is tuple and all(type(k) in (str, int) for k in key) and len({id(k) for k in key}) == len(key):
            return sqlite3.Binary(fast_pickle(key, self.pickle_protocol)), False
        return super().put(key)

    def filename(self, key=diskcache.core.UNKNOWN, value=diskcache.core.UNKNOWN):
        # One level of 256 directories (the stock two levels make a new
        # directory for almost every block of a cache of a few thousand).
        name = os.urandom(16).hex()
        filename = os.path.join(name[:2], name[2:] + ".val")
        return filename, os.path.join(self._directory, filename)

    def store(self, value, read, key=diskcache.core.UNKNOWN):
        if type(value) is bytes and len(value) >= self.min_file_size:
            filename, full_path = self.filename(key, value)
            try:
                fh = open(full_path, "xb")
            except FileNotFoundError:
                os.makedirs(os.path.dirname(full_path), exist_ok=True)
                fh = open(full_path, "xb")
            try:
                with fh:
                    fh.write(value)
            except BaseException:
                unlink_quietly(full_path)
                raise
            if (files := getattr(self.written, "files", None)) is not None:
                files.append(full_path)
            return len(value), diskcache.core.MODE_BINARY, filename, None
        return super().store(value, read, key)


def unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):  # gone already, or an unwritable folder: an orphan, as after a kill -9
        os.remove(path)


def fast_pickle(key: tuple, protocol: int) -> bytes:
    """`key` pickled without the memo (the bytes pickletools.optimize makes of a tuple of distinct objects)."""
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=protocol)
    pickler.fast = True
    pickler.dump(key)
    return out.getvalue()


def tag_of(data: bytes, stored: float) -> str:
    # Length, checksum and store time, kept atomically with the row.
    return f"{len(data)}:{zlib.crc32(data)}:{int(stored)}"


class DiskBlock:
    """A verified cached block, served from its open file (closed when the last user lets go)."""

    __slots__ = ("_file", "length")

    def __init__(self, file, length: int):
        self._file = file  # an unbuffered file object: closes its fd when collected
        self.length = length

    def __len__(self) -> int:
        return self.length

    def read_into(self, start: int, dst: memoryview) -> None:
        """Bytes [start, start+len(dst)) of the block into dst."""
        if read_fully(self._file.fileno(), dst, start) < len(dst):
            raise OSError("cached block file ended short")


def read_fully(fd: int, dst: memoryview, pos: int) -> int:
    """pread into all of dst from pos (fewer bytes only at end of file); returns how many were read."""
    done = 0
    while done < len(dst):
        n = os.preadv(fd, [dst[done:]], pos + done)
        if n <= 0:
            break
        done += n
    return done


def verified_at(value, tag: object) -> float | None:
    """When a block with this tag was stored, or None if value (bytes-like) does not match it."""
    if isinstance(tag, int):  # the first format: length and CRC packed, no time
        return 0.0 if tag == (len(value) << 32) | zlib.crc32(value) else None
    try:
        length, crc, stored = (int(x) for x in str(tag).split(":"))
    except ValueError:
        return None
    return float(stored) if length == len(value) and crc == zlib.crc32(value) else None
