"""The read plan as a pure function: no threads, no I/O, no server."""
from __future__ import annotations

import pytest

from terrafs.read.policy import (Access, Facts, ReadPolicy, StreamView, extras, layout_tried, missing_runs, plan,
                                 ranges, reach, wait_for_stream, wants_layout)
from terrafs.read.tiff import Segment, TiffLayout

KB, MB = 1 << 10, 1 << 20
P = ReadPolicy().fitted(MB)
NOTHING = Facts(head_cached=True, first_cached=False, head_pieces_cached=False)


def _tiles(start: int, sizes: list[int], gap: int = 8) -> TiffLayout:
    segs, pos = [], start
    for n, size in enumerate(sizes):
        segs.append(Segment(pos, size, 0, n))
        pos += size + gap  # a COG's 4-byte leader and trailer between tiles
    return TiffLayout(tuple(segs), (len(sizes),))


def test_a_read_entering_a_tile_fetches_it_and_the_next_whole():
    layout = _tiles(100 * KB, [370 * KB] * 8)
    t = layout.segments
    start, stop = reach(P, layout, t[2].offset, t[2].offset + 128 * KB)
    assert start == t[2].offset
    assert stop >= t[3].end, "the second tile of a straddling window would cost another request"
    assert stop < t[4].offset + P.kernel_ahead + 1, "more than the run and the kernel's read-ahead"


def test_a_small_read_in_the_last_bytes_of_a_tile_enters_the_next_one():
    """GDAL reads a COG tile's leader first; the kernel rounds that read down to pages of the tile before."""
    layout = _tiles(100 * KB, [370 * KB] * 8)
    t = layout.segments
    offset = t[3].offset - 6 * KB  # in the tail of tile 2
    start, stop = reach(P, layout, offset, offset + 8 * KB)
    assert start == offset, "fetched the whole previous tile"
    assert stop >= t[4].end


def test_small_tiles_are_fetched_as_a_run_up_to_tile_ahead():
    layout = _tiles(64 * KB, [100 * KB] * 16)
    t = layout.segments
    start, stop = reach(P, layout, t[5].offset, t[5].offset + 8 * KB)
    covered = [s for s in t if start <= s.offset and s.end <= stop - P.kernel_ahead]
    assert len(covered) == 3, f"{len(covered)} tiles of 100 KiB within tile_ahead ({P.tile_ahead // KB} KiB)"


def test_tiles_apart_are_not_joined():
    """The next tile in the file but far away (another row of a non-COG file) is not fetched."""
    segs = (Segment(0, 100 * KB, 0, 0), Segment(5 * MB, 100 * KB, 0, 1))
    start, stop = reach(P, TiffLayout(segs, (2,)), 0, 8 * KB)
    assert stop < 5 * MB


def test_the_next_tile_row_of_a_window_is_planned_like_the_first():
    """A read jumping forward past the kernel's read-ahead in a tiled file starts a new run: the
    second tile row of a window fetches its tiles, not a block past them."""
    layout = _tiles(64 * KB, [95 * KB] * 48)
    t = layout.segments
    access = Access()
    first = plan(P, access, 8 * MB, t[3].offset, t[5].end, stream=None, facts=NOTHING, layout=layout)
    assert first.pieces and first.fetch_start == t[3].offset
    row2 = t[9].offset  # six tiles on: the same columns one tile row down
    second = plan(P, access, 8 * MB, row2, row2 + 96 * KB, stream=None, facts=NOTHING, layout=layout)
    assert second.pieces and second.start_stream is None
    assert (second.fetch_start, second.fetch_end) == reach(P, layout, row2, row2 + 96 * KB)
    assert second.fetch_end - second.fetch_start == first.fetch_end - first.fetch_start
    # A run that goes on (the kernel's next cut of the same read) is still a run.
    third = plan(P, access, 8 * MB, row2 + 96 * KB, row2 + 192 * KB, stream=None, facts=NOTHING, layout=layout)
    assert access.run_reads == 2 and third.start_stream is None


def test_without_a_layout_a_random_read_reaches_random_ahead():
    assert reach(P, None, 10 * MB, 10 * MB + 128 * KB) == (10 * MB, 10 * MB + 128 * KB + P.random_ahead)


def test_a_big_first_read_at_zero_streams_the_file_and_a_small_one_fetches_the_head():
    copy = plan(P, Access(), 50 * MB, 0, 128 * KB, stream=None, layout=None,
                facts=Facts(head_cached=False, first_cached=False, head_pieces_cached=False))
    assert copy.start_stream is not None and copy.start_stream[0] == 0 and copy.start_stream[2] == 50 * MB
    probe = plan(P, Access(), 50 * MB, 0, 16 * KB, stream=None, layout=None,
                 facts=Facts(head_cached=False, first_cached=False, head_pieces_cached=False))
    assert probe.start_stream is None and probe.pieces and probe.fetch_end == P.head_size


