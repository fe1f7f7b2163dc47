"""A cursor per open file: its position and access history, stream, pending fetch and TIFF layout.

Every read of a file plans through its cursor: the reader gathers what is
cached once (a snapshot, policy.Facts, with the disk and SQLite lookups done
before any lock), then under the cursor's lock hands the snapshot, the
cursor's state and the measured conditions to the pure policy and records
what the plan starts. One read of a file plans at a time, in the order the
reads arrived (their snapshots are gathered meanwhile, in parallel): the
kernel sends a program's reads concurrently, and the first must start the
stream or claim the fetch the others follow.

Lock order, pairwise (a thread holding the left one may take the right one, never the reverse):
    Cursor.lock  ->  Reader._cond     (the cursor's `stream` is written under both: read under either)
    Cursor.lock  ->  leaf locks       (HotSet, WriteBehind._lock, Spool, DiskAhead, the meters)
Must not: call the disk cache, SQLite or the network while `lock` is held, or decide anything
(policy.py decides; the cursor only keeps what the decisions were).
"""
from __future__ import annotations

import threading

from terrafs.read.policy import Access, StreamView
from terrafs.read.remote import Units
from terrafs.read.streams import Stream
from terrafs.read.tiff import TiffLayout


class Cursor:
    """One file being read (fields guarded by `lock`; `stream` also by the reader's condition)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._turn = threading.Condition(self.lock)  # reads plan in the order they arrived
        self._arrived = self._planned = 0
        self.access = Access()  # position and the current sequential run
        self.stream: Stream | None = None  # this file's live stream, if any
        # What the last planned fetch will bring: a read planned before it is claimed joins it.
        self.coming: tuple[int, int] = (0, 0)
        self.layout: TiffLayout | None = None
        self.layout_tries = 0  # 0..policy.layout_tries (given up)

    def arrive(self) -> int:
        """A read of the file arrived: its turn to plan (caller holds `lock`)."""
        self._arrived += 1
        return self._arrived - 1

    def wait_turn(self, ticket: int) -> None:
        """Wait until every read that arrived before this one planned (caller holds `lock`;
        the wait releases it, so their snapshots and plans go on meanwhile)."""
        while self._planned < ticket:
            self._turn.wait()

    def planned(self) -> None:
        """This read planned (or gave up): the next one's turn (caller holds `lock`)."""
        self._planned += 1
        self._turn.notify_all()

    def live_stream(self) -> Stream | None:
        """The stream if it still runs (caller holds `lock` or the reader's condition)."""
        st = self.stream
        return st if st is not None and st.running else None

    def stream_view(self) -> StreamView | None:
        """The live stream as the policy sees it (caller holds the reader's condition)."""
        st = self.live_stream()
        return StreamView(st.start, st.end, st.allowed_end, st.pos) if st is not None else None

    def coming_covers(self, key: tuple[str, int], pieces: Units) -> bool:
        """Whether the last planned fetch brings piece `key` (caller holds `lock`)."""
        return key[0] == pieces.key and self.coming[0] <= key[1] * pieces.unit < self.coming[1]

    def stop(self) -> None:
        """Stop the stream (caller holds the reader's condition and notifies it)."""
        if self.stream is not None and self.stream.alive:
            self.stream.stop = True
