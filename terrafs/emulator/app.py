"""The emulator's WSGI application: one port for STAC (/stac), OpenSearch
(/catalogue), downloads (/download), the Keycloak realm (/auth/realms/terrascope)
and a control API for tests (/_emulator).

It owns the runtime settings (faults, limits, token lifetimes), the rate
limiter and the request log (one JSON line per request, which tests and
benchmarks count). The request log never holds an Authorization header, a form
body, a password or a token; query strings are logged as sent.

Control API:
  GET  /_emulator/settings              current settings (JSON; user names only)
  POST /_emulator/settings              JSON patch of settings; also {"reset": true}
                                        (back to start-up settings, limiter and tokens
                                        cleared) and {"revoke_tokens": true}
  GET|POST /_emulator/device/approve?user_code=X[&user=demo]   approve a device login
  GET  /_emulator/files?limit=N&min_size=B&max_size=B   served files, smallest first

Latency applies to every request except the control API; rate limits and
error faults to /download/ only.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from terrafs.emulator.archive import Archive
from terrafs.emulator.download import DropConnection, handle_download
from terrafs.emulator.keycloak import REALM_PATH, TokenStore, handle_keycloak
from terrafs.emulator.limits import SlidingWindowLimiter, retry_after_header

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]

# Settings a POST may change, with the type each value is coerced to.
_NUMBER_FIELDS = ("access_token_lifetime", "refresh_token_lifetime", "error_rate", "drop_rate",
                  "latency", "bandwidth", "device_interval")
_BOOL_FIELDS = ("ignore_range", "send_retry_after", "wrong_content_range", "catalogue_garbage")


@dataclass
class EmulatorSettings:
    """What the emulator does right now; tests change it at runtime over
    POST /_emulator/settings. Change it through update() (under the lock)."""

    users: dict[str, str] = field(default_factory=lambda: {"demo": "demo"})
    access_token_lifetime: float = 300.0
    refresh_token_lifetime: float = 3600.0
    # [(max requests, window seconds)] per client IP on /download/; [] = off.
    rate_limits: list[tuple[int, float]] = field(default_factory=lambda: [(80, 10.0), (200, 60.0)])
    error_rate: float = 0.0  # share of download requests answered 500/503
    drop_rate: float = 0.0  # share of download GETs cut mid-body
    latency: float = 0.0  # seconds added to each request
    bandwidth: float = 0.0  # bytes/s cap per download response; 0 = none
    ignore_range: bool = False  # answer 200 + whole body to Range requests
    send_retry_after: bool = True  # Retry-After on 429
    wrong_content_range: bool = False  # 206 for the range one byte later than asked (a broken proxy)
    catalogue_garbage: bool = False  # catalogue answers 200 with an HTML error page (a proxy in the way)
    device_interval: float = 5.0  # polling interval the device endpoint announces
    tokens_not_before: float = 0.0  # epoch; tokens issued earlier are dead (revoke_tokens)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def snapshot(self) -> dict[str, Any]:
        """JSON-safe view, without passwords."""
        with self._lock:
            out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}
        out["users"] = sorted(out["users"])
        out["rate_limits"] = [list(w) for w in out["rate_limits"]]
        return out

    def update(self, patch: dict[str, Any]) -> None:
        """Apply a patch; ValueError (nothing changed) on an unknown key or bad value."""
        new: dict[str, Any] = {}
        for key, value in patch.items():
            if key in _NUMBER_FIELDS:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise ValueError(f"{key} must be a number >= 0")
                if key in ("error_rate", "drop_rate") and value > 1:
                    raise ValueError(f"{key} must be between 0 and 1")
                new[key] = float(value)
            elif key in _BOOL_FIELDS:
                if not isinstance(value, bool):
                    raise ValueError(f"{key} must be true or false")
                new[key] = value
            elif key == "rate_limits":
                new[key] = _parse_windows(value)
            elif key == "users":
                if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                          for k, v in value.items()):
                    raise ValueError("users must map names to passwords")
                new[key] = dict(value)
            else:
                raise ValueError(f"unknown setting {key!r}")
        with self._lock:
            for key, value in new.items():
                setattr(self, key, value)

    def restore(self, other: EmulatorSettings) -> None:
        """Copy every setting of `other` (used to reset between tests)."""
        with self._lock:
            for f in dataclasses.fields(self):
                if not f.name.startswith("_"):
                    value = getattr(other, f.name)
                    setattr(self, f.name, type(value)(value) if isinstance(value, (dict, list)) else value)

    def revoke_tokens(self) -> None:
        """Every token issued so far stops working at once (as an admin
        'not before' push in Keycloak)."""
        with self._lock:
            # +epsilon: a token issued in this same instant is revoked too.
            self.tokens_not_before = time.time() + 1e-6


def _parse_windows(value: Any) -> list[tuple[int, float]]:
    if not isinstance(value, list):
        raise ValueError("rate_limits must be a list of [count, seconds]")
    windows = []
    for item in value:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise ValueError("rate_limits must be a list of [count, seconds]")
        n, w = int(item[0]), float(item[1])
        if n < 0 or w <= 0:
            raise ValueError("rate limit needs count >= 0 and seconds > 0")
        windows.append((n, w))
    return windows


class RequestLog:
    """Appends one JSON line per request; thread-safe, flushed at once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self._lock:
            self._fh.write(line)
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def read_log(path: str | Path) -> list[dict]:
    """The request log as a list of dicts (a torn last line is skipped)."""
    entries = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return entries


