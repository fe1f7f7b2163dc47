"""Where a platform path (/data/MTDA/...) or a file:// URL lies under a mount.

The platform layout keeps platform paths as they are below the mount. In the
default layout a dated platform path is found by its date and product folder
in each collection folder (the date folder's listing is one catalogue query).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

_DATED = re.compile(r"/(\d{4})/(\d{2})/(\d{2})/(.+)$")


def platform_path(target: str) -> str | None:
    if target.startswith("file:"):
        target = unquote(urlparse(target).path)
    target = os.path.normpath(target)
    if not target.startswith("/data/"):
        return None
    return target


def resolve(target: str, mount: Path, layout: str) -> Path | None:
    path = platform_path(target)
    if path is None:
        return None
    if layout == "platform":
        candidate = mount / path[len("/data/"):]
        return candidate if candidate.exists() else None
    m = _DATED.search(path)
    if m is None:
        return None
    year, month, day, rest = m.groups()
    for collection in sorted(os.listdir(mount)):
        candidate = mount / collection / year / month / day / rest
        if candidate.exists():
            return candidate
    return None
