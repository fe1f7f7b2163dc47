"""The emulator's archive profile: S2 TOC at the real archive's size, served over HTTP.

About 100 products a day for 2020-01..2020-03, items of the real size and shape
(21 assets), STAC and OpenSearch paging, the fields extension on it, and file
bytes made on demand whose size matches the catalogue and whose georeferencing
is each tile's own.
"""
from __future__ import annotations

import json
from collections import Counter

import pytest
import requests

from terrafs.emulator.daily import DailyCollection, tile_corner, tile_pool

TOC = "terrascope-s2-toc-v2"
TOC_URN = "urn:eop:VITO:TERRASCOPE_S2_TOC_V2"


def _page(url: str, **params) -> dict:
    r = requests.get(url, params=params, timeout=120)
    assert r.status_code == 200, r.text[:300]
    return r.json()


def test_tile_pool_is_real_mgrs_in_europe():
    pool = tile_pool()
    assert len(pool) == len(set(pool)) == 500
    assert {t[:2] for t in pool} == {str(z) for z in range(29, 36)} and {t[2] for t in pool} == set("TUV")
    # Known corners of real tiles (upper left, metres, within the tiles' 20 m overlap).
    assert tile_corner("31UFS") == (32631, 600000.0, 5700000.0)
    epsg, ulx, uly = tile_corner("31UES")
    assert epsg == 32631 and abs(ulx - 499980.0) <= 20 and uly == 5700000.0
    assert tile_corner("32ULC")[0] == 32632


def test_a_day_and_a_month_at_the_archive_size(archive_emulator):
    archive_emulator.mark()
    day = _page(archive_emulator.stac_url + "/search", collections=TOC, limit=1000,
                datetime="2020-01-15T00:00:00Z/2020-01-15T23:59:59Z")
    feats = day["features"]
    assert 85 <= len(feats) <= 105 and day["numberMatched"] == len(feats)
    assert {f["properties"]["platform"] for f in feats} == {"sentinel-2a", "sentinel-2b"}
    assert len({f["properties"]["grid:code"] for f in feats}) == len(feats)
    sizes = [len(json.dumps(f)) for f in feats]
    assert 15_000 <= min(sizes) and max(sizes) <= 22_000
    assert all(len(f["assets"]) == 21 for f in feats)
    b02 = feats[0]["assets"]["B02"]
    assert b02["file:size"] > 0 and b02["proj:shape"] and b02["alternate"]["local"]["href"].startswith("file:///data/MTDA/")

    # A month pages as the real service: limit up to 10 000, `next` links until the end.
    month, url, params = [], archive_emulator.stac_url + "/search", {
        "collections": TOC, "limit": 1000, "datetime": "2020-02-01T00:00:00Z/2020-02-29T23:59:59Z"}
    while url:
        page = _page(url, **params)
        month += page["features"]
        url, params = next((link["href"] for link in page["links"] if link["rel"] == "next"), None), {}
    days = Counter(f["properties"]["datetime"][:10] for f in month)
    assert len(days) == 29 and all(85 <= n <= 105 for n in days.values())
    assert len({f["id"] for f in month}) == len(month)
    logged = archive_emulator.requests("stac")
    assert len(logged) == 1 + -(-len(month) // 1000)
    assert sum(e["bytes"] for e in logged[1:]) > 15_000 * len(month)


def test_fields_make_a_month_small(archive_emulator):
    archive_emulator.mark()
    page = _page(archive_emulator.stac_url + "/search", collections=TOC, limit=10000,
                 datetime="2020-03-01T00:00:00Z/2020-03-31T23:59:59Z", fields="properties.datetime,-links")
    assert 2600 <= len(page["features"]) <= 3300
    assert all(set(f) == {"id", "collection", "properties"} for f in page["features"])
    (entry,) = archive_emulator.requests("stac")
    assert entry["bytes"] < 150 * len(page["features"])


def test_file_bytes_made_on_demand_match_the_catalogue_and_the_tile(archive_emulator, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    feats = _page(archive_emulator.stac_url + "/search", collections=TOC, limit=200,
                  datetime="2020-03-10T00:00:00Z/2020-03-10T23:59:59Z")["features"]
    zones = {}
    for f in feats:
        zones.setdefault(f["properties"]["proj:code"], f)
    assert len(zones) >= 3
    for feat in list(zones.values())[:3]:
        for key in ("B02", "SCL", "QUICKLOOK", "metadata"):
            asset = feat["assets"][key]
            r = requests.get(asset["href"], auth=("demo", "demo"), timeout=60)
            assert r.status_code == 200 and len(r.content) == asset["file:size"]
            head = requests.head(asset["href"], auth=("demo", "demo"), timeout=60)
            assert int(head.headers["Content-Length"]) == asset["file:size"]
            ranged = requests.get(asset["href"], auth=("demo", "demo"), headers={"Range": "bytes=100-4099"},
                                  timeout=60)
            assert ranged.status_code == 206 and ranged.content == r.content[100:4100]
            if key == "metadata":
                assert feat["id"].encode() in r.content
                continue
            path = tmp_path / f"{feat['id']}_{key}.tif"
            path.write_bytes(r.content)
            with rasterio.open(path) as ds:
                assert ds.crs.to_epsg() == int(feat["properties"]["proj:code"].split(":")[1])
                assert [ds.height, ds.width] == asset["proj:shape"]
                t = asset["proj:transform"]
                assert (ds.transform.c, ds.transform.f) == (t[2], t[5])
                assert (ds.transform.c, ds.transform.f + 0.0) == tuple(feat["properties"]["proj:bbox"][i] for i in (0, 3))


def test_opensearch_pages_the_archive_profile(archive_emulator):
    doc = _page(archive_emulator.opensearch_url + "products", collection=TOC_URN, count=1000,
                start="2020-01-15", end="2020-01-15")
    assert 85 <= doc["totalResults"] <= 105
    assert len(doc["features"]) == doc["totalResults"]
    day = _page(archive_emulator.stac_url + "/search", collections=TOC, limit=1000,
                datetime="2020-01-15T00:00:00Z/2020-01-15T23:59:59Z")
    assert sorted(f["properties"]["title"] for f in doc["features"]) == sorted(f["id"] for f in day["features"])


def test_single_items_and_ids_without_walking_the_archive(archive_emulator):
    day = _page(archive_emulator.stac_url + "/search", collections=TOC, limit=2,
                datetime="2020-02-20T00:00:00Z/2020-02-20T23:59:59Z")
    pid = day["features"][0]["id"]
    item = _page(f"{archive_emulator.stac_url}/collections/{TOC}/items/{pid}")
    assert item["id"] == pid and len(item["assets"]) == 21
    by_ids = _page(archive_emulator.stac_url + "/search", ids=f"{pid},S2A_20990101T000000_31UFS_TOC_V220")
    assert [f["id"] for f in by_ids["features"]] == [pid]
    missing = requests.get(f"{archive_emulator.stac_url}/collections/{TOC}/items/S2A_20200101T000000_99XXX_TOC_V220",
                           timeout=30)
    assert missing.status_code == 404


def test_days_are_planned_the_same_every_time(archive_data):
    a = DailyCollection(archive_data / "archive-templates")
    b = DailyCollection(archive_data / "archive-templates")
    from datetime import date
    assert a.tiles_on(date(2020, 1, 3)) == b.tiles_on(date(2020, 1, 3))
    assert 8000 <= a.count() <= 9500
