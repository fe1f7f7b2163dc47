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

NOTE_HOSTS = 3  # hosts named in the mount's one line about auth.hosts


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

    def unsent(self, url: str) -> str | None:
        """Why a request to `url` went without the credentials, for an error message; None when they went."""
        found = origin_of(url)
        if found in self.origins:
            return None
        if found is None:
            return "no credentials are sent to a malformed URL"
        return (f"no credentials were sent to {shown(host_entry(found))}: it is not in auth.hosts "
                f"(add it there in the config)")


def host_entry(origin: Origin) -> str:
    """An origin as auth.hosts names it: "host" (https), "host:port" (https), "http://host:port"."""
    scheme, host, port = origin
    host = f"[{host}]" if ":" in host else host  # IPv6
    if scheme == "https":
        return host if port == 443 else f"{host}:{port}"
    return f"{scheme}://{host}:{port}"


def unlisted_hosts_note(origins: Iterable[Origin]) -> str:
    """One line: the catalogue's download hosts that get no credentials, and the key to set."""
    entries = sorted(shown(host_entry(o)) for o in origins)
    one = len(entries) == 1
    more = len(entries) - NOTE_HOSTS
    named = ", ".join(entries[:NOTE_HOSTS]) + (f" and {more} more" if more > 0 else "")
    quoted = ", ".join(f'"{e}"' for e in entries[:NOTE_HOSTS])
    return (f"the catalogue's files are on {named}, which {'gets' if one else 'get'} no credentials "
            f"(auth.hosts leaves {'it' if one else 'them'} out): add {'it' if one else 'them'} to auth.hosts "
            f"in the config (auth: {{hosts: [{quoted}]}})")


DEFAULT_SCOPE = CredentialScope([("https", DOWNLOAD_HOST, 443)])
