"""The cost model on tables of links and budget states: pure functions, no threads, no server."""
from __future__ import annotations

import pytest

from terrafs.remote.ratelimit import UNBOUNDED, BudgetState, RateLimiter
from terrafs.read import cost
from terrafs.read.cost import Conditions, Link
from terrafs.read.link import KernelMeter, LinkMeter
from terrafs.read.policy import Access, Facts, ReadPolicy, head, overshoot, plan, reach
from terrafs.read.tiff import Segment, TiffLayout

KB, MB = 1 << 10, 1 << 20
P = ReadPolicy().fitted(MB)
NOTHING = Facts(head_cached=True, first_cached=False, head_pieces_cached=False)

LOOPBACK = Link(ttfb=0.0015, throughput=400e6)
FAST = Link(ttfb=0.03, throughput=25e6)
SLOW = Link(ttfb=0.03, throughput=5e6)
SLOWER = Link(ttfb=0.03, throughput=2e6)
ROOM = BudgetState(room=70, wait=0.0, spacing=0.125, used=0.1)
BOUND = BudgetState(room=0, wait=0.4, spacing=0.125, used=1.0)


def _cond(link: Link, budget: BudgetState = ROOM, kernel: int = 160 * KB) -> Conditions:
    return Conditions(link, budget, kernel)


def _tiles(start: int, sizes: list[int], gap: int = 8) -> TiffLayout:
    segs, pos = [], start
    for n, size in enumerate(sizes):
        segs.append(Segment(pos, size, 0, n))
        pos += size + gap
    return TiffLayout(tuple(segs), (len(sizes),))


@pytest.mark.parametrize("link, budget, low, high", [
    (SLOW, ROOM, 0.092, 0.093),  # a round trip and half the window's spacing
    (SLOW, BOUND, 0.43, 0.431),  # the wait once the window binds
    (LOOPBACK, ROOM, 0.064, 0.065),
    (LOOPBACK, UNBOUNDED, 0.0015, 0.0016),  # no windows: only the round trip
])
def test_a_request_costs_a_round_trip_with_room_and_the_wait_once_the_budget_binds(link, budget, low, high):
    assert low <= cost.request_price(_cond(link, budget)) <= high


@pytest.mark.parametrize("link, budget, neighbour", [
    (LOOPBACK, ROOM, True),  # bytes cost nothing: a request saved is worth a whole tile
    (FAST, ROOM, True),  # 400 KB at 25 MB/s: 16 ms, below a request
    (SLOW, ROOM, True),  # 80 ms wasted half the time, 92 ms saved the other half
    (SLOWER, ROOM, False),  # 200 ms wasted half the time: a request is cheaper
    (SLOWER, BOUND, True),  # the budget binds: every request saved is worth 400 ms
])
def test_the_neighbouring_tile_comes_only_when_its_bytes_cost_less_than_the_request(link, budget, neighbour):
    layout = _tiles(64 * KB, [400_000] * 8)
    t = layout.segments
    c = _cond(link, budget)
    start, stop = reach(P, layout, t[2].offset, t[2].offset + 128 * KB, cond=c)
    assert start == t[2].offset
    assert (stop >= t[3].end) is neighbour, (stop, t[3].end)
    assert stop <= (t[3].end if neighbour else t[2].end) + c.kernel_ahead, "more than the kernel's measured reach"


def test_a_read_covering_the_next_tile_always_fetches_it_whole():
    layout = _tiles(64 * KB, [400_000] * 8)
    t = layout.segments
    start, stop = reach(P, layout, t[2].offset, t[3].offset + 4 * KB, cond=_cond(SLOWER))
    assert stop >= t[3].end


def test_the_margin_past_a_tile_is_the_measured_kernel_reach():
    layout = _tiles(64 * KB, [400_000] * 8)
    t = layout.segments
    for kernel in (96 * KB, 228 * KB):
        _, stop = reach(P, layout, t[2].offset, t[2].offset + 128 * KB, cond=_cond(SLOWER, kernel=kernel))
        assert stop == t[2].end + kernel


@pytest.mark.parametrize("link, budget, size", [
    (LOOPBACK, ROOM, 128 * KB),
    (SLOW, ROOM, 128 * KB),  # 128 KiB cost 26 ms, less than a 92 ms request
    (Link(0.03, 0.2e6), ROOM, 32 * KB),  # 0.2 MB/s: what 92 ms bring, in whole pieces
    (Link(0.03, 0.1e6), ROOM, 16 * KB),  # 0.1 MB/s: the first piece only
])
def test_a_probes_head_is_priced(link, budget, size):
    assert head(P, _cond(link, budget)) == size


def test_a_first_small_read_fetches_the_priced_head():
    c = _cond(Link(0.03, 0.1e6))
    first = plan(P, Access(), 50 * MB, 0, 4 * KB, stream=None, layout=None, cond=c,
                 facts=Facts(head_cached=False, first_cached=False, head_pieces_cached=False))
    assert first.pieces and first.fetch_end == 16 * KB


