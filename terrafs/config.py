"""The typed configuration: the only module that reads YAML, environment and netrc.

load_config() merges, in this order, the defaults (the real Terrascope
services), the YAML file, the caller's overrides (command-line options) and
the environment, validates every key, and finds credentials (environment,
then ~/.netrc, then the config file). Every mistake is a ConfigError of one
line that names the file and the dotted key. Nothing here opens a network
connection, and no password ever reaches a message, a log line or repr().
"""
from __future__ import annotations

import logging
import netrc
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

import yaml

from terrafs.catalogue.model import CatalogueLimits
from terrafs.config_schema import SCHEMA, BadValue, Checker, CollectionSelection, check_level
from terrafs.errors import ConfigError
from terrafs.text import Origin

__all__ = ["Config", "CollectionSelection", "ConfigError", "DOWNLOAD_HOST", "load_config"]

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "~/.config/terrafs/config.yaml"
DEFAULT_REFRESH_TOKEN = "~/.config/terrafs/refresh-token"
DOWNLOAD_HOST = "services.terrascope.be"  # where the real archive's files are served

DEFAULTS: dict[str, Any] = {
    "catalogue": "stac",
    "endpoints": {
        "stac": "https://stac.terrascope.be/",
        "opensearch": "https://services.terrascope.be/catalogue/",
        "token": "https://sso.terrascope.be/auth/realms/terrascope/protocol/openid-connect/token",
    },
    # hosts: who gets the credentials ("host" or "host:port": https; "http://host:port" for plain http).
    "auth": {"method": "bearer", "client_id": "public", "username": None, "password": None,
             "hosts": [DOWNLOAD_HOST]},
    "cache": {
        "dir": "~/.cache/terrafs",
        "size": "20GiB",
        "listing_ttl": 3600,
        "recent_listing_ttl": 300,
        "block_size": "1MiB",
        # [cluster] A redis(s):// URL: a block tier shared by every node (read/sharedtier.py, README).
        "shared": None,
        "shared_ttl": 86400,  # seconds an entry lives unread (the byte budget is the Redis's maxmemory)
        "shared_stream_max": "64MiB",  # whole-file streams go to the tier only for files up to this size
        "shared_wait": 30,  # most seconds a node waits for the bytes of another node's fetch
        "listing_memory": "64MiB",  # listings kept in RAM; the rest come back from the disk cache
    },
    # The download service's documented limits, per IP address.
    "rate_limits": [{"requests": 80, "seconds": 10}, {"requests": 200, "seconds": 60}],
    # Shared by every terrafs process of the user, whatever its cache folder: they share one IP address.
    "rate_limit_state": "~/.cache/terrafs/ratelimit.state",
    "rate_limit_max_pause": None,  # seconds; None: the longest window, at least 60
    "catalogue_limits": {"max_pages": 1000, "max_response_size": "64MiB"},
    # STAC fields extension: "auto" asks for the fields the tree reads where the API conforms to it.
    "catalogue_fields": "auto",
    # Download retries: attempts in a row without progress, the first backoff (doubling, with
    # jitter, at most 4 s) and a bound on the time one fetch spends retrying. With 8 attempts a
    # server that faults 40% of requests fails 0.4^8 = 0.07% of fetches; one that answers only
    # errors gives EIO after about 15 s, one that refuses connections at once.
    "retries": {"attempts": 8, "backoff": 0.5, "max_time": 120},
    "layout": "default",
    "collections": None,
    "log": {"level": "INFO", "file": "~/.cache/terrafs/terrafs.log"},
    "metrics": {"listen": None},  # HOST:PORT serves Prometheus text at /metrics (metrics.py)
}


@dataclass(frozen=True)
class RetryPolicy:
    """How downloads are tried again (see DEFAULTS["retries"])."""

    attempts: int = 8  # in a row without a byte of progress
    backoff: float = 0.5  # seconds before the second attempt
    max_time: float = 120.0  # seconds one fetch may spend retrying


