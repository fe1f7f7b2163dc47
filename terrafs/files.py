"""File nodes of the tree turned into remote files the reader can serve.

Sizes come from the catalogue; only where it gives none, one HEAD request,
remembered in the disk cache so that it is never repeated. Where the download
server later serves a file at another size (republished), its size wins over
the listing's until the listing says the same: the read that found out fails,
every later open has the new size (and bypasses the kernel's page cache, whose
idea of the size may be an hour old; see open()).
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass

from terrafs.errors import FetchError, SizeChanged
from terrafs.read import Reader, RemoteFile
from terrafs.tree import FileNode

log = logging.getLogger(__name__)


def file_key(url: str, size: int) -> str:
    # The URL carries no credentials (they travel in headers), so it is safe as a key.
    return f"{url}#{size}"


@dataclass
class Handle:
    """One open of a file: which version of it this open has served bytes of."""

    remote: RemoteFile
    node: FileNode | None = None
    generation: int | None = None  # the reader's generation of the file when this open first read
    direct: bool = False  # the kernel must not serve or bound reads from its cache (the size changed)


class Files:
    def __init__(self, downloader, reader: Reader, meta_cache, shared=None):
        self._downloader = downloader
        self._shared = shared  # the cluster's shared tier (read/sharedtier.py), or None
        self._reader = reader
        self._meta = meta_cache  # diskcache.Cache or None
        self._sizes: dict[str, int] = {}
        self._pending: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._opened: dict[str, int] = {}  # file key -> the generation the kernel's pages are of
        # url -> (size listed, size the server gives): files republished at another size.
        self._resized: dict[str, tuple[int, int]] = _resized_from(meta_cache)
        self._resized_here: set[str] = set()  # ... found out by this daemon: the kernel may hold the old size

    def size(self, node: FileNode) -> int:
        listed = self._listed_size(node)
        moved = self._resized.get(node.file.href)
        return moved[1] if moved is not None and moved[0] == listed else listed

    def _listed_size(self, node: FileNode) -> int:
        if node.file.size is not None:
            return node.file.size
        url = node.file.href
        with self._lock:
            if url in self._sizes:
                return self._sizes[url]
            # One HEAD per URL, however many threads stat the file at once.
            url_lock = self._pending.setdefault(url, threading.Lock())
        with url_lock:
            with self._lock:
                if url in self._sizes:
                    return self._sizes[url]
            key = ("size", url)
            size = self._meta.get(key) if self._meta is not None else None
            if size is None:
                size = self._downloader.head(url).size
                log.debug("size of %s from a HEAD request: %d", url, size)
                if self._meta is not None:
                    self._meta.set(key, size)
            with self._lock:
                self._sizes[url] = size
                self._pending.pop(url, None)
        return size

    def _size_changed(self, node: FileNode, exc: SizeChanged) -> None:
        """Remember the size the server gives for a file listed at another (here and on disk)."""
        listed = self._listed_size(node)
        with self._lock:
            self._resized[exc.url] = (listed, exc.size)
            self._resized_here.add(exc.url)
            saved = {url: list(sizes) for url, sizes in self._resized.items()}
        if self._meta is not None:
            try:
                self._meta.set("resized", json.dumps(saved))  # the meta cache keeps text, never pickles
            except Exception as exc2:  # noqa: BLE001 - a full or broken cache: remembered in RAM
                log.debug("new size of %s not saved: %s", exc.url, exc2)

    def remote(self, node: FileNode) -> RemoteFile:
        size = self.size(node)
        return RemoteFile(url=node.file.href, size=size, key=file_key(node.file.href, size))

    def open(self, node: FileNode) -> tuple[Handle, bool]:
        """A handle for a new open, and whether the kernel may keep the pages it has of the file.

        The kernel's pages are dropped (keep_cache off) on the first open after
        the file changed on the server, so that no later open sees old bytes.
        A file whose size changed is opened for direct I/O (handle.direct): the
        kernel would otherwise end reads at the size it last heard of.
        """
        remote = self.remote(node)
        if self._shared is not None and self._shared.stale(remote):  # another node saw a new version
            self._reader.invalidate(remote)
        generation = self._reader.generation(remote)
        with self._lock:
            keep = self._opened.get(remote.key) == generation
            self._opened[remote.key] = generation
            direct = node.file.href in self._resized_here
        return Handle(remote, node=node, direct=direct), keep and not direct

    def read(self, handle: Handle, offset: int, length: int) -> bytes:
        out = bytearray(max(0, min(length, handle.remote.size - offset)))
        n = self.read_into(handle, offset, memoryview(out))
        return bytes(out[:n])

    def read_into(self, handle: Handle, offset: int, out: memoryview) -> int:
        """Bytes of the file into out; FetchError once the file changed under this open.

        An open that served bytes of one version must not go on with another's:
        a copy would be a mix. It fails from then on; the next open reads the
        new version whole.
        """
        remote = handle.remote
        if offset >= remote.size:
            return 0
        if self._shared is not None and self._shared.stale(remote, every=1.0):  # another node saw a new version
            self._reader.invalidate(remote)
        before = self._reader.generation(remote)
        if handle.generation is None:
            handle.generation = before
        elif before != handle.generation:  # known already: no request for a read that must fail
            raise _changed(remote)
        try:
            n = self._reader.read_into(remote, offset, out[: remote.size - offset])
        except SizeChanged as exc:
            if handle.node is not None:
                self._size_changed(handle.node, exc)
            raise
        if self._reader.generation(remote) != handle.generation:
            raise _changed(remote)
        return n

    def release(self, handle: Handle) -> None:
        self._reader.release(handle.remote)


def _changed(remote: RemoteFile) -> FetchError:
    return FetchError(f"{remote.url} changed on the server while it was open; open it again")


def _resized_from(meta_cache) -> dict[str, tuple[int, int]]:
    """The sizes remembered by an earlier run; anything malformed is dropped (the cache is input too)."""
    try:
        text = meta_cache.get("resized") if meta_cache is not None else None
        saved = json.loads(text) if isinstance(text, str) else None
    except Exception:  # noqa: BLE001 - an unreadable cache or text: start without
        return {}
    out: dict[str, tuple[int, int]] = {}
    if isinstance(saved, dict):
        for url, sizes in saved.items():
            if (isinstance(url, str) and isinstance(sizes, (list, tuple)) and len(sizes) == 2
                    and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes)):
                out[url] = (sizes[0], sizes[1])
    return out
