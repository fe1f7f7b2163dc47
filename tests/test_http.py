"""The download HTTP layer: range validation, resume, retries, auth failures, 429s.

Pure parsing is tested alone; everything else against the emulator on 127.0.0.1
(fixture `emulator` from conftest.py), reading its request log.
"""

from __future__ import annotations

import time
import pytest
import requests

from terrafs.remote.auth import BasicAuth
from terrafs.errors import AuthError, FetchError
from terrafs.remote.http import (Downloader, parse_content_range, parse_retry_after, redact_url)
from terrafs.remote.ratelimit import RateLimiter
from terrafs.remote.scope import CredentialScope
from terrafs.text import origin_of

from mounting import emulator_is_download_host  # noqa: F401  (a fixture: the emulator gets credentials)

# -- pure logic -----------------------------------------------------------------


def test_content_range_parsing() -> None:
    cr = parse_content_range("bytes 100-199/1000")
    assert (cr.first, cr.last, cr.total) == (100, 199, 1000)
    assert parse_content_range("bytes 0-0/*").total is None
    for bad in (None, "", "bytes 5-4/10", "bytes 0-10/10", "items 0-1/2", "bytes */10", "bytes a-b/c"):
        assert parse_content_range(bad) is None, f"{bad!r} should be refused"


def test_retry_after_parsing() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_redact_url_drops_userinfo() -> None:
    assert redact_url("https://u:pw@host/download/x?a=1") == "https://host/download/x?a=1"
    assert redact_url("https://host/x") == "https://host/x"


# -- against the emulator ---------------------------------------------------------


@pytest.fixture
def url(emulator, emulator_is_download_host) -> str:
    """A file of a few hundred kB (biggest of the smallest hundred over 200 kB)."""
    files = emulator.files(limit=100, min_size=200_000)
    assert files, "the emulator serves no file over 200 kB"
    return emulator.download_url(max(files, key=lambda f: f["size"])["path"])


@pytest.fixture
def full(url: str) -> bytes:
    response = requests.get(url, auth=("demo", "demo"), timeout=30)
    assert response.status_code == 200, f"full GET of the test file answered {response.status_code}"
    assert len(response.content) > 200_000, "the test needs a file of a few hundred kB"
    return response.content


def downloader(**kw) -> Downloader:
    kw.setdefault("backoff", 0.01)
    return Downloader(BasicAuth("demo", "demo"), kw.pop("limiter", None), **kw)


def gets(emulator) -> list[dict]:
    return [e for e in emulator.requests("download") if e["method"] == "GET"]


def test_range_read_returns_exactly_the_bytes_of_a_full_get(emulator, url: str, full: bytes) -> None:
    d = downloader()
    before = len(gets(emulator))
    data, info = d.get_range(url, 1000, 70_000)
    assert data == full[1000:70_000]
    assert info.size == len(full) and info.etag
    new = gets(emulator)[before:]
    assert [e["range"] for e in new] == ["bytes=1000-69999"], "one range request expected"
    assert d.requests_made == 1


def test_head_gives_size_and_etag(emulator, url: str, full: bytes) -> None:
    info = downloader().head(url)
    assert info.size == len(full)
    assert info.etag and info.last_modified


def test_range_past_the_end_returns_the_tail_only(url: str, full: bytes) -> None:
    d = downloader()
    data, info = d.get_range(url, len(full) - 100, len(full) + 5000)
    assert data == full[-100:]
    data, info = d.get_range(url, len(full) + 10, len(full) + 20)
    assert data == b"" and info.size == len(full)


def test_server_ignoring_range_still_gives_the_right_slice(emulator, url: str, full: bytes) -> None:
    emulator.set(ignore_range=True)
    d = downloader()
    data, info = d.get_range(url, 123_456, 130_000)
    assert data == full[123_456:130_000]
    assert info.size == len(full)
    assert b"".join(d.stream(url, 5, 200_005, chunk_size=4096)) == full[5:200_005]


