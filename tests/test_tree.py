"""Unit tests of the tree's path logic, with an in-memory catalogue."""
from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone

import diskcache
import pytest

from terrafs.catalogue.model import Collection, Filter, Product, ProductFile
from terrafs.cache.listings import ListingStore, NoPickleDisk
from terrafs.tree.paths import DirNode, FileNode, NotFound, Tree, platform_placement, product_folders, split_path
from terrafs.tree.days import WALK_DAYS
from terrafs.tree.nodes import FILE_BYTES, weight

UTC = timezone.utc
TOC = Collection("terrascope-s2-toc-v2", "terrascope-s2-toc-v2", "TOC", datetime(2019, 12, 1, tzinfo=UTC),
                 datetime(2020, 2, 28, tzinfo=UTC))
WC = Collection("esa-worldcover", "urn:eop:VITO:ESA_WorldCover_10m_2020_V1", "WC", datetime(2020, 1, 1, tzinfo=UTC),
                datetime(2020, 12, 31, tzinfo=UTC))


def toc_product(day: int, tile: str, month: int = 1) -> Product:
    title = f"S2A_2020{month:02d}{day:02d}T105431_{tile}_TOC_V210"
    base = f"/data/MTDA/TERRASCOPE_Sentinel2/TOC_V2/2020/{month:02d}/{day:02d}/{title}"
    files = tuple(
        ProductFile(relpath=f"{title}_{band}.tif", href=f"http://x/download/{band}", size=100 + i,
                    local_path=f"{base}/{title}_{band}.tif")
        for i, band in enumerate(("B02_10M", "B03_10M"))
    )
    return Product(title, title, TOC.id, datetime(2020, month, day, 10, 54, tzinfo=UTC), title, files)


def lai_products() -> list[Product]:
    out = []
    for res in ("10M", "20M"):
        title = f"S2A_20200105T071301_39RVH_LAI_{res}_V200"
        folder = "S2A_20200105T071301_39RVH_LAI_V200"
        f = ProductFile(relpath=f"{res}/{title}.tif", href=f"http://x/{res}", size=5,
                        local_path=f"/data/MTDA/TERRASCOPE_Sentinel2/LAI_V2/2020/01/05/{folder}/{res}/{title}.tif")
        out.append(Product(title, title, "lai", datetime(2020, 1, 5, tzinfo=UTC), folder, (f,)))
    return out


def wc_product(tile: str) -> Product:
    folder = f"ESA_WorldCover_10m_2020_v100_{tile}_Map"
    f = ProductFile(relpath=f"{folder}.tif", href=f"http://x/{tile}", size=7,
                    local_path=f"/data/MTDA/WORLDCOVER/ESA_WORLDCOVER_10M_2020_V100/MAP/{folder}/{folder}.tif")
    return Product(folder, folder, WC.id, datetime(2020, 1, 1, tzinfo=UTC), folder, (f,))


class FakeCatalogue:
    def __init__(self, products: dict[str, list[Product]], collections=(TOC, WC)):
        self._products = products
        self._collections = list(collections)
        self.queries: list[tuple] = []

    def collections(self):
        return self._collections

    def products(self, collection, start, end, flt=None, limit=None):
        self.queries.append((collection.id, start, end, limit))
        found = [p for p in self._products.get(collection.id, [])
                 if (start is None or p.datetime >= start) and (end is None or p.datetime <= end)]
        return found[:limit] if limit else found

    @property
    def requests_made(self):
        return len(self.queries)


@pytest.fixture
def catalogue():
    return FakeCatalogue({
        TOC.id: [toc_product(1, "31UFS"), toc_product(1, "31UES"), toc_product(2, "31UFS"),
                 toc_product(15, "31UFS", month=2)],
        WC.id: [wc_product("N00E006"), wc_product("N03E006")],
    })


def test_default_layout_dates_and_products(catalogue):
    tree = Tree(catalogue, selection=None)
    assert tree.listdir("/") == ["esa-worldcover", "terrascope-s2-toc-v2"]
    assert tree.listdir("/terrascope-s2-toc-v2") == ["2019", "2020"]
    assert tree.listdir("/terrascope-s2-toc-v2/2020") == ["01", "02"]
    assert tree.listdir("/terrascope-s2-toc-v2/2020/01") == ["01", "02"]
    day = tree.listdir("/terrascope-s2-toc-v2/2020/01/01")
    assert day == ["S2A_20200101T105431_31UES_TOC_V210", "S2A_20200101T105431_31UFS_TOC_V210"]
    node = tree.lookup(f"/terrascope-s2-toc-v2/2020/01/01/{day[1]}/{day[1]}_B03_10M.tif")
    assert isinstance(node, FileNode) and node.file.size == 101


