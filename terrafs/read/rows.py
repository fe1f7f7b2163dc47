"""The tile row under a read, fetched alongside it: which bytes, and whether, as pure functions.

A program reads a window of a tiled TIFF one tile row at a time: one read()
of the row's tiles (which the kernel cuts into 128 KiB FUSE reads), decoding,
then the same columns of the next row. GDAL's /vsicurl/ knows the window and
fetches its rows at once; through a file system the next row is asked for only
after the first arrived and was decoded, so on a slow link every row adds a
round trip and its whole transfer to the window's time. When a read fetches
whole tiles of a row, the tiles under them (same image, same columns, next
row) and the kernel's margin past them can come in a second request sent at
the same time, which nobody waits for: the next row's reads join it.

It is a guess (the window may end in this row), priced by cost.parallel_worth:
right, it saves the next row's round trip and transfer and costs no request
(the row would be fetched anyway); wrong, it costs a request. So it is made
only while the budget has room, only when a row takes longer to arrive than
a request is worth (slow links: on loopback and fast links it never pays),
and only from the first row a program reads of the file (policy.plan): the
second row of a window two rows tall must not guess a third, and a link
measured between the two can flip the decision.

Must not: fetch, lock or measure (layout, span and conditions in, a byte range out).
"""
from __future__ import annotations

from terrafs.read import cost
from terrafs.read.cost import Conditions
from terrafs.read.tiff import Segment, TiffLayout

PAGE = 4096  # the kernel reads in pages: GDAL's read of a tile's 4-byte leader starts a page before it
#: Segments scanned past a row for the tiles under it (file order is row-major within an image,
#: overviews and masks may sit between): a bound, so a hostile layout cannot make a plan slow.
SCAN = 256


def row_of(layout: TiffLayout, start: int, stop: int) -> list[Segment]:
    """The whole tiles of one row of one tiled image that [start, stop) holds, from its first whole tile."""
    segs = layout.segments
    i = layout.after(start)
    if i is None or segs[i].end > stop:
        return []
    first = segs[i]
    across = layout.across[first.image]
    if across <= 1:  # strips: what follows a strip is the run going on, not a row below
        return []
    row = [first]
    for s in segs[i + 1:]:
        if (s.end > stop or s.image != first.image or s.index != row[-1].index + 1
                or s.index // across != first.index // across):
            break
        row.append(s)
    return row


def under(layout: TiffLayout, row: list[Segment]) -> list[Segment]:
    """The tiles under `row` (same image and columns, next row), in file order; [] if any is missing
    from the layout, they are not adjacent in the file (one request), or the row is the image's last."""
    if not row:
        return []
    across = layout.across[row[0].image]
    want = {s.index + across for s in row}
    segs = layout.segments
    i = layout.after(row[-1].end)
    i = len(segs) if i is None else i
    found = [s for s in segs[i: i + SCAN + len(row) * across] if s.image == row[0].image and s.index in want]
    if len(found) != len(want):
        return []
    found.sort(key=lambda s: s.offset)
    if any(b.offset - a.end > PAGE for a, b in zip(found, found[1:])):
        return []
    return found


def below(layout: TiffLayout | None, start: int, stop: int, size: int, c: Conditions, chance: float,
          fetched_alongside: tuple[int, int]) -> tuple[int, int] | None:
    """Bytes to fetch alongside a read's fetch [start, stop) (whole tiles, then the kernel's margin): the
    tiles under its row's and the kernel's margin past them (None: no row under it, a read of bytes a
    guess fetched, or not worth a request now).

    `fetched_alongside` is the span the file's last guess fetched (a read in it guesses no further).
    """
    lo, hi = fetched_alongside
    if layout is None or lo - PAGE <= start < hi:
        return None
    tiles = under(layout, row_of(layout, start, stop - c.kernel_ahead))  # the margin is the kernel's
    if not tiles:
        return None
    a, b = max(stop, tiles[0].offset - PAGE), tiles[-1].end
    if a >= b or not cost.parallel_worth(c, b - max(a, tiles[0].offset), chance):
        return None
    return a, min(size, b + c.kernel_ahead)
