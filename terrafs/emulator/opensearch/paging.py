"""OpenSearch paging: startIndex and count (defaults, maximum, the 100 000-result cap) and
the first/previous/next/last links.

It pages only: no filtering, no documents, nothing from the client side of terrafs.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from werkzeug.wrappers import Request

from terrafs.emulator.opensearch.documents import GEOJSON
from terrafs.emulator.opensearch.query import OpenSearchError, int_param

DEFAULT_COUNT = 100  # the real default page size
# The real maximum page size is unknown; 1000 is accepted, larger values are clamped.
MAX_COUNT = 1000
# Only the first 100 000 results can be paged to (real `last` link: startIndex=99901 at count 100).
RESULT_CAP = 100_000


def last_start(total: int, count: int) -> int:
    reach = min(total, RESULT_CAP - count + 1)
    return 1 if reach < 1 else 1 + ((reach - 1) // count) * count


def _page_href(request: Request, base_url: str, start_index: int) -> str:
    pairs = [(k, v) for k, v in request.args.items(multi=True) if k != "startIndex"]
    pairs.append(("startIndex", str(start_index)))
    return f"{base_url}/catalogue{request.path.split('/catalogue', 1)[-1]}?{urlencode(pairs)}"


def link(href: str, title: str) -> list[dict]:
    return [{"href": href, "type": GEOJSON, "title": title}]


def paging_links(request: Request, base_url: str, total: int, start: int, count: int) -> dict:
    links: dict[str, list[dict]] = {}
    if count == 0:
        return links
    last = last_start(total, count)
    links["first"] = link(_page_href(request, base_url, 1), "first")
    if start > 1:
        links["previous"] = link(_page_href(request, base_url, max(1, start - count)), "previous")
    nxt = start + count
    if nxt <= min(total, RESULT_CAP) and nxt + count - 1 <= RESULT_CAP:
        links["next"] = link(_page_href(request, base_url, nxt), "next")
    links["last"] = link(_page_href(request, base_url, last), "last")
    return links


def parse_page(args: Any) -> tuple[int, int]:
    start = int_param(args, "startIndex", 1, 1)
    count = min(int_param(args, "count", DEFAULT_COUNT, 0), MAX_COUNT)
    if count > 0 and start + count - 1 > RESULT_CAP:
        raise OpenSearchError(
            "startIndex",
            f"The requested page (startIndex {start}, count {count}) is beyond the maximum of {RESULT_CAP} "
            "results that can be paged through; please narrow down your search.",
        )
    return start, count