def test_stream_yields_consecutive_chunks_of_one_request(emulator, url: str, full: bytes) -> None:
    d = downloader()
    before = len(gets(emulator))
    chunks = list(d.stream(url, 10, len(full), chunk_size=32 * 1024))
    assert b"".join(chunks) == full[10:]
    assert max(len(c) for c in chunks) <= 32 * 1024
    assert len(gets(emulator)) - before == 1


def test_dropped_connection_mid_stream_resumes_where_it_broke(emulator, url: str, full: bytes) -> None:
    emulator.set(drop_rate=1.0)
    d = downloader()
    start, end = 1000, len(full)
    before = len(gets(emulator))
    it = d.stream(url, start, end, chunk_size=16 * 1024)
    got = [next(it)]  # the first request is under way and will be cut
    emulator.set(drop_rate=0.0)
    got.extend(it)
    assert b"".join(got) == full[start:end], "resumed stream returned wrong bytes"
    ranges = [e["range"] for e in gets(emulator)[before:]]
    assert len(ranges) == 2, f"expected the cut request and one resume, got {ranges}"
    resumed_from = int(ranges[1].split("=")[1].split("-")[0])
    assert start < resumed_from < end, "the resume must start where the first body broke"


def test_connection_dropping_every_time_ends_in_fetch_error(emulator, url: str) -> None:
    emulator.set(drop_rate=1.0)
    with pytest.raises(FetchError):
        downloader(retries=2).get_range(url, 0, 300_000)


def test_server_errors_are_retried_then_fetch_error(emulator, url: str) -> None:
    emulator.set(error_rate=1.0)
    before = len(gets(emulator))
    with pytest.raises(FetchError) as err:
        downloader(retries=2).get_range(url, 0, 100)
    message = str(err.value)
    assert "HTTP 50" in message and "/download/" in message and "\n" not in message
    assert "demo" not in message and "Authorization" not in message
    assert len(gets(emulator)) - before == 3, "1 attempt + 2 retries expected"


def test_occasional_server_errors_are_invisible(emulator, url: str, full: bytes) -> None:
    emulator.set(error_rate=0.5)
    d = downloader(retries=12)
    for i in range(5):
        data, _ = d.get_range(url, i * 1000, i * 1000 + 500)
        assert data == full[i * 1000: i * 1000 + 500]


def test_no_credentials_means_a_login_redirect_and_auth_error(url: str) -> None:
    with pytest.raises(AuthError, match="asked for a login"):
        Downloader(None, None).get_range(url, 0, 10)


def test_wrong_basic_password_is_an_auth_error_without_the_password(url: str) -> None:
    with pytest.raises(AuthError) as err:
        Downloader(BasicAuth("demo", "Wr0ngPa55"), None).get_range(url, 0, 10)
    assert "401" in str(err.value) and "Wr0ngPa55" not in str(err.value)


def test_missing_file_is_a_fetch_error_not_retried(emulator, emulator_is_download_host) -> None:
    d = downloader()
    with pytest.raises(FetchError, match="404"):
        d.get_range(f"{emulator.base_url}/download/no/such/file.tif", 0, 10)
    assert d.requests_made == 1


def _statuses(emulator, since: int) -> list[int]:
    return [e["status"] for e in emulator.requests("download")[since:]]


def test_429_is_honoured_and_the_reads_succeed(emulator, url: str, full: bytes) -> None:
    emulator.set(rate_limits=[[3, 1.0]])
    since = len(emulator.requests("download"))
    d = downloader(limiter=RateLimiter([(100, 1.0)]))  # a limiter that does not know the real limit
    t0 = time.monotonic()
    for i in range(7):
        data, _ = d.get_range(url, i, i + 10)
        assert data == full[i: i + 10]
    statuses = _statuses(emulator, since)
    assert statuses.count(429) >= 1, "the test should have provoked a 429"
    assert statuses.count(206) == 7
    assert time.monotonic() - t0 >= 1.0


def test_429_without_retry_after_backs_off_and_succeeds(emulator, url: str, full: bytes) -> None:
    emulator.set(rate_limits=[[2, 0.5]], send_retry_after=False)
    d = Downloader(BasicAuth("demo", "demo"), None, backoff=0.3)
    for i in range(5):
        assert d.get_range(url, i, i + 4)[0] == full[i: i + 4]


