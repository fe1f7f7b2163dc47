"""The emulator's link profile: what a network link between client and service
costs, laid over every answer so that benchmarks and tests can run on links
slower than loopback.

A link has a round-trip time and a bandwidth. Each request waits one round
trip before its first byte (the request going out, the answer coming back);
a request that opens a new connection waits two more (the TCP and TLS
handshakes a real client pays there). Each answer's body is then paced to the
bandwidth: a body of N bytes takes N / bandwidth seconds to arrive, whatever
else is being sent at the time (the cap is per answer). A "shared" link caps a
client address as a whole instead: its answers in flight at the same time
share the bandwidth, as on one real access link, so parallel requests gain no
speed from it.

LinkProfile is a WSGI wrapper around the emulator's app. It reads link_rtt and
link_bandwidth (and link_shared) from EmulatorSettings at each request, so tests change them at
runtime. It never changes a status, a header or a byte of a body; the control
API (/_emulator) is never delayed (it is the harness's channel, not the
service). This module also parses the command line's "--link rtt=30ms,bw=5MB/s".

werkzeug's server closes every connection after one answer; on loopback the
emulator keeps that (as it always did). On a link, KeepAliveHandler keeps a
connection open after an answer of known length to a request without a body,
as real servers do, so that the handshakes are paid where clients pay them:
once per connection they open, not once per request.
"""
from __future__ import annotations

import re
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from werkzeug.serving import DechunkedInput, WSGIRequestHandler

from terrafs.emulator.settings import EmulatorSettings

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]

# Round trips a new connection adds before its first request: TCP's SYN/SYN-ACK and a TLS handshake.
HANDSHAKE_TRIPS = 2
# Pieces a paced body is sent in, per second of transfer (finer pieces: a smoother rate).
PIECES_PER_SECOND = 200
MIN_PIECE, MAX_PIECE = 1024, 64 * 1024

_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_SIZE_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3}
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")


@dataclass(frozen=True)
class Link:
    """A link: round-trip time in seconds, bandwidth in bytes per second (0: no cap)."""

    rtt: float = 0.0
    bandwidth: float = 0.0
    shared: bool = False  # the bandwidth is the client's as a whole, not each answer's

    def describe(self) -> str:
        """Short text for tables: "loopback", "30 ms, 5 MB/s"."""
        if not self.rtt and not self.bandwidth:
            return "loopback"
        parts = [f"{self.rtt * 1e3:g} ms"] if self.rtt else []
        if self.bandwidth:
            parts.append(f"{self.bandwidth / 1e6:g} MB/s" + (" shared" if self.shared else ""))
        return ", ".join(parts)


def parse_link(text: str) -> Link:
    """"rtt=30ms,bw=5MB/s" -> Link(0.03, 5e6). Keys rtt (s, ms, us; a bare number is
    seconds) and bw (B, kB, MB, GB, KiB, MiB, GiB, each optionally "/s"; a bare number
    is bytes/s); either may be left out; "shared" (a flag) makes the bandwidth the
    client's as a whole. "off", "loopback" or "" give no delay and no cap.
    ValueError on anything else."""
    text = text.strip().lower()
    if text in ("", "off", "loopback", "none"):
        return Link()
    rtt = bandwidth = 0.0
    seen: set[str] = set()
    for part in text.split(","):
        key, eq, value = part.partition("=")
        key = key.strip()
        if key == "shared" and not eq and key not in seen:
            seen.add(key)
            continue
        if not eq or key not in ("rtt", "bw") or key in seen:
            raise ValueError(f"link: expected rtt=TIME and/or bw=RATE separated by commas, got {part.strip()!r}")
        seen.add(key)
        if key == "rtt":
            rtt = _amount(value, _TIME_UNITS, "s", "rtt")
        else:
            value = value.strip()
            bandwidth = _amount(value[:-2] if value.endswith("/s") else value, _SIZE_UNITS, "b", "bw")
    return Link(rtt, bandwidth, "shared" in seen)


def _amount(text: str, units: dict[str, float], bare: str, key: str) -> float:
    match = _NUMBER.match(text)
    if match is None or (match.group(2) or bare) not in units:
        raise ValueError(f"link: bad {key} value {text.strip()!r} (units: {', '.join(units)})")
    return float(match.group(1)) * units[match.group(2) or bare]


