"""What the mount should show, computed from the emulator's own archive."""
from __future__ import annotations

import re
from pathlib import Path

from terrafs.emulator.data import build_archive

_RES = re.compile(r"^\d+M$")


def archive(data_dir: Path, bulk: int = 0):
    return build_archive(data_dir, profile="small", bulk_products=bulk)


def folder_id(collection, backend: str) -> str:
    return collection.stac_id if backend == "stac" else collection.urn.rsplit(":", 1)[1]


def product_relpath(platform_path: str) -> tuple[str, str]:
    """(product folder, path inside it) of a platform path."""
    parts = platform_path.split("/")
    if _RES.match(parts[-2]):
        return parts[-3], f"{parts[-2]}/{parts[-1]}"
    return parts[-2], parts[-1]


def default_tree(data_dir: Path, backend: str, collections: set[str] | None = None, bulk: int = 0) -> dict[str, int]:
    """Mount-relative path -> size for the default layout."""
    arc = archive(data_dir, bulk)
    out: dict[str, int] = {}
    for c in arc.collections:
        if backend == "stac" and not c.in_stac:
            continue
        if collections is not None and c.stac_id not in collections:
            continue
        for p in arc.products(c.stac_id):
            d = p.datetime
            for f in p.files:
                folder, rel = product_relpath(f.platform_path)
                path = f"{folder_id(c, backend)}/{d:%Y/%m/%d}/{folder}/{rel}"
                out[path] = f.size
    return out


def platform_tree(data_dir: Path, backend: str) -> dict[str, int]:
    """Mount-relative path -> size for the platform layout (the mount stands for /data)."""
    arc = archive(data_dir)
    out: dict[str, int] = {}
    for c in arc.collections:
        if backend == "stac" and not c.in_stac:
            continue
        for p in arc.products(c.stac_id):
            for f in p.files:
                out[f.platform_path[len("/data/"):]] = f.size
    return out


def walk(root: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for path in root.rglob("*"):
        if path.is_file():
            out[str(path.relative_to(root))] = path.stat().st_size
    return out
