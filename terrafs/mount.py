"""Builds the daemon's objects from a Config and runs the FUSE loop.

The order matters for a good first minute: credentials and the catalogue are
checked before anything is mounted, so a bad password or an unreachable
endpoint ends the command with one clear line and nothing left behind.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import diskcache
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from terrafs import __version__
from terrafs.auth import make_auth as auth_from_values
from terrafs.blockcache import BlockCache
from terrafs.catalogue import Catalogue, Filter
from terrafs.catalogue.opensearch import OpenSearchCatalogue
from terrafs.catalogue.stac import StacCatalogue
from terrafs.config import Config
from terrafs.errors import AuthError, CatalogueError, ConfigError
from terrafs.files import Files
from terrafs.http import Downloader
from terrafs.ratelimit import RateLimiter
from terrafs.reader import Reader
from terrafs.tree import ListingStore, Tree

log = logging.getLogger(__name__)

USER_AGENT = f"terrafs/{__version__}"


def catalogue_session() -> requests.Session:
    """Catalogue searches: anonymous, retried on 429/5xx (urllib3 honours Retry-After)."""
    session = requests.Session()
    retry = Retry(
        total=4,
        backoff_factor=0.5,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=("GET", "POST"),
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    session.mount("http://", HTTPAdapter(max_retries=retry, pool_maxsize=8))
    session.mount("https://", HTTPAdapter(max_retries=retry, pool_maxsize=8))
    session.headers["User-Agent"] = USER_AGENT
    return session


def make_catalogue(config: Config, *, with_local_paths: bool = False) -> Catalogue:
    session = catalogue_session()
    if config.catalogue == "opensearch":
        return OpenSearchCatalogue(config.opensearch_url, session, with_local_paths=with_local_paths)
    return StacCatalogue(config.stac_url, session)


def make_auth(config: Config) -> requests.auth.AuthBase:
    """The download service's credentials; raises AuthError when there are none."""
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    has_password = bool(config.username and config.password)
    auth = auth_from_values(
        config.auth_method,
        token_url=config.token_url,
        client_id=config.client_id,
        username=config.username,
        password=config.password,
        # The refresh token kept by `terrafs login` is used (and its rotations
        # saved) only when no password is configured.
        refresh_token_file=None if has_password else config.refresh_token_file,
        session=session,
    )
    if auth is None:
        raise AuthError(
            "no credentials: set TERRASCOPE_USERNAME and TERRASCOPE_PASSWORD, add the download host to ~/.netrc, "
            "put them in the config file, or run 'terrafs login'"
        )
    return auth


def check_auth(auth: requests.auth.AuthBase, config: Config) -> None:
    """Fail fast on refused credentials, before anything is mounted.

    Bearer: the first token is fetched now. Basic: one HEAD of a file the
    catalogue names (the download service is the only judge of a password).
    """
    manager = getattr(auth, "manager", None)
    try:
        if manager is not None:
            manager.check()
            return
        url = sample_download_url(config)
        if url is not None:
            Downloader(auth, make_limiter(config)).head(url)
    except AuthError as exc:
        source = config.credential_source or f"the refresh token in {config.refresh_token_file}"
        raise AuthError(f"{exc} (credentials from {source})") from None


def sample_download_url(config: Config) -> str | None:
    """A download URL from the catalogue, or None when it has none to give
    (the catalogue check that follows reports an unusable catalogue)."""
    catalogue = make_catalogue(config)
    meta = open_meta_cache(config)
    try:
        # check_catalogue has just kept the collection list: no second request for it.
        collections = listing_store(config, meta).get("collections")
    finally:
        meta.close()
    try:
        for collection in (collections or catalogue.collections())[:5]:
            for product in catalogue.products(collection, None, None, None, limit=1):
                for f in product.files:
                    return f.href
    except CatalogueError as exc:
        log.debug("no sample file for the credential check: %s", exc)
    return None


@dataclass
class Daemon:
    tree: Tree
    files: Files
    reader: Reader
    caches: list

    def close(self) -> None:
        self.reader.close()
        for c in self.caches:
            try:
                c.close()
            except Exception as exc:  # closing must not hide the real exit reason
                log.warning("closing a cache failed: %s", exc)


def open_meta_cache(config: Config) -> diskcache.Cache:
    path = config.cache_dir / "meta"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return diskcache.Cache(str(path), size_limit=256 << 20)


