"""What a download answer says: whether it is the file, when to retry, exactly its bytes.

A download service answers some failures with status 200: Terrascope's, when a
session lapses, redirects to its SSO login page, and a proxy or a maintenance
window sends an HTML or JSON page. Such a page is not the file: its length is
not the file's size and its bytes are not the file's bytes. `not_the_file`
tells such an answer from the file, so that http.py retries it like a 503.
A real answer's Content-Type need not match the catalogue's type; only a page
type (HTML, JSON) on a file that is not itself a page gives it away.

Must not: send requests, retry, or log headers (Authorization!).
"""
from __future__ import annotations

import email.utils
import errno
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

from terrafs.remote.limiter import DEFAULT_MAX_PAUSE

# Content types of pages (a login form, an error document), never of an EO file.
_PAGE_TYPES = ("text/html", "application/xhtml+xml", "application/json", "application/problem+json")
# Files that are pages themselves may be answered with a page type.
_PAGE_SUFFIXES = (".html", ".htm", ".xhtml", ".json", ".geojson")


def _is_page_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media in _PAGE_TYPES or media.endswith("+json")


def not_the_file(response: requests.Response, url: str, had: tuple[str | None, str | None] | None) -> str | None:
    """Why a 200 answer to a download request is not the file (None: it may be).

    `had` is the (ETag, Last-Modified) earlier answers gave for the URL, if any:
    an answer without either, for a file that had them, is not the file.
    """
    if _is_page_type(response.headers.get("Content-Type")) \
            and not urlsplit(url).path.lower().endswith(_PAGE_SUFFIXES):
        media = response.headers.get("Content-Type", "").split(";", 1)[0].strip()[:40]
        return f"HTTP 200 with a page ({media}), not the file: a login or error page?"
    if had is not None and had != (None, None) \
            and response.headers.get("ETag") is None and response.headers.get("Last-Modified") is None:
        return "HTTP 200 without the ETag/Last-Modified the file had: not the file"
    return None


def parse_retry_after(value: str | None, now: float | None = None,
                      limit: float = DEFAULT_MAX_PAUSE) -> float | None:
    """Retry-After as seconds from now, at most `limit`: delta-seconds or an HTTP date;
    None if absent/invalid. (A server asking for 31 years gets the longest rate window.)"""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), limit)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when is None:
        return None
    return min(limit, max(0.0, when.timestamp() - (time.time() if now is None else now)))


def refused(exc: BaseException) -> bool:
    """Whether a connection error is a refusal (nothing listens).

    requests wraps urllib3's MaxRetryError, whose `reason` is a NewConnectionError
    raised from the socket's OSError: the chain is walked for ECONNREFUSED."""
    todo: list[object] = [exc]
    seen: set[int] = set()
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen or len(seen) > 32:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ECONNREFUSED:
            return True
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
    return False


def body(response: requests.Response, skip: int, want: int, chunk_size: int) -> Iterator[bytes]:
    """Up to `want` bytes of the body after skipping `skip`, in chunks of <= chunk_size."""
    if want <= 0:
        return
    got = 0
    for piece in response.iter_content(chunk_size=chunk_size):
        if skip:
            if len(piece) <= skip:
                skip -= len(piece)
                continue
            piece = piece[skip:]
            skip = 0
        piece = piece[: want - got]
        got += len(piece)
        if piece:
            yield piece
        if got >= want:
            return


@dataclass(frozen=True)
class RemoteInfo:
    """What the server says about a file."""
    size: int
    etag: str | None
    last_modified: str | None


@dataclass(frozen=True)
class DownloadStats:
    """Requests sent (retries, redirect hops, resends) and responses by status; the rest got none."""

    requests: int
    by_status: dict[str, int]

    @property
    def unanswered(self) -> int:
        return max(0, self.requests - sum(self.by_status.values()))


class RangeStream:
    """The chunks of one ranged GET, and what the server said about the file."""

    def __init__(self, chunks: Iterator[bytes], holder: list[RemoteInfo]):
        self._chunks = chunks
        self._holder = holder

    def __iter__(self) -> "RangeStream":
        return self

    def __next__(self) -> bytes:
        return next(self._chunks)

    @property
    def info(self) -> RemoteInfo | None:
        return self._holder[0] if self._holder else None

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
