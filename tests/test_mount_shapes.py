"""The archive's unusual path shapes through real mounts: both catalogues, both layouts.

Shapes (terrascope-api.md sections 7 and 10, served by the emulator): S2 NDVI's
product folder without "_10M"; LAI's 10 m and 20 m products sharing one folder
with same-named files in 10M/ and 20M/; two versions of one TOC acquisition on
one day; S1 coherence in the second acquisition's date folder; Sentinel-5P's
year/month folders; AgERA5's date folders without product folders; CGLS netCDF
versions side by side in one date folder; the DEM without dates; S1 sigma0 and
WorldCover with download URLs that are (not) a plain swap of the platform path.
"""
from __future__ import annotations

import fnmatch
import hashlib
from pathlib import Path

import pytest
import requests

from expected import archive as load_archive, folder_id, product_relpath, walk

SHAPES = ("terrascope-s2-ndvi-v2", "terrascope-s2-lai-v2", "terrascope-s2-toc-v2", "terrascope-s1-slc-coherence-v1",
          "terrascope-s5p-l3-co-td-v1", "agera5-v1", "cgls-fapar300-v1-global", "cop-dem-glo-30m-cog",
          "terrascope-s1-grd-sigma0-v1", "esa-worldcover-10m-2020-v1")
COMBOS = [(backend, layout) for backend in ("stac", "opensearch") for layout in ("default", "platform")]


def expected_paths(data_dir: Path, backend: str, layout: str) -> dict[str, int]:
    """Mount-relative path -> size of every file of the shape collections."""
    arc = load_archive(data_dir)
    out = {}
    for c in arc.collections:
        if c.stac_id not in SHAPES:
            continue
        for p in arc.products(c.stac_id):
            for f in p.files:
                if layout == "platform":
                    out[f.platform_path[len("/data/"):]] = f.size
                else:
                    folder, rel = product_relpath(f.platform_path)
                    out[f"{folder_id(c, backend)}/{p.datetime:%Y/%m/%d}/{folder}/{rel}"] = f.size
    return out


