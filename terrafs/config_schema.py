"""The rules of the configuration: what each key may hold, checked one key at a time.

config.py reads the YAML file, the overrides and the environment into one raw
mapping and gives it to `Checker.mapping` with `SCHEMA`; every value is
checked and converted here (sizes, hosts, dates, boxes), and every mistake is a
ConfigError naming the file and the dotted key. Must not: read files or the
environment, or echo a password in a message.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from terrafs.catalogue.model import Filter
from terrafs.errors import ConfigError
from terrafs.text import Origin, parse_origin, parse_size

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class CollectionSelection:
    id: str  # folder name: STAC id or the last part of the OpenSearch URN
    filter: Filter


class BadValue(Exception):
    """A value is wrong; the caller adds the file and key."""


def _choice(*allowed: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if not isinstance(v, str) or v.lower() not in allowed:
            raise BadValue(f"must be one of {', '.join(allowed)}, not {v!r}")
        return v.lower()
    return check


def _url(v: Any) -> str:
    if not isinstance(v, str) or urlsplit(v).scheme not in ("http", "https") or not urlsplit(v).hostname:
        raise BadValue(f"must be an http(s) URL, not {v!r}")
    return v


def _string(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise BadValue("must be a non-empty string")
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
        raise BadValue("must be a non-empty string")  # never echo the value
    return v


def _size(v: Any) -> int:
    try:
        return parse_size(v)
    except ValueError as e:
        raise BadValue(str(e)) from None


def _positive_size(v: Any) -> int:
    n = _size(v)
    if n <= 0:
        raise BadValue("must be larger than 0")
    return n


def _hosts(v: Any) -> frozenset[Origin]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v:
        raise BadValue("must be a list of hosts like services.terrascope.be (or http://host:port)")
    try:
        return frozenset(parse_origin(h) for h in v)
    except ValueError as e:
        raise BadValue(str(e)) from None


def _optional_pause(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 86400:
        raise BadValue(f"must be a number of seconds > 0 and < 86400, not {v!r}")
    return float(v)


def _count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise BadValue(f"must be a whole number >= 1, not {v!r}")
    return v


def _seconds(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise BadValue(f"must be a number of seconds >= 0, not {v!r}")
    return float(v)


def _path(v: Any) -> str:
    if not isinstance(v, (str, Path)) or not str(v):
        raise BadValue("must be a path")
    return str(v)


def _state(v: Any) -> str:
    # [cluster] A redis(s):// URL shares the budget through Redis (ratelimit_redis.py); the
    # value may hold a password, so it is never echoed.
    if isinstance(v, str) and "://" in v:
        if not _is_redis_url(v):
            raise BadValue("must be a file path or a redis://[:PASSWORD@]HOST[:PORT][/DB] URL (rediss:// for TLS)")
        return v
    return _path(v)


def _is_redis_url(v: str) -> bool:
    parts = urlsplit(v)
    return parts.scheme in ("redis", "rediss") and bool(parts.hostname) and bool(re.fullmatch(r"/?\d*", parts.path))


def _shared(v: Any) -> str | None:
    # [cluster] The shared block tier (read/sharedtier.py); may hold a password: never echoed.
    if v is None:
        return None
    if not isinstance(v, str) or not _is_redis_url(v):
        raise BadValue("must be a redis://[:PASSWORD@]HOST[:PORT][/DB] URL (rediss:// for TLS)")
    return v


def check_level(v: Any) -> str:
    if not isinstance(v, str) or v.upper() not in LOG_LEVELS:
        raise BadValue(f"must be one of {', '.join(LOG_LEVELS)}, not {v!r}")
    return v.upper()


def _listen(v: Any) -> str | None:
    from terrafs.text import split_listen

    if v is None:
        return None
    try:
        split_listen(str(v))
    except ValueError:
        raise BadValue(f"must be HOST:PORT (like 127.0.0.1:9567), not {v!r}") from None
    return str(v)


SCHEMA: dict[str, Any] = {
    "catalogue": _choice("stac", "opensearch"),
    "endpoints": {"stac": _url, "opensearch": _url, "token": _url},
    "auth": {"method": _choice("bearer", "basic"), "client_id": _string,
             "username": _optional_string, "password": _secret, "hosts": _hosts},
    "cache": {"dir": _path, "size": _positive_size, "listing_ttl": _seconds,
              "recent_listing_ttl": _seconds, "block_size": _positive_size, "listing_memory": _positive_size,
              "shared": _shared, "shared_ttl": _seconds, "shared_stream_max": _size, "shared_wait": _seconds},
    "rate_limits": "rate_limits",
    "rate_limit_state": _state,
    "rate_limit_max_pause": _optional_pause,
    "catalogue_limits": {"max_pages": _count, "max_response_size": _positive_size},
    "catalogue_fields": _choice("auto", "off"),
    "retries": {"attempts": _count, "backoff": _seconds, "max_time": _seconds},
    "layout": _choice("default", "platform"),
    "collections": "collections",
    "log": {"level": check_level, "file": _path},
    "metrics": {"listen": _listen},
}
_WINDOW_KEYS = ("requests", "seconds")
_SELECTION_KEYS = ("id", "bbox", "start", "end", "cloud_cover", "tile_ids")


class Checker:
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
                except BadValue as e:
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
