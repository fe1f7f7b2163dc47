"""File nodes of the tree turned into remote files the reader can serve.

Sizes come from the catalogue; only where it gives none, one HEAD request,
remembered in the disk cache so that it is never repeated.
"""
from __future__ import annotations

import logging
import threading

from terrafs.read import Reader, RemoteFile
from terrafs.tree import FileNode

log = logging.getLogger(__name__)


def file_key(url: str, size: int) -> str:
    # The URL carries no credentials (they travel in headers), so it is safe as a key.
    return f"{url}#{size}"


class Files:
    def __init__(self, downloader, reader: Reader, meta_cache):
        self._downloader = downloader
        self._reader = reader
        self._meta = meta_cache  # diskcache.Cache or None
        self._sizes: dict[str, int] = {}
        self._pending: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

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

    def read(self, remote: RemoteFile, offset: int, length: int) -> bytes:
        if offset >= remote.size:
            return b""
        return self._reader.read(remote, offset, min(length, remote.size - offset))

    def read_into(self, remote: RemoteFile, offset: int, out: memoryview) -> int:
        if offset >= remote.size:
            return 0
        return self._reader.read_into(remote, offset, out[: remote.size - offset])

    def release(self, remote: RemoteFile) -> None:
        self._reader.release(remote)