def shape_roots(mount: Path, data_dir: Path, backend: str, layout: str) -> list[Path]:
    """The folders of the mount that hold the shape collections."""
    arc = load_archive(data_dir)
    if layout == "default":
        return [mount / folder_id(c, backend) for c in arc.collections if c.stac_id in SHAPES]
    tops = set()
    for c in arc.collections:
        if c.stac_id in SHAPES:
            p = arc.products(c.stac_id)[0]
            tops.add("/".join(p.files[0].platform_path.split("/")[2:4]))  # MTDA/<platform folder>
    return [mount / t for t in sorted(tops)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("backend, layout", COMBOS)
def test_every_shape_file_at_its_path_with_its_size_and_nothing_extra(
        emulator, emulator_data, mount_factory, backend, layout):
    mount = mount_factory(emulator, catalogue=backend, layout=layout)
    expected = expected_paths(emulator_data, backend, layout)
    seen = {}
    for root in shape_roots(mount.path, emulator_data, backend, layout):
        assert root.is_dir(), f"{root.relative_to(mount.path)} is missing"
        seen.update({f"{root.relative_to(mount.path)}/{k}": v for k, v in walk(root).items()})
    missing = sorted(set(expected) - set(seen))
    extra = sorted(set(seen) - set(expected))
    assert missing == [], f"{len(missing)} files missing, e.g. {missing[:3]}"
    assert extra == [], f"{len(extra)} files that the catalogue does not list, e.g. {extra[:3]}"
    wrong = {p: (seen[p], size) for p, size in expected.items() if seen[p] != size}
    assert wrong == {}, f"sizes differ (mount, catalogue): {dict(list(wrong.items())[:3])}"
    # The WMS preview links (a query string: a rendering service) are no files, and no warning either.
    assert "cannot be made safe" not in mount.log_text()


@pytest.mark.parametrize("backend, layout", COMBOS)
def test_same_named_files_in_10m_and_20m_are_byte_exact_and_distinct(
        emulator, emulator_data, mount_factory, backend, layout):
    mount = mount_factory(emulator, catalogue=backend, layout=layout)
    lai = load_archive(emulator_data).products("terrascope-s2-lai-v2")
    folder = product_relpath(lai[0].files[0].platform_path)[0]
    base = (mount.path / lai[0].files[0].platform_path[len("/data/"):]).parent.parent if layout == "platform" \
        else mount.path / folder_id(load_archive(emulator_data).collection("terrascope-s2-lai-v2"), backend) \
        / f"{lai[0].datetime:%Y/%m/%d}" / folder
    assert sorted(p.name for p in base.iterdir()) == ["10M", "20M"]
    names10 = {p.name for p in (base / "10M").iterdir()}
    shared = sorted(names10 & {p.name for p in (base / "20M").iterdir()})
    assert any("SCENECLASSIFICATION" in n for n in shared) and any("QUICKLOOK" in n for n in shared), shared
    source = emulator_data / "small" / lai[0].files[0].platform_path[len("/data/MTDA/"):]
    source_base = source.parent.parent
    for name in shared:
        a, b = base / "10M" / name, base / "20M" / name
        assert sha256(a) == sha256(source_base / "10M" / name), f"10M/{name} differs from its source"
        assert sha256(b) == sha256(source_base / "20M" / name), f"20M/{name} differs from its source"
        assert sha256(a) != sha256(b), f"10M/{name} and 20M/{name} are the same bytes"


def catalogue_platform_paths(emulator, backend: str, collection) -> dict[str, int]:
    """Platform path -> size of every file the catalogue lists for a collection."""
    out = {}
    if backend == "stac":
        url, params = emulator.stac_url + "/search", {"collections": collection.stac_id, "limit": 1000}
        for item in requests.get(url, params=params, timeout=30).json()["features"]:
            for asset in item["assets"].values():
                local = (asset.get("alternate", {}).get("local") or asset.get("alternate", {}).get("MEP") or {})
                if local.get("href"):
                    out[local["href"].removeprefix("file://")] = asset.get("file:size")
        return out
    params = {"collection": collection.urn, "accessedFrom": "MEP", "count": 1000}
    for feature in requests.get(emulator.opensearch_url + "products", params=params, timeout=30).json()["features"]:
        for links in feature["properties"]["links"].values():
            for link in links:
                if link["href"].startswith("file://"):
                    out[link["href"][len("file://"):]] = link.get("length")
    return out


# (collection, a platform date folder below /data/, the glob run in it)
GLOBS = [
    ("terrascope-s2-toc-v2", "MTDA/TERRASCOPE_Sentinel2/TOC_V2/2020/02/15", "*/*.tif"),
    ("terrascope-s2-ndvi-v2", "MTDA/TERRASCOPE_Sentinel2/NDVI_V2/2020/01/01", "*/*NDVI*"),
    ("terrascope-s2-lai-v2", "MTDA/TERRASCOPE_Sentinel2/LAI_V2/2020/01/01", "*/*/*.tif"),
    ("terrascope-s1-slc-coherence-v1", "MTDA/TERRASCOPE_Sentinel1/SLC_COHERENCE/2020/01/09", "*/*_V?.tif"),
    ("terrascope-s5p-l3-co-td-v1", "MTDA/TERRASCOPE_Sentinel5P/L3_CO_TD_V1/2020/01", "*/*_CO_V100.tif"),
    ("agera5-v1", "MTDA/AgERA5/2020/20200101", "AgERA5_*_20200101.tif"),
    ("cgls-fapar300-v1-global", "MTDA/BIOPAR/FAPAR300_V1_GLOBAL/2020/20200110", "c_gls_FAPAR300-RT*.nc"),
    ("cop-dem-glo-30m-cog", "MTDA/DEM/COPERNICUS-DEM-30", "*/*_DEM.tif"),
]


@pytest.mark.parametrize("backend", ["stac", "opensearch"])
def test_a_glob_over_a_platform_date_folder_finds_what_the_catalogue_lists(
        emulator, emulator_data, mount_factory, backend):
    mount = mount_factory(emulator, catalogue=backend, layout="platform")
    arc = load_archive(emulator_data)
    for stac_id, folder, pattern in GLOBS:
        listed = catalogue_platform_paths(emulator, backend, arc.collection(stac_id))
        wanted = {p: size for p, size in listed.items()
                  if p.startswith(f"/data/{folder}/") and fnmatch.fnmatch(p[len(f"/data/{folder}/"):], pattern)
                  and p[len(f"/data/{folder}/"):].count("/") == pattern.count("/")}
        assert wanted, f"{stac_id}: the catalogue lists nothing for {folder}/{pattern}"
        found = {"/data/" + str(p.relative_to(mount.path)): p.stat().st_size
                 for p in (mount.path / folder).glob(pattern)}
        assert sorted(found) == sorted(wanted), f"{stac_id}: glob {folder}/{pattern}"
        assert all(found[p] == size for p, size in wanted.items() if size is not None), stac_id


@pytest.mark.parametrize("backend", ["stac", "opensearch"])
def test_shapes_read_byte_exact_in_the_default_layout(emulator, emulator_data, mount_factory, backend):
    """One file of each shape, read through the mount, equals the emulator's source file."""
    mount = mount_factory(emulator, catalogue=backend)
    arc = load_archive(emulator_data)
    for stac_id in SHAPES:
        c = arc.collection(stac_id)
        p = arc.products(stac_id)[-1]
        f = min(p.files, key=lambda f: f.size)
        folder, rel = product_relpath(f.platform_path)
        mounted = mount.path / folder_id(c, backend) / f"{p.datetime:%Y/%m/%d}" / folder / rel
        source = emulator_data / "small" / f.platform_path[len("/data/MTDA/"):]
        assert mounted.read_bytes() == source.read_bytes(), f"{stac_id}: {mounted.relative_to(mount.path)}"
