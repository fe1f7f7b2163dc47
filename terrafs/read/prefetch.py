"""The one prefetch loop: warm the cache with whole files, reporting as events.

A mount's daemon runs it for `terrafs prefetch` through the control socket
(control.py sends each event as a line), and `terrafs prefetch` runs it in its
own process for paths no daemon answers for (cli/cache.py prints the same
events); both print them with one renderer. Events, in order: start {files,
bytes}; per file, progress {done} (throttled), check {path, size, cached} or
error {path, message}; done {files, failed, bytes}.
Must not: know the socket or the terminal; fail a reader's stream because the
client went away (an `emit` raising OSError in progress stops the loop after
the current file).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from terrafs.errors import TerrafsError
from terrafs.read.remote import RemoteFile

log = logging.getLogger(__name__)

PROGRESS_EVERY = 0.1  # seconds between progress events


class HasBlocks(Protocol):
    """The part of a block cache prefetch --check reads (BlockCache, MemoryOnlyCache)."""

    block_size: int

    def has(self, key: str, index: int) -> bool: ...


class Prefetcher(Protocol):
    def prefetch(self, f: RemoteFile, progress: Callable[[int], None] | None = None) -> None: ...


@dataclass(frozen=True)
class PrefetchTarget:
    path: str  # as the events name it
    remote: RemoteFile


class Throttle:
    """Calls `fn` at most every PROGRESS_EVERY seconds, and always when forced."""

    def __init__(self, fn: Callable[[], None]):
        self.fn = fn
        self.last = 0.0

    def __call__(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= PROGRESS_EVERY:
            self.last = now
            self.fn()


def cached_bytes(blocks: HasBlocks, remote: RemoteFile) -> int:
    """Bytes of a remote file whose whole blocks are in the disk cache (pieces not counted)."""
    bs = blocks.block_size
    return sum(min(bs, remote.size - i * bs) for i in range(-(-remote.size // bs)) if blocks.has(remote.key, i))


def prefetch(reader: Prefetcher | None, blocks: HasBlocks, targets: Sequence[PrefetchTarget], *, check: bool,
             emit: Callable[[dict[str, Any]], None]) -> tuple[int, int]:
    """Fetch (or with check, only measure) every target; returns (files done, failed).
    reader may be None only with check (nothing is fetched)."""
    total = sum(t.remote.size for t in targets)
    emit({"event": "start", "files": len(targets), "bytes": total})
    done = failed = 0
    gone = threading.Event()
    for target in targets:
        if gone.is_set():
            log.info("prefetch: the client went away; stopping")
            return len(targets) - failed, failed
        remote = target.remote
        if check:
            emit({"event": "check", "path": target.path, "size": remote.size, "cached": cached_bytes(blocks, remote)})
            continue
        assert reader is not None, "a prefetch that fetches needs a reader"
        now = [0]
        tick = Throttle(lambda: emit({"event": "progress", "done": done + now[0]}))

        def progress(n: int) -> None:
            # Runs inside the reader's stream: a client gone (Ctrl-C) must not fail
            # the stream; the prefetch stops after this file instead.
            now[0] = n
            try:
                tick()
            except OSError:
                gone.set()

        try:
            reader.prefetch(remote, progress=progress)
        except TerrafsError as exc:
            failed += 1
            emit({"event": "error", "path": target.path, "message": str(exc)})
        done, now[0] = done + remote.size, 0
        tick(force=True)
    emit({"event": "done", "files": len(targets) - failed, "failed": failed, "bytes": done})
    return len(targets) - failed, failed
