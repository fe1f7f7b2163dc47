"""Streams: one open-ended ranged GET per sequential reader, with flow control.

A stream receives [start, end) block by block and hands each block over at
once; it runs only while a program reads behind it: it pauses when it reaches
`allowed_end` (which the reader moves as the program advances) and closes when
nobody moves it for `idle_timeout` seconds, on release, or on close.

Locking: every Stream field is guarded by the reader's condition (`cond`),
which this module shares with fetches.py (the condition is the reader's; a
method that says "caller holds cond" is called with it held); it waits on it,
and never holds it while receiving or delivering bytes. It takes no other lock
while holding cond except the leaf locks `deliver` takes.
Must not: cache blocks itself (deliver does), or choose when to stream or which runs (policy.py).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from terrafs.errors import FetchError
from terrafs.read.policy import ReadPolicy, StreamView
from terrafs.read.remote import RemoteFile, Units

log = logging.getLogger(__name__)


class Stream:
    """One streaming request over [start, end) of a file (fields guarded by the reader's cond)."""

    def __init__(self, f: RemoteFile, start: int, end: int, allowed_end: int, urgent: bool):
        self.file = f
        self.start = start
        self.end = end
        self.pos = start  # bytes before this are delivered (or the stream is dead)
        self.allowed_end = allowed_end  # flow control: pause when pos reaches it
        self.urgent = urgent
        self.stop = False
        self.alive = True
        self.error: Exception | None = None
        self.thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.alive and not self.stop

    def view(self) -> StreamView:
        return StreamView(self.start, self.end, self.allowed_end)


Deliver = Callable[[Stream, int, bytes], None]  # (stream, offset, block): store it and wake readers
CheckIdentity = Callable[[RemoteFile, object], None]


class Streams:
    def __init__(self, downloader, cond: threading.Condition, policy: ReadPolicy, deliver: Deliver,
                 check_identity: CheckIdentity):
        self._dl = downloader
        self._cond = cond
        self._p = policy
        self._deliver = deliver
        self._check_identity = check_identity
        self._live: list[Stream] = []

    def count(self) -> int:
        with self._cond:
            return sum(1 for s in self._live if s.alive)

    def start(self, f: RemoteFile, start: int, allowed_end: int, end: int | None = None) -> Stream | None:
        """A new urgent stream over [start, end or the end of f), on its own thread (caller holds cond).

        None when `max_streams` run and none is idle: readers then fetch ranges.
        """
        live = [s for s in self._live if s.alive]
        if len(live) >= self._p.max_streams:
            idle = [s for s in live if not s.stop and s.pos >= s.allowed_end]
            if not idle:
                return None
            idle[0].stop = True  # a paused stream nobody follows gives way
            self._cond.notify_all()
        stop = f.size if end is None else min(f.size, end)
        st = Stream(f, start, stop, allowed_end=max(allowed_end, start + self._p.block_size), urgent=True)
        self._live.append(st)
        st.thread = threading.Thread(target=self._thread, args=(st,), name="terrafs-stream", daemon=True)
        st.thread.start()
        return st

    def allow(self, st: Stream, to: int) -> None:
        """Let st run up to `to` (caller holds cond); wakes it only if it is paused."""
        if to > st.allowed_end:
            paused = st.pos >= st.allowed_end
            st.allowed_end = to
            if paused:
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            streams = list(self._live)
            for st in streams:
                st.stop = True
            self._cond.notify_all()
        for st in streams:
            if st.thread is not None:
                st.thread.join(timeout=10)

    def _thread(self, st: Stream) -> None:
        try:
            self.run(st)
        finally:
            with self._cond:
                if st in self._live:
                    self._live.remove(st)

    def run(self, st: Stream, on_block: Callable[[int], None] | None = None) -> None:
        """Receive [st.start, st.end) block by block, honouring flow control; errors end up in st.error."""
        f, bs = st.file, self._p.block_size
        it = self._dl.stream(f.url, st.start, st.end, urgent=st.urgent, chunk_size=self._p.stream_chunk)
        buf = bytearray()
        pos = st.start
        checked = False

        def hand_over(block: bytes) -> None:
            nonlocal pos
            self._deliver(st, pos, block)
            pos += len(block)
            with self._cond:
                st.pos = pos
                self._cond.notify_all()
            if on_block:
                on_block(pos)

        try:
            for chunk in it:
                if not checked:
                    self._check_identity(f, getattr(it, "info", None))
                    checked = True
                if not buf and len(chunk) == min(bs, st.end - pos) and pos % bs == 0:
                    hand_over(bytes(chunk))  # the usual case (chunk size = block size): no copy
                else:
                    buf += chunk
                    while buf and len(buf) >= min(bs, st.end - pos):
                        n = min(bs, st.end - pos)
                        hand_over(bytes(buf[:n]))
                        del buf[:n]
                if pos >= st.end or not self._wait_allowed(st, pos):
                    break
            if pos < st.end and not st.stop:
                log.warning("stream of %s ended early at byte %d of %d", f.url, pos, st.end)
        except FetchError as exc:
            st.error = exc
            log.warning("stream of %s failed at byte %d: %s", f.url, pos, exc)
        except Exception as exc:  # a bug or a cache failure must not strand readers waiting on us
            st.error = exc
            log.exception("stream of %s failed at byte %d", f.url, pos)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
            with self._cond:
                st.alive = False
                self._cond.notify_all()

    def _wait_allowed(self, st: Stream, pos: int) -> bool:
        """Pause while the stream is far enough ahead; False once it should stop."""
        with self._cond:
            last_change = time.monotonic()
            allowed = st.allowed_end
            while not st.stop and pos >= st.allowed_end:
                if st.allowed_end != allowed:
                    allowed, last_change = st.allowed_end, time.monotonic()
                left = self._p.idle_timeout - (time.monotonic() - last_change)
                if left <= 0:
                    log.debug("closing idle stream of %s at byte %d", st.file.url, pos)
                    st.stop = True
                    break
                self._cond.wait(min(left, 1.0))
            return not st.stop

    def fill(self, u: Units, runs: list[tuple[int, int]], progress: Callable[[int], None] | None) -> None:
        """Bring the runs [i, j) of units a prefetch was given (policy.missing_runs), one non-urgent
        stream each; progress gets the bytes of the file held so far."""
        f = u.file
        done = f.size - sum(min(j * u.unit, f.size) - i * u.unit for i, j in runs)
        if progress:
            progress(done)
        for i, j in runs:
            start = i * u.unit
            st = Stream(f, start, min(j * u.unit, f.size), allowed_end=f.size, urgent=False)
            self.run(st, on_block=(lambda pos, base=done, start=start: progress(base + pos - start))
                     if progress else None)
            if st.pos < st.end:
                raise FetchError(f"prefetch of {f.url} stopped at byte {st.pos}: {st.error}")
            done += st.end - st.start
