"""Fetching byte ranges of download-service files: session, validation, retries.

`Downloader` is the one place that sends download requests. Each request (HEAD
included, redirect hops and 401 resends too) first passes the rate limiter; 429s
pause every process through the limiter; 5xx and broken connections are retried
with exponential backoff and jitter; every response is checked (status,
Content-Range, length) so the caller gets exactly the bytes it asked for or a
FetchError, never wrong bytes.

Must not: decide which ranges to fetch or cache anything (reader.py and
blockcache.py do); log or put in an error message any header (Authorization!).
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase

from . import __version__
from .errors import AuthError, FetchError
from .ratelimit import RateLimiter

log = logging.getLogger(__name__)

# Keycloak's login page: a redirect there means the server did not accept (or
# did not get) credentials; following it would hand GDAL an HTML page.
SSO_LOGIN_MARK = "/protocol/openid-connect/auth"
MAX_REDIRECTS = 5
# The first few 429s are the limiter doing its job, not failures of the request.
FREE_THROTTLES = 4
MAX_BACKOFF = 30.0

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class RemoteInfo:
    """What the server says about a file."""

    size: int
    etag: str | None
    last_modified: str | None


@dataclass(frozen=True)
class ContentRange:
    first: int
    last: int  # inclusive, as on the wire
    total: int | None  # None for "*"


def parse_content_range(value: str | None) -> ContentRange | None:
    """Parse 'bytes first-last/total' (total may be '*'); None when absent or malformed."""
    if not value:
        return None
    m = _CONTENT_RANGE.match(value)
    if not m:
        return None
    first, last = int(m.group(1)), int(m.group(2))
    if last < first:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    if total is not None and last >= total:
        return None
    return ContentRange(first, last, total)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def redact_url(url: str) -> str:
    """The URL without user:password@ (should one ever be configured that way)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


class _Retryable(Exception):
    """A response or a body we must not use; try again (counts against the budget)."""


class _Budget:
    """Failures and throttles of one logical fetch, shared by its requests and resumes."""

    def __init__(self, retries: int) -> None:
        self.retries = retries
        self.failures = 0
        self.throttles = 0


