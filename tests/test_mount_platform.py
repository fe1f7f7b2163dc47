"""The platform layout: files at their /data/MTDA/... paths (issue: platform paths)."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from expected import platform_tree, walk


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def opensearch_platform_paths(base_url: str) -> dict[str, int]:
    """Platform paths and lengths as the OpenSearch catalogue gives them (accessedFrom=MEP)."""
    out = {}
    r = requests.get(f"{base_url}/catalogue/products",
                     params={"collection": "urn:eop:VITO:TERRASCOPE_S2_TOC_V2", "accessedFrom": "MEP",
                             "start": "2020-01-01", "end": "2020-01-31", "count": 100}, timeout=30)
    r.raise_for_status()
    for feature in r.json()["features"]:
        for group in ("data", "related", "previews", "alternates"):
            for link in feature["properties"]["links"].get(group, []):
                if link["href"].startswith("file:///data/") and "length" in link:
                    out[link["href"][len("file://"):]] = link["length"]
    return out


def stac_platform_paths(base_url: str) -> dict[str, int]:
    out = {}
    r = requests.get(f"{base_url}/stac/search",
                     params={"collections": "terrascope-s1-grd-sigma0-v1", "limit": 100}, timeout=30)
    r.raise_for_status()
    for item in r.json()["features"]:
        for asset in item["assets"].values():
            local = asset.get("alternate", {}).get("local", {}).get("href")
            if local and "file:size" in asset:
                out[local[len("file://"):]] = asset["file:size"]
    return out


@pytest.mark.parametrize("backend", ["stac", "opensearch"])
def test_platform_paths_from_the_catalogue_open_with_exact_size_and_bytes(
        emulator, emulator_data, mount_factory, backend):
    mount = mount_factory(emulator, catalogue=backend, layout="platform")
    paths = opensearch_platform_paths(emulator.base_url)
    paths.update(stac_platform_paths(emulator.base_url))
    assert len(paths) > 20
    for platform, size in sorted(paths.items()):
        mounted = mount.path / platform[len("/data/"):]
        assert mounted.stat().st_size == size, platform
    for platform in sorted(paths)[:10]:
        mounted = mount.path / platform[len("/data/"):]
        source = emulator_data / "small" / platform[len("/data/MTDA/"):]
        assert sha256(mounted) == sha256(source), platform


@pytest.mark.parametrize("backend", ["stac", "opensearch"])
def test_whole_platform_tree_matches_the_catalogue(emulator, emulator_data, mount_factory, backend):
    mount = mount_factory(emulator, catalogue=backend, layout="platform")
    expected = platform_tree(emulator_data, backend)
    seen = walk(mount.path)
    assert sorted(set(expected) ^ set(seen))[:5] == []
    assert {p: seen[p] for p in expected} == expected


def test_a_script_with_a_hard_coded_data_path_runs_unchanged(emulator, emulator_data, mount_factory, tmp_path):
    mount = mount_factory(emulator, layout="platform")
    target = next((mount.path / "MTDA/TERRASCOPE_Sentinel2/TOC_V2/2020/01/01").rglob("*B04_10M*.tif"))
    platform = "/data/" + str(target.relative_to(mount.path))
    script = tmp_path / "script.py"
    script.write_text(
        "import rasterio\n"
        f"with rasterio.open({platform!r}) as ds:\n"
        "    band = ds.read(1)\n"
        "    print(ds.width, ds.height, int(band.sum()))\n"
    )
    source = emulator_data / "small" / platform[len("/data/MTDA/"):]
    expected = subprocess.run([sys.executable, "-c",
                               f"import rasterio\nwith rasterio.open({str(source)!r}) as ds:\n"
                               "    b = ds.read(1); print(ds.width, ds.height, int(b.sum()))"],
                              capture_output=True, text=True, check=True).stdout
    made_data = not os.path.exists("/data")
    try:
        if made_data:
            os.mkdir("/data")
        # A private mount namespace: /data points at the mount for this one process only.
        run = subprocess.run(["unshare", "-m", "sh", "-c",
                              f'mount --bind "{mount.path}" /data && exec "{sys.executable}" "{script}"'],
                             capture_output=True, text=True, timeout=120)
    finally:
        if made_data:
            os.rmdir("/data")
    assert run.returncode == 0, run.stderr
    assert run.stdout == expected


def test_a_date_folder_costs_no_more_queries_than_in_the_default_layout(emulator, mount_factory, tmp_path):
    default = mount_factory(emulator, name="default", cache_dir=tmp_path / "c1")
    platform = mount_factory(emulator, name="platform", layout="platform", cache_dir=tmp_path / "c2")
    os.listdir(platform.path / "MTDA/TERRASCOPE_Sentinel2")  # learning the prefixes happens first
    emulator.mark()
    default_names = os.listdir(default.path / "terrascope-s2-toc-v2/2020/02/15")
    default_cost = len([r for r in emulator.requests() if r["kind"] == "stac"])
    emulator.mark()
    platform_names = os.listdir(platform.path / "MTDA/TERRASCOPE_Sentinel2/TOC_V2/2020/02/15")
    platform_cost = len([r for r in emulator.requests() if r["kind"] == "stac"])
    assert sorted(platform_names) == sorted(default_names)
    assert platform_cost <= default_cost


def test_both_layouts_at_once_share_the_cache(emulator, mount_factory, tmp_path):
    cache = tmp_path / "cache"
    default = mount_factory(emulator, name="default", cache_dir=cache)
    platform = mount_factory(emulator, name="platform", layout="platform", cache_dir=cache)
    f = next((default.path / "terrascope-s2-toc-v2/2020/01/01").rglob("*B02_10M*.tif"))
    digest = sha256(f)
    other = platform.path / os.getxattr(f, "user.terrafs.platform_path").decode()[len("/data/"):]
    # Mounts share blocks through the disk cache, which the reader writes behind the reads.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not re.search(r"blocks:\s+[1-9]", cache_stats(default.config)):
        time.sleep(0.2)
    emulator.mark()
    assert sha256(other) == digest
    assert [r for r in emulator.requests("download") if r["method"] == "GET"] == []


def cache_stats(config) -> str:
    return subprocess.run([sys.executable, "-m", "terrafs", "cache", "stats", "--config", str(config)],
                          capture_output=True, text=True, timeout=60).stdout


@pytest.mark.parametrize("layout", ["default", "platform"])
def test_resolve_prints_the_path_under_the_mount(emulator, mount_factory, layout):
    mount = mount_factory(emulator, layout=layout)
    urls = [u for u in opensearch_platform_paths(emulator.base_url)]
    platform = sorted(urls)[0]
    for target in (platform, "file://" + platform):
        out = subprocess.run([sys.executable, "-m", "terrafs", "resolve", "--mount", str(mount.path), target],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        resolved = Path(out.stdout.strip())
        assert resolved.is_file() and str(resolved).startswith(str(mount.path))
        assert os.getxattr(resolved, "user.terrafs.platform_path").decode() == platform
    bad = subprocess.run([sys.executable, "-m", "terrafs", "resolve", "--mount", str(mount.path), "/etc/passwd"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "not under" in bad.stderr


@pytest.mark.parametrize("layout", ["default", "platform"])
def test_resolve_finds_a_coherence_file_by_platform_path_and_by_download_url(emulator, mount_factory, layout):
    """S1 coherence is filed on the platform under its second acquisition's day, in the
    default layout under its first: resolve finds it all the same, and from its download URL."""
    mount = mount_factory(emulator, layout=layout)
    row = emulator.files(collection="terrascope-s1-slc-coherence-v1", limit=1)[0]
    for target in (row["platform_path"], "file://" + row["platform_path"], row["url"]):
        out = subprocess.run([sys.executable, "-m", "terrafs", "resolve", "--mount", str(mount.path), target],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{target}: {out.stderr}"
        resolved = Path(out.stdout.strip())
        assert resolved.is_file() and str(resolved).startswith(str(mount.path)), out.stdout
        assert os.getxattr(resolved, "user.terrafs.url").decode() == row["url"], f"{target} -> {resolved}"
    elsewhere = row["url"].replace(row["name"], "no-such-file.tif")
    out = subprocess.run([sys.executable, "-m", "terrafs", "resolve", "--mount", str(mount.path), elsewhere],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "not under" in out.stderr, out.stdout
