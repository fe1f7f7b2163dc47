"""Listings that ask for what the folder shows, through a real FUSE mount (issue 19).

The tree must be the same whichever way it is asked for: with the STAC fields
extension and without it (off in the config, or a server without it), in both
layouts; a day's folder costs that day's query, a walk over a month at most a
few day queries and the month's pages.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from expected import default_tree, platform_tree, walk


def tree_with_xattrs(root: Path) -> dict[str, tuple]:
    """Every path below `root`: size (files), product id and the record's id (product folders and files)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            attrs = os.listxattr(p)
            pid = os.getxattr(p, "user.terrafs.product_id").decode() if "user.terrafs.product_id" in attrs else None
            record = json.loads(os.getxattr(p, "user.terrafs.record")) if pid else None
            url = os.getxattr(p, "user.terrafs.url").decode() if "user.terrafs.url" in attrs else None
            plat = (os.getxattr(p, "user.terrafs.platform_path").decode()
                    if "user.terrafs.platform_path" in attrs else None)
            size = p.stat().st_size if name in filenames else None
            out[rel] = (size, pid, record.get("id") if record else None, url, plat, sorted(attrs))
    return out


def searches(emulator) -> list[dict]:
    return [r for r in emulator.requests("stac") if r["path"].endswith("/search") or "/items" in r["path"]]


@pytest.mark.parametrize("layout", ["default", "platform"])
def test_the_tree_is_the_same_with_and_without_the_fields_extension(emulator, emulator_data, mount_factory,
                                                                    tmp_path, layout):
    expected = (default_tree if layout == "default" else platform_tree)(emulator_data, "stac")
    trees = {}
    for fields, server in (("auto", True), ("off", True), ("auto", False)):
        emulator.set(stac_fields=server)
        name = f"{layout}-{fields}-{server}"
        mount = mount_factory(emulator, layout=layout, catalogue_fields=fields, name=name,
                              cache_dir=tmp_path / name)
        seen = walk(mount.path)
        assert seen == expected, f"fields {fields}, server fields {server}: the files differ"
        trees[(fields, server)] = tree_with_xattrs(mount.path)
        mount.stop()
    first = trees[("auto", True)]
    for key, tree in trees.items():
        assert tree == first, f"{key}: {[p for p in first if tree.get(p) != first[p]][:5]}"
    assert any(v[2] for v in first.values()), "no record was read"


def test_a_day_costs_its_own_query_and_a_month_only_ids_and_dates(emulator, emulator_data, mount_factory,
                                                                  tmp_path):
    day = next(p for p in sorted(default_tree(emulator_data, "stac")) if p.startswith("terrascope-s2-toc-v2/"))
    day_dir = "/".join(day.split("/")[:4])
    month_bytes = {}
    for server in (True, False):
        emulator.set(stac_fields=server)
        mount = mount_factory(emulator, name=f"fields-{server}", cache_dir=tmp_path / f"cache-{server}")
        emulator.mark()
        assert os.listdir(mount.path / day_dir)
        asked = searches(emulator)
        assert len(asked) == 1, f"ls of one day sent {len(asked)} searches: {emulator.requests()}"
        emulator.mark()
        assert day_dir.rsplit("/", 1)[1] in os.listdir(mount.path / day_dir.rsplit("/", 1)[0])
        asked = searches(emulator)
        assert len(asked) == 1, f"ls of a month sent {len(asked)} searches: {asked}"
        month_bytes[server] = asked[0]["bytes"]
        mount.stop()
    assert month_bytes[True] * 3 < month_bytes[False], f"a month's days with and without fields: {month_bytes}"


@pytest.fixture(scope="module")
def archive_emulator(emulator_data: Path, tmp_path_factory):
    from conftest import start_emulator

    emu = start_emulator(emulator_data, tmp_path_factory.mktemp("archive-emulator"),
                         ["--profile", "archive", "--rate-limit", "off"])
    try:
        yield emu
    finally:
        emu.stop()


def _prefix(layout: str) -> str:
    return "terrascope-s2-toc-v2" if layout == "default" else "MTDA/TERRASCOPE_Sentinel2/TOC_V2"


@pytest.mark.parametrize("layout", ["default", "platform"])
@pytest.mark.parametrize("fields", ["auto", "off"])
def test_archive_ls_of_a_day_is_one_search_of_about_a_days_items(archive_emulator, mount_factory, tmp_path,
                                                                 layout, fields):
    emu = archive_emulator
    mount = mount_factory(emu, layout=layout, catalogue_fields=fields, collections=["terrascope-s2-toc-v2"],
                          cache_dir=tmp_path / "cache")
    emu.mark()
    names = os.listdir(mount.path / _prefix(layout) / "2020" / "01" / "15")
    assert 80 <= len(names) <= 120
    asked = searches(emu)
    # The platform layout learns where the collection lives from one product, once: one small search more.
    assert len(asked) == (1 if layout == "default" else 2), f"ls of one day sent {len(asked)} searches"
    assert sum(r["bytes"] for r in asked) < 5e6


def test_archive_find_over_a_month_costs_the_months_pages_and_a_few(archive_emulator, mount_factory, tmp_path):
    from terrafs.catalogue.stac import StacCatalogue
    from terrafs.tree.days import WALK_DAYS

    emu = archive_emulator
    mount = mount_factory(emu, collections=["terrascope-s2-toc-v2"], cache_dir=tmp_path / "cache")
    month = mount.path / _prefix("default") / "2020" / "02"
    emu.mark()
    files = [f for _, _, fs in os.walk(month) for f in fs]
    asked = searches(emu)
    days = os.listdir(month)
    products = sum(len(os.listdir(month / d)) for d in days)
    assert len(days) == 29 and len(files) >= 20 * products
    pages = -(-products // StacCatalogue.PAGE_SIZE)
    # the month's days (ids and dates: a few pages), the first days one by one, then the rest of the
    # month in pages of the largest size, its items without the asset members the tree does not read
    assert len(asked) <= pages * 2 + WALK_DAYS + 1, f"{len(asked)} searches for a month of {pages} pages"
    # (about 17 kB an item with every asset member, 12 kB without those the tree does not read)
    assert sum(r["bytes"] for r in asked) < products * 14_000, f"{sum(r['bytes'] for r in asked)} bytes"
    emu.mark()
    assert [f for _, _, fs in os.walk(month) for f in fs] == files
    assert searches(emu) == [], "a second walk reached the catalogue"
