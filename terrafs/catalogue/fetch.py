"""Catalogue requests and paged walks, shared by the STAC and OpenSearch backends.

One JSON request wrapper (counting, timeouts, one-line CatalogueErrors) and
the page walk (de-duplication, stop on empty or repeated pages). A catalogue
answer is input from the network, so both are bounded: a response larger than
`CatalogueLimits.max_response_size` is refused before it is parsed, JSON
nested too deep is a CatalogueError (not a RecursionError), a walk follows at
most `max_pages` pages, and every URL carries no credentials once parsed:
user info in any URL of an answer is removed here, at the edge, so it can
reach no log line, attribute or cache key.
Nothing here knows STAC or OpenSearch field names.
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Any, Callable, Iterator, Mapping

import requests

from terrafs.catalogue.model import CatalogueLimits
from terrafs.errors import CatalogueError
from terrafs.text import UNSAFE_CHARS, redact_url, shown, strip_userinfo

log = logging.getLogger(__name__)

ACCEPT = "application/geo+json, application/json"
ATTEMPTS = 4  # per catalogue request; urllib3 retries 429/5xx within each as well
BACKOFF = 0.5  # seconds before the second attempt, doubling, with jitter
TIMEOUT = (10, 60)  # connect, read: catalogue searches can be slow


class CatalogueHTTPError(CatalogueError):
    """The service answered with a non-2xx status (kept for page-size fallbacks)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


FALLBACK_PAGE_SIZE = 100  # the services' documented default page size: known to work


def first_page(fetch: Callable[[int], Any], size: int, what: str) -> tuple[Any, int]:
    """The first page of a walk asked with `size`, and the page size that worked.

    A service that refuses a large page gets one more try with FALLBACK_PAGE_SIZE.
    """
    try:
        return fetch(size), size
    except CatalogueHTTPError as e:
        if not may_be_page_size(e.status) or size <= FALLBACK_PAGE_SIZE:
            raise
        log.info("%s: a page of %d was refused (HTTP %d); using %d from now on",
                 shown(what), size, e.status, FALLBACK_PAGE_SIZE)
        return fetch(FALLBACK_PAGE_SIZE), FALLBACK_PAGE_SIZE


def may_be_page_size(status: int) -> bool:
    """Whether an error status may be the service refusing our page size.

    What the real services answer to a too-large page is unknown (400? 500?),
    so every error except "who are you", "no such thing" and "slow down" gets
    one retry with a smaller page.
    """
    return status not in (401, 403, 404, 429)


class JsonRequester:
    """Sends catalogue requests through one session, counts them, and bounds their answers."""

    def __init__(self, session: requests.Session, limits: CatalogueLimits = CatalogueLimits()):
        self._session = session
        self.limits = limits
        self._count = 0
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return self._count

    def __call__(self, method: str, url: str, params: Mapping[str, Any] | None = None,
                 body: Any = None) -> Any:
        """The parsed JSON answer; transient failures (a broken connection, 429/5xx, a 200 that is
        not JSON: a proxy's or a maintenance page) are tried again with backoff, and the error
        after the last attempt names the last cause."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return self._once(method, url, params, body)
            except CatalogueError as exc:
                if not _transient(exc) or attempt == ATTEMPTS:
                    if attempt > 1:
                        exc.args = (f"{exc.args[0]} (after {attempt} attempts)",)
                    raise
                delay = BACKOFF * 2 ** (attempt - 1) * (0.5 + random.random() / 2)
                log.info("%s; trying again in %.1f s", exc, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _once(self, method: str, url: str, params: Mapping[str, Any] | None, body: Any) -> Any:
        with self._lock:
            self._count += 1
        where = f"{method} {redact_url(url)}"
        try:
            r = self._session.request(
                method, url, params=params, json=body, headers={"Accept": ACCEPT}, timeout=TIMEOUT,
                stream=True,
            )
            with r:
                text = _body(r, self.limits.max_response_size, f"{method} {redact_url(r.url or url)}")
        except requests.RequestException as e:
            raise _Transient(f"catalogue request failed ({type(e).__name__}): {where}") from None
        where = f"{method} {redact_url(r.url or url)}"
        if not 200 <= r.status_code < 300:
            raise CatalogueHTTPError(
                f"catalogue answered HTTP {r.status_code}{_reason(text)}: {where}", r.status_code
            )
        return _parse(text, r.headers.get("Content-Type", "?"), where)


class _Transient(CatalogueError):
    """A failure worth another attempt: the connection, or a non-JSON answer."""


def _transient(exc: CatalogueError) -> bool:
    if isinstance(exc, CatalogueHTTPError):
        return exc.status in (408, 429, 500, 502, 503, 504)
    return isinstance(exc, _Transient)


def _body(r: requests.Response, limit: int, where: str) -> bytes:
    """The (decoded) body, refused once it passes `limit` bytes (a gzip bomb too)."""
    length = r.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit and "Content-Encoding" not in r.headers:
        raise CatalogueError(f"catalogue answer of {int(length)} bytes is larger than the limit "
                             f"({limit}, catalogue_limits.max_response_size): {where}")
    chunks, size = [], 0
    for chunk in r.iter_content(1 << 16):
        size += len(chunk)
        if size > limit:
            raise CatalogueError(f"catalogue answer larger than the limit ({limit} bytes, "
                                 f"catalogue_limits.max_response_size): {where}")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(text: bytes, content_type: str, where: str) -> Any:
    try:
        doc = json.loads(text)
        # No string of the answer can hold "@" when its text has none and no \u escape that could
        # spell one; a NUL byte means UTF-16/32 text, where neither check holds: walked as before.
        return doc if not _may_hold_userinfo(text) else without_userinfo(doc)
    except RecursionError:
        raise CatalogueError(f"catalogue answered JSON nested too deep: {where}") from None
    except ValueError:
        kind = shown(content_type.split(";")[0], 80)
        raise _Transient(f"catalogue answered non-JSON ({kind}): {where}") from None


def _may_hold_userinfo(text: bytes) -> bool:
    return b"@" in text or b"\\u" in text or b"\x00" in text


def without_userinfo(doc: Any) -> Any:
    """`doc` with "user:password@" taken out of every URL string in it (in place; iterative,
    so that depth costs no recursion)."""
    stack = [doc]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in list(items):
            if isinstance(value, str):
                if "@" in value and "://" in value:
                    node[key] = strip_userinfo(value)
            elif isinstance(value, (dict, list)):
                stack.append(value)
    return doc



def _reason(body: bytes) -> str:
    """A short reason from an error body (OpenSearch exceptions, STAC detail)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    text = None
    if isinstance(data, dict):
        exc = data.get("exceptions")
        if isinstance(exc, list) and exc and isinstance(exc[0], dict):
            text = exc[0].get("exceptionText")
        text = text or data.get("detail") or data.get("description") or data.get("message")
    if not isinstance(text, str) or not text:
        return ""
    text = UNSAFE_CHARS.sub(" ", text).strip()
    return f" ({text[:150]})"


