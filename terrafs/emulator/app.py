"""The emulator's WSGI application: one port for STAC (/stac), OpenSearch
(/catalogue), downloads (/download), the Keycloak realm (/auth/realms/terrascope)
and a control API for tests (/_emulator).

It owns the runtime settings (faults, limits, token lifetimes), the rate
limiter and the request log (one JSON line per request, which tests and
benchmarks count). The request log never holds an Authorization header, a form
body, a password or a token; query strings are logged as sent.

Control API:
  GET  /_emulator/settings              current settings (JSON; user names only)
  POST /_emulator/settings              JSON patch of settings (see settings.py); also
                                        {"reset": true} (back to start-up settings, limiter,
                                        tokens and republished files cleared),
                                        {"revoke_tokens": true} and
                                        {"republish": "<download path>" or [paths]}: new bytes
                                        of the same size, new ETag and Last-Modified (with
                                        "republish_size": N, at N bytes, listed so in the catalogues)
  GET|POST /_emulator/device/approve?user_code=X[&user=demo]   approve a device login
  GET  /_emulator/files?limit=N&min_size=B&max_size=B&layout=L&collection=C
                                        served files, smallest first, with their URL,
                                        platform path and default-layout paths

Latency applies to every request except the control API; rate limits and
download faults to /download/ only; catalogue_fail_next and catalogue_garbage
to /stac and /catalogue. A request log line holds: time, method, path, query,
range (the Range header as sent), status, bytes (body bytes sent), client,
kind (stac, opensearch, download, auth, control, other) and, when one was
applied, fault (the kind, e.g. "503", "cut", "stall,wrong_range").
"""
from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from terrafs.emulator import republish
from terrafs.emulator.archive import Archive
from terrafs.emulator.download import FAULT_KEY, DropConnection, handle_download
from terrafs.emulator.keycloak import REALM_PATH, TokenStore, handle_keycloak
from terrafs.emulator.limits import SlidingWindowLimiter, retry_after_header
from terrafs.emulator.republish import Republisher
from terrafs.emulator.settings import RANGE_ONLY_KINDS, EmulatorSettings

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]

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
        self.initial = settings.copy()
        self.versions = Republisher()
        self._originals: dict = {}  # download path -> the file as built, for files republished at another size
        self.tokens = TokenStore(settings)
        self.limiter = SlidingWindowLimiter()
        self.log = RequestLog(log_path)
        self.rng = random.Random()
        self.last_modified = self._last_modified(archive)

    @staticmethod
    def _last_modified(archive: Archive) -> dict[str, datetime]:
        out: dict[str, datetime] = {}
        for c in archive.collections:
            if c.stac_id in archive.generated:
                continue  # its files carry no date here: served with the default Last-Modified
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
        if environ.get(FAULT_KEY):
            entry["fault"] = environ[FAULT_KEY]
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
            if kind in ("stac", "opensearch"):
                failure = self._catalogue_failure(request)
                if failure is not None:
                    return failure
            # Catalogue handlers get the path after their prefix, with its leading slash.
            if kind == "stac":
                from terrafs.emulator.stac.search import handle_stac
                return handle_stac(request, self.archive, base_url, path[len("/stac"):] or "/",
                                   fields_extension=self.settings.stac_fields)
            if kind == "opensearch":
                from terrafs.emulator.opensearch.search import handle_opensearch
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

    def _catalogue_failure(self, request: Request) -> Response | None:
        """The failure this catalogue request must show (catalogue_fail_next first), or None."""
        failure = self.settings.take_catalogue_failure()
        if failure is None and self.settings.catalogue_garbage:
            failure = "html"
        if failure is None:
            return None
        request.environ[FAULT_KEY] = failure
        if failure == "html":
            # A proxy's or maintenance page, sent with status 200.
            return Response(_HTML_PAGE, 200, mimetype="text/html")
        resp = Response(_HTML_PAGE, int(failure), mimetype="text/html")
        if failure in ("429", "503"):
            resp.headers["Retry-After"] = "1"
        return resp

    def _download(self, request: Request, base_url: str, subpath: str) -> Response:
        s = self.settings
        wait = self.limiter.check(request.remote_addr or "?", s.rate_limits)
        if wait is not None:
            return self._too_many(retry_after_header(wait))
        if s.error_rate > 0 and self.rng.random() < s.error_rate:
            status = self.rng.choice((500, 503))
            request.environ[FAULT_KEY] = str(status)
            return Response("emulated server error", status=status, mimetype="text/plain")
        fault = self._draw_fault(request)
        if fault in ("500", "503"):
            request.environ[FAULT_KEY] = fault
            return Response("emulated server error", status=int(fault), mimetype="text/plain")
        if fault == "429":
            request.environ[FAULT_KEY] = fault
            return self._too_many("1")
        return handle_download(request, self.archive, s, self.tokens, base_url, subpath,
                               self.last_modified, self.rng, self.versions, fault)

    def _too_many(self, retry_after: str) -> Response:
        resp = _json({"error": "Too Many Requests"}, 429)
        if self.settings.send_retry_after:
            resp.headers["Retry-After"] = retry_after
        return resp

    def _draw_fault(self, request: Request) -> str | None:
        """The kind of fault this download GET gets under fault_rate, or None.
        Range-only kinds are drawn only for Range requests."""
        s = self.settings
        if request.method != "GET" or s.fault_rate <= 0 or self.rng.random() >= s.fault_rate:
            return None
        kinds = list(s.fault_kinds)
        if not request.headers.get("Range"):
            kinds = [k for k in kinds if k not in RANGE_ONLY_KINDS]
        return self.rng.choice(kinds) if kinds else None

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
                files = self._files_to_republish(patch.pop("republish", None))
                new_size = patch.pop("republish_size", None)
                if new_size is not None and (not isinstance(new_size, int) or isinstance(new_size, bool)
                                             or new_size <= 0):
                    raise ValueError("republish_size must be a positive number of bytes")
                if reset:
                    self.reset()
                self.settings.update(patch)
            except ValueError as exc:
                return _json({"error": str(exc)}, 400)
            for f in files:
                if new_size is not None and new_size != f.size:
                    f = republish.resized(self._originals.get(f.download_path, f), new_size)
                    self._originals.setdefault(f.download_path, self.archive.replace_file(f))
                self.versions.republish(f)
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

    def _files_to_republish(self, value: Any) -> list:
        """The files a {"republish": ...} names; ValueError if one is not served."""
        if value is None:
            return []
        paths = [value] if isinstance(value, str) else value
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise ValueError("republish must be a download path or a list of them")
        files = []
        for path in paths:
            f = self.archive.file(path.split("/download/", 1)[-1].lstrip("/"))
            if f is None:
                raise ValueError(f"republish: no file is served at {path!r}")
            files.append(f)
        return files

    def _files(self, request: Request) -> Response:
        """Files the download service serves, smallest first, filtered by size,
        raster layout and collection (STAC id or URN)."""
        try:
            limit = int(request.args.get("limit", "100"))
            min_size = int(request.args.get("min_size", "0"))
            max_size = int(request.args.get("max_size", str(2**63)))
        except ValueError:
            return _json({"error": "limit, min_size and max_size must be integers"}, 400)
        layout = request.args.get("layout")
        collection = request.args.get("collection")
        listed = self.archive.file_listing(request.host_url.rstrip("/"), collection)
        rows = [row for row in listed if min_size <= row["size"] <= max_size
                and (layout is None or row["layout"] == layout)
                and (collection is None or collection in (row["collection"], row["collection_urn"]))]
        rows.sort(key=lambda row: (row["size"], row["path"]))
        return _json(rows[:limit])

    def reset(self) -> None:
        """Start-up settings, an empty limiter, no live tokens, no republished file."""
        self.settings.restore(self.initial)
        self.limiter.reset()
        self.tokens.clear()
        self.versions.reset()
        for f in self._originals.values():
            self.archive.replace_file(f)
        self._originals.clear()


_HTML_PAGE = ("<!DOCTYPE html>\n<html><head><title>503 Service Temporarily Unavailable</title></head>"
              "<body><h1>Service Temporarily Unavailable</h1><p>The server is down for maintenance."
              "</p></body></html>\n")


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
