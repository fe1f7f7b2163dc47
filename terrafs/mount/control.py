"""The control channel of a running mount: live figures and prefetch through its daemon.

Each daemon listens on a Unix socket named after its mount point, in a runtime
folder only its user can enter (/run/terrafs for root, /run/user/UID/terrafs
or /tmp/terrafs-UID otherwise); the folder's owner and mode are checked before
use, and each connection's peer must be that user (or root: SO_PEERCRED).
`terrafs cache stats` asks every daemon for its figures; `terrafs prefetch
PATH...` of paths inside a mount asks that mount's daemon to fetch them, with
its own credentials, limiter and cache, and reads progress back as it streams.

The protocol is one JSON object a line: the client sends one request
({"op": "stats"} or {"op": "prefetch", "paths": [...], "check": bool}), the
daemon answers with event lines and closes.

Must not: hold credentials or tokens in any message (there are none to send),
trust a runtime folder it did not make, or let a client's error end the mount.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import socketserver
import stat
import struct
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

from terrafs.errors import TerrafsError
from terrafs.read.prefetch import PrefetchTarget, prefetch

log = logging.getLogger(__name__)

MAX_REQUEST = 1 << 20  # bytes of one request line
_UCRED = struct.Struct("3i")  # pid, uid, gid


# ---- where -----------------------------------------------------------------
def runtime_dir() -> Path:
    """The owner-only folder of this user's control sockets, made if missing.

    Chosen from the uid alone, not the environment, so that a mount made at
    boot and a command typed in a login shell find the same folder.
    """
    uid = os.getuid()
    user_run = Path(f"/run/user/{uid}")
    if uid == 0:
        path = Path("/run/terrafs")
    elif user_run.is_dir() and user_run.stat().st_uid == uid:
        path = user_run / "terrafs"
    else:
        path = Path(tempfile.gettempdir()) / f"terrafs-{uid}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        raise TerrafsError(f"{path} is not a folder that only you can use (owner {st.st_uid}, "
                           f"mode {stat.S_IMODE(st.st_mode):04o}); remove it and try again")
    return path


def socket_path(mountpoint: Path | str) -> Path:
    digest = hashlib.sha256(os.fsencode(os.path.abspath(mountpoint))).hexdigest()[:24]
    return runtime_dir() / f"{digest}.sock"


def mount_root(path: Path | str) -> Path | None:
    """The mount point a path lies under (the path itself when it is one), or None at '/'."""
    p = Path(os.path.abspath(path))
    while not os.path.ismount(p):
        if p.parent == p:
            return None
        p = p.parent
    return None if p == Path("/") else p


# ---- the daemon's side ----------------------------------------------------------
class ControlServer:
    """Serves one mount's control socket on daemon threads; stop() removes it."""

    def __init__(self, mountpoint: Path, handlers: dict[str, Callable[[dict, Callable[[dict], None]], None]]):
        self.path = socket_path(mountpoint)
        self.handlers = handlers
        self._server: socketserver.ThreadingUnixStreamServer | None = None

    def start(self) -> bool:
        """Listen; False (with a warning) when another live daemon owns the name."""
        if self.path.exists() or self.path.is_symlink():
            if _alive(self.path):
                log.warning("control socket %s is in use; this mount has no control channel", self.path)
                return False
            self.path.unlink()  # left by a daemon that died
        server = _Server(str(self.path), _Handler)
        server.handlers = self.handlers
        os.chmod(self.path, 0o600)
        self._server = server
        threading.Thread(target=server.serve_forever, name="terrafs-control", daemon=True).start()
        log.info("control socket %s", self.path)
        return True

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    handlers: dict = {}