@dataclass(frozen=True)
class Config:
    catalogue: str  # "stac" | "opensearch"
    stac_url: str
    opensearch_url: str
    token_url: str
    auth_method: str  # "bearer" | "basic"
    client_id: str
    username: str | None
    password: str | None = field(repr=False)
    credential_source: str | None
    credential_hosts: frozenset[Origin]  # (scheme, host, port) that get the credentials
    refresh_token_file: Path
    cache_dir: Path
    cache_size: int
    block_size: int
    listing_ttl: float
    recent_listing_ttl: float
    rate_limits: tuple[tuple[int, float], ...]
    rate_limit_state: Path | str = field(repr=False)  # a file, or a redis(s):// URL (may hold a password) [cluster]
    rate_limit_max_pause: float | None  # None: the longest rate window
    catalogue_limits: CatalogueLimits
    retries: "RetryPolicy"
    layout: str  # "default" | "platform"
    collections: tuple[CollectionSelection, ...] | None  # None: every collection
    log_level: str
    log_file: Path
    source: Path | None  # the file read, for messages
    metrics_listen: str | None = None  # HOST:PORT of the Prometheus endpoint; None: off
    shared_cache: str | None = field(default=None, repr=False)  # redis(s):// URL of the shared tier (a password)
    shared_ttl: float = 86400.0
    shared_stream_max: int = 64 << 20
    shared_wait: float = 30.0
    listing_memory: int = 64 << 20  # bytes of listings kept in RAM (cache.listing_memory)
    catalogue_fields: str = "auto"  # "auto" | "off": the STAC fields extension


# ---- loading -------------------------------------------------------------------


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] = os.environ,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """The configuration from `path` (else $TERRAFS_CONFIG, else the default file).

    A missing default file means all defaults; a missing named file is an error.
    `overrides` (e.g. from the command line) win over the file: top-level keys,
    dotted keys ("cache.size") or nested mappings.
    """
    home = Path(env.get("HOME") or Path.home())
    explicit = path is not None or bool(env.get("TERRAFS_CONFIG"))
    if path is None:
        path = Path(env["TERRAFS_CONFIG"]) if env.get("TERRAFS_CONFIG") else Path(DEFAULT_CONFIG)
    path = _expand(path, home)
    raw, source = _read_yaml(path, explicit)
    where = str(source) if source else "config"
    checker = Checker(where)
    values = checker.mapping(raw, SCHEMA, "")
    if overrides:
        over = checker.mapping(_nest(overrides, where), SCHEMA, "")
        values = _merge(values, over)
    if env.get("TERRAFS_LOG_LEVEL"):
        try:
            values.setdefault("log", {})["level"] = check_level(env["TERRAFS_LOG_LEVEL"])
        except BadValue as e:
            raise ConfigError(f"environment: TERRAFS_LOG_LEVEL: {e}") from None
    merged = _merge(checker.mapping(DEFAULTS, SCHEMA, ""), values)
    file_auth = raw.get("auth") if isinstance(raw, Mapping) else None
    if source is not None and isinstance(file_auth, Mapping) and file_auth.get("password") is not None:
        _check_private(source)
    username, password, cred_source = _credentials(merged, env, home, source)
    return _build(merged, home, source, username, password, cred_source)


def _expand(path: Path | str, home: Path) -> Path:
    text = str(path)
    if text == "~" or text.startswith("~/"):
        return home / text[2:]
    return Path(text)


