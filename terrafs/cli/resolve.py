"""Where a platform path (/data/MTDA/...), a file:// URL or a download URL lies under a mount.

The platform layout keeps platform paths as they are below the mount; a
download URL shares their tail (date folders, product folder, file) but not
their prefix, so its tail is looked for below the mount's prefix folders. In
the default layout a dated path is found by its date and product folder in
each collection folder (the date folder's listing is one catalogue query);
a product filed on the platform under another day than its own (S1
coherence: the second acquisition's) is found under the dates its folder's
name holds. A file found is checked against what the mount says of it (its
URL, its platform path) where the mount says it.

Must not: read file contents, or list more than the folders on the way.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from terrafs.mount.xattrs import XATTR_PREFIX

_DATED = re.compile(r"/(\d{4})/(\d{2})/(\d{2})/(.+)$")
_NAMED_DATE = re.compile(r"(?<!\d)((?:19|20)\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?!\d)")
# How deep a platform layout's collection prefix folders may go (MTDA/TERRASCOPE_Sentinel1/SLC_COHERENCE: 3).
PREFIX_DEPTH = 4


@dataclass(frozen=True)
class Target:
    path: str  # the path part: /data/... for a platform path, the URL's path for a download URL
    url: str | None  # the download URL, when the target is one


def parse_target(target: str) -> Target | None:
    """A platform path, file:// URL or http(s) URL, made a normalised path; None for anything else."""
    parts = urlsplit(target)
    if parts.scheme in ("http", "https") and parts.netloc:
        path = os.path.normpath(unquote(parts.path))
        return Target(path, target) if path.startswith("/") and path != "/" else None
    if parts.scheme == "file":
        target = unquote(parts.path)
    elif parts.scheme:
        return None
    path = os.path.normpath(target)
    return Target(path, None) if path.startswith("/data/") else None


def resolve(target: str, mount: Path, layout: str) -> Path | None:
    parsed = parse_target(target)
    if parsed is None:
        return None
    if layout == "platform":
        if parsed.url is None:
            candidate = mount / parsed.path[len("/data/"):]
            return candidate if candidate.exists() else None
        return _below_prefixes(parsed, mount)
    m = _DATED.search(parsed.path)
    if m is None:
        return None
    year, month, day, rest = m.groups()
    dates = [(year, month, day)]
    dates += [d for d in _NAMED_DATE.findall(rest.split("/")[0]) if d not in dates]
    collections = sorted(os.listdir(mount))
    for y, mo, d in dates:
        for collection in collections:
            candidate = mount / collection / y / mo / d / rest
            if candidate.exists() and _is(candidate, parsed):
                return candidate
    return None


def _below_prefixes(target: Target, mount: Path) -> Path | None:
    """A download URL in the platform layout: its tail below one of the mount's prefix folders."""
    parts = target.path.strip("/").split("/")
    tails = [parts[i:] for i in range(len(parts) - 1)]  # down to a product folder and its file
    folders = [mount]
    for _ in range(PREFIX_DEPTH + 1):
        deeper = []
        for folder in folders:
            for tail in tails:
                candidate = folder.joinpath(*tail)
                if candidate.is_file() and _is(candidate, target):
                    return candidate
            try:
                names = sorted(os.listdir(folder))
            except OSError:
                continue
            deeper += [folder / n for n in names if not n.isdigit() and (folder / n).is_dir()]
        folders = deeper
    return None


def _is(candidate: Path, target: Target) -> bool:
    """Whether the mount's own record of this file agrees with the target (True when it keeps none)."""
    name, wanted = ("url", target.url) if target.url is not None else ("platform_path", target.path)
    try:
        said = os.getxattr(candidate, XATTR_PREFIX + name).decode(errors="replace")
    except OSError:
        return target.url is None  # every file of a mount has its URL; not every file a platform path
    return said == wanted
