"""File nodes of the tree turned into remote files the reader can serve.

Sizes come from the catalogue; only where it gives none, one HEAD request,
remembered in the file metadata (filemeta.py) so that it is never repeated. Where the download
server later serves a file at another size (republished), its size wins over
the listing's until the listing says the same: the read that found out fails,
every later open has the new size (and bypasses the kernel's page cache, whose
idea of the size may be an hour old; see open()).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from terrafs.errors import FetchError, SizeChanged
from terrafs.cache.filemeta import FileMeta
from terrafs.read import Reader, RemoteFile
from terrafs.tree.paths import FileNode

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
    def __init__(self, downloader, reader: Reader, filemeta: FileMeta, shared=None):
        self._downloader = downloader
        self._shared = shared  # the cluster's shared tier (read/sharedtier.py), or None
        self._reader = reader
        self._meta = filemeta
        self._sizes: dict[str, int] = {}
        self._pending: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._opened: dict[str, int] = {}  # file key -> the generation the kernel's pages are of
        self._resized_here: set[str] = set()  # republished at another size, found out by this daemon:
        # the kernel may hold the old size

    def size(self, node: FileNode) -> int:
        listed = self._listed_size(node)
        moved = self._meta.size_change(node.file.href)  # (size listed, size the server gives)
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
            size = self._meta.head_size(url)
            if size is None:
                size = self._downloader.head(url).size
                log.debug("size of %s from a HEAD request: %d", url, size)
                self._meta.set_head_size(url, size)
            with self._lock:
                self._sizes[url] = size
                self._pending.pop(url, None)
        return size

    def _size_changed(self, node: FileNode, exc: SizeChanged) -> None:
        """Remember the size the server gives for a file listed at another (here and on disk)."""
        listed = self._listed_size(node)
        with self._lock:
            self._resized_here.add(exc.url)
        self._meta.set_size_change(exc.url, listed, exc.size)

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

