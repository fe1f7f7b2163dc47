"""The archive as an fsspec filesystem (protocol `terrascope`), in process, without FUSE.

    fs = fsspec.filesystem("terrascope", config="~/.config/terrafs/config.yaml")   # or a dict
    fs.ls("terrascope-s2-toc-v2/2020/01/01")
    with fs.open("terrascope://terrascope-s2-toc-v2/2020/01/01/<product>/<file>") as f: ...
    rasterio.open("terrascope://...", opener=fs.open)

Paths are those of the mount's default layout. Everything behind them is the
mount's own: mount.build(config, auth) gives the tree, files, reader, disk
cache, credentials and limiter (with `rate_limit_state: redis://...`, the
cluster's one budget), so a read here costs what the same read costs through
a mount. The file object adds no cache of its own (fsspec's "none" cache: each
read() goes to Files.read, whose reader plans, caches and reads ahead).

Pickling sends the constructor's arguments only: each process (a Dask worker)
builds its own daemon objects on first use, once per process and config,
however many threads and instances use them.

Must not: write (the archive is read-only: every write raises); keep a second
cache or read-ahead beside the reader's; put credentials in a path, an info
record or a message.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from terrafs.config import Config, load_config
from terrafs.errors import TerrafsError
from terrafs.tree.paths import DirNode, FileNode, Node, NotFound

log = logging.getLogger(__name__)

PROTOCOL = "terrascope"

# One daemon per process and config. fsspec makes an instance per thread (its
# instance cache keys on the thread), and a daemon is costly (cache handles,
# threads, a limiter): this is the one piece of process-wide state.
_daemons: dict[tuple[int, str], Any] = {}
_daemons_lock = threading.Lock()
# Open file objects per remote file: the reader forgets a file's streams only when the last one closes.
_opened: dict[str, int] = {}


def _config_of(config: str | os.PathLike | dict | None) -> Config:
    """A path names a config file; a dict is applied over the default file, as command-line overrides are."""
    if isinstance(config, dict):
        return load_config(None, overrides=config)
    return load_config(Path(config).expanduser() if config is not None else None)


def _daemon_for(config: str | os.PathLike | dict | None):
    key = (os.getpid(), json.dumps(config, sort_keys=True, default=str))
    with _daemons_lock:
        daemon = _daemons.get(key)
        if daemon is None:
            from terrafs import build as mount

            cfg = _config_of(config)
            daemon = mount.build(cfg, mount.make_auth(cfg))
            _daemons[key] = daemon
            log.debug("terrascope filesystem: daemon built in process %d", os.getpid())
        return daemon


@contextmanager
def _as_oserror(path: str) -> Iterator[None]:
    """Our errors as the OSErrors fsspec's callers expect (the message names the path, never a secret)."""
    try:
        yield
    except NotFound:
        raise FileNotFoundError(path) from None
    except TerrafsError as exc:
        raise OSError(f"{path}: {exc}") from None


@atexit.register
def _close_daemons() -> None:
    """Cache writes still queued go to disk before the process ends."""
    with _daemons_lock:
        mine = [k for k in _daemons if k[0] == os.getpid()]
        for key in mine:
            daemon = _daemons.pop(key)
            try:
                daemon.reader.flush()
                daemon.close()
            except Exception as exc:  # an exit must not fail on a cache that will not close
                log.warning("closing the terrascope filesystem's caches failed: %s", exc)