def listing_store(config: Config, meta: diskcache.Cache) -> ListingStore:
    url = config.stac_url if config.catalogue == "stac" else config.opensearch_url
    return ListingStore(meta, f"{config.catalogue}:{url}", config.listing_ttl, config.recent_listing_ttl)


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
            collections = make_catalogue(config).collections()
        except CatalogueError as exc:
            url = config.stac_url if config.catalogue == "stac" else config.opensearch_url
            if store.get_stale("collections") is None:
                raise CatalogueError(f"the catalogue at {url} cannot be used: {exc}") from None
            return f"the catalogue at {url} does not answer ({exc}); serving what the cache holds"
        store.put("collections", collections, recent=False)
        return None
    finally:
        meta.close()


def open_block_cache(config: Config) -> BlockCache:
    path = config.cache_dir / "blocks"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return BlockCache(path, config.cache_size, block_size=config.block_size)


def make_limiter(config: Config) -> RateLimiter:
    if isinstance(config.rate_limit_state, str):
        return make_redis_limiter(config)
    config.rate_limit_state.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return RateLimiter(config.rate_limits, state_path=config.rate_limit_state)


# The file the local budget lives in when no Redis is named, and while a named one is away.
LOCAL_STATE = Path("~/.cache/terrafs/ratelimit.state")


def make_redis_limiter(config: Config) -> RateLimiter:
    """One budget for every process that names the same Redis (rate_limit_state: redis://...)."""
    try:
        from terrafs.ratelimit_redis import RedisRateLimiter
    except ImportError as exc:
        raise ConfigError(f"rate_limit_state names a Redis server, which needs the cluster extra "
                          f"(pip install 'terrafs[cluster]'): {exc}") from None
    # (RateLimiter makes the state file's folder, as for a local budget.)
    return RedisRateLimiter(config.rate_limits, str(config.rate_limit_state),  # type: ignore[return-value]
                            fallback_path=LOCAL_STATE.expanduser(),
                            # a config without the key (before rate_limit_max_pause): the longest window
                            max_pause=getattr(config, "rate_limit_max_pause", None))


def selection_of(config: Config) -> dict[str, Filter] | None:
    if config.collections is None:
        return None
    return {s.id: s.filter for s in config.collections}


def build(config: Config, auth: requests.auth.AuthBase) -> Daemon:
    config.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    downloader = Downloader(auth, make_limiter(config))
    blocks = open_block_cache(config)
    meta = open_meta_cache(config)
    # Blocks waiting for their cache write (and the spool's reserved space) never
    # need to exceed what the cache can hold.
    reader = Reader(downloader, blocks, block_size=config.block_size, write_queue=min(256 << 20, config.cache_size))
    catalogue = make_catalogue(config)
    sampler = make_catalogue(config, with_local_paths=True) if config.layout == "platform" else None
    store = listing_store(config, meta)
    tree = Tree(catalogue, selection=selection_of(config), layout=config.layout, store=store, sampler=sampler)
    files = Files(downloader, reader, meta)
    return Daemon(tree, files, reader, [blocks, meta])


def fuse_options(extra: str | None) -> dict:
    opts: dict = {"ro": True, "fsname": "terrafs", "subtype": "terrafs"}
    import mfusepy

    if mfusepy.fuse_version_major == 2:
        # libfuse 3 takes these in init (fs.py); libfuse 2 only as options.
        opts.update(kernel_cache=True, entry_timeout=3600, attr_timeout=3600)
    for item in (extra or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, _, value = item.partition("=")
        opts[key] = value if value else True
    return opts


def run(config: Config, mountpoint: Path, auth: requests.auth.AuthBase, *, options: str | None = None,
        on_ready: Callable[[], None] | None = None) -> None:
    """Mounts and serves until unmounted (blocks)."""
    from terrafs.fs import FUSE, TerraFS

    daemon = build(config, auth)
    try:
        ops = TerraFS(daemon.tree, daemon.files, on_ready=on_ready)
        log.info("mounting %s (layout %s, catalogue %s)", mountpoint, config.layout, config.catalogue)
        FUSE(ops, str(mountpoint), foreground=True, nothreads=False, **fuse_options(options))
    finally:
        daemon.close()
        log.info("unmounted %s", mountpoint)
