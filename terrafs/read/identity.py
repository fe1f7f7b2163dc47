"""The identity guard: every response says which version of a file it is.

Size, ETag and Last-Modified of each response (ranges, streams, HEAD) are
compared with what the cache last saw for the URL. Another size is an error
(the catalogue's size no longer holds); another ETag or Last-Modified means
the file was republished under its name: everything cached of the old version
is dropped (by `on_change`) before a byte of the new one is kept.

Must not: fetch, or decide what to drop (the reader does).
"""
from __future__ import annotations

import logging
from typing import Callable

from terrafs.errors import FetchError
from terrafs.read.remote import RemoteFile

log = logging.getLogger(__name__)


class IdentityGuard:
    def __init__(self, cache, on_change: Callable[[RemoteFile], None]):
        self._cache = cache  # get_meta / set_meta: identities outlive the daemon
        self._on_change = on_change

    def check(self, f: RemoteFile, info: object) -> None:
        """Raise FetchError for a file of another size; call on_change if its version moved."""
        size = getattr(info, "size", None)
        if size is not None and size != f.size:
            raise FetchError(f"{f.url} is now {size} bytes, expected {f.size}")
        ident = (getattr(info, "etag", None), getattr(info, "last_modified", None))
        if ident == (None, None):
            return
        meta_key = "ident:" + f.url
        old = self._cache.get_meta(meta_key)
        if old is not None and tuple(old) != ident:
            log.warning("%s changed on the server: dropping what is cached of its old version", f.url)
            self._on_change(f)
        if old is None or tuple(old) != ident:
            self._cache.set_meta(meta_key, ident)
