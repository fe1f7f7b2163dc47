"""The guess of the next tile row (rows.py, policy.plan's `below`) on tables of layouts, links and
budgets: pure functions, no threads, no server."""
from __future__ import annotations

import pytest

from terrafs.remote.ratelimit import BudgetState
from terrafs.read import rows
from terrafs.read.cost import Conditions, Link
from terrafs.read.policy import Access, Facts, ReadPolicy, plan
from terrafs.read.tiff import Segment, TiffLayout

KB, MB = 1 << 10, 1 << 20
P = ReadPolicy().fitted(MB)
NOTHING = Facts(head_cached=True, first_cached=False, head_pieces_cached=False)
KERNEL = 256 * KB

LOOPBACK = Link(ttfb=0.0015, throughput=400e6)
FAST = Link(ttfb=0.03, throughput=25e6)
SLOW = Link(ttfb=0.03, throughput=5e6)
ROOM = BudgetState(room=70, wait=0.0, spacing=0.125, used=0.1)
BOUND = BudgetState(room=0, wait=0.4, spacing=0.125, used=1.0)


def _cond(link: Link, budget: BudgetState = ROOM) -> Conditions:
    return Conditions(link, budget, KERNEL)


def _grid(across: int, down: int, size: int, start: int = 64 * KB, gap: int = 4,
          overview: bool = False) -> TiffLayout:
    """One image of `across` x `down` tiles of `size` bytes in row-major file order (a COG's
    full resolution), after an overview of 2 x 2 tiles if asked (a COG writes those first)."""
    segs, pos, across_of = [], start, [across]
    if overview:
        for n in range(4):
            segs.append(Segment(pos, size // 4, 1, n))
            pos += size // 4 + gap
        across_of.append(2)
    for n in range(across * down):
        segs.append(Segment(pos, size, 0, n))
        pos += size + gap
    return TiffLayout(tuple(sorted(segs, key=lambda s: s.offset)), tuple(across_of))


def _tile(layout: TiffLayout, image: int, index: int) -> Segment:
    return next(s for s in layout.segments if s.image == image and s.index == index)


def _row_fetch(layout: TiffLayout, first: int, last: int, image: int = 0) -> tuple[int, int]:
    """What reach() fetches for a read entering tile `first` that holds tiles first..last: whole tiles
    and the kernel's margin."""
    return _tile(layout, image, first).offset, _tile(layout, image, last).end + KERNEL


COG = 440_000  # a 512 px deflate tile of the bench's COGs
SMALL = 110_000  # a 256 px tile of the Sentinel-2 bands and the tiled GeoTIFFs


@pytest.mark.parametrize("link, budget, size, guessed", [
    (LOOPBACK, ROOM, COG, False),  # a row arrives in ms: a request is worth more than that
    (Link(0.004, 10e6), ROOM, COG, False),  # loopback on a loaded CPU: slow answers, but no network to overlap
    (FAST, ROOM, SMALL, False),  # 220 KB at 25 MB/s: 9 ms, not worth a request
    (FAST, ROOM, COG, True),  # 880 KB at 25 MB/s: 35 ms, plus the round trip
    (SLOW, ROOM, SMALL, True),  # 220 KB at 5 MB/s: 44 ms
    (SLOW, ROOM, COG, True),  # 880 KB at 5 MB/s: 176 ms
    (SLOW, BOUND, COG, False),  # the budget binds: a wrong guess makes the user wait
])
def test_the_row_under_a_read_comes_alongside_only_on_links_where_it_pays(link, budget, size, guessed):
    layout = _grid(8, 8, size)
    start, stop = _row_fetch(layout, 9, 10)  # row 1, columns 1 and 2
    span = rows.below(layout, start, stop, 1 << 40, _cond(link, budget), P.chance_below, (0, 0))
    assert (span is not None) is guessed, span
    if span is not None:
        a, b = _tile(layout, 0, 17), _tile(layout, 0, 18)
        assert span[0] <= a.offset and span[0] >= max(stop, a.offset - rows.PAGE), "from the page before row 2's tiles"
        assert span[1] == b.end + KERNEL, "row 2's tiles and the kernel's margin past them"


@pytest.mark.parametrize("case, first, last, kwargs", [
    ("the image's last row", 57, 58, {}),
    ("strips: the run goes on, no row below", 3, 4, {"across": 1}),
    ("a tile that is not whole in the fetch", None, None, {}),
])
def test_no_guess_without_a_row_under_whole_tiles(case, first, last, kwargs):
    layout = _grid(kwargs.get("across", 8), 8, COG)
    if first is None:
        t = _tile(layout, 0, 9)
        start, stop = t.offset + 4 * KB, t.end  # enters tile 9 past its start: no whole tile in the fetch
    else:
        start, stop = _row_fetch(layout, first, last)
    assert rows.below(layout, start, stop, 1 << 40, _cond(SLOW), P.chance_below, (0, 0)) is None, case


def test_a_row_ending_at_the_images_edge_guesses_only_its_own_columns():
    layout = _grid(8, 8, COG)
    start, stop = _row_fetch(layout, 14, 16)  # columns 6, 7 of row 1 and the first tile of row 2
    assert [s.index for s in rows.row_of(layout, start, stop)] == [14, 15]
    span = rows.below(layout, start, stop, 1 << 40, _cond(SLOW), P.chance_below, (0, 0))
    assert span is not None and span[1] == _tile(layout, 0, 23).end + KERNEL


def test_an_overview_row_guesses_the_overviews_next_row():
    layout = _grid(8, 8, COG, overview=True)
    start, stop = _row_fetch(layout, 0, 1, image=1)
    assert [s.index for s in rows.row_of(layout, start, stop)] == [0, 1]
    assert [(s.image, s.index) for s in rows.under(layout, rows.row_of(layout, start, stop))] == [(1, 2), (1, 3)]


def test_a_read_of_bytes_a_guess_fetched_guesses_no_further():
    layout = _grid(8, 8, COG)
    c = _cond(SLOW)
    start, stop = _row_fetch(layout, 9, 10)
    span = rows.below(layout, start, stop, 1 << 40, c, P.chance_below, (0, 0))
    assert span is not None
    # Row 2's read starts a page before its first tile (GDAL reads the tile's leader): inside the guess.
    row2 = _row_fetch(layout, 17, 18)
    assert rows.below(layout, row2[0] - rows.PAGE, row2[1], 1 << 40, c, P.chance_below, span) is None
    # Row 3, read after it, is a row of its own again.
    row3 = _row_fetch(layout, 25, 26)
    assert rows.below(layout, row3[0], row3[1], 1 << 40, c, P.chance_below, span) is not None


def test_the_plan_carries_the_guess_and_the_cursor_remembers_it():
    layout = _grid(8, 8, COG)
    access = Access()
    t9, t17 = _tile(layout, 0, 9), _tile(layout, 0, 17)
    first = plan(P, access, 1 << 30, t9.offset, t9.offset + 128 * KB, stream=None, facts=NOTHING, layout=layout,
                 cond=_cond(SLOW))
    assert first.below is not None and first.below[0] >= first.fetch_end - rows.PAGE
    assert access.alongside == first.below
    again = plan(P, access, 1 << 30, t17.offset, t17.offset + 128 * KB, stream=None, facts=NOTHING, layout=layout,
                 cond=_cond(SLOW))
    assert again.below is None, "a read of the guessed row must not guess a third"
    quiet = plan(P, Access(), 1 << 30, t9.offset, t9.offset + 128 * KB, stream=None, facts=NOTHING, layout=layout)
    assert quiet.below is None, "without measured conditions (the assumed, bound budget) nothing is guessed"


def test_a_hostile_layout_bounds_the_search_for_the_row_under():
    # Tiles under row 0 lie beyond SCAN segments of other images: no guess, and no scan of the whole file.
    segs = [Segment(64 * KB + n * 1000, 900, 0, n) for n in range(2)]
    segs += [Segment(200 * KB + n * 1000, 900, 1, n) for n in range(rows.SCAN + 100)]
    segs += [Segment(10 * MB + n * 1000, 900, 0, 2 + n) for n in range(2)]
    layout = TiffLayout(tuple(segs), (2, 1))
    assert rows.under(layout, rows.row_of(layout, segs[0].offset, segs[1].end)) == []


def test_only_the_first_row_a_file_is_read_at_guesses():
    """A link measured between two rows can flip the decision: the second row of a window two rows tall,
    had it guessed, would bring a third that nobody reads (a request more than /vsicurl/'s)."""
    layout = _grid(8, 8, COG)
    access = Access()
    t9, t17 = _tile(layout, 0, 9), _tile(layout, 0, 17)
    first = plan(P, access, 1 << 30, t9.offset, t9.offset + 128 * KB, stream=None, facts=NOTHING, layout=layout,
                 cond=_cond(FAST, BOUND))  # the budget binds: no guess
    assert first.below is None
    second = plan(P, access, 1 << 30, t17.offset, t17.offset + 128 * KB, stream=None, facts=NOTHING,
                  layout=layout, cond=_cond(SLOW))
    assert second.below is None, "the window's second row guessed a third"
