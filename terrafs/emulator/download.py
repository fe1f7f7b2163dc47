"""The emulator's download service: HEAD and GET /download/<path>.

Follows the real service (see terrascope-api.md §3): a request without
credentials is redirected to the SSO login page (no Accept-Ranges on that
302), a bad Basic or a bad/expired/empty Bearer gets 401, an authorised one
gets the bytes with Content-Length, Accept-Ranges, ETag and Last-Modified.

Choices where the facts are open:
- A request without credentials that accepts only JSON (terracatalogueclient's
  `Accept: application/json` HEAD probe) gets 401 instead of the 302; its test
  expects a non-OK answer there.
- A Range header with several ranges is answered 200 with the whole body
  (RFC 9110 allows ignoring Range); a malformed Range header is ignored too.
- If-Range with a non-matching ETag/date gets the whole body (200).

Bodies stream in chunks from EmuFile.read, so big files never sit in memory.
This module applies the faults that change a body (ignore_range, wrong
Content-Range, bandwidth, cut, stall, html: a login page with status 200)
and serves a republished file in its current version (republish.py); rate
limits, latency, status faults and the drawing of mixed faults are app.py's.
"""
from __future__ import annotations

import logging
import random
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator
from urllib.parse import urlencode

from werkzeug.http import http_date, parse_date
from werkzeug.wrappers import Request, Response

from terrafs.emulator import republish
from terrafs.emulator.archive import Archive, EmuFile
from terrafs.emulator.keycloak import REALM_PATH, TokenStore
from terrafs.emulator.republish import Version
from terrafs.emulator.settings import EmulatorSettings

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
# The "html" fault: what the real service answers a GET whose session lapsed (its SSO
# login page, reached by a redirect), as status 200, 39 bytes, no ETag or Last-Modified.
LOGIN_PAGE = b"<!DOCTYPE html><title>Sign in</title>\r\n"
DEFAULT_LAST_MODIFIED = datetime(2024, 1, 1, tzinfo=timezone.utc)


class DropConnection(Exception):
    """Raised by a body iterator to make the server cut the connection (drop fault)."""