class Downloader:
    """Range requests against the download service, validated and retried."""

    def __init__(
        self,
        auth: AuthBase | None,
        limiter: RateLimiter | None,
        *,
        retries: int = 4,
        timeout: tuple[float, float] = (10, 60),
        pool_size: int = 16,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.auth = auth
        self.limiter = limiter
        self.retries = retries
        self.timeout = timeout
        self.backoff = backoff
        self._sleep = sleep
        self.session = requests.Session()
        # max_retries=0: no urllib3 Retry. We run the retry loop ourselves so that
        # every attempt passes the shared rate limiter and a 429 pauses all processes.
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # Identity: a compressed body would make byte offsets meaningless.
        self.session.headers.update({"Accept-Encoding": "identity",
                                     "User-Agent": f"terrafs/{__version__}"})
        self.statuses: Counter[str] = Counter()  # responses by status, for metrics (metrics.py)
        self._count_lock = threading.Lock()
        self.requests_made = 0
        if getattr(auth, "before_resend", "absent") is None:
            # A 401 resend by BearerAuth is a request too: it passes the limiter and counts.
            auth.before_resend = self._before_resend  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"Downloader(auth={self.auth!r}, limiter={self.limiter!r})"

    def _before_resend(self) -> None:
        if self.limiter is not None:
            self.limiter.acquire(True)
        with self._count_lock:
            self.requests_made += 1

    def close(self) -> None:
        self.session.close()

    # -- public -----------------------------------------------------------------

    def head(self, url: str) -> RemoteInfo:
        """Size, ETag and Last-Modified of a file."""
        response = self._open("HEAD", url, None, True, _Budget(self.retries))
        response.close()
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit():
            return self._info(response, int(length))
        # Some servers omit Content-Length on HEAD: ask for one byte instead.
        log.debug("HEAD %s without Content-Length; probing with a 1-byte range", redact_url(url))
        _, info = self.get_range(url, 0, 1)
        return info

    def get_range(self, url: str, start: int, end: int, *, urgent: bool = True) -> tuple[bytes, RemoteInfo]:
        """Exactly bytes [start, end) of the file (fewer only where the file ends first)."""
        holder: list[RemoteInfo] = []
        data = b"".join(self._iter_range(url, start, end, urgent, 1 << 18, holder))
        return data, holder[0]

    def stream(self, url: str, start: int, end: int, *, urgent: bool = True,
               chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Consecutive chunks covering exactly [start, end) from one request, resumed if it breaks."""
        return self._iter_range(url, start, end, urgent, chunk_size, [])

    # -- range logic --------------------------------------------------------------

    def _iter_range(self, url: str, start: int, end: int, urgent: bool, chunk_size: int,
                    holder: list[RemoteInfo]) -> Iterator[bytes]:
        if start < 0 or end < start:
            raise ValueError(f"invalid byte range [{start}, {end})")
        budget = _Budget(self.retries)
        pos = start
        first: RemoteInfo | None = None
        while pos < end or first is None:
            if pos >= end:  # empty range: we still owe the caller a RemoteInfo
                holder.append(self.head(url))
                return
            response = self._open("GET", url, (pos, end), urgent, budget)
            try:
                info, skip, stop = self._check_range(response, pos, end)
                if first is None:
                    first = info
                    holder.append(info)
                elif (first.etag and info.etag and info.etag != first.etag) or info.size != first.size:
                    raise FetchError(f"GET {redact_url(url)}: the file changed while it was read")
                end = min(end, info.size)
                for chunk in _body(response, skip, stop - pos, chunk_size):
                    pos += len(chunk)
                    yield chunk
                if pos < stop:
                    raise _Retryable(f"body ended at byte {pos} of [{start}, {end})")
                # pos == stop < end: the server sent a shorter range than asked; ask for the rest.
            except _Retryable as exc:
                self._failed(budget, "GET", url, str(exc))
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                self._failed(budget, "GET", url, f"connection lost at byte {pos} ({type(exc).__name__})")
            finally:
                response.close()

    def _check_range(self, response: requests.Response, pos: int, end: int) -> tuple[RemoteInfo, int, int]:
        """(info, bytes of body to skip, absolute end to stop at) or _Retryable."""
        if response.status_code == 416:
            unsat = _UNSATISFIED_RANGE.match(response.headers.get("Content-Range", ""))
            if unsat and pos >= int(unsat.group(1)):
                size = int(unsat.group(1))
                return self._info(response, size), 0, pos
            raise _Retryable("416 without a usable Content-Range")
        if response.status_code == 206:
            cr = parse_content_range(response.headers.get("Content-Range"))
            if cr is None:
                raise _Retryable(f"206 with bad Content-Range {response.headers.get('Content-Range')!r}")
            size = cr.total if cr.total is not None else None
            want_last = end - 1 if size is None else min(end, size) - 1
            # A shorter range than asked is fine (some servers cap a response): the
            # caller asks again for the rest. Anything else is not our bytes.
            if cr.first != pos or cr.last > want_last:
                raise _Retryable(f"206 for bytes {cr.first}-{cr.last}, asked {pos}-{end - 1}")
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) != cr.last - cr.first + 1:
                raise _Retryable("206 whose Content-Length disagrees with its Content-Range")
            if size is None:
                size = end  # unknown total: trust the caller's end
            return self._info(response, size), 0, cr.last + 1
        if response.status_code == 200:
            # The server ignored Range: read the whole body up to `end`, keep the slice.
            length = response.headers.get("Content-Length")
            size = int(length) if length is not None and length.isdigit() else end
            return self._info(response, size), pos, min(end, size)
        raise _Retryable(f"unexpected HTTP {response.status_code}")

    def _info(self, response: requests.Response, size: int) -> RemoteInfo:
        return RemoteInfo(size=size, etag=response.headers.get("ETag"),
                          last_modified=response.headers.get("Last-Modified"))

    # -- request loop -------------------------------------------------------------

    def _open(self, method: str, url: str, rng: tuple[int, int] | None, urgent: bool,
              budget: _Budget) -> requests.Response:
        """A 2xx (or 416) response to one request, after retries; raises FetchError/AuthError."""
        headers = {"Range": f"bytes={rng[0]}-{rng[1] - 1}"} if rng else {}
        while True:
            try:
                response = self._send(method, url, headers, urgent)
            except (requests.ConnectionError, requests.Timeout) as exc:
                self._failed(budget, method, url, type(exc).__name__)
                continue
            except requests.RequestException as exc:  # invalid URL, too many redirects...
                raise FetchError(f"{method} {redact_url(url)} failed: {type(exc).__name__}") from None
            status = response.status_code
            if 200 <= status < 300 or status == 416:
                return response
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            response.close()
            if status == 429:
                self._throttled(budget, method, url, retry_after)
            elif status in (401, 403):
                raise AuthError(f"{method} {redact_url(url)}: the download service refused the credentials "
                                f"(HTTP {status})")
            elif (status >= 500 and status not in (501, 505)) or status == 408:
                self._failed(budget, method, url, f"HTTP {status}", retry_after)
            else:
                raise FetchError(f"{method} {redact_url(url)} failed: HTTP {status}")

    def _send(self, method: str, url: str, headers: dict[str, str], urgent: bool) -> requests.Response:
        """One request, following ordinary redirects; each hop passes the limiter."""
        auth = self.auth
        target = url
        for _ in range(MAX_REDIRECTS + 1):
            if self.limiter is not None:
                self.limiter.acquire(urgent)
            with self._count_lock:
                self.requests_made += 1
            t0 = time.monotonic()
            response = self.session.request(method, target, headers=headers, auth=auth,
                                            allow_redirects=False, stream=True, timeout=self.timeout)
            with self._count_lock:  # a 401 that auth resent is in history
                self.statuses.update(str(r.status_code) for r in (*response.history, response))
            log.debug("%s %s range=%s -> %d in %.3f s", method, redact_url(target),
                      headers.get("Range", "-"), response.status_code, time.monotonic() - t0)
            if not response.is_redirect:
                return response
            location = response.headers.get("Location", "")
            response.close()
            if SSO_LOGIN_MARK in location:
                raise AuthError("the download service asked for a login: credentials missing? "
                                "(configure a username/password or run `terrafs login`)")
            nxt = urljoin(target, location)
            old, new = urlsplit(target), urlsplit(nxt)
            if old.scheme == "https" and new.scheme != "https":
                raise FetchError(f"{method} {redact_url(url)}: refusing a redirect from https to {new.scheme}")
            if (old.scheme, old.netloc) != (new.scheme, new.netloc):
                auth = None  # never hand our credentials to another host
            target = nxt
        raise FetchError(f"{method} {redact_url(url)} failed: more than {MAX_REDIRECTS} redirects")

    def _failed(self, budget: _Budget, method: str, url: str, why: str,
                retry_after: float | None = None) -> None:
        budget.failures += 1
        if budget.failures > budget.retries:
            raise FetchError(f"{method} {redact_url(url)} failed after {budget.failures} attempts: {why}")
        delay = retry_after if retry_after is not None else self._backoff(budget.failures)
        log.info("%s %s: %s; retry %d/%d in %.1f s", method, redact_url(url), why,
                 budget.failures, budget.retries, delay)
        self._sleep(delay)

    def _throttled(self, budget: _Budget, method: str, url: str, retry_after: float | None) -> None:
        budget.throttles += 1
        delay = retry_after if retry_after is not None else self._backoff(budget.throttles)
        if budget.throttles > FREE_THROTTLES:
            budget.failures += 1
            if budget.failures > budget.retries:
                raise FetchError(f"{method} {redact_url(url)} failed: HTTP 429 (rate limited) "
                                 f"{budget.throttles} times")
        log.info("%s %s: HTTP 429; pausing downloads for %.1f s", method, redact_url(url), delay)
        if self.limiter is not None:
            self.limiter.pause(delay)
        else:
            self._sleep(delay)

    def _backoff(self, n: int) -> float:
        base = min(MAX_BACKOFF, self.backoff * 2 ** (n - 1))
        return base * (0.5 + random.random() / 2)  # jitter: don't retry in lockstep


def _body(response: requests.Response, skip: int, want: int, chunk_size: int) -> Iterator[bytes]:
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
