"""The typed configuration: the only module that reads YAML, environment and netrc.

load_config() merges, in this order, the defaults (the real Terrascope
services), the YAML file, the caller's overrides (command-line options) and
the environment, validates every key, and finds credentials (environment,
then ~/.netrc, then the config file). Every mistake is a ConfigError of one
line that names the file and the dotted key. Nothing here opens a network
connection, and no password ever reaches a message, a log line or repr().
"""
from __future__ import annotations

import difflib
import logging
import netrc
import os
import re
import stat
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import yaml

from terrafs.catalogue.model import Filter
from terrafs.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "~/.config/terrafs/config.yaml"
DEFAULT_REFRESH_TOKEN = "~/.config/terrafs/refresh-token"
DOWNLOAD_HOST = "services.terrascope.be"  # where the real archive's files are served
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

DEFAULTS: dict[str, Any] = {
    "catalogue": "stac",
    "endpoints": {
        "stac": "https://stac.terrascope.be/",
        "opensearch": "https://services.terrascope.be/catalogue/",
        "token": "https://sso.terrascope.be/auth/realms/terrascope/protocol/openid-connect/token",
    },
    "auth": {"method": "bearer", "client_id": "public", "username": None, "password": None},
    "cache": {
        "dir": "~/.cache/terrafs",
        "size": "20GiB",
        "listing_ttl": 3600,
        "recent_listing_ttl": 300,
        "block_size": "1MiB",
    },
    # The download service's documented limits, per IP address.
    "rate_limits": [{"requests": 80, "seconds": 10}, {"requests": 200, "seconds": 60}],
    # Shared by every terrafs process of the user, whatever its cache folder: they share one IP address.
    "rate_limit_state": "~/.cache/terrafs/ratelimit.state",
    "layout": "default",
    "collections": None,
    "log": {"level": "INFO", "file": "~/.cache/terrafs/terrafs.log"},
}


@dataclass(frozen=True)
class CollectionSelection:
    id: str  # folder name: STAC id or the last part of the OpenSearch URN
    filter: Filter


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
    refresh_token_file: Path
    cache_dir: Path
    cache_size: int
    block_size: int
    listing_ttl: float
    recent_listing_ttl: float
    rate_limits: tuple[tuple[int, float], ...]
    rate_limit_state: Path | str = field(repr=False)  # a file, or a redis(s):// URL (may hold a password) [cluster]
    layout: str  # "default" | "platform"
    collections: tuple[CollectionSelection, ...] | None  # None: every collection
    log_level: str
    log_file: Path
    source: Path | None  # the file read, for messages


# ---- sizes -------------------------------------------------------------------

