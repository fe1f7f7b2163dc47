"""File nodes of the tree turned into remote files the reader can serve.

Sizes come from the catalogue; only where it gives none, one HEAD request,
remembered in the disk cache so that it is never repeated.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from terrafs.errors import FetchError
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
    generation: int | None = None  # the reader's generation of the file when this open first read


class Files:
    def __init__(self, downloader, reader: Reader, meta_cache):
        self._downloader = downloader
        self._reader = reader
        self._meta = meta_cache  # diskcache.Cache or None
        self._sizes: dict[str, int] = {}
        self._pending: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._opened: dict[str, int] = {}  # file key -> the generation the kernel's pages are of

    def size(self, node: FileNode) -> int:
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

    def remote(self, node: FileNode) -> RemoteFile:
        size = self.size(node)
        return RemoteFile(url=node.file.href, size=size, key=file_key(node.file.href, size))

    def open(self, node: FileNode) -> tuple[Handle, bool]:
        """A handle for a new open, and whether the kernel may keep the pages it has of the file.

        The kernel's pages are dropped (keep_cache off) on the first open after
        the file changed on the server, so that no later open sees old bytes.
        """
        remote = self.remote(node)
        generation = self._reader.generation(remote)
        with self._lock:
            keep = self._opened.get(remote.key) == generation
            self._opened[remote.key] = generation
        return Handle(remote), keep

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
        before = self._reader.generation(remote)
        if handle.generation is None:
            handle.generation = before
        n = self._reader.read_into(remote, offset, out[: remote.size - offset])
        if self._reader.generation(remote) != handle.generation:
            raise FetchError(f"{remote.url} changed on the server while it was open; open it again")
        return n

    def release(self, handle: Handle) -> None:
        self._reader.release(handle.remote)
