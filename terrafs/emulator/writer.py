"""The emulator's archive files on disk: real GeoTIFFs (cloud-optimized, deflate, overviews, or
a benchmark layout of layouts.py), netCDF and text files, each written atomically, and a marker
that keeps a data directory in step with the plan file by file.

ensure_files() writes what is missing or changed and removes what the plan no longer has;
read_disk() serves a byte range. It must not plan products, serve HTTP, know about STAC or
OpenSearch JSON, or import anything from the client side of terrafs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from terrafs.emulator import layouts, shapes
from terrafs.emulator.plan import PlannedFile, PlannedProduct, RasterSpec

log = logging.getLogger(__name__)

# Bump when the planned content changes, so old data directories are rebuilt.
DATA_VERSION = 2
COG_BLOCK = 256


def _pixels(spec: RasterSpec):
    """A smooth gradient plus noise: compressible, but not trivially."""
    import numpy as np

    rng = np.random.default_rng(spec.seed)
    h, w = spec.height, spec.width
    phase = (spec.seed % 1000) / 100.0
    if spec.dtype == "uint8":
        lo, amp, noise = 10, 200, 12
    elif spec.dtype == "float32":
        lo, amp, noise = -25, 20, 2
    else:
        lo, amp, noise = 200, 6000, 60
    out = np.empty((spec.count, h, w), dtype=spec.dtype)
    xx = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    rows = 1024  # fill in strips so the large profile does not need float copies of the whole band
    for b in range(spec.count):
        for r0 in range(0, h, rows):
            yy = np.linspace(r0 / h, min(h, r0 + rows) / h, min(rows, h - r0), endpoint=False, dtype=np.float32)[:, None]
            smooth = 0.45 * xx + 0.35 * yy + 0.2 * (np.sin(xx * 9.0 + phase + b) * np.cos(yy * 7.0 - phase)) * 0.5 + 0.1
            vals = lo + amp * smooth + rng.normal(0.0, noise, size=(yy.shape[0], w)).astype(np.float32)
            if spec.dtype != "float32":
                info = np.iinfo(spec.dtype)
                top = info.max - 1 if spec.nodata is None else min(info.max, spec.nodata) - 1
                vals = np.clip(vals, info.min, top)
            out[b, r0:r0 + yy.shape[0], :] = vals.astype(spec.dtype)
    return out


def write_raster(path: Path, spec: RasterSpec) -> None:
    import rasterio
    from affine import Affine

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    profile = dict(width=spec.width, height=spec.height, count=spec.count, dtype=spec.dtype,
                   crs=spec.crs, transform=Affine.from_gdal(*spec.transform), num_threads="ALL_CPUS")
    if spec.layout is None:
        profile.update(driver="COG", compress="DEFLATE", blocksize=COG_BLOCK, overview_resampling="average")
    else:
        profile.update(layouts.creation_options(spec))
    if spec.nodata is not None:
        profile["nodata"] = spec.nodata
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(_pixels(spec) if spec.layout is None else layouts.pixels(spec))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_disk(path: str, start: int, length: int) -> bytes:
    if length <= 0:
        return b""
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(length)


def _content_key(pf: PlannedFile) -> str:
    """A digest of everything that decides a planned file's bytes (with DATA_VERSION for the writers)."""
    what = repr((DATA_VERSION, pf.raster, pf.grid, pf.text))
    return hashlib.sha256(what.encode()).hexdigest()[:16]


def ensure_files(root: Path, planned: list[PlannedProduct]) -> dict[str, int]:
    """Write the files whose planned content is missing or changed (each atomically), remove
    files that the plan no longer has, and return rel path -> size.

    The marker records each file's content key and size: a directory written by another
    version of the plan is brought up to date file by file, and never serves a file that the
    catalogue does not list or one whose bytes the plan now decides otherwise."""
    marker = root / ".complete.json"
    wanted = {pf.rel: pf for pp in planned for pf in pp.files}
    try:
        done = json.loads(marker.read_text())
        if not isinstance(done, dict) or done.get("version") != DATA_VERSION:
            done = {}
    except (OSError, ValueError):
        done = {}
    keys = {rel: _content_key(pf) for rel, pf in wanted.items()}
    old_keys = done.get("keys") if isinstance(done.get("keys"), dict) else {}
    old_sizes = done.get("sizes") if isinstance(done.get("sizes"), dict) else {}
    sizes: dict[str, int] = {}
    wrote = False
    for rel, pf in wanted.items():
        path = root / rel
        if old_keys.get(rel) == keys[rel] and rel in old_sizes and path.is_file():
            sizes[rel] = int(old_sizes[rel])
            continue
        if not wrote:
            log.info("writing emulator archive files into %s", root)
            wrote = True
        if pf.raster is not None:
            write_raster(path, pf.raster)
        elif pf.grid is not None:
            _write_bytes(path, shapes.netcdf_bytes(pf.grid))
        else:
            _write_bytes(path, (pf.text or "").encode())
        sizes[rel] = path.stat().st_size
    removed = _remove_unplanned(root, set(wanted))
    if wrote or removed or old_keys != keys:
        tmp = marker.with_name(f".complete.json.tmp{os.getpid()}")
        tmp.write_text(json.dumps({"version": DATA_VERSION, "keys": keys, "sizes": sizes}, sort_keys=True))
        os.replace(tmp, marker)
    return sizes


def _remove_unplanned(root: Path, wanted: set[str]) -> int:
    """Remove files below root that the plan does not have (left by an older plan), except
    the directory's own dot files (marker, lock); return how many."""
    removed = 0
    for path in root.rglob("*"):
        if path.name.startswith(".") and path.parent == root:
            continue
        if path.is_file() and not path.is_symlink() and path.relative_to(root).as_posix() not in wanted:
            path.unlink()
            removed += 1
    if removed:
        log.info("removed %d files that the archive plan no longer has from %s", removed, root)
    return removed
