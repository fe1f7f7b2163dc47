"""A hostile catalogue and file server of the tests' own, on another loopback address.

It serves a small STAC API (GET /stac/collections, POST /stac/search) whose
collections and items the test sets, and files under /files/ with Range
support, and it records every request with its headers, so that a test can
check that no credentials ever reach it. It listens on 127.0.0.2, so that it
is another host than the emulator (127.0.0.1) as far as terrafs can tell.
"""
from __future__ import annotations

import http.server
import json
import threading
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.2"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Behaviour:
    collections: Any = field(default_factory=list)  # the /stac/collections answer's list (or raw bytes)
    items: dict[str, list[dict]] = field(default_factory=dict)  # collection id -> items
    endless: set[str] = field(default_factory=set)  # collections whose search always has a next page
    huge: dict[str, int] = field(default_factory=dict)  # collection id -> bytes of padding in its answer
    files: dict[str, bytes] = field(default_factory=dict)  # /files/<name> -> content
    throttle_once: dict[str, str] = field(default_factory=dict)  # /files/<name> -> Retry-After, first GET only


class HostileServer:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.behaviour = Behaviour()
        self._lock = threading.Lock()
        self._throttled: set[str] = set()
        self.server = http.server.ThreadingHTTPServer((HOST, 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.server.server_port}"

    def file_url(self, name: str) -> str:
        return f"{self.base_url}/files/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def authorization_headers(self) -> list[Seen]:
        """Requests that carried credentials of any kind."""
        with self._lock:
            return [s for s in self.seen if any(k.lower() in ("authorization", "proxy-authorization", "cookie")
                                                for k in s.headers)]

    def requests_to(self, prefix: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.path.startswith(prefix)]

    # -- the HTTP side -------------------------------------------------------------------

    def record(self, seen: Seen) -> None:
        """Note one request (the handler calls this first)."""
        with self._lock:
            self.seen.append(seen)

    def _handler(self) -> type:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _record(self) -> None:
                outer.record(Seen(self.command, self.path, dict(self.headers.items())))

            def do_GET(self) -> None:  # noqa: N802
                self._record()
                outer.answer_get(self)

            def do_HEAD(self) -> None:  # noqa: N802
                self._record()
                outer.answer_get(self, head=True)

            def do_POST(self) -> None:  # noqa: N802
                self._record()
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                outer.answer_search(self, body)

        return Handler

    def _send(self, h, status: int, body: bytes, headers: dict[str, str] | None = None,
              head: bool = False) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _json(self, h, doc: Any) -> None:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        self._send(h, 200, body, {"Content-Type": "application/json"})

    def answer_get(self, h, head: bool = False) -> None:
        path = h.path.split("?")[0]
        b = self.behaviour
        if path.rstrip("/") == "/stac/collections":
            cols = b.collections
            self._json(h, cols if isinstance(cols, bytes) else {"collections": cols, "links": []})
        elif path.startswith("/files/"):
            self._file(h, path[len("/files/"):], head)
        else:
            self._send(h, 404, b"{}", {"Content-Type": "application/json"})

    def _file(self, h, name: str, head: bool) -> None:
        data = self.behaviour.files.get(name)
        if data is None:
            return self._send(h, 404, b"", head=head)
        with self._lock:
            throttle = name in self.behaviour.throttle_once and name not in self._throttled
            self._throttled.add(name)
        if throttle:
            return self._send(h, 429, b"", {"Retry-After": self.behaviour.throttle_once[name]}, head)
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            first_s, _, last_s = rng[6:].partition("-")
            first = int(first_s)
            last = min(int(last_s) if last_s else len(data) - 1, len(data) - 1)
            return self._send(h, 206, data[first:last + 1],
                              {"Content-Range": f"bytes {first}-{last}/{len(data)}", "Accept-Ranges": "bytes"}, head)
        self._send(h, 200, data, {"Accept-Ranges": "bytes"}, head)

    def answer_search(self, h, body: dict) -> None:
        b = self.behaviour
        cid = (body.get("collections") or [""])[0]
        page = int(body.get("page", 0))
        doc: dict[str, Any] = {"type": "FeatureCollection", "features": [], "links": []}
        if cid in b.endless:
            doc["features"] = [_endless_item(cid, page)]
            doc["links"] = [{"rel": "next", "method": "POST", "href": f"{self.base_url}/stac/search",
                             "body": {**body, "page": page + 1}}]
        elif page == 0:
            doc["features"] = b.items.get(cid, [])
        if cid in b.huge:
            doc["padding"] = "x" * b.huge[cid]
        self._json(h, doc)


def collection(cid: str, interval: list | None = None) -> dict:
    return {"type": "Collection", "id": cid, "title": cid, "stac_version": "1.0.0",
            "extent": {"temporal": {"interval": [interval or ["2020-01-01T00:00:00Z", "2020-01-31T23:59:59Z"]]}},
            "links": []}


def item(item_id: str, when: str, assets: dict[str, dict]) -> dict:
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id,
            "properties": {"datetime": when, "title": item_id}, "assets": assets, "links": []}


def asset(href: str, size: int | None = None) -> dict:
    a: dict[str, Any] = {"href": href, "type": "image/tiff; application=geotiff", "roles": ["data"]}
    if size is not None:
        a["file:size"] = size
    return a


def _endless_item(cid: str, page: int) -> dict:
    return item(f"{cid}-{page}", "2020-01-10T10:00:00Z",
                {"a": asset(f"http://{HOST}:1/files/p{page}/P{page}/x{page}.tif", 1)})