def test_without_a_layout_a_slow_link_fetches_what_a_request_is_worth_and_the_kernel_asks():
    c = _cond(SLOWER)
    start, stop = reach(P, None, 10 * MB, 10 * MB + 128 * KB, cond=c)
    assert stop - (10 * MB + 128 * KB) == max(c.kernel_ahead, cost.affordable(c, P.chance_next))
    assert stop - (10 * MB + 128 * KB) < P.random_ahead


def test_a_finished_run_says_how_far_the_kernel_read_past_the_tiles():
    layout = _tiles(64 * KB, [95 * KB] * 48)
    t = layout.segments
    access = Access()
    # A window's first tile row: tiles 3..5 and 60 KiB of read-ahead past tile 5, in FUSE reads.
    end = t[5].end + 60 * KB
    pos = t[3].offset // 4096 * 4096
    while pos < end:
        plan(P, access, 8 * MB, pos, min(end, pos + 128 * KB), stream=None, facts=NOTHING, layout=layout)
        pos += 128 * KB
    nxt = plan(P, access, 8 * MB, t[20].offset, t[20].offset + 64 * KB, stream=None, facts=NOTHING,
               layout=layout)
    assert nxt.overshoot == end - t[5].end


@pytest.mark.parametrize("start, end, expected", [
    (0, 10, None),  # inside the first tile's leader: no whole tile
    (64 * KB, 64 * KB + 95 * KB + 50, 50),  # one tile, and 50 bytes past it
])
def test_overshoot_table(start, end, expected):
    assert overshoot(_tiles(64 * KB, [95 * KB] * 4), start, end) == expected
    assert overshoot(None, start, end) is None


def test_the_kernel_meter_keeps_the_most_the_kernel_asked_of_late():
    meter = KernelMeter(assumed=256 * KB)
    assert meter.ahead() == 256 * KB
    for n in (90_000, 150_000, 120_000):
        meter.overshoot(n)
    assert meter.ahead() == 256 * KB, "three runs are not enough to go below the assumed reach"
    meter.overshoot(300_000)
    assert meter.ahead() == 303_104, "above it at once (300 000 rounded up to pages)"
    for n in (100_000,) * 16:
        meter.overshoot(n)
    assert meter.ahead() == 102_400, "sixteen runs of 100 000: the kernel's reach on this mount"
    meter.overshoot(50 << 20)  # not a kernel's read-ahead: ignored
    assert meter.ahead() == 102_400


def test_the_link_meter_takes_the_median_round_trip_and_the_throughput_of_answers():
    meter = LinkMeter(Link(0.0, 8e6))
    for t in (0.031, 0.09, 0.030):  # one answer paid for a new connection
        meter.first_byte(t)
    meter.flowed(1_000_000, 0.2)
    meter.flowed(500_000, 0.1)
    assert meter.now().ttfb == 0.031 and meter.now().throughput == pytest.approx(5e6)


def test_the_limiter_reports_its_budget_without_taking_a_slot():
    now = [1000.0]
    lim = RateLimiter([(10, 10.0), (20, 60.0)], clock=lambda: now[0], sleep=lambda s: None, margin=0.0)
    fresh = lim.budget()
    assert (fresh.room, fresh.wait, fresh.spacing, fresh.used) == (10, 0.0, 1.0, 0.0)
    for _ in range(10):
        lim.acquire()
    bound = lim.budget()
    assert bound.room == 0 and bound.used == 1.0 and bound.wait == pytest.approx(10.0)
    assert lim.budget() == bound, "asking took a slot"
    now[0] += 10.5
    later = lim.budget()
    assert later.room == 10 and later.wait == 0.0
    assert RateLimiter([]).budget() == UNBOUNDED


@pytest.mark.parametrize("link, split", [
    (LOOPBACK, False),  # 600 KB again cost 1.5 ms: one request (the stream) is cheaper
    (FAST, False),  # 24 ms at 25 MB/s, below a request's share of the budget
    (SLOW, True),  # 123 ms at 5 MB/s before the stream's first new byte: a request beside it is cheaper
    (Link(0.004, 5e6), False),  # loopback on a loaded CPU: the time is the CPU's, not a link's
])
def test_a_stream_reached_mid_block_on_a_slow_link_starts_at_the_next_block(link, split):
    from terrafs.read.policy import StreamView

    c = _cond(link)
    at = 5 * MB
    offset = at + 600 * KB  # a run of pieces came through [4 MiB, offset)
    access = Access(last_end=offset, run_start=4 * MB, seq_end=offset, run_reads=10)
    first = plan(P, access, 50 * MB, offset, offset + 128 * KB, stream=None, facts=NOTHING, layout=None, cond=c)
    assert first.start_stream is not None
    if split:
        assert first.start_stream[0] == at + MB and first.pieces and first.fetch_end == at + MB
    else:
        assert first.start_stream[0] == at and not first.pieces
    if split:  # the reads after it: pieces before the stream's start, never past it
        view = StreamView(at + MB, first.start_stream[2], first.start_stream[1], at + MB)
        crossing = plan(P, access, 50 * MB, at + MB - 64 * KB, at + MB + 64 * KB, stream=view, facts=NOTHING,
                        layout=None, cond=c)
        assert crossing.pieces and crossing.fetch_end == at + MB
