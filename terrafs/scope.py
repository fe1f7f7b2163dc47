"""Which hosts may receive the download service's credentials.

A catalogue answer is input from the network: an asset href may name any
host, or plain http. Credentials (a bearer token, a Basic password) go only to
the origins the config trusts (`auth.hosts`; by default the Terrascope
download host over https); http.Downloader asks `allows(url)` before each
first request, and drops credentials itself on a redirect to another origin.
Must not: fetch anything, or log more than one line per refused origin.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from terrafs.config import DOWNLOAD_HOST
from terrafs.text import Origin, origin_of, shown

log = logging.getLogger(__name__)


class CredentialScope:
    """The origins (scheme, host, port) that may receive the download credentials.

    Everything else (an href of a hostile catalogue, plain http to the right
    host) is fetched without them; one warning per origin says so.
    """

    def __init__(self, origins: Iterable[Origin]) -> None:
        self.origins = frozenset(origins)
        self._warned: set[Origin | None] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CredentialScope({sorted(self.origins)!r})"

    def allows(self, url: str) -> bool:
        found = origin_of(url)
        if found in self.origins:
            return True
        with self._lock:
            first = found not in self._warned
            self._warned.add(found)
        if first:
            where = "%s://%s:%d" % found if found else "a malformed URL"
            log.warning("not sending credentials to %s: not a download host (auth.hosts in the config)",
                        shown(where))
        return False


DEFAULT_SCOPE = CredentialScope([("https", DOWNLOAD_HOST, 443)])
