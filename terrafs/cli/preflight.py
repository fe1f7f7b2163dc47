"""Checks before a mount: credentials, the catalogue, and which download hosts get credentials.

The order matters for a good first minute: a bad password or an unreachable endpoint ends the
command with one clear line and nothing mounted. Must not: mount, or hold anything open after it returns.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import requests

from terrafs.catalogue.stac import StacCatalogue
from terrafs.config import Config
from terrafs.errors import AuthError, CatalogueError, FetchError
from terrafs.build import FIELDS_KEY, listing_store, make_catalogue, make_downloader, open_meta_cache
from terrafs.remote.scope import unlisted_hosts_note
from terrafs.text import Origin, origin_of, redact_url

log = logging.getLogger(__name__)

SAMPLE_COLLECTIONS = 5
SAMPLE_PRODUCTS = 10
SAMPLE_KEY = "download-sample:"  # the kept sample in the listing store, per auth.hosts


def check_catalogue(config: Config) -> str | None:
    """Fail fast on a catalogue that cannot be used, before anything is mounted.

    Its collection list is kept for the tree. When the catalogue does not answer
    but an earlier mount left listings in the cache, the mount goes ahead on
    those: the returned text says so; None means all is well.
    """
    meta = open_meta_cache(config)
    try:
        store = listing_store(config, meta)
        try:
            catalogue = make_catalogue(config)
            collections = catalogue.collections()
            if isinstance(catalogue, StacCatalogue) and config.catalogue_fields == "auto" \
                    and store.get(FIELDS_KEY) is None:
                # Read here, before the mount (kept like a listing), so that no listing waits for it.
                store.put(FIELDS_KEY, catalogue.uses_fields, recent=False)
        except CatalogueError as exc:
            url = redact_url(config.stac_url if config.catalogue == "stac" else config.opensearch_url)
            if store.get_stale("collections") is None:
                raise CatalogueError(f"the catalogue at {url} cannot be used: {exc}") from None
            return f"the catalogue at {url} does not answer ({exc}); serving what the cache holds"
        store.put("collections", collections, recent=False)
        return None
    finally:
        meta.close()


# The credential check waits this long at most for the download budget; beyond it the check
# is left for the first read rather than have the mount hang in silence (a 429's pause).
CHECK_WAIT = 2.0


def check_auth(auth: requests.auth.AuthBase, config: Config) -> list[str]:
    """Fail fast on refused credentials, before anything is mounted; returns what the user should
    hear before the mount (a download host that gets no credentials, a check left for later).

    Bearer: the first token is fetched now. Basic: one HEAD of a file the
    catalogue names on a trusted download host (the download service is the
    only judge of a password; no other host ever sees it), unless the download
    budget is paused (a 429's Retry-After): that check is then the first read's.
    Both: the download hosts of the catalogue's first products are compared with auth.hosts.
    """
    manager = getattr(auth, "manager", None)
    try:
        if manager is not None:
            manager.check()
        sample = sample_downloads(config)
        # Only when no sampled file is on a host of auth.hosts: a catalogue that also names other hosts
        # (a quicklook elsewhere) is told in the log, once per host (scope.py), not at every mount.
        notes = [unlisted_hosts_note(sample.unlisted)] if sample.url is None and sample.unlisted else []
        if manager is None and sample.url is not None:
            downloader = make_downloader(config, auth)
            wait = downloader.limiter.wait_time() if downloader.limiter is not None else 0.0
            if wait > CHECK_WAIT:
                notes.append(f"no download request may be sent for {wait:.0f} s (the download service asked "
                             f"for a pause, or rate_limits are spent): the credentials are checked at the "
                             f"first read instead")
            else:
                try:
                    downloader.head(sample.url)
                except FetchError as exc:  # the sampled file is gone, or the service is down: not a refusal
                    notes.append(f"the credential check could not reach a file ({exc}): the credentials "
                                 f"are checked at the first read instead")
    except AuthError as exc:
        source = config.credential_source or f"the refresh token in {config.refresh_token_file}"
        raise AuthError(f"{exc} (credentials from {source})") from None
    return notes


@dataclass(frozen=True)
class DownloadSample:
    url: str | None  # a file on a download host in auth.hosts, for the Basic check; None: none seen
    unlisted: frozenset[Origin]  # download hosts the catalogue names that auth.hosts leaves out

    def kept(self) -> dict:
        """The sample as the listing store keeps it (JSON)."""
        return {"url": self.url, "unlisted": sorted(self.unlisted)}

    @classmethod
    def from_kept(cls, value: object, hosts: frozenset[Origin]) -> DownloadSample | None:
        """A sample from the listing store, or None when absent or not well formed (a cache
        file is hostile input: a kept URL gets the password only on a host of `hosts`, auth.hosts)."""
        if not isinstance(value, dict):
            return None
        url, unlisted = value.get("url"), value.get("unlisted")
        if url is not None and not (isinstance(url, str) and origin_of(url) in hosts):
            return None
        if not isinstance(unlisted, list) or not all(
                isinstance(o, list) and len(o) == 3 and isinstance(o[0], str) and isinstance(o[1], str)
                and isinstance(o[2], int) for o in unlisted):
            return None
        return cls(url, frozenset((o[0], o[1], o[2]) for o in unlisted))


def sample_downloads(config: Config) -> DownloadSample:
    """The download hosts of the catalogue's first products, up to the first file on a host
    in auth.hosts (one catalogue request when the config is right).

    Files elsewhere (another host, plain http) are not candidates for the check:
    it would send them the password. The sample is kept like a listing, so that a
    remount on a warm cache sends the catalogue no listing request for it.
    """
    meta = open_meta_cache(config)
    try:
        store = listing_store(config, meta)
        key = SAMPLE_KEY + ",".join(sorted(f"{s}://{h}:{p}" for s, h, p in config.credential_hosts))
        kept = DownloadSample.from_kept(store.get(key), config.credential_hosts)
        if kept is not None:
            return kept
        # check_catalogue has just kept the collection list: no second request for it.
        sample, complete = _sample(config, store.get("collections"))
        if complete:
            store.put(key, sample.kept(), recent=False)
        return sample
    finally:
        meta.close()


def _sample(config: Config, collections: list[str] | None) -> tuple[DownloadSample, bool]:
    """Asks the catalogue; the bool is False when it failed (a sample not to keep)."""
    catalogue = make_catalogue(config)
    unlisted: set[Origin] = set()
    try:
        for collection in (collections or catalogue.collections())[:SAMPLE_COLLECTIONS]:
            for product in catalogue.products(collection, None, None, None, limit=SAMPLE_PRODUCTS):
                for f in product.files:
                    origin = origin_of(f.href)
                    if origin in config.credential_hosts:
                        return DownloadSample(f.href, frozenset(unlisted)), True
                    if origin is not None:
                        unlisted.add(origin)
    except CatalogueError as exc:
        log.debug("no sample file for the credential check: %s", exc)
        complete = False
    else:
        complete = True
    log.info("no file on a download host (auth.hosts) in the catalogue's first products: "
             "the credentials are checked at the first read")
    return DownloadSample(None, frozenset(unlisted)), complete
