"""Small parsers and formatters of untrusted text, shared by config, catalogue and http.

One place for each: sizes ("20GiB", a catalogue's "length"), URLs shown in
messages (no user info, cut short, no control characters), credentials taken
out of a URL, and any outside string made safe for one log line.
Must not: log, or keep state.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MAX_SIZE = 2**63 - 1  # off_t: a larger size cannot be a file's
_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")
# C0 and C1 controls, DEL, and the bidi embeddings/overrides/isolates and marks
# that make a line (or a file name) read differently from what it holds.
UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_MAX_SHOWN = 300
# scheme "://" then user info up to the last "@" before the path, query or fragment.
_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#\s]*@")


class SizeTooLarge(ValueError):
    """A size beyond 2^63 - 1: no file can have it."""


def parse_size(value: Any) -> int:
    """Bytes from 1048576, 1048576.0, "1048576", "1MiB", "1.5 GB" (KB=1000, KiB=1024).

    Raises ValueError for anything else or a negative size, SizeTooLarge beyond 2^63 - 1.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, float):
        if not (value >= 0 and value.is_integer()):
            raise ValueError(f"not a size: {value!r}")
        value = int(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"not a size: {value!r} (negative)")
        if value > MAX_SIZE:
            raise SizeTooLarge(f"not a size: {value!r} (more than 2^63 - 1)")
        return value
    m = _SIZE.match(value) if isinstance(value, str) else None
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {shown(value)} (use bytes or a unit: KiB, MiB, GiB, KB, MB, GB)")
    number, unit = m.group(1), _UNITS[m.group(2).lower()]
    # Whole numbers stay exact (no float rounding of a 2^60 byte count).
    return parse_size(int(number) * unit if number.isdigit() else float(number) * unit // 1)


Origin = tuple[str, str, int]  # scheme, lower-case host, port
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> Origin | None:
    """(scheme, host, port) of an http(s) URL; None for anything else or a malformed one."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port


def parse_origin(entry: str) -> Origin:
    """A trusted origin from "host", "host:port" (https) or "http(s)://host[:port]".

    Plain http only where the entry names it. Raises ValueError otherwise.
    """
    text = entry.strip() if isinstance(entry, str) else ""
    found = origin_of(text if "://" in text else "https://" + text)
    tail = text.split("://", 1)[-1]
    if found is None or "@" in tail or "/" in tail.rstrip("/"):
        raise ValueError(f"not a host, host:port or http(s)://host[:port]: {shown(entry)}")
    return found


def strip_userinfo(text: str) -> str:
    """`text` without "user:password@" in any URL in it (the rest exactly as given).

    Total: a URL that urlsplit would refuse ("http://u:p@[broken") loses its user
    info too. Like urlsplit, the user info ends at the authority's last "@".
    """
    return _USERINFO.sub(r"\1", text) if "@" in text else text


def redact_url(url: str) -> str:
    """A URL for a message or a log line: no user info, no control characters, cut short."""
    return shown(strip_userinfo(url))


def shown(value: Any, limit: int = _MAX_SHOWN) -> str:
    """Any outside value as text for one log line: controls and bidi characters escaped, cut short."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return UNSAFE_CHARS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ContentRange:
    first: int
    last: int  # inclusive, as on the wire
    total: int | None  # None for "*"


def parse_content_range(value: str | None) -> ContentRange | None:
    """Parse 'bytes first-last/total' (total may be '*'); None when absent or malformed."""
    if not value:
        return None
    m = _CONTENT_RANGE.match(value)
    if not m:
        return None
    first, last = int(m.group(1)), int(m.group(2))
    if last < first:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    if total is not None and last >= total:
        return None
    return ContentRange(first, last, total)


def split_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:9567' or '[::1]:9567' -> (host, port); ValueError when malformed."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"not HOST:PORT: {listen!r}")
    return host, int(port)
