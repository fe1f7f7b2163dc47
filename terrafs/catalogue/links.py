"""Links of a catalogue record: which hrefs are files, their paths, and platform paths.

Total functions over hrefs from the network: an href that does not parse, carries control,
bidi or space characters, or names another scheme is no file (False / None), never an
exception. Plain printable-ASCII URLs are split by a regular expression that gives what
urllib's urlsplit gives (a month of items holds some 60 000 hrefs; urlsplit was most of the
cost of parsing them); anything else goes through urlsplit.
Must not: know STAC or OpenSearch field names, or build products (parse.py does).
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from terrafs.text import UNSAFE_CHARS

__all__ = ["Link", "href_path", "http_url", "local_path", "place"]

_HTTP_SCHEMES = ("http", "https")
# Resolution sub-folders between a product folder and its files (FAPAR/LAI: 10M/, 20M/).
_RESOLUTION_DIR = re.compile(r"^\d+M$", re.IGNORECASE)
# Printable ASCII without space or brackets (IPv6 hosts), less what ends each part of a URL.
_NET, _PATH, _QUERY, _FRAG = r'[!"$-.0->@-Z\\^-~]', r'[!"$->@-Z\\^-~]', r'[!"$-Z\\^-~]', r'[!-Z\\^-~]'
_PLAIN_HTTP = re.compile(rf"(?i:https?)://{_NET}*({_PATH}*)(\?{_QUERY}*)?(?:#{_FRAG}*)?", re.ASCII)
_PLAIN_FILE = re.compile(rf"(?i:file):///{_PATH}*", re.ASCII)


def http_url(href: Any) -> bool:
    """An http(s) URL that parses and holds no control, bidi or space characters (such an
    href is no file: it would only carry a forged line into a log)."""
    if not isinstance(href, str) or UNSAFE_CHARS.search(href) or " " in href:
        return False
    try:
        return urlsplit(href).scheme.lower() in _HTTP_SCHEMES
    except ValueError:
        return False


def local_path(href: Any) -> str | None:
    """A platform path from "file:///data/..." or a bare "/data/..."; else None."""
    if not isinstance(href, str) or not href:
        return None
    if _PLAIN_FILE.fullmatch(href):
        return _platform(unquote(href[7:]) if "%" in href else href[7:])
    try:
        parts = urlsplit(href)
    except ValueError:
        return None
    if parts.scheme.lower() == "file":
        path = unquote(parts.path)
    elif parts.scheme == "" and href.startswith("/"):
        path = href
    else:
        return None
    return _platform(path)


def _platform(path: str) -> str | None:
    path = posixpath.normpath(path)
    return path if path.startswith("/") and "\x00" not in path else None


def _http_parts(href: str) -> tuple[bool, str, bool]:
    """(http_url(href), href_path(href), whether it has a query string): one parse."""
    m = _PLAIN_HTTP.fullmatch(href)
    if m is not None:
        path, query = m.group(1), m.group(2)
        return True, unquote(path) if "%" in path else path, bool(query and len(query) > 1)
    if not http_url(href):
        return False, href_path(href), False
    return True, href_path(href), bool(urlsplit(href).query)


def href_path(href: str) -> str:
    """The URL-unquoted path of an href ("" for one that does not parse)."""
    try:
        return unquote(urlsplit(href).path)
    except ValueError:
        return ""


def place(path: str) -> tuple[str | None, str | None]:
    """(product folder, resolution sub-folder) of a file at `path`.

    ".../<PROD>/10M/<file>" -> ("<PROD>", "10M"); ".../<PROD>/<file>" -> ("<PROD>", None).
    """
    parts = [p for p in path.split("/") if p]
    if len(parts) < 2:
        return None, None
    parent = parts[-2]
    if _RESOLUTION_DIR.match(parent) and len(parts) >= 3:
        return parts[-3], parent.upper()
    return parent, None


@dataclass(frozen=True)
class Link:
    """One file of a record before it becomes a ProductFile (any scheme)."""

    href: str  # as given: http(s), file:// or a bare platform path
    local_path: str | None = None
    size: int | None = None
    type: str | None = None
    role: str | None = None
    title: str | None = None
    is_http: bool = field(init=False, repr=False, compare=False)
    path: str = field(init=False, repr=False, compare=False)  # href_path(href)
    has_query: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        is_http, path, has_query = _http_parts(self.href)
        object.__setattr__(self, "is_http", is_http)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "has_query", has_query)

    @property
    def basename(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))