def _kind(path: str) -> str:
    for prefix, kind in (("/stac", "stac"), ("/catalogue", "opensearch"), ("/download", "download"),
                         ("/auth", "auth"), ("/_emulator", "control")):
        if path == prefix or path.startswith(prefix + "/"):
            return kind
    return "other"


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


class EmulatorApp:
    """The WSGI callable. Build it with make_app()."""

    def __init__(self, archive: Archive, settings: EmulatorSettings, log_path: str | Path):
        self.archive = archive
        self.settings = settings
        self.initial = dataclasses.replace(settings, users=dict(settings.users),
                                           rate_limits=list(settings.rate_limits))
        self.tokens = TokenStore(settings)
        self.limiter = SlidingWindowLimiter()
        self.log = RequestLog(log_path)
        self.rng = random.Random()
        self.last_modified = self._last_modified(archive)

    @staticmethod
    def _last_modified(archive: Archive) -> dict[str, datetime]:
        out: dict[str, datetime] = {}
        for c in archive.collections:
            for p in archive.products(c.stac_id):
                when = p.updated or p.published or p.datetime
                for f in p.files:
                    out[f.download_path] = when
        return out

    # -- WSGI -------------------------------------------------------------------

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        request = Request(environ)
        kind = _kind(request.path)
        entry: dict[str, Any] = {
            "time": time.time(), "method": request.method, "path": request.path,
            "query": request.query_string.decode("latin-1"), "range": request.headers.get("Range"),
            "status": None, "bytes": 0, "client": request.remote_addr, "kind": kind,
        }
        response = self._respond(request, kind)
        status_holder: list[str] = []

        def _start(status: str, headers: list, exc_info: Any = None) -> Callable:
            status_holder.append(status)
            return start_response(status, headers, exc_info)

        body = response(environ, _start)
        entry["status"] = int(status_holder[0].split()[0]) if status_holder else response.status_code
        return self._logged(body, entry, environ)

    def _logged(self, body: Iterable[bytes], entry: dict[str, Any], environ: dict) -> Iterator[bytes]:
        """Pass the body through, counting bytes. The log line is written just
        before the last chunk goes out, so a client that has read the whole
        body finds its line in the log."""
        sent = 0
        logged = False

        def write_log(n: int) -> None:
            nonlocal logged
            if not logged:
                logged = True
                entry["bytes"] = n
                self.log.write(entry)

        iterator = iter(body)
        dropping = False
        try:
            try:
                pending = next(iterator, None)
            except DropConnection:
                pending, dropping = None, True
            while pending is not None:
                try:
                    following = next(iterator, None)
                except DropConnection:
                    following, dropping = None, True
                if following is None:
                    write_log(sent + len(pending))
                yield pending
                sent += len(pending)
                pending = following
            write_log(sent)
            if dropping:
                _drop(environ)
                # werkzeug treats a ConnectionError as "client went away" and writes nothing more.
                raise ConnectionAbortedError("emulated connection drop")
        finally:
            write_log(sent)
            close = getattr(body, "close", None)
            if close is not None:
                close()

    # -- dispatch ---------------------------------------------------------------

    def _respond(self, request: Request, kind: str) -> Response:
        try:
            if kind != "control" and self.settings.latency > 0:
                time.sleep(self.settings.latency)
            base_url = request.host_url.rstrip("/")
            path = request.path
            if kind == "download":
                return self._download(request, base_url, path[len("/download"):].lstrip("/"))
            if kind in ("stac", "opensearch") and self.settings.catalogue_garbage:
                return Response("<html><body>Service Temporarily Unavailable</body></html>", 200,
                                mimetype="text/html")
            # Catalogue handlers get the path after their prefix, with its leading slash.
            if kind == "stac":
                from terrafs.emulator.stac import handle_stac
                return handle_stac(request, self.archive, base_url, path[len("/stac"):] or "/")
            if kind == "opensearch":
                from terrafs.emulator.opensearch import handle_opensearch
                return handle_opensearch(request, self.archive, base_url, path[len("/catalogue"):] or "/")
            if kind == "auth":
                if path == REALM_PATH or path.startswith(REALM_PATH + "/"):
                    return handle_keycloak(request, self.tokens, self.settings, base_url,
                                           path[len(REALM_PATH):].lstrip("/"))
                return _json({"error": "Realm does not exist"}, 404)
            if kind == "control":
                return self._control(request, path[len("/_emulator"):].strip("/"))
            if path == "/":
                return _json({"service": "terrafs emulator", "stac": base_url + "/stac",
                              "opensearch": base_url + "/catalogue/",
                              "token": base_url + REALM_PATH + "/protocol/openid-connect/token"})
            return _json({"error": "not found"}, 404)
        except HTTPException as exc:
            return exc.get_response()
        except Exception:
            log.exception("emulator failed on %s %s", request.method, request.path)
            return _json({"error": "internal emulator error"}, 500)

    def _download(self, request: Request, base_url: str, subpath: str) -> Response:
        s = self.settings
        wait = self.limiter.check(request.remote_addr or "?", s.rate_limits)
        if wait is not None:
            resp = _json({"error": "Too Many Requests"}, 429)
            if s.send_retry_after:
                resp.headers["Retry-After"] = retry_after_header(wait)
            return resp
        if s.error_rate > 0 and self.rng.random() < s.error_rate:
            status = self.rng.choice((500, 503))
            return Response("emulated server error", status=status, mimetype="text/plain")
        return handle_download(request, self.archive, s, self.tokens, base_url, subpath,
                               self.last_modified, self.rng)

    def _control(self, request: Request, sub: str) -> Response:
        if sub == "settings":
            if request.method == "GET":
                return _json(self.settings.snapshot())
            if request.method != "POST":
                return _json({"error": "use GET or POST"}, 405)
            try:
                patch = json.loads(request.get_data(as_text=True) or "{}")
                if not isinstance(patch, dict):
                    raise ValueError("the body must be a JSON object")
                reset = bool(patch.pop("reset", False))
                revoke = bool(patch.pop("revoke_tokens", False))
                if reset:
                    self.reset()
                self.settings.update(patch)
            except ValueError as exc:
                return _json({"error": str(exc)}, 400)
            if revoke:
                self.settings.revoke_tokens()
            return _json(self.settings.snapshot())
        if sub == "device/approve":
            code = request.values.get("user_code", "")
            user = request.values.get("user", "demo")
            if user not in self.settings.users:
                return _json({"error": "unknown user"}, 400)
            if not code or not self.tokens.device_approve(code, user):
                return _json({"error": "unknown or expired user_code"}, 404)
            return _json({"approved": True, "user": user})
        if sub == "files":
            return self._files(request)
        if sub == "tokens":
            # Every token issued so far, so tests can prove none of them leaked into logs.
            return _json(self.tokens.issued())
        return _json({"error": "not found"}, 404)

    def _files(self, request: Request) -> Response:
        """Files the download service serves, smallest first, filtered by size."""
        try:
            limit = int(request.args.get("limit", "100"))
            min_size = int(request.args.get("min_size", "0"))
            max_size = int(request.args.get("max_size", str(2**63)))
        except ValueError:
            return _json({"error": "limit, min_size and max_size must be integers"}, 400)
        files = sorted((f for f in self.archive.all_files() if min_size <= f.size <= max_size),
                       key=lambda f: (f.size, f.download_path))
        return _json([{"path": f.download_path, "size": f.size, "type": f.type, "name": f.name}
                      for f in files[:limit]])

    def reset(self) -> None:
        """Start-up settings, an empty limiter and no live tokens."""
        self.settings.restore(self.initial)
        self.limiter.reset()
        self.tokens.clear()


def _drop(environ: dict) -> None:
    """Close the client connection abruptly (what a failing proxy does)."""
    sock = environ.get("werkzeug.socket")
    if sock is None:
        log.warning("cannot drop the connection: no socket in the WSGI environ")
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError as exc:
        log.debug("shutdown during drop failed: %s", exc)


def make_app(archive: Archive, settings: EmulatorSettings, log_path: str | Path) -> EmulatorApp:
    """The WSGI app serving `archive` under `settings`, logging to `log_path`."""
    return EmulatorApp(archive, settings, log_path)