def test_reads_that_are_cached_start_nothing():
    access = Access()
    for off in range(10 * MB, 12 * MB, 128 * KB):  # a long sequential run, all cached
        p = plan(P, access, 50 * MB, off, off + 128 * KB, stream=None, layout=None,
                 facts=Facts(True, True, True, read_cached=True))
        assert p.start_stream is None


def test_a_sequential_run_mid_file_opens_a_bounded_stream():
    access, started = Access(), None
    for off in range(20 * MB, 22 * MB, 128 * KB):
        p = plan(P, access, 500 * MB, off, off + 128 * KB, stream=None, layout=None, facts=NOTHING)
        if p.start_stream:
            started = p.start_stream
            break
    assert started is not None, "no stream for a 2 MiB run"
    assert started[2] < 40 * MB, "a stream opened mid-file must not run to the end of a 500 MB file"


def test_a_live_stream_is_moved_on_as_the_program_reads():
    access = Access()
    st = StreamView(0, 50 * MB, 2 * MB)
    for off in range(0, 3 * MB, 128 * KB):
        p = plan(P, access, 50 * MB, off, off + 128 * KB, stream=st, layout=None, facts=NOTHING)
        if p.allow_stream_to:
            st = StreamView(0, 50 * MB, p.allow_stream_to)
    assert st.allowed_end > 3 * MB


def test_missing_units_a_small_cached_gap_apart_are_one_range():
    assert ranges([1, 2, 3, 7, 8], gap=4) == [(1, 9)]
    assert ranges([1, 2, 3, 70, 71], gap=4) == [(1, 4), (70, 72)]
    assert ranges([], gap=4) == []


# -- the decisions the reader used to make itself, now the policy's (tables, no threads) ----------


def test_a_read_that_another_reads_fetch_brings_starts_nothing_of_its_own():
    facts = Facts(head_cached=True, first_cached=False, head_pieces_cached=False, coming=True)
    p = plan(P, Access(), 50 * MB, 10 * MB, 10 * MB + 128 * KB, stream=None, layout=None, facts=facts)
    assert (p.fetch_start, p.fetch_end, p.start_stream) == (10 * MB, 10 * MB + 128 * KB, None)


def test_a_read_whole_blocks_hold_is_served_from_blocks_not_pieces():
    held = Facts(head_cached=True, first_cached=True, head_pieces_cached=False, read_cached=True,
                 blocks_cached=True)
    assert not plan(P, Access(), 50 * MB, 10 * MB, 10 * MB + 4 * KB, stream=None, layout=None, facts=held).pieces
    small = plan(P, Access(), MB // 2, 64 * KB, 68 * KB, stream=None, layout=None, facts=NOTHING)
    assert not small.pieces, "a file of one block is fetched in blocks"


@pytest.mark.parametrize("tries, offset, wanted", [
    (0, 0, False),  # the head: nothing to parse yet
    (0, 64 * KB, True),
    (7, 64 * KB, True),
    (8, 64 * KB, False),  # given up
])
def test_when_a_read_looks_for_the_layout(tries, offset, wanted):
    assert wants_layout(P, tries, offset) is wanted


def test_a_file_that_is_no_tiff_is_given_up_at_once():
    assert layout_tried(P, 2, permanent=True) == P.layout_tries
    assert layout_tried(P, 2, permanent=False) == 3


@pytest.mark.parametrize("pos, unit, allow", [
    (0, 2 * MB, 3 * MB),  # within the wait gap: let the stream run to it
    (0, 40 * MB, None),  # far ahead of the stream: a request
    (0, 60 * MB, None),  # past the stream's end
    (10 * MB, 5 * MB, None),  # behind the stream's start
])
def test_a_read_waits_for_the_stream_only_when_it_brings_the_unit_soon(pos, unit, allow):
    st = StreamView(start=8 * MB if pos else 0, end=50 * MB, allowed_end=pos + MB, pos=pos)
    assert wait_for_stream(P, st, unit, unit + MB) == allow


def test_extras_come_only_with_a_fetch_the_read_makes_anyway():
    assert extras(4, 5, 2, 8, held=1) == [2, 3, 6, 7, 8]
    assert extras(4, 5, 2, 8, held=2) == [], "the read is held: no request for extras alone"


def test_a_prefetch_streams_each_missing_run():
    assert missing_runs([True, False, False, True, False]) == [(1, 3), (4, 5)]
    assert missing_runs([True, True]) == []
    assert missing_runs([False] * 3) == [(0, 3)]
