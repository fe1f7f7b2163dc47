"""Helpers shared by the mount and client tests: source files, hashes, request counts."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

TIMEOUT = 120


def source_of(emulator_data: Path, mounted: Path) -> Path:
    platform = os.getxattr(mounted, "user.terrafs.platform_path").decode()
    return emulator_data / "small" / platform[len("/data/MTDA/"):]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def band(mount, name="B04_10M", day="2020/01/01") -> Path:
    return next((mount.path / "terrascope-s2-toc-v2" / day).rglob(f"*{name}*.tif"))


def source_copy(emulator_data: Path, mounted: Path, dest_dir: Path) -> Path:
    """A private copy of the source of a mounted file, under the same name."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / mounted.name
    shutil.copyfile(source_of(emulator_data, mounted), dest)
    return dest


def run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT,
                         env=None if env is None else {**os.environ, **env})
    assert out.returncode == 0, f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}"
    return out


def neutral(text: str, *paths: Path) -> str:
    """Output with every given directory replaced by one placeholder."""
    for p in sorted({str(x) for x in paths}, key=len, reverse=True):
        text = text.replace(p, "<DIR>")
    return text


def log_mark(emulator) -> int:
    """Where the request log stands now. Unlike emulator.reset(), this keeps the
    mount's token alive, so the counts after it hold no 401-and-retry."""
    return len(emulator.requests())


def downloads(emulator, mark: int = 0) -> list[dict]:
    """Download GETs and HEADs logged since mark."""
    return [r for r in emulator.requests()[mark:] if r["kind"] == "download" and r["method"] in ("GET", "HEAD")]


def report(what: str, emulator, mark: int = 0) -> list[dict]:
    reqs = downloads(emulator, mark)
    summary = [(r["method"], r["path"].rsplit("/", 1)[-1], r["range"], r["bytes"]) for r in reqs]
    print(f"client-requests: {what}: {len(reqs)} requests, {sum(r['bytes'] for r in reqs)} bytes: {summary}")
    return reqs


def fault_test_files(emulator_factory, emulator_data: Path, mount_factory):
    """A fresh emulator without its own limits, a mount of it, and (mounted, source) pairs of the
    layout test files and January 2020's S2 TOC files, each stat'ed once (the listing comes first)."""
    emu = emulator_factory(["--rate-limit", "off"])
    rows = emu.files(limit=1000, collection="terrascope-layouts-test")
    rows += [r for r in emu.files(limit=1000, collection="terrascope-s2-toc-v2") if "/2020/01/" in r["default_path"]]
    assert len(rows) >= 30, f"only {len(rows)} files to read"
    m = mount_factory(emu, rate_limits=[{"requests": 100000, "seconds": 1}])
    small = emulator_data / "small"
    paths = [(m.path / r["default_path"], small / r["platform_path"].removeprefix("/data/MTDA/")) for r in rows]
    for p, _ in paths:
        p.stat()
    return emu, m, paths
