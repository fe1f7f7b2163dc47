"""Builds the daemon's objects from a Config (the FUSE loop that serves them: mount/daemon.py).

The order matters for a good first minute: credentials and the catalogue are
checked before anything is mounted, so a bad password or an unreachable
endpoint ends the command with one clear line and nothing left behind.
"""
from __future__ import annotations

import logging
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from terrafs import __version__
from terrafs.remote.auth import make_auth as auth_from_values
from terrafs.cache.blocks import SQLITE_MMAP_BYTES, BlockCache, MemoryOnlyCache
from terrafs.catalogue import Catalogue, Filter
from terrafs.catalogue.opensearch import OpenSearchCatalogue
from terrafs.catalogue.stac import StacCatalogue
from terrafs.config import Config
from terrafs.counters import CATALOGUE_RESPONSES
from terrafs.errors import AuthError, ConfigError
from terrafs.cache.filemeta import FileMeta
from terrafs.openfiles import Files
from terrafs.remote.http import Downloader
from terrafs.cache.listings import ListingStore, NoPickleDisk
from terrafs.localfs import FolderUnusable, private_dir
from terrafs.remote.limiter import DEFAULT_MAX_PAUSE, Limiter
from terrafs.remote.ratelimit import RateLimiter
from terrafs.read import Reader
from terrafs.read.sharedtier import SharedTier
from terrafs.remote.scope import CredentialScope
from terrafs.text import strip_userinfo
from terrafs.tree.paths import Tree

log = logging.getLogger(__name__)

USER_AGENT = f"terrafs/{__version__}"
# Where the Basic credential check looks for a file on a download host: one small
# catalogue request per collection, for at most this many collections.


class _BoundedRetry(Retry):
    """urllib3's Retry whose Retry-After waits are bounded (a catalogue asking for years gets a minute)."""

    def parse_retry_after(self, retry_after: str) -> float:
        return min(super().parse_retry_after(retry_after), DEFAULT_MAX_PAUSE)


def catalogue_session() -> requests.Session:
    """Catalogue searches: anonymous, retried on 429/5xx (urllib3 honours Retry-After)."""
    session = requests.Session()
    retry = _BoundedRetry(total=4, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504),
                          allowed_methods=("GET", "POST"), respect_retry_after_header=True, raise_on_status=False)
    session.mount("http://", HTTPAdapter(max_retries=retry, pool_maxsize=8))
    session.mount("https://", HTTPAdapter(max_retries=retry, pool_maxsize=8))
    session.headers["User-Agent"] = USER_AGENT
    session.hooks["response"].append(CATALOGUE_RESPONSES.hook)  # counted for metrics
    return session


def make_catalogue(config: Config, *, with_local_paths: bool = False) -> Catalogue:
    session = catalogue_session()
    limits = config.catalogue_limits
    if config.catalogue == "opensearch":
        return OpenSearchCatalogue(config.opensearch_url, session, with_local_paths=with_local_paths,
                                   limits=limits)
    return StacCatalogue(config.stac_url, session, limits=limits, fields=config.catalogue_fields)


def make_downloader(config: Config, auth: requests.auth.AuthBase | None) -> Downloader:
    """The Downloader, with credentials only for the download hosts the config trusts."""
    r = config.retries
    return Downloader(auth, make_limiter(config), scope=CredentialScope(config.credential_hosts),
                      retries=r.attempts - 1, backoff=r.backoff, max_retry_time=r.max_time)


def make_auth(config: Config) -> requests.auth.AuthBase:
    """The download service's credentials; raises AuthError when there are none."""
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    has_password = bool(config.username and config.password)
    # The refresh token kept by `terrafs login` is used (and its rotations saved) only when no password is.
    auth = auth_from_values(config.auth_method, token_url=config.token_url, client_id=config.client_id,
                            username=config.username, password=config.password, session=session,
                            refresh_token_file=None if has_password else config.refresh_token_file)
    if auth is None:
        raise AuthError(
            "no credentials: set TERRASCOPE_USERNAME and TERRASCOPE_PASSWORD, add the download host to ~/.netrc, "
            "put them in the config file, or run 'terrafs login'"
        )
    return auth


@dataclass
class Daemon:
    tree: Tree
    files: Files
    reader: Reader
    caches: list
    blocks: BlockCache | None = None  # for metrics, cache stats and prefetch --check
    downloader: Downloader | None = None  # for metrics (its and its limiter's counters)
    shared: Any = None  # the cluster's shared block tier (read/sharedtier.py), if the config names one

    def close(self) -> None:
        self.reader.close()
        for c in self.caches:
            try:
                c.close()
            except Exception as exc:  # closing must not hide the real exit reason
                log.warning("closing a cache failed: %s", exc)