def test_client_limiter_keeps_us_below_the_server_limit(emulator, url: str) -> None:
    emulator.set(rate_limits=[[4, 1.0]])
    since = len(emulator.requests("download"))
    d = downloader(limiter=RateLimiter([(4, 1.0)]))
    for i in range(9):
        d.head(url)
    statuses = _statuses(emulator, since)
    assert len(statuses) == 9 and set(statuses) == {200}, f"statuses {statuses}"


# -- redirects (a tiny local server, no emulator needed) -------------------------------


class _Redirecting:
    """Two loopback HTTP servers; /r on the first redirects to `target`, /f serves 10 bytes."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.seen: list[tuple[str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.seen.append((self.path, self.headers.get("Authorization")))
                if self.path.startswith("/r"):
                    self.send_response(302)
                    self.send_header("Location", outer.target)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", "bytes 0-9/10")
                self.send_header("Content-Length", "10")
                self.end_headers()
                self.wfile.write(b"0123456789")

            def log_message(self, *args: object) -> None:
                pass

        self.servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(2)]
        self.threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in self.servers]
        for t in self.threads:
            t.start()
        self.target = ""

    def url(self, i: int, path: str) -> str:
        return f"http://127.0.0.1:{self.servers[i].server_port}{path}"

    def close(self) -> None:
        for s in self.servers:
            s.shutdown()
            s.server_close()


@pytest.fixture
def redirecting():
    r = _Redirecting()
    yield r
    r.close()


def test_same_host_redirect_keeps_credentials(redirecting) -> None:
    redirecting.target = redirecting.url(0, "/f")
    data, _ = downloader(scope=CredentialScope([origin_of(redirecting.url(0, "/"))])).get_range(redirecting.url(0, "/r"), 0, 10)
    assert data == b"0123456789"
    assert [auth is not None for _, auth in redirecting.seen] == [True, True]


def test_redirect_to_another_host_drops_credentials(redirecting) -> None:
    redirecting.target = redirecting.url(1, "/f")
    d = downloader(scope=CredentialScope([origin_of(redirecting.url(0, "/"))]))
    data, _ = d.get_range(redirecting.url(0, "/r"), 0, 10)
    assert data == b"0123456789"
    assert redirecting.seen[0][1] is not None and redirecting.seen[1] == ("/f", None)
    assert d.requests_made == 2, "each redirect hop is a request (and passes the limiter)"


def test_redirect_to_the_sso_login_page_is_an_auth_error(redirecting) -> None:
    redirecting.target = "http://127.0.0.1:9/auth/realms/terrascope/protocol/openid-connect/auth?client_id=x"
    with pytest.raises(AuthError, match="credentials missing"):
        downloader(scope=CredentialScope([origin_of(redirecting.url(0, "/"))])).get_range(
            redirecting.url(0, "/r"), 0, 10)


def test_a_login_asked_by_a_host_left_out_of_auth_hosts_names_the_host_and_the_key(redirecting) -> None:
    redirecting.target = "http://127.0.0.1:9/auth/realms/terrascope/protocol/openid-connect/auth?client_id=x"
    with pytest.raises(AuthError, match="no credentials were sent to http://127.0.0.1:.*not in auth.hosts"):
        downloader().get_range(redirecting.url(0, "/r"), 0, 10)  # the default scope: the Terrascope host only


def test_a_refused_connection_is_told_from_other_connection_errors():
    """By the socket error's errno, found through requests' and urllib3's wrapping, not its text."""
    import socket

    import requests as rq

    from terrafs.remote.answers import refused as is_refused

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(rq.ConnectionError) as refused:
        rq.get(f"http://127.0.0.1:{port}/", timeout=5)
    assert is_refused(refused.value)
    other = rq.ConnectionError(OSError(104, "Connection refused, says the text, but not the errno"))
    assert not is_refused(other)
    looped = rq.ConnectionError("x")
    looped.__context__ = looped  # a cycle is walked once
    assert not is_refused(looped)


# -- an error page is never the file -------------------------------------------------


