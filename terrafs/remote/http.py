"""Fetching byte ranges of download-service files: session, validation, retries.

`Downloader` is the one place that sends download requests. Each request (HEAD, redirect
hops and 401 resends too) passes the rate limiter; 429s pause every process through it;
5xx and broken connections are retried with backoff and jitter; every response is checked
(status, Content-Range, length): the caller gets exactly its bytes or a FetchError.
Must not: decide which ranges to fetch or cache anything (read/ and cache/blocks.py do);
log or put in an error message any header (Authorization!).
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase

from terrafs import __version__
from terrafs.remote.answers import (DownloadStats, RangeStream, RemoteInfo, body as _body, not_the_file,  # noqa: F401 (re-exported)
                      parse_retry_after, refused as _refused)
from terrafs.errors import AuthError, FetchError
from terrafs.remote.limiter import DEFAULT_MAX_PAUSE, Limiter
from terrafs.remote import scope as _scope
from terrafs.remote.scope import CredentialScope
from terrafs.text import parse_content_range, redact_url

log = logging.getLogger(__name__)

# Keycloak's login page: a redirect there means the server did not accept (or
# did not get) credentials; following it would hand GDAL an HTML page.
SSO_LOGIN_MARK = "/protocol/openid-connect/auth"
MAX_REDIRECTS = 5
# The first few 429s are the limiter doing its job, not failures of the request.
FREE_THROTTLES = 4
MAX_BACKOFF = 4.0  # seconds: a server down for longer gets its Retry-After honoured, or the read fails
REFUSED_TRIES = 2  # connections refused in a row before a fetch fails
IDENTITIES = 4096  # URLs whose last (ETag, Last-Modified) is kept, to tell a page from the file

_UNSATISFIED_RANGE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)


class _Retryable(Exception):
    """A response or a body we must not use; try again (counts against the budget)."""


class _Budget:
    """Failures and throttles of one logical fetch, shared by its requests and resumes.

    `failures` counts attempts in a row without progress: a long stream that is
    cut now and then but goes on is not failing. `deadline` bounds the time
    the fetch may spend retrying, whatever the count.
    """

    def __init__(self, retries: int, max_time: float = 120.0) -> None:
        self.retries = retries
        self.failures = 0
        self.throttles = 0
        self.refused = 0
        self.deadline = time.monotonic() + max_time

    def progressed(self) -> None:
        self.failures = 0
        self.refused = 0


class Downloader:
    """Range requests against the download service, validated and retried."""

    def __init__(
        self,
        auth: AuthBase | None,
        limiter: Limiter | None,
        *,
        retries: int = 4,
        timeout: tuple[float, float] = (10, 60),
        pool_size: int = 16,
        backoff: float = 0.5,
        max_retry_time: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
        scope: CredentialScope | None = None,
    ) -> None:
        self.auth = auth
        self.scope = scope if scope is not None else _scope.DEFAULT_SCOPE  # which hosts get `auth` (scope.py)
        self.limiter = limiter
        self.max_pause = limiter.max_pause if limiter is not None else DEFAULT_MAX_PAUSE
        self.retries = retries
        self.timeout = timeout
        self.backoff = backoff
        self.max_retry_time = max_retry_time
        self._sleep = sleep
        self.session = requests.Session()
        # max_retries=0: no urllib3 Retry. We run the retry loop ourselves so that
        # every attempt passes the shared rate limiter and a 429 pauses all processes.
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        for prefix in ("http://", "https://"):
            self.session.mount(prefix, adapter)
        # Identity: a compressed body would make byte offsets meaningless.
        self.session.headers.update({"Accept-Encoding": "identity",
                                     "User-Agent": f"terrafs/{__version__}"})
        self.statuses: Counter[str] = Counter()  # responses by status, for metrics (metrics.py)
        self._count_lock = threading.Lock()
        self.requests_made = 0
        # (ETag, Last-Modified) last seen per URL, bounded: a 200 without them is then a page.
        self._idents: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()

    def __repr__(self) -> str:
        return f"Downloader(auth={self.auth!r}, limiter={self.limiter!r})"

    def stats(self) -> DownloadStats:
        with self._count_lock:
            return DownloadStats(self.requests_made, dict(self.statuses))
    def close(self) -> None:
        self.session.close()

    # -- public -----------------------------------------------------------------

    def head(self, url: str) -> RemoteInfo:
        """Size, ETag and Last-Modified of a file."""
        budget = _Budget(self.retries, self.max_retry_time)
        while True:
            response = self._open("HEAD", url, None, True, budget)
            response.close()
            why = not_the_file(response, url, self._had(url)) if response.status_code == 200 else None
            if why is None:
                break
            self._failed(budget, "HEAD", url, why)
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit():
            return self._remember(url, self._info(response, int(length)))
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
               chunk_size: int = 1 << 20) -> "RangeStream":
        """Consecutive chunks covering exactly [start, end) from one request, resumed if it breaks.

        The stream's `info` (size, ETag, Last-Modified of the response) is set
        once the first chunk has arrived, so the caller can check the file's
        identity before it trusts a byte.
        """
        holder: list[RemoteInfo] = []
        return RangeStream(self._iter_range(url, start, end, urgent, chunk_size, holder), holder)

    # -- range logic --------------------------------------------------------------

    def _iter_range(self, url: str, start: int, end: int, urgent: bool, chunk_size: int,
                    holder: list[RemoteInfo]) -> Iterator[bytes]:
        if start < 0 or end < start:
            raise ValueError(f"invalid byte range [{start}, {end})")
        budget = _Budget(self.retries, self.max_retry_time)
        pos = start
        first: RemoteInfo | None = None
        while pos < end or first is None:
            if pos >= end:  # empty range: we still owe the caller a RemoteInfo
                holder.append(self.head(url))
                return
            response = self._open("GET", url, (pos, end), urgent, budget)
            try:
                info, skip, stop = self._check_range(response, url, pos, end)
                if first is None:
                    first = info
                    holder.append(info)
                elif (first.etag and info.etag and info.etag != first.etag) or info.size != first.size:
                    raise FetchError(f"GET {redact_url(url)}: the file changed while it was read")
                self._remember(url, info)
                end = min(end, info.size)
                for chunk in _body(response, skip, stop - pos, chunk_size):
                    pos += len(chunk)
                    budget.progressed()
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

    def _check_range(self, response: requests.Response, url: str, pos: int,
                     end: int) -> tuple[RemoteInfo, int, int]:
        """(info, bytes of body to skip, absolute end to stop at) or _Retryable.

        A size other than the caller's comes only from an answer that is the file:
        a 206 or 416 naming the total, or a 200 with an ETag/Last-Modified of its own.
        """
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
            why = not_the_file(response, url, self._had(url))
            if why is not None:
                raise _Retryable(why)
            length = response.headers.get("Content-Length")
            size = int(length) if length is not None and length.isdigit() else end
            if size < end and response.headers.get("ETag") is None and response.headers.get("Last-Modified") is None:
                raise _Retryable(f"HTTP 200 of {size} bytes for a range to {end}, without ETag or Last-Modified")
            return self._info(response, size), pos, min(end, size)
        raise _Retryable(f"unexpected HTTP {response.status_code}")

    def _had(self, url: str) -> tuple[str | None, str | None] | None:
        with self._count_lock:
            return self._idents.get(url)

    def _remember(self, url: str, info: RemoteInfo) -> RemoteInfo:
        """Keep the identity an answer that is the file gave (the newest IDENTITIES URLs)."""
        if info.etag is not None or info.last_modified is not None:
            with self._count_lock:
                self._idents[url] = (info.etag, info.last_modified)
                self._idents.move_to_end(url)
                while len(self._idents) > IDENTITIES:
                    self._idents.popitem(last=False)
        return info

    def _info(self, response: requests.Response, size: int) -> RemoteInfo:
        return RemoteInfo(size=size, etag=response.headers.get("ETag"),
                          last_modified=response.headers.get("Last-Modified"))

    # -- request loop -------------------------------------------------------------

    def _open(self, method: str, url: str, rng: tuple[int, int] | None, urgent: bool,
              budget: _Budget) -> requests.Response:
        """A 2xx (or 416) response to one request, after retries; raises FetchError/AuthError."""
        headers = {"Range": f"bytes={rng[0]}-{rng[1] - 1}"} if rng else {}
        renewed = False
        while True:
            try:
                response = self._send(method, url, headers, urgent)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if _refused(exc):
                    # Nobody listens (the service is down, or we are offline): a few quick
                    # tries, then EIO at once rather than a long series of backoffs.
                    budget.refused += 1
                    if budget.refused > REFUSED_TRIES:
                        raise FetchError(f"{method} {redact_url(url)} failed: connection refused") from None
                self._failed(budget, method, url, type(exc).__name__)
                continue
            except requests.RequestException as exc:  # invalid URL, too many redirects...
                raise FetchError(f"{method} {redact_url(url)} failed: {type(exc).__name__}") from None
            status = response.status_code
            if 200 <= status < 300 or status == 416:
                return response
            retry_after = parse_retry_after(response.headers.get("Retry-After"), limit=self.max_pause)
            response.close()
            if status == 429:
                self._throttled(budget, method, url, retry_after)
            elif status == 401 and not renewed and self._renewable(response):
                renewed = True  # once: a second 401 with a fresh token means the credentials are wrong
                continue
            elif status in (401, 403):
                unsent = self.auth is not None and self.scope.unsent(url)  # auth.hosts left the host out
                raise AuthError(f"{method} {redact_url(url)}: the download service refused " + (
                    f"the request (HTTP {status}): {unsent}" if unsent else f"the credentials (HTTP {status})"))
            elif (status >= 500 and status not in (501, 505)) or status == 408:
                self._failed(budget, method, url, f"HTTP {status}", retry_after)
            else:
                raise FetchError(f"{method} {redact_url(url)} failed: HTTP {status}")

    def _send(self, method: str, url: str, headers: dict[str, str], urgent: bool) -> requests.Response:
        """One request, following ordinary redirects; each hop passes the limiter."""
        auth = self.auth if self.auth is not None and self.scope.allows(url) else None
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
                unsent = self.auth is not None and self.scope.unsent(url)  # auth.hosts left the host out
                raise AuthError("the download service asked for a login: " + (unsent or "credentials missing? "
                                "(configure a username/password or run `terrafs login`)"))
            nxt = urljoin(target, location)
            old, new = urlsplit(target), urlsplit(nxt)
            if old.scheme == "https" and new.scheme != "https":
                raise FetchError(f"{method} {redact_url(url)}: refusing a redirect from https to {new.scheme}")
            if (old.scheme, old.netloc) != (new.scheme, new.netloc):
                auth = None  # never hand our credentials to another host
            target = nxt
        raise FetchError(f"{method} {redact_url(url)} failed: more than {MAX_REDIRECTS} redirects")

    def _renewable(self, refused: requests.Response) -> bool:
        """After a 401: let auth renew what it sent (a token), if it can; the caller sends again."""
        renew = getattr(self.auth, "renew", None)
        return bool(renew is not None and renew(refused))

    def _failed(self, budget: _Budget, method: str, url: str, why: str,
                retry_after: float | None = None) -> None:
        budget.failures += 1
        if budget.failures > budget.retries:
            raise FetchError(f"{method} {redact_url(url)} failed after {budget.failures} attempts: {why}")
        delay = retry_after if retry_after is not None else self._backoff(budget.failures)
        if time.monotonic() + delay > budget.deadline:
            raise FetchError(f"{method} {redact_url(url)} failed: still failing after {self.max_retry_time:.0f} s "
                             f"of retries (retries.max_time): {why}")
        log.info("%s %s: %s; retry %d/%d in %.1f s", method, redact_url(url), why,
                 budget.failures, budget.retries, delay)
        self._sleep(delay)

    def _throttled(self, budget: _Budget, method: str, url: str, retry_after: float | None) -> None:
        budget.throttles += 1
        delay = min(retry_after if retry_after is not None else self._backoff(budget.throttles), self.max_pause)
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