def walk_pages(
    first: Callable[[], Any],
    next_page: Callable[[Any], Any | None],
    total: Callable[[Any], int | None],
    what: str,
    max_pages: int = CatalogueLimits.max_pages,
    ahead: bool = False,
) -> Iterator[dict]:
    """Features of every page, each once.

    With `ahead`, the next page is asked for while this page's features are used (the service's
    time and the parsing overlap); for walks read to the end only: a walk left early may have
    sent one request more.

    `first()` fetches the first page; `next_page(page)` the one after `page`, or
    None when there is none. The walk stops on an empty page, on a page that
    brings nothing new (a service repeating itself), once as many features
    as `total(page)` announces have been seen, or after `max_pages` pages
    (with a warning: the listing is then incomplete).
    """
    page = first()
    seen: set[str] = set()
    raw = 0
    pages = 1
    while True:
        feats = page.get("features") if isinstance(page, dict) else None
        if not isinstance(feats, list):
            raise CatalogueError(f"catalogue answer for {shown(what)} has no 'features' list")
        raw += len(feats)
        early = None
        if ahead and feats and pages < max_pages and (total(page) is None or raw < total(page)):
            early = _Ahead(next_page, page)
        new = 0
        for f in feats:
            if not isinstance(f, dict):
                log.warning("%s: skipping a feature that is not an object", shown(what))
                continue
            fid = f.get("id")
            key = fid if isinstance(fid, str) else _content_key(f)
            if key is None:
                log.warning("%s: skipping a feature nested too deep", shown(what))
                continue
            if key in seen:
                continue
            seen.add(key)
            new += 1
            yield f
        if not feats:
            return
        if new == 0:
            log.warning("%s: a page repeated features already seen; stopping", shown(what))
            return
        announced = total(page)
        if announced is not None and raw >= announced:
            return
        if pages >= max_pages:
            log.warning("%s: stopping after %d pages (catalogue_limits.max_pages); the listing is "
                        "incomplete", shown(what), pages)
            return
        pages += 1
        page = early.result() if early is not None else next_page(page)
        if page is None:
            if announced is not None:
                # OpenSearch serves at most 100 000 results of one query.
                log.warning("%s: %d results announced but only %d served; narrow the query "
                            "(a smaller date range or a filter) to see the rest", shown(what), announced, raw)
            return


class _Ahead:
    """next_page(page) run in a thread; result() waits for it and raises what it raised."""

    def __init__(self, next_page: Callable[[Any], Any | None], page: Any):
        self._out: list = []
        self._thread = threading.Thread(target=self._run, args=(next_page, page), daemon=True,
                                        name="catalogue-page-ahead")
        self._thread.start()

    def _run(self, next_page: Callable[[Any], Any | None], page: Any) -> None:
        try:
            self._out.append((True, next_page(page)))
        except BaseException as exc:  # handed to the walk's thread
            self._out.append((False, exc))

    def result(self) -> Any | None:
        self._thread.join()
        ok, value = self._out[0]
        if not ok:
            raise value
        return value


def _content_key(feature: dict) -> str | None:
    """A feature without an id, known by its content (None: too deep to write back)."""
    try:
        return json.dumps(feature, sort_keys=True)
    except (RecursionError, ValueError):
        return None


class SeenRequests:
    """Remembers requests already sent, so a looping next link ends the walk."""

    def __init__(self) -> None:
        self._keys: set[str] = set()

    def first_time(self, *parts: Any) -> bool:
        key = json.dumps(parts, sort_keys=True, default=str)
        if key in self._keys:
            log.warning("catalogue next link points to a page already read; stopping")
            return False
        self._keys.add(key)
        return True