class TerrascopeFileSystem(AbstractFileSystem):
    """Read-only fsspec filesystem over the Terrascope archive (default layout)."""

    protocol = (PROTOCOL,)
    root_marker = ""

    def __init__(self, config: str | os.PathLike | dict | None = None, **storage_options: Any) -> None:
        super().__init__(**storage_options)
        self.config = config

    @property
    def daemon(self):
        return _daemon_for(self.config)

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(path).strip("/")

    def unstrip_protocol(self, name: str) -> str:
        return f"{PROTOCOL}://{self._strip_protocol(name)}"

    # -- metadata ---------------------------------------------------------------

    def node(self, path: str) -> Node:
        """The tree node (a DirNode, or a FileNode with its catalogue facts) at `path`, with or
        without the protocol; OSError (FileNotFoundError, ...) when the tree has none."""
        with _as_oserror(path):
            return self.daemon.tree.lookup("/" + self._strip_protocol(path))

    def _entry(self, path: str, node) -> dict[str, Any]:
        if isinstance(node, DirNode):
            return {"name": path, "size": 0, "type": "directory", "mtime": node.mtime}
        with _as_oserror(path):
            size = self.daemon.files.size(node)
        return {"name": path, "size": size, "type": "file", "mtime": node.mtime}

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        return self._entry(path, self.node(path))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
        path = self._strip_protocol(path)
        node = self.node(path)
        if isinstance(node, FileNode):
            entries = [self._entry(path, node)]
        else:
            with _as_oserror(path):
                names = self.daemon.tree.listdir("/" + path)
            entries = [self.info(f"{path}/{name}" if path else name) for name in names]
        return entries if detail else [e["name"] for e in entries]

    def modified(self, path: str):
        from datetime import datetime, timezone

        return datetime.fromtimestamp(self.info(path)["mtime"], tz=timezone.utc)

    def ukey(self, path: str) -> str:
        node = self.node(path)
        if not isinstance(node, FileNode):
            raise IsADirectoryError(path)
        return self.daemon.files.remote(node).key

    # -- reading ----------------------------------------------------------------

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None, autocommit: bool = True,
              cache_options: dict | None = None, **kwargs: Any) -> "TerrascopeFile":
        if mode != "rb":
            raise PermissionError(f"{path}: the Terrascope archive is read-only (mode {mode!r})")
        node = self.node(path)
        if not isinstance(node, FileNode):
            raise IsADirectoryError(path)
        return TerrascopeFile(self, self._strip_protocol(path), node, block_size=block_size)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        with self.open(path, "rb") as f:
            size = f.size
            start = 0 if start is None else (start if start >= 0 else max(0, size + start))
            end = size if end is None else (end if end >= 0 else max(0, size + end))
            return f.read_range(start, end)

    # -- the archive is read-only ------------------------------------------------

    def _read_only(self, *args: Any, **kwargs: Any):
        raise PermissionError("the Terrascope archive is read-only")

    mkdir = makedirs = rmdir = rm_file = _rm = rm = cp_file = mv = put_file = pipe_file = touch = _read_only


def _open_file(files, node: FileNode) -> tuple[Any, Any]:
    """What Files reads through (its open handle, where Files has open(): an open that served
    one version of a file fails on another, as a mount's open does) and the remote file."""
    opener = getattr(files, "open", None)
    if opener is None:
        remote = files.remote(node)
        return remote, remote
    handle, _keep_cache = opener(node)
    return handle, handle.remote


class TerrascopeFile(AbstractBufferedFile):
    """A seekable read-only file whose reads go straight to Files.read (no fsspec cache on top)."""

    def __init__(self, fs: TerrascopeFileSystem, path: str, node: FileNode, block_size: int | None = None) -> None:
        files = fs.daemon.files
        self._files = files
        self._handle, self._remote = _open_file(files, node)
        super().__init__(fs, path, mode="rb", block_size=block_size, cache_type="none", size=self._remote.size)
        with _daemons_lock:
            _opened[self._remote.key] = _opened.get(self._remote.key, 0) + 1

    def _fetch_range(self, start: int, end: int) -> bytes:
        with _as_oserror(self.path):
            return self._files.read(self._handle, start, end - start)

    def read_range(self, start: int, end: int) -> bytes:
        return self._fetch_range(start, min(end, self.size)) if end > start else b""

    def close(self) -> None:
        if not self.closed:
            with _daemons_lock:
                left = _opened.get(self._remote.key, 1) - 1
                if left:
                    _opened[self._remote.key] = left
                else:
                    _opened.pop(self._remote.key, None)
            if not left:
                self._files.release(self._handle)
        super().close()