# Applied faults are noted here in the WSGI environ, for the request log.
FAULT_KEY = "terrafs.fault"


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """One byte range (start, end inclusive), "unsatisfiable", or None (serve
    the whole body: no header, malformed, or several ranges)."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or not spec:
        return None
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if len(parts) != 1:
        return None
    first, dash, last = parts[0].partition("-")
    if not dash:
        return None
    try:
        if first == "":
            n = int(last)
            if n < 0:
                return None
            if n == 0 or size == 0:
                return "unsatisfiable"
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last != "" else size - 1
    except ValueError:
        return None
    if start < 0 or end < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


def _redirect_to_login(base_url: str, request: Request) -> Response:
    query = urlencode({
        "client_id": "terrascope-download",
        "redirect_uri": base_url + request.path,
        "response_type": "code",
        "scope": "openid",
    })
    resp = Response("", status=302)
    resp.headers["Location"] = f"{base_url}{REALM_PATH}/protocol/openid-connect/auth?{query}"
    return resp


def _unauthorized(scheme: str) -> Response:
    resp = Response('{"error":"unauthorized"}', status=401, mimetype="application/json")
    resp.headers["WWW-Authenticate"] = f'{scheme} realm="terrascope"'
    return resp


def _wants_only_json(request: Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "html" not in accept and "*/*" not in accept


def authorise(request: Request, settings: EmulatorSettings, tokens: TokenStore, base_url: str) -> Response | None:
    """None when the request may download, else the refusal to send."""
    header = request.headers.get("Authorization")
    if header is None:
        if _wants_only_json(request):
            return _unauthorized("Bearer")
        return _redirect_to_login(base_url, request)
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        token = value.strip()
        if token and tokens.user_for_access(token) is not None:
            return None
        return _unauthorized("Bearer")
    if scheme == "basic":
        auth = request.authorization
        expected = settings.users.get(auth.username or "") if auth is not None else None
        if expected is not None and auth is not None and auth.password is not None \
                and secrets.compare_digest(expected.encode(), auth.password.encode()):
            return None
        return _unauthorized("Basic")
    return _unauthorized("Bearer")


@dataclass(frozen=True)
class Cut:
    """Where a body stops short: after `at` bytes, having paused `stall` seconds there."""

    at: int
    stall: float = 0.0


def _body(f: EmuFile, version: Version, start: int, length: int, bandwidth: float,
          cut: Cut | None) -> Iterator[bytes]:
    """Stream [start, start+length); obey the bandwidth cap; stop at the cut."""
    # Smaller chunks under a bandwidth cap keep the rate smooth.
    chunk = CHUNK if not bandwidth else max(4096, min(CHUNK, int(bandwidth) // 8))
    began = time.monotonic()
    sent = 0
    while sent < length:
        n = min(chunk, length - sent)
        if cut is not None and sent + n >= cut.at:
            n = cut.at - sent
            if n > 0:
                yield republish.read(f, version, start + sent, n)
            if cut.stall > 0:
                # An empty chunk makes werkzeug flush what went before, so the
                # client really holds the first part while the server stalls.
                yield b""
                time.sleep(cut.stall)
            raise DropConnection(f"emulated cut after {cut.at} of {length} bytes")
        data = republish.read(f, version, start + sent, n)
        if len(data) != n:
            # A short read would silently break Content-Length; fail loudly instead.
            raise RuntimeError(f"archive returned {len(data)} bytes for {n} at {start + sent} of {f.download_path}")
        yield data
        sent += n
        if bandwidth:
            ahead = sent / bandwidth - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)


def handle_download(request: Request, archive: Archive, settings: EmulatorSettings, tokens: TokenStore,
                    base_url: str, subpath: str, last_modified: dict[str, datetime] | None = None,
                    rng: random.Random | None = None, versions: republish.Republisher | None = None,
                    fault: str | None = None) -> Response:
    """Serve /download/<subpath> (subpath without leading slash). `fault` is a
    body fault drawn by app.py for this GET: cut, stall, wrong_range, ignore_range, html."""
    if request.method not in ("GET", "HEAD"):
        resp = Response("Method Not Allowed", status=405)
        resp.headers["Allow"] = "GET, HEAD"
        return resp
    refusal = authorise(request, settings, tokens, base_url)
    if refusal is not None:
        return refusal
    f = archive.file(subpath)
    if f is None:
        return Response("Not Found", status=404, mimetype="text/plain")
    if fault == "html":
        request.environ[FAULT_KEY] = "html"
        return Response(LOGIN_PAGE, status=200, mimetype="text/html")
    version = versions.version(f.download_path) if versions else republish.Version(0, None)
    modified = version.modified or (last_modified or {}).get(f.download_path) or DEFAULT_LAST_MODIFIED
    etag = republish.etag(f, version)
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Last-Modified": http_date(modified),
        "Content-Type": f.type or "application/octet-stream",
    }
    applied: list[str] = []
    rng_header = request.headers.get("Range")
    if rng_header and (settings.ignore_range or fault == "ignore_range"):
        applied.append("ignore_range")
        rng_header = None
    if rng_header and not _if_range_matches(request.headers.get("If-Range"), etag, modified):
        rng_header = None
    wanted = parse_range(rng_header, f.size)
    if wanted == "unsatisfiable":
        headers["Content-Range"] = f"bytes */{f.size}"
        headers["Content-Length"] = "0"
        return Response(b"", status=416, headers=headers)
    if wanted is None:
        status, start, length = 200, 0, f.size
    else:
        start, end = wanted
        if (settings.wrong_content_range or fault == "wrong_range") and end + 1 < f.size:
            applied.append("wrong_range")
            start, end = start + 1, end + 1  # honest about it: the header names what is sent
        status, length = 206, end - start + 1
        headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
    headers["Content-Length"] = str(length)

    if request.method == "HEAD":
        # An empty iterable (not b"") so werkzeug keeps our Content-Length.
        return Response((), status=status, headers=headers, direct_passthrough=True)
    cut = _cut(settings, fault, length, rng or random, applied)
    if applied:
        request.environ[FAULT_KEY] = ",".join(applied)
    return Response(_body(f, version, start, length, settings.bandwidth, cut), status=status, headers=headers,
                    direct_passthrough=True)


def _cut(settings: EmulatorSettings, fault: str | None, length: int, rng: random.Random,
         applied: list[str]) -> Cut | None:
    """Where this body stops short (cut, stall or the drop rate), or None."""
    if length <= 0:
        return None
    # Somewhere inside the body, never at its end.
    middle = max(0, min(length - 1, length // 2))
    if fault == "stall":
        applied.append("stall")
        return Cut(middle, settings.stall_seconds)
    if fault == "cut" or (settings.drop_rate > 0 and rng.random() < settings.drop_rate):
        applied.append("cut")
        return Cut(middle)
    return None


def _if_range_matches(if_range: str | None, etag: str, modified: datetime) -> bool:
    if not if_range:
        return True
    if_range = if_range.strip()
    if if_range.startswith('"') or if_range.startswith("W/"):
        return if_range == etag
    when = parse_date(if_range)
    return when is not None and when >= modified.replace(microsecond=0)