def open_meta_cache(config: Config) -> diskcache.Cache:
    """Listings; a Disk that never unpickles (cache/listings.py), in a private folder.

    A cache folder that cannot be written (read-only, full, damaged) does not stop
    the mount: listings are then kept in a private temporary folder for this run.
    """
    try:
        private_dir(config.cache_dir)
        path = private_dir(config.cache_dir / "meta")
        return diskcache.Cache(str(path), size_limit=256 << 20, disk=NoPickleDisk, sqlite_mmap_size=SQLITE_MMAP_BYTES)
    except (FolderUnusable, OSError, sqlite3.Error, diskcache.Timeout) as exc:  # not the other UnsafePathErrors
        spare = Path(tempfile.mkdtemp(prefix="terrafs-meta-"))
        log.warning("the cache folder %s cannot be used (%s); listings are kept in %s for this run",
                    config.cache_dir, exc, spare)
        return diskcache.Cache(str(spare), size_limit=256 << 20, disk=NoPickleDisk,
                              sqlite_mmap_size=SQLITE_MMAP_BYTES)


def listing_store(config: Config, meta: diskcache.Cache) -> ListingStore:
    url = config.stac_url if config.catalogue == "stac" else config.opensearch_url
    return ListingStore(meta, f"{config.catalogue}:{strip_userinfo(url)}", config.listing_ttl,
                        config.recent_listing_ttl)


FIELDS_KEY = "stac-fields"  # whether the STAC API conforms to the fields extension, in the listing store


def open_block_cache(config: Config) -> BlockCache | MemoryOnlyCache:
    """The block cache; a folder that cannot be written (read-only, full, a damaged index) gives a
    cache that stores nothing, and reads go to the network. A folder another user could write
    is refused: blocks planted there would be served as bytes."""
    try:
        private_dir(config.cache_dir)
        path = private_dir(config.cache_dir / "blocks")
        return BlockCache(path, config.cache_size, block_size=config.block_size)
    except (FolderUnusable, OSError, sqlite3.Error, diskcache.Timeout) as exc:  # not the other UnsafePathErrors
        log.warning("the cache folder %s cannot be used (%s); reads are served from the network and "
                    "memory", config.cache_dir, exc)
        return MemoryOnlyCache(config.block_size, f"{config.cache_dir}: {exc}")


def make_limiter(config: Config) -> Limiter:
    if isinstance(config.rate_limit_state, str):
        return make_redis_limiter(config)
    return RateLimiter(config.rate_limits, state_path=config.rate_limit_state,
                       max_pause=config.rate_limit_max_pause)


# The file the local budget lives in when no Redis is named, and while a named one is away.
LOCAL_STATE = Path("~/.cache/terrafs/ratelimit.state")


def make_redis_limiter(config: Config) -> Limiter:
    """One budget for every process that names the same Redis (rate_limit_state: redis://...)."""
    try:
        from terrafs.remote.ratelimit_redis import RedisRateLimiter
    except ImportError as exc:
        raise ConfigError(f"rate_limit_state names a Redis server, which needs the cluster extra "
                          f"(pip install 'terrafs[cluster]'): {exc}") from None
    # (RateLimiter makes the state file's folder, as for a local budget.)
    return RedisRateLimiter(config.rate_limits, str(config.rate_limit_state),
                            fallback_path=LOCAL_STATE.expanduser(), max_pause=config.rate_limit_max_pause)


def make_shared_tier(config: Config):
    """The cluster's shared block tier (cache.shared: redis://...), or None when the config names none."""
    if not config.shared_cache:
        return None
    from terrafs.read.sharedtier import SharedTier, TierSettings, redis

    if redis is None:
        raise ConfigError("cache.shared names a Redis server, which needs the cluster extra "
                          "(pip install 'terrafs[cluster]')")
    return SharedTier(TierSettings(config.shared_cache, config.shared_ttl, config.shared_stream_max,
                                   config.shared_wait))


def selection_of(config: Config) -> dict[str, Filter] | None:
    if config.collections is None:
        return None
    return {s.id: s.filter for s in config.collections}


def make_reader(config: Config, downloader: Downloader, blocks: BlockCache | MemoryOnlyCache,
                shared: SharedTier | None = None, filemeta: FileMeta | None = None) -> Reader:
    """The one place a Reader is built from a Config (a mount, fsspec, `terrafs prefetch` without a daemon).
    Blocks waiting for their cache write (and the spool's reserved space) never need exceed the cache."""
    return Reader(downloader, blocks, block_size=config.block_size, write_queue=min(256 << 20, config.cache_size),
                  shared=shared, filemeta=filemeta)


def build(config: Config, auth: requests.auth.AuthBase) -> Daemon:
    downloader = make_downloader(config, auth)
    blocks = open_block_cache(config)
    meta = open_meta_cache(config)
    shared = make_shared_tier(config)
    filemeta = FileMeta(blocks)  # sizes and identities: the one store, shared by reader and files
    reader = make_reader(config, downloader, blocks, shared, filemeta)
    catalogue = make_catalogue(config)
    sampler = make_catalogue(config, with_local_paths=True) if config.layout == "platform" else None
    store = listing_store(config, meta)
    if isinstance(catalogue, StacCatalogue) and config.catalogue_fields == "auto":
        catalogue.assume_fields(store.get_stale(FIELDS_KEY))
    tree = Tree(catalogue, selection=selection_of(config), layout=config.layout, store=store, sampler=sampler,
                memory=config.listing_memory)
    files = Files(downloader, reader, filemeta, shared=shared)
    return Daemon(tree, files, reader, [blocks, meta] + ([shared] if shared else []), blocks=blocks,
                  downloader=downloader, shared=shared)