class _Handler(socketserver.StreamRequestHandler):
    timeout = 60.0  # a client that neither asks nor reads for this long is dropped

    def handle(self) -> None:
        pid, uid, _gid = _UCRED.unpack(self.request.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        if uid not in (0, os.getuid()):
            log.warning("control: refused a connection from uid %d (pid %d)", uid, pid)
            return
        lock = threading.Lock()

        def send(event: dict) -> None:
            with lock:
                self.wfile.write(json.dumps(event).encode() + b"\n")
                self.wfile.flush()

        try:
            request = json.loads(self.rfile.readline(MAX_REQUEST) or b"null")
            op = request.get("op") if isinstance(request, dict) else None
            handler = self.server.handlers.get(op)  # type: ignore[attr-defined]
            if handler is None:
                send({"event": "error", "message": f"unknown request {op!r}"})
                return
            handler(request, send)
        except (BrokenPipeError, ConnectionResetError):
            log.info("control: the client went away")
        except (ValueError, TerrafsError) as exc:
            _try(send, {"event": "error", "message": str(exc)})
        except Exception as exc:  # a bug must not end the mount, only this request
            log.exception("control request failed")
            _try(send, {"event": "error", "message": f"internal error: {type(exc).__name__}"})


def _try(send: Callable[[dict], None], event: dict) -> None:
    try:
        send(event)
    except OSError:
        pass


# ---- the client's side ------------------------------------------------------------
def _alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


def ask(path: Path, request: dict, timeout: float | None = 10.0) -> Iterator[dict]:
    """Send one request to a daemon's socket; yields its event lines. OSError when nobody answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(request).encode() + b"\n")
        with s.makefile("rb") as lines:
            for line in lines:
                event = json.loads(line)
                if event.get("event") == "error" and "path" not in event:
                    raise TerrafsError(f"the mount's daemon: {event.get('message')}")
                yield event


def live_stats() -> list[dict[str, Any]]:
    """The figures of every running daemon of this user (stale sockets skipped)."""
    out = []
    for path in sorted(runtime_dir().glob("*.sock")):
        try:
            out.extend(ask(path, {"op": "stats"}, timeout=5.0))
        except (OSError, ValueError, TerrafsError) as exc:
            log.debug("no answer from %s: %s", path, exc)
    return out


def daemon_socket(mountpoint: Path) -> Path | None:
    """The control socket of the daemon serving this mount point, if it answers."""
    try:
        path = socket_path(mountpoint)
    except (OSError, TerrafsError) as exc:
        log.debug("no runtime folder: %s", exc)
        return None
    return path if _alive(path) else None


# ---- what the daemon answers ---------------------------------------------------------
def handlers(daemon, config, mountpoint: Path) -> dict[str, Callable[[dict, Callable[[dict], None]], None]]:
    """The requests a mount's daemon answers, bound to its tree, files, reader and cache."""

    def stats(request: dict, send: Callable[[dict], None]) -> None:
        # The parts' typed figures (blockcache.BlockCacheStats, read/stats.ReaderStats) as nested objects.
        send({"event": "stats", "mountpoint": str(mountpoint), "pid": os.getpid(),
              "cache_dir": str(config.cache_dir), "cache": dataclasses.asdict(daemon.blocks.stats()),
              "reader": dataclasses.asdict(daemon.reader.stats())})

    def prefetch(request: dict, send: Callable[[dict], None]) -> None:
        paths = request.get("paths")
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise ValueError("paths must be a list of paths inside the mount")
        _prefetch(daemon, [f for p in paths for f in _walk(daemon.tree, p, send)], bool(request.get("check")), send)

    return {"stats": stats, "prefetch": prefetch}


def _walk(tree, path: str, send: Callable[[dict], None]) -> Iterator[tuple[str, Any]]:
    """(path, file node) of a file, or of every file under a folder, in name order."""
    from terrafs.tree.paths import FileNode, NotFound

    try:
        node = tree.lookup(path)
        if isinstance(node, FileNode):
            yield path, node
            return
        names = sorted(tree.listdir(path))
    except NotFound:
        send({"event": "error", "path": path, "message": "no such file or folder"})
        return
    for name in names:
        yield from _walk(tree, path.rstrip("/") + "/" + name, send)


def _prefetch(daemon, nodes: list, check: bool, send: Callable[[dict], None]) -> None:
    targets = [PrefetchTarget(path, daemon.files.remote(node)) for path, node in nodes]
    prefetch(daemon.reader, daemon.blocks, targets, check=check, emit=send)