_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: Any) -> int:
    """Bytes from 1048576, "1048576", "1MiB", "1.5 GB", "20GiB" (KB=1000, KiB=1024)."""
    if isinstance(text, bool):
        raise ConfigError(f"not a size: {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"not a size: {text!r} (negative)")
        return text
    if isinstance(text, float) and text >= 0 and text.is_integer():
        return int(text)
    m = _SIZE.match(text) if isinstance(text, str) else None
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"not a size: {text!r} (use bytes or a unit: KiB, MiB, GiB, KB, MB, GB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


# ---- validation ----------------------------------------------------------------


class _Bad(Exception):
    """A value is wrong; the caller adds the file and key."""


def _choice(*allowed: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if not isinstance(v, str) or v.lower() not in allowed:
            raise _Bad(f"must be one of {', '.join(allowed)}, not {v!r}")
        return v.lower()
    return check


def _url(v: Any) -> str:
    if not isinstance(v, str) or urlsplit(v).scheme not in ("http", "https") or not urlsplit(v).hostname:
        raise _Bad(f"must be an http(s) URL, not {v!r}")
    return v


def _string(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise _Bad("must be a non-empty string")
    return v


def _optional_string(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)  # YAML reads a numeric user name as a number
    return _string(v)


def _secret(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    if not isinstance(v, str) or not v:
        raise _Bad("must be a non-empty string")  # never echo the value
    return v


def _size(v: Any) -> int:
    try:
        return parse_size(v)
    except ConfigError as e:
        raise _Bad(str(e)) from None


def _positive_size(v: Any) -> int:
    n = _size(v)
    if n <= 0:
        raise _Bad("must be larger than 0")
    return n


def _seconds(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise _Bad(f"must be a number of seconds >= 0, not {v!r}")
    return float(v)


def _path(v: Any) -> str:
    if not isinstance(v, (str, Path)) or not str(v):
        raise _Bad("must be a path")
    return str(v)


def _state(v: Any) -> str:
    # [cluster] A redis(s):// URL shares the budget through Redis (ratelimit_redis.py); the
    # value may hold a password, so it is never echoed.
    if isinstance(v, str) and "://" in v:
        parts = urlsplit(v)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname or not re.fullmatch(r"/?\d*", parts.path):
            raise _Bad("must be a file path or a redis://[:PASSWORD@]HOST[:PORT][/DB] URL (rediss:// for TLS)")
        return v
    return _path(v)


def _level(v: Any) -> str:
    if not isinstance(v, str) or v.upper() not in LOG_LEVELS:
        raise _Bad(f"must be one of {', '.join(LOG_LEVELS)}, not {v!r}")
    return v.upper()


SCHEMA: dict[str, Any] = {
    "catalogue": _choice("stac", "opensearch"),
    "endpoints": {"stac": _url, "opensearch": _url, "token": _url},
    "auth": {"method": _choice("bearer", "basic"), "client_id": _string,
             "username": _optional_string, "password": _secret},
    "cache": {"dir": _path, "size": _positive_size, "listing_ttl": _seconds,
              "recent_listing_ttl": _seconds, "block_size": _positive_size},
    "rate_limits": "rate_limits",
    "rate_limit_state": _state,
    "layout": _choice("default", "platform"),
    "collections": "collections",
    "log": {"level": _level, "file": _path},
}
_WINDOW_KEYS = ("requests", "seconds")
_SELECTION_KEYS = ("id", "bbox", "start", "end", "cloud_cover", "tile_ids")


class _Checker:
    """Validates the merged raw mapping; errors name `where` and the dotted key."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where}: {key}: {message}")

    def unknown(self, key: str, known: list[str], prefix: str) -> ConfigError:
        dotted = prefix + str(key)
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
        return ConfigError(f"{self.where}: unknown key '{dotted}'{hint}")

    def mapping(self, raw: Any, schema: dict[str, Any], prefix: str) -> dict[str, Any]:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise self.fail(prefix.rstrip(".") or "(top level)", "must be a mapping of keys")
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in schema:
                raise self.unknown(key, list(schema), prefix)
            rule = schema[key]
            dotted = prefix + key
            if isinstance(rule, dict):
                out[key] = self.mapping(value, rule, dotted + ".")
            elif rule == "rate_limits":
                out[key] = self.rate_limits(value, dotted)
            elif rule == "collections":
                out[key] = self.collections(value, dotted)
            else:
                try:
                    out[key] = rule(value)
                except _Bad as e:
                    raise self.fail(dotted, str(e)) from None
        return out

    def rate_limits(self, raw: Any, key: str) -> tuple[tuple[int, float], ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise self.fail(key, "must be a list of {requests: N, seconds: S}")
        windows = []
        for i, w in enumerate(raw):
            k = f"{key}[{i}]"
            if not isinstance(w, Mapping):
                raise self.fail(k, "must be a mapping {requests: N, seconds: S}")
            for name in w:
                if name not in _WINDOW_KEYS:
                    raise self.unknown(name, list(_WINDOW_KEYS), k + ".")
            n, s = w.get("requests"), w.get("seconds")
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                raise self.fail(k + ".requests", f"must be a whole number > 0, not {n!r}")
            if isinstance(s, bool) or not isinstance(s, (int, float)) or s <= 0:
                raise self.fail(k + ".seconds", f"must be a number > 0, not {s!r}")
            windows.append((n, float(s)))
        return tuple(windows)

    def collections(self, raw: Any, key: str) -> tuple[CollectionSelection, ...] | None:
        if raw is None:
            return None
        if not isinstance(raw, list):
            raise self.fail(key, "must be a list of collection ids or {id: ..., ...} entries")
        out = []
        seen: set[str] = set()
        for i, entry in enumerate(raw):
            sel = self.selection(entry, f"{key}[{i}]")
            if sel.id in seen:
                raise self.fail(f"{key}[{i}].id", f"collection {sel.id!r} is listed twice")
            seen.add(sel.id)
            out.append(sel)
        return tuple(out)

    def selection(self, entry: Any, key: str) -> CollectionSelection:
        if isinstance(entry, str):
            entry = {"id": entry}
        if not isinstance(entry, Mapping):
            raise self.fail(key, "must be a collection id or a mapping with an id")
        for name in entry:
            if name not in _SELECTION_KEYS:
                raise self.unknown(name, list(_SELECTION_KEYS), key + ".")
        cid = entry.get("id")
        if not isinstance(cid, str) or not cid or "/" in cid or cid in (".", "..") or \
                any(ord(c) < 32 for c in cid):
            raise self.fail(key + ".id", f"must be a collection id (a folder name), not {cid!r}")
        start = self.when(entry.get("start"), key + ".start", end_of_day=False)
        end = self.when(entry.get("end"), key + ".end", end_of_day=True)
        if start and end and start > end:
            raise self.fail(key + ".end", "is before start")
        return CollectionSelection(cid, Filter(
            bbox=self.bbox(entry.get("bbox"), key + ".bbox"),
            start=start,
            end=end,
            cloud_cover_max=self.cloud(entry.get("cloud_cover"), key + ".cloud_cover"),
            tile_ids=self.tiles(entry.get("tile_ids"), key + ".tile_ids"),
        ))

    def bbox(self, raw: Any, key: str) -> tuple[float, float, float, float] | None:
        if raw is None:
            return None
        if not isinstance(raw, list) or len(raw) != 4 or \
                any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in raw):
            raise self.fail(key, "must be [west, south, east, north] in degrees")
        w, s, e, n = (float(v) for v in raw)
        if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= n <= 90):
            raise self.fail(key, f"is not a lon/lat box: {raw}")
        return (w, s, e, n)

    def when(self, raw: Any, key: str, end_of_day: bool) -> datetime | None:
        if raw is None:
            return None
        if isinstance(raw, datetime):
            return raw if raw.tzinfo else raw.replace(tzinfo=timezone.utc)
        if isinstance(raw, str):
            try:
                raw = datetime.fromisoformat(raw.strip().replace("Z", "+00:00")) if "T" in raw \
                    else date.fromisoformat(raw.strip())
            except ValueError:
                raise self.fail(key, f"must be a date like 2020-01-31, not {raw!r}") from None
            return self.when(raw, key, end_of_day)
        if isinstance(raw, date):
            t = time(23, 59, 59, 999999) if end_of_day else time(0, 0)
            return datetime.combine(raw, t, tzinfo=timezone.utc)
        raise self.fail(key, f"must be a date like 2020-01-31, not {raw!r}")

    def cloud(self, raw: Any, key: str) -> float | None:
        if raw is None:
            return None
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 <= raw <= 100:
            raise self.fail(key, f"must be a percentage 0..100, not {raw!r}")
        return float(raw)

    def tiles(self, raw: Any, key: str) -> tuple[str, ...]:
        if raw is None:
            return ()
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(t, str) and t.strip() for t in raw):
            raise self.fail(key, "must be a list of tile ids like 31UFS")
        return tuple(t.strip().upper() for t in raw)


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
    checker = _Checker(where)
    values = checker.mapping(raw, SCHEMA, "")
    if overrides:
        over = checker.mapping(_nest(overrides, where), SCHEMA, "")
        values = _merge(values, over)
    if env.get("TERRAFS_LOG_LEVEL"):
        try:
            values.setdefault("log", {})["level"] = _level(env["TERRAFS_LOG_LEVEL"])
        except _Bad as e:
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
        refresh_token_file=_expand(DEFAULT_REFRESH_TOKEN, home),
        cache_dir=_expand(cache["dir"], home),
        cache_size=cache["size"],
        block_size=cache["block_size"],
        listing_ttl=cache["listing_ttl"],
        recent_listing_ttl=cache["recent_listing_ttl"],
        rate_limits=v["rate_limits"],
        rate_limit_state=(v["rate_limit_state"] if "://" in v["rate_limit_state"]  # [cluster] a Redis URL
                          else _expand(v["rate_limit_state"], home)),
        layout=v["layout"],
        collections=v["collections"],
        log_level=logv["level"],
        log_file=_expand(logv["file"], home),
        source=source,
    )


def _slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"