def _answer(content_type: str | None, etag: str | None = None) -> requests.Response:
    r = requests.Response()
    r.status_code = 200
    if content_type:
        r.headers["Content-Type"] = content_type
    if etag:
        r.headers["ETag"] = etag
    return r


def test_a_page_type_or_a_missing_identity_is_not_the_file() -> None:
    from terrafs.remote.answers import not_the_file
    tif = "https://h/download/a/B04.tif"
    for page in ("text/html; charset=utf-8", "application/json", "application/problem+json", "TEXT/HTML"):
        assert not_the_file(_answer(page), tif, None), f"{page} taken for the file"
    # The Content-Type of a real answer need not match the catalogue's type.
    for real in (None, "image/tiff", "application/octet-stream", "text/plain", "application/xml"):
        assert not_the_file(_answer(real), tif, None) is None, f"{real} refused"
    assert not_the_file(_answer("application/json"), "https://h/download/a/meta.json", None) is None
    assert not_the_file(_answer("image/tiff"), tif, ('"e1"', None)), "a 200 without the ETag the file had"
    assert not_the_file(_answer("image/tiff", '"e2"'), tif, ('"e1"', None)) is None, "a republished file"


def test_a_login_page_answered_200_is_retried_and_never_the_file(emulator, url: str, full: bytes) -> None:
    emulator.set(fault_rate=1.0, fault_kinds=["html"])
    with pytest.raises(FetchError, match="page"):
        downloader(retries=2).get_range(url, 1000, 70_000)
    emulator.set(fault_rate=0.5)
    d = downloader(retries=12)
    for i in range(6):
        data, info = d.get_range(url, i * 30_000, i * 30_000 + 20_000)
        assert data == full[i * 30_000: i * 30_000 + 20_000]
        assert info.size == len(full), f"a {info.size}-byte page taken for the {len(full)}-byte file"
    assert b"".join(d.stream(url, 7, len(full), chunk_size=16 * 1024)) == full[7:]
    pages = [e for e in gets(emulator) if e.get("fault") == "html"]
    assert len(pages) >= 3, f"only {len(pages)} login pages served: the test tested little"


class _Scripted:
    """A loopback server answering GETs from a script of (status, headers, body), the last one repeated."""

    def __init__(self, script: list[tuple[int, dict[str, str], bytes]]) -> None:
        import http.server
        import threading

        self.script, self.seen = list(script), 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                status, headers, body = outer.script[min(outer.seen, len(outer.script) - 1)]
                outer.seen += 1
                self.send_response(status)
                for k, v in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/download/f.tif"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_200_without_the_etag_the_file_had_is_retried() -> None:
    the_file = (206, {"Content-Range": "bytes 0-9/10", "ETag": '"v1"'}, b"0123456789")
    page = (200, {"Content-Type": "application/octet-stream"}, b"oops!")
    s = _Scripted([the_file, page, page, the_file])
    try:
        d = downloader()
        assert d.get_range(s.url, 0, 10)[0] == b"0123456789"
        data, info = d.get_range(s.url, 0, 10)
        assert (data, info.size, info.etag) == (b"0123456789", 10, '"v1"')
        assert s.seen == 4, "the two answers without the file's ETag were retried"
    finally:
        s.close()


def test_a_200_shorter_than_asked_without_any_identity_is_not_a_new_size() -> None:
    s = _Scripted([(200, {}, b"short"), (206, {"Content-Range": "bytes 0-9/10"}, b"0123456789")])
    try:
        data, info = downloader().get_range(s.url, 0, 10)
        assert (data, info.size) == (b"0123456789", 10)
    finally:
        s.close()


def test_a_republished_file_answered_200_with_its_own_etag_gives_its_new_size() -> None:
    s = _Scripted([(206, {"Content-Range": "bytes 0-9/10", "ETag": '"v1"'}, b"0123456789"),
                   (200, {"ETag": '"v2"', "Content-Type": "image/tiff"}, b"abcdef")])
    try:
        d = downloader()
        d.get_range(s.url, 0, 10)
        data, info = d.get_range(s.url, 0, 10)
        assert (data, info.size, info.etag) == (b"abcdef", 6, '"v2"')
    finally:
        s.close()