def test_a_day_is_its_own_query_and_a_month_listing_fills_the_days_left(catalogue):
    tree = Tree(catalogue, selection=None)
    tree.listdir("/terrascope-s2-toc-v2/2020/01/01")
    assert [(q[1], q[2]) for q in catalogue.queries] == [
        (datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 1, 1, 23, 59, 59, 999999, tzinfo=UTC))]
    # No cheap index (no acquisitions()): the month's folder is its full listing, which fills its days.
    assert tree.listdir("/terrascope-s2-toc-v2/2020/01") == ["01", "02"]
    tree.listdir("/terrascope-s2-toc-v2/2020/01/02")
    assert [q[2] - q[1] for q in catalogue.queries][1:] == [timedelta(days=31, microseconds=-1)]


def test_a_day_without_products_is_not_found_after_one_day_query(catalogue):
    tree = Tree(catalogue, selection=None)
    with pytest.raises(NotFound):
        tree.lookup("/terrascope-s2-toc-v2/2020/01/03")
    with pytest.raises(NotFound):
        tree.lookup("/terrascope-s2-toc-v2/2020/01/3x")
    assert len(catalogue.queries) == 1


class IndexedCatalogue(FakeCatalogue):
    """A catalogue with the cheap answer (as STAC with the fields extension)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.index_queries = 0

    def acquisitions(self, collection, start, end, flt=None):
        self.index_queries += 1
        return [p.datetime for p in self._products.get(collection.id, []) if start <= p.datetime <= end]


def month_of_days(days: int = 31) -> list[Product]:
    return [toc_product(d, tile) for d in range(1, days + 1) for tile in ("31UFS", "31UES")]


def test_a_walk_over_a_month_lists_the_month_once_after_a_few_days():
    cat = IndexedCatalogue({TOC.id: month_of_days()})
    tree = Tree(cat, selection=None)
    days = tree.listdir("/terrascope-s2-toc-v2/2020/01")
    assert len(days) == 31 and cat.index_queries == 1 and cat.queries == []
    for d in days:
        assert len(tree.listdir(f"/terrascope-s2-toc-v2/2020/01/{d}")) == 2
    spans = [q[2] - q[1] for q in cat.queries]
    day, rest = timedelta(days=1, microseconds=-1), timedelta(days=31 - WALK_DAYS, microseconds=-1)
    assert spans == [day] * WALK_DAYS + [rest], "a few days, then the rest of the month once"
    assert cat.queries[-1][1] == datetime(2020, 1, WALK_DAYS + 1, tzinfo=timezone.utc)


def test_a_walk_backwards_reads_no_day_twice():
    cat = IndexedCatalogue({TOC.id: month_of_days()})
    tree = Tree(cat, selection=None)
    days = tree.listdir("/terrascope-s2-toc-v2/2020/01")
    listed = {d: tree.listdir(f"/terrascope-s2-toc-v2/2020/01/{d}") for d in reversed(days)}
    assert all(len(names) == 2 for names in listed.values())
    asked = [(q[1].day, q[2].day) for q in cat.queries]  # (first, last day) of each query
    first_days = [(d, d) for d in range(31, 31 - WALK_DAYS, -1)]
    assert asked == first_days + [(1, 31 - WALK_DAYS)], "a few days, then the days before them once"


def test_listings_beyond_the_budget_come_back_from_the_disk_cache(tmp_path):
    cat = IndexedCatalogue({TOC.id: month_of_days()})
    meta = diskcache.Cache(str(tmp_path / "meta"), disk=NoPickleDisk)
    tree = Tree(cat, selection=None, store=ListingStore(meta, "t", 3600, 300), memory=FILE_BYTES * 10)
    first = {d: tree.listdir(f"/terrascope-s2-toc-v2/2020/01/{d}") for d in ("01", "02", "03")}
    assert tree.budget.used <= FILE_BYTES * 10 + weight_of_a_day()
    asked = len(cat.queries)
    again = {d: tree.listdir(f"/terrascope-s2-toc-v2/2020/01/{d}") for d in ("01", "02", "03")}
    assert again == first and len(cat.queries) == asked, "dropped listings come back from the disk cache"


def weight_of_a_day() -> int:
    return weight(product_folders([toc_product(1, "31UFS"), toc_product(1, "31UES")]))


def test_records_are_not_kept_in_ram_but_read_back(tmp_path):
    products = [dataclasses.replace(p, record=json.dumps({"id": p.id})) for p in month_of_days(2)]
    cat = FakeCatalogue({TOC.id: products})
    meta = diskcache.Cache(str(tmp_path / "meta"), disk=NoPickleDisk)
    tree = Tree(cat, selection=None, store=ListingStore(meta, "t", 3600, 300))
    name = tree.listdir("/terrascope-s2-toc-v2/2020/01/02")[0]
    folder = tree.lookup(f"/terrascope-s2-toc-v2/2020/01/02/{name}")
    assert folder.product.record == ""
    assert json.loads(tree.record(f"/terrascope-s2-toc-v2/2020/01/02/{name}"))["id"] == folder.product.id
    file = tree.listdir(f"/terrascope-s2-toc-v2/2020/01/02/{name}")[0]
    assert json.loads(tree.record(f"/terrascope-s2-toc-v2/2020/01/02/{name}/{file}"))["id"] == folder.product.id
    assert len(cat.queries) == 1, "the record came from the disk cache"


def test_months_outside_the_extent_are_not_listed(catalogue):
    tree = Tree(catalogue, selection=None)
    assert tree.listdir("/terrascope-s2-toc-v2/2019") == ["12"]


def test_selection_limits_collections_and_dates(catalogue):
    flt = Filter(start=datetime(2020, 2, 1, tzinfo=UTC))
    tree = Tree(catalogue, selection={TOC.id: flt})
    assert tree.listdir("/") == ["terrascope-s2-toc-v2"]
    assert tree.listdir("/terrascope-s2-toc-v2") == ["2020"]
    assert tree.listdir("/terrascope-s2-toc-v2/2020") == ["02"]


def test_unknown_paths_are_not_found(catalogue):
    tree = Tree(catalogue, selection=None)
    for path in ("/nope", "/terrascope-s2-toc-v2/2021", "/terrascope-s2-toc-v2/2020/01/03",
                 "/terrascope-s2-toc-v2/../etc", "/terrascope-s2-toc-v2/2020/01/01/x/y/z"):
        with pytest.raises(NotFound):
            tree.lookup(path)


def test_multiresolution_products_share_a_folder_with_subfolders():
    cat = FakeCatalogue({"lai": lai_products()}, collections=[Collection("lai", "lai", "", datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 1, 31, tzinfo=UTC))])
    tree = Tree(cat, selection=None)
    folder = "/lai/2020/01/05/S2A_20200105T071301_39RVH_LAI_V200"
    assert tree.listdir(folder) == ["10M", "20M"]
    assert tree.listdir(folder + "/20M") == ["S2A_20200105T071301_39RVH_LAI_20M_V200.tif"]


def test_platform_placement_dated_and_flat():
    dated = platform_placement(TOC, [toc_product(1, "31UFS")])
    assert dated.prefix == ("MTDA", "TERRASCOPE_Sentinel2", "TOC_V2") and dated.dated
    flat = platform_placement(WC, [wc_product("N00E006")])
    assert flat.prefix == ("MTDA", "WORLDCOVER", "ESA_WORLDCOVER_10M_2020_V100", "MAP") and not flat.dated
    lai = platform_placement(TOC, lai_products())
    assert lai.prefix == ("MTDA", "TERRASCOPE_Sentinel2", "LAI_V2") and lai.dated


def test_platform_placement_needs_local_paths():
    p = toc_product(1, "31UFS")
    bare = Product(p.id, p.title, p.collection, p.datetime, p.folder,
                   tuple(ProductFile(f.relpath, f.href, f.size) for f in p.files))
    assert platform_placement(TOC, [bare]) is None


def test_platform_layout_puts_files_at_their_platform_paths(catalogue):
    tree = Tree(catalogue, selection=None, layout="platform")
    assert tree.listdir("/") == ["MTDA"]
    assert tree.listdir("/MTDA") == ["TERRASCOPE_Sentinel2", "WORLDCOVER"]
    t = "S2A_20200101T105431_31UFS_TOC_V210"
    node = tree.lookup(f"/MTDA/TERRASCOPE_Sentinel2/TOC_V2/2020/01/01/{t}/{t}_B02_10M.tif")
    assert isinstance(node, FileNode) and node.file.local_path.endswith(f"{t}/{t}_B02_10M.tif")
    tiles = tree.listdir("/MTDA/WORLDCOVER/ESA_WORLDCOVER_10M_2020_V100/MAP")
    assert tiles == ["ESA_WorldCover_10m_2020_v100_N00E006_Map", "ESA_WorldCover_10m_2020_v100_N03E006_Map"]


def test_split_path_refuses_dot_dot():
    assert split_path("/a//b/") == ["a", "b"]
    with pytest.raises(NotFound):
        split_path("/a/../b")


def test_root_is_a_directory(catalogue):
    assert isinstance(Tree(catalogue, selection=None).lookup("/"), DirNode)