class LinkProfile:
    """WSGI wrapper: a round trip before each answer (three on a new connection)
    and each body paced to the bandwidth, as EmulatorSettings says right now."""

    def __init__(self, app: WSGIApp, settings: EmulatorSettings,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.app = app
        self.settings = settings
        self._sleep = sleep
        self._clock = clock
        # Sockets of the connections seen so far; a closed connection's socket drops out by itself.
        self._connections: weakref.WeakSet = weakref.WeakSet()
        self._lock = threading.Lock()
        self._shared: dict[str, SharedLink] = {}  # client address -> its link, when answers share it

    @property
    def active(self) -> bool:
        """True while a link is set (a delay or a cap): connections are then kept open."""
        return self.settings.link_rtt > 0 or self.settings.link_bandwidth > 0

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/_emulator" or path.startswith("/_emulator/"):
            return self.app(environ, start_response)
        new = self._is_new_connection(environ)
        rtt, bandwidth = self.settings.link_rtt, self.settings.link_bandwidth
        if rtt > 0:
            self._sleep(rtt * (1 + (HANDSHAKE_TRIPS if new else 0)))
        body = self.app(environ, start_response)
        if bandwidth <= 0:
            return body
        shared = None
        if self.settings.link_shared:
            with self._lock:
                shared = self._shared.setdefault(environ.get("REMOTE_ADDR", "?"), SharedLink(self._clock))
        return paced(body, bandwidth, self._sleep, self._clock, shared)

    def _is_new_connection(self, environ: dict) -> bool:
        """True for the first request on its connection (werkzeug keeps one socket per connection)."""
        sock = environ.get("werkzeug.socket")
        if sock is None:
            return True  # a server that does not tell: every request pays the handshakes
        with self._lock:
            if sock in self._connections:
                return False
            self._connections.add(sock)
            return True


class SharedLink:
    """One client's link when its answers share the bandwidth: their pieces
    take turns on it, each after the one reserved before it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._free = 0.0  # when the link has sent everything reserved so far
        self._lock = threading.Lock()

    def reserve(self, size: int, bandwidth: float) -> float:
        """The clock time at which `size` more bytes, queued behind the others, have arrived."""
        with self._lock:
            self._free = max(self._clock(), self._free) + size / bandwidth
            return self._free


def paced(body: Iterable[bytes], bandwidth: float, sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], float] = time.monotonic, shared: SharedLink | None = None) -> Iterator[bytes]:
    """`body` re-cut into small pieces, each held back until the bytes sent so far,
    itself included, have taken len / bandwidth seconds since the first piece
    (on a shared link: until its turn on the link is over). Empty chunks (a
    flush) pass at once; the body's close() is always called."""
    piece = int(min(MAX_PIECE, max(MIN_PIECE, bandwidth / PIECES_PER_SECOND)))
    began: float | None = None
    sent = 0
    try:
        for chunk in body:
            if not chunk:
                yield chunk
                continue
            view = memoryview(chunk)
            for at in range(0, len(view), piece):
                part = view[at:at + piece]
                if shared is not None:
                    arrives = shared.reserve(len(part), bandwidth)
                else:
                    if began is None:
                        began = clock()
                    sent += len(part)
                    arrives = began + sent / bandwidth
                ahead = arrives - clock()
                if ahead > 0:
                    sleep(ahead)
                yield bytes(part)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()


class _RequestLines:
    """The handler's view of its input between requests: request lines and
    headers are read through it; the drain werkzeug runs after each answer
    (a read of whatever the client sent next) reads nothing, so that the
    next request on a kept connection is not thrown away. The app reads its
    body from the real input (KeepAliveHandler.make_environ)."""

    def __init__(self, real, handler: KeepAliveHandler):
        self._real = real
        self._handler = handler

    def read(self, size: int = -1) -> bytes:
        if self._handler.keeping:
            return b""
        return self._real.read(size)

    def __getattr__(self, name: str):
        return getattr(self._real, name)


class KeepAliveHandler(WSGIRequestHandler):
    """werkzeug's request handler, keeping the connection open while a link is
    set, for a request without a body answered with a known length; any other
    answer closes it as werkzeug does."""

    timeout = 300  # an idle kept connection ends after this, with its thread
    keeping = False

    def setup(self) -> None:
        super().setup()
        self._input = self.rfile
        self.rfile = _RequestLines(self._input, self)

    def make_environ(self) -> dict:
        environ = super().make_environ()
        stream = environ["wsgi.input"]
        environ["wsgi.input"] = DechunkedInput(self._input) if isinstance(stream, DechunkedInput) else self._input
        return environ

    def send_response(self, code: int, message: str | None = None) -> None:
        self.keeping = False
        self._framed = self.command == "HEAD" or code in (204, 304)
        super().send_response(code, message)

    def send_header(self, keyword: str, value: str) -> None:
        name = keyword.lower()
        if name == "content-length":
            self._framed = True
        if name == "connection" and value.strip().lower() == "close" and self._may_keep():
            self.keeping = True
            return  # not sent: the client keeps the connection, and so does http.server's loop
        super().send_header(keyword, value)

    def _may_keep(self) -> bool:
        app = getattr(self.server, "app", None)
        return (bool(getattr(app, "active", False)) and self._framed and self.request_version == "HTTP/1.1"
                and self.headers.get("Connection", "").strip().lower() != "close"
                and self.headers.get("Content-Length", "0").strip() in ("", "0")
                and "Transfer-Encoding" not in self.headers)
