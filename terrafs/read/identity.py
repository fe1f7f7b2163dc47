"""The identity guard: every response says which version of a file it is.

Size, ETag and Last-Modified of each response (ranges, streams, HEAD) are
compared with what the cache last saw for the URL. Another ETag or
Last-Modified means the file was republished under its name: everything cached
of the old version is dropped (by `on_change`) before a byte of the new one is
kept. Another size means it was republished at another size: the old
version's bytes are dropped the same way and the read fails with SizeChanged,
which tells the caller the size the server gives now. A size is believed
only from an answer with an identity when the file had one: one without is
a page, not the file (http.py retries those before they get here).

Must not: fetch, or decide what to drop (the reader does).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from terrafs.errors import FetchError, SizeChanged
from terrafs.read.remote import RemoteFile

if TYPE_CHECKING:
    from terrafs.cache.filemeta import FileMeta
    from terrafs.read.sharedtier import SharedMeta

log = logging.getLogger(__name__)


class IdentityGuard:
    def __init__(self, meta: FileMeta | SharedMeta, on_change: Callable[[RemoteFile], None]):
        self._meta = meta  # identities outlive the daemon (filemeta.py)
        self._on_change = on_change

    def check(self, f: RemoteFile, info: object) -> None:
        """Raise SizeChanged for a file of another size; call on_change if its version moved."""
        size = getattr(info, "size", None)
        ident = (getattr(info, "etag", None), getattr(info, "last_modified", None))
        if size is not None and size != f.size:
            if ident == (None, None) and self._meta.identity(f.url) is not None:
                # Not the file (an error page): no size to believe, nothing to drop (http.py retries these).
                raise FetchError(f"{f.url}: an answer of {size} bytes without the ETag/Last-Modified the file had")
            log.warning("%s is now %d bytes on the server (opened as %d): dropping what is cached of it",
                        f.url, size, f.size)
            self._on_change(f)
            if ident != (None, None):  # the new version's identity: its first open must not drop it again
                self._meta.set_identity(f.url, ident)
            raise SizeChanged(f.url, size, f.size)
        if ident == (None, None):
            return
        old = self._meta.identity(f.url)
        if old is not None and old != ident:
            log.warning("%s changed on the server: dropping what is cached of its old version", f.url)
            self._on_change(f)
        if old != ident:
            self._meta.set_identity(f.url, ident)
