"""Date folders of platform paths, for the platform layout.

A dated collection's platform paths hold date folders between the
collection's prefix and the product folder: YYYY/MM/DD (most), YYYY/MM
(Sentinel-5P) or YYYY alone, whose product folders are YYYYMMDD dates (AgERA5,
CGLS). A product sits under the date its platform path names, which need not
be its acquisition date (S1 coherence: the second acquisition's day).

Pure functions over path strings; no I/O, no catalogue, no FUSE.
"""
from __future__ import annotations

import re
from typing import Iterable
from urllib.parse import unquote, urlsplit

# (depth, the date folders at the end of the folder that holds product folders)
_TAILS = (
    (3, re.compile(r"/(\d{4})/(\d{2})/(\d{2})$")),
    (2, re.compile(r"/((?:19|20)\d{2})/(0[1-9]|1[0-2])$")),
    (1, re.compile(r"/((?:19|20)\d{2})$")),
)


def date_folders(container: str, folder: str) -> tuple[str, int]:
    """(`container` without its date folders, how many there are: 3, 2, 1 or 0).

    `container` holds the product folder `folder`. A year folder alone counts
    only when it holds YYYYMMDD folders of that year (else it is a name).
    """
    for depth, pattern in _TAILS:
        m = pattern.search(container)
        if m and (depth > 1 or re.fullmatch(m.group(1) + r"(0[1-9]|1[0-2])\d{2}", folder)):
            return container[: m.start()], depth
    return container, 0


def platform_date(depth: int, folder: str, paths: Iterable[str | None]) -> tuple[int, int, int] | None:
    """(year, month, day) that the `depth` date folders just above the product
    folder `folder` name in the first of `paths` that has them (day 0 when they
    name none), or None. A path is a platform path or a download URL: their
    prefixes differ, their date folders do not."""
    for path in paths:
        if not path:
            continue
        parts = unquote(urlsplit(path).path).split("/")
        if folder not in parts[:-1]:
            continue
        i = len(parts) - 1 - parts[::-1].index(folder)
        named = parts[max(0, i - depth):i] if depth > 1 else parts[i - 1:i] + [folder[4:6], folder[6:8]]
        if len(named) < 2 or not all(x.isdigit() for x in named):
            continue
        y, m, d = (int(x) for x in (named + ["0"])[:3])
        if 1 <= m <= 12 and d <= 31:
            return y, m, d
    return None