def _read_yaml(path: Path, explicit: bool) -> tuple[Any, Path | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: config file not found") from None
        return {}, None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the config file is not UTF-8 text") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or "syntax error"
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: the config file must be a mapping of keys (like 'catalogue: stac')")
    return raw, path


def _nest(overrides: Mapping[str, Any], where: str) -> dict[str, Any]:
    """{"cache.size": x} -> {"cache": {"size": x}}."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: override '{key}' conflicts with another override")
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _check_private(source: Path) -> None:
    """Refuse a config file holding a password that others can read (as ssh does for keys)."""
    try:
        mode = stat.S_IMODE(source.stat().st_mode)
    except OSError as e:
        raise ConfigError(f"{source}: cannot check permissions ({e.strerror})") from None
    if mode & 0o077:
        raise ConfigError(
            f"{source}: permissions {mode:04o} for '{source}' are too open for a file with a password;"
            f" run: chmod 600 '{source}'"
        )


def _credentials(
    values: Mapping[str, Any], env: Mapping[str, str], home: Path, source: Path | None
) -> tuple[str | None, str | None, str | None]:
    """(username, password, where they came from): environment, netrc, config file."""
    user, password = env.get("TERRASCOPE_USERNAME"), env.get("TERRASCOPE_PASSWORD")
    if user and password:
        return user, password, "environment (TERRASCOPE_USERNAME)"
    if user or password:
        log.warning("only one of TERRASCOPE_USERNAME and TERRASCOPE_PASSWORD is set; ignoring both")
    found = _from_netrc(values["endpoints"], env, home)
    if found is not None:
        return found
    auth = values["auth"]
    if auth.get("username") or auth.get("password"):
        return auth.get("username"), auth.get("password"), f"config file {source}"
    return None, None, None


def _from_netrc(
    endpoints: Mapping[str, str], env: Mapping[str, str], home: Path
) -> tuple[str, str, str] | None:
    named = env.get("NETRC")
    path = Path(named) if named else home / ".netrc"
    shown = str(path) if named else "~/.netrc"
    if not path.is_file():
        return None
    try:
        entries = netrc.netrc(str(path))
    except (netrc.NetrcParseError, OSError) as e:
        raise ConfigError(f"{shown}: cannot read it ({getattr(e, 'msg', None) or type(e).__name__})") from None
    try:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            log.warning("%s is readable by other users; chmod 600 it", shown)
    except OSError:
        pass
    # The download host is not in the config; the archive's files live on the
    # OpenSearch host, and in tests (emulator) every endpoint has the same host.
    hosts = [urlsplit(endpoints["token"]).hostname, DOWNLOAD_HOST,
             urlsplit(endpoints["stac"]).hostname, urlsplit(endpoints["opensearch"]).hostname]
    for host in hosts:
        if host and host in entries.hosts:
            login, _account, password = entries.hosts[host]
            if login and password:
                return login, password, f"{shown} (machine {host})"
    return None


def _build(
    v: Mapping[str, Any], home: Path, source: Path | None,
    username: str | None, password: str | None, cred_source: str | None,
) -> Config:
    cache, auth, endpoints, logv = v["cache"], v["auth"], v["endpoints"], v["log"]
    return Config(
        catalogue=v["catalogue"],
        stac_url=_slash(endpoints["stac"]),
        opensearch_url=_slash(endpoints["opensearch"]),
        # An endpoint, not a base: Keycloak may not answer ".../token/".
        token_url=endpoints["token"],
        auth_method=auth["method"],
        client_id=auth["client_id"],
        username=username,
        password=password,
        credential_source=cred_source,
        credential_hosts=auth["hosts"],
        refresh_token_file=_expand(DEFAULT_REFRESH_TOKEN, home),
        cache_dir=_expand(cache["dir"], home),
        cache_size=cache["size"],
        block_size=cache["block_size"],
        listing_ttl=cache["listing_ttl"],
        recent_listing_ttl=cache["recent_listing_ttl"],
        rate_limits=v["rate_limits"],
        rate_limit_state=(v["rate_limit_state"] if "://" in v["rate_limit_state"]  # [cluster] a Redis URL
                          else _expand(v["rate_limit_state"], home)),
        rate_limit_max_pause=v["rate_limit_max_pause"],
        catalogue_limits=CatalogueLimits(v["catalogue_limits"]["max_pages"],
                                         v["catalogue_limits"]["max_response_size"]),
        retries=RetryPolicy(v["retries"]["attempts"], v["retries"]["backoff"], v["retries"]["max_time"]),
        layout=v["layout"],
        collections=v["collections"],
        log_level=logv["level"],
        log_file=_expand(logv["file"], home),
        source=source,
        metrics_listen=v["metrics"]["listen"],
        shared_cache=cache["shared"],
        shared_ttl=cache["shared_ttl"],
        shared_stream_max=cache["shared_stream_max"],
        shared_wait=cache["shared_wait"],
        listing_memory=cache["listing_memory"],
        catalogue_fields=v["catalogue_fields"],
    )


def _slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"
