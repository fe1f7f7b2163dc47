"""The emulator's archive, STAC API and OpenSearch catalogue, called directly over WSGI.

No server process: a tiny dispatcher hands /stac and /catalogue to the handlers.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Request

from terrafs.emulator.data import build_archive
from terrafs.emulator.opensearch.paging import last_start
from terrafs.emulator.opensearch.query import parse_interval
from terrafs.emulator.opensearch.search import handle_opensearch
from terrafs.emulator.plan import PlannedFile, PlannedProduct
from terrafs.emulator.stac.search import handle_stac
from terrafs.emulator.writer import ensure_files

BASE = "http://127.0.0.1:9999"
TOC = "urn:eop:VITO:TERRASCOPE_S2_TOC_V2"
LAI = "urn:eop:VITO:TERRASCOPE_S2_LAI_V2"
NDVI = "urn:eop:VITO:TERRASCOPE_S2_NDVI_V2"
BULK = 250
NDVI_REAL = 3  # the NDVI products with real files, besides the bulk ones
NDVI_ALL = BULK + NDVI_REAL
TOC_PRODUCTS = 12  # 11 acquisitions x tiles, one of them also in an older version (V200)


@pytest.fixture(scope="module")
def archive(emulator_data: Path):
    return build_archive(emulator_data, profile="small", bulk_products=BULK)


@pytest.fixture(scope="module")
def client(archive) -> Client:
    def app(environ, start_response):
        req = Request(environ)
        if req.path.startswith("/stac"):
            resp = handle_stac(req, archive, BASE, req.path[len("/stac"):] or "/")
        elif req.path.startswith("/catalogue"):
            resp = handle_opensearch(req, archive, BASE, req.path[len("/catalogue"):] or "/")
        else:
            resp = None
        return resp(environ, start_response)

    return Client(app)


def _local(url: str) -> str:
    """Absolute link from a response -> path+query for the test client."""
    assert url.startswith(BASE), url
    return url[len(BASE):]


# ------------------------------------------------------------------------------------ archive


def test_archive_is_deterministic_and_has_every_collection(archive, emulator_data):
    again = build_archive(emulator_data, profile="small", bulk_products=BULK)
    sizes = {f.download_path: f.size for f in archive.all_files()}
    assert sizes == {f.download_path: f.size for f in again.all_files()}
    ids = {c.stac_id for c in archive.collections}
    assert ids == {"terrascope-s2-toc-v2", "terrascope-s2-lai-v2", "terrascope-s1-grd-sigma0-v1",
                   "esa-worldcover-10m-2020-v1", "terrascope-s2-ndvi-v2", "terrascope-s1-slc-coherence-v1",
                   "terrascope-s5p-l3-co-td-v1", "agera5-v1", "cgls-fapar300-v1-global", "cop-dem-glo-30m-cog",
                   "terrascope-layouts-test"}
    assert len(archive.products("terrascope-s2-ndvi-v2")) == BULK + NDVI_REAL
    years = {p.datetime.year for p in archive.products("terrascope-s2-toc-v2")}
    assert years == {2020, 2021}


def test_a_data_directory_of_another_plan_is_brought_up_to_date(tmp_path):
    """A directory left by an older plan (same DATA_VERSION) loses the files the plan no longer
    has and gets the ones whose content changed rewritten; unchanged files are kept as they are."""
    def plan(texts: dict[str, str]) -> list[PlannedProduct]:
        files = [PlannedFile(rel=f"P/{name}", download_path=f"d/{name}", group="data", asset_key=name,
                             roles=("data",), title=name, type="text/plain", text=text)
                 for name, text in texts.items()]
        return [PlannedProduct(product={}, files=files)]

    root = tmp_path / "small"
    root.mkdir()
    assert ensure_files(root, plan({"a.txt": "one", "b.txt": "two", "gone.txt": "old"})) == {
        "P/a.txt": 3, "P/b.txt": 3, "P/gone.txt": 3}
    kept = (root / "P/a.txt").stat().st_ino
    (root / "P/stray.aux.xml").write_text("left by a tool")
    sizes = ensure_files(root, plan({"a.txt": "one", "b.txt": "changed"}))
    assert sizes == {"P/a.txt": 3, "P/b.txt": 7}
    assert sorted(p.name for p in (root / "P").iterdir()) == ["a.txt", "b.txt"]
    assert (root / "P/b.txt").read_text() == "changed"
    assert (root / "P/a.txt").stat().st_ino == kept
    # A marker that is not ours (or unreadable) rebuilds rather than trusting the files.
    (root / ".complete.json").write_text("[1, 2]")
    (root / "P/b.txt").write_text("tampered")
    assert ensure_files(root, plan({"a.txt": "one", "b.txt": "changed"}))["P/b.txt"] == 7
    assert (root / "P/b.txt").read_text() == "changed"


def test_archive_paths_follow_platform_and_download_layouts(archive):
    toc = archive.products("terrascope-s2-toc-v2")[0]
    b02 = next(f for f in toc.files if f.asset_key == "B02")
    assert b02.platform_path == (f"/data/MTDA/TERRASCOPE_Sentinel2/TOC_V2/2020/01/01/{toc.title}/"
                                 f"{toc.title.replace('_TOC_V210', '')}_TOC-B02_10M_V210.tif")
    assert b02.download_path == b02.platform_path.replace("/data/MTDA/TERRASCOPE_Sentinel2/", "Sentinel2/")
    for lai in archive.products("terrascope-s2-lai-v2"):
        res = "10M" if "_LAI_10M_" in lai.title else "20M"
        folder = lai.title.replace(f"_LAI_{res}_", "_LAI_")
        assert lai.files[0].platform_path.endswith(f"/{folder}/{res}/{lai.title}.tif")
        assert lai.files[0].download_path.startswith("Sentinel2/LAI_V2/")
    s1 = archive.products("terrascope-s1-grd-sigma0-v1")[0]
    assert s1.files[0].platform_path.startswith("/data/MTDA/CGS_S1/CGS_S1_GRD_SIGMA0_L1/")
    assert s1.files[0].download_path.startswith("CGS_S1_GRD_SIGMA0_L1/")
    wc = archive.products("esa-worldcover-10m-2020-v1")[0]
    assert wc.files[0].platform_path == "/data/MTDA/" + wc.files[0].download_path
    assert wc.files[0].download_path.startswith("WORLDCOVER/ESA_WORLDCOVER_10M_2020_V100/MAP/ESA_WorldCover_10m_2020_v100_")


def test_raster_files_are_cloud_optimized_utm_geotiffs(archive):
    import rasterio

    toc = archive.products("terrascope-s2-toc-v2")[0]
    b02 = next(f for f in toc.files if f.asset_key == "B02")
    head = b02.read(0, 4)
    assert head in (b"II*\x00", b"II+\x00")
    path = b02.read.args[0]  # the disk file behind the EmuFile
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == 32631
        assert (ds.width, ds.height, ds.dtypes[0]) == (512, 512, "int16"), "reflectances are int16"
        assert ds.overviews(1), "COG needs overviews"
        assert ds.block_shapes[0] == (256, 256)
        assert ds.transform.c in (600000.0, 499980.0)
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.read(1).std() > 10, "content must not be trivially compressible"
    assert len(b02.read(0, b02.size + 100)) == b02.size


def test_bulk_files_are_generated_deterministically(archive):
    f = next(p for p in archive.products("terrascope-s2-ndvi-v2") if p.datetime.year == 2021).files[0]
    assert 1024 <= f.size <= 4096
    whole = f.read(0, f.size)
    assert len(whole) == f.size
    assert f.read(100, 50) == whole[100:150]
    assert f.read(f.size - 10, 100) == whole[-10:]
    assert len({p.id for p in archive.products("terrascope-s2-ndvi-v2")}) == BULK + NDVI_REAL


# ------------------------------------------------------------------------------------ OpenSearch


def _products(client, query: str) -> dict:
    r = client.get("/catalogue/products?" + query)
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.json


def test_opensearch_paging_sees_every_product_once(client, archive):
    doc = _products(client, f"collection={NDVI}&count=40&sortKeys=title")
    total = doc["totalResults"]
    assert total == NDVI_ALL
    seen, pages = [], 0
    while True:
        pages += 1
        assert doc["itemsPerPage"] == len(doc["features"]), "itemsPerPage = features in this page"
        seen += [f["id"] for f in doc["features"]]
        links = doc["properties"]["links"]
        if "next" not in links:
            break
        doc = _products(client, _local(links["next"][0]["href"]).split("?", 1)[1])
    assert pages == 7 and len(doc["features"]) == NDVI_ALL - 6 * 40
    assert len(seen) == len(set(seen)) == NDVI_ALL
    assert seen == sorted(seen)
    last = parse_qs(urlparse(doc["properties"]["links"]["last"][0]["href"]).query)
    assert last["startIndex"] == ["241"]
    assert "previous" in doc["properties"]["links"]


def test_opensearch_count_zero_and_past_the_end(client):
    doc = _products(client, f"collection={TOC}&count=0")
    assert doc["totalResults"] == TOC_PRODUCTS and doc["features"] == [] and doc["itemsPerPage"] == 0
    doc = _products(client, f"collection={TOC}&startIndex={TOC_PRODUCTS + 1}")
    assert doc["totalResults"] == TOC_PRODUCTS and doc["itemsPerPage"] == 0 and "next" not in doc["properties"]["links"]


def test_opensearch_default_page_is_100_and_large_counts_are_clamped(client):
    doc = _products(client, f"collection={NDVI}")
    assert doc["itemsPerPage"] == 100
    doc = _products(client, f"collection={NDVI}&count=5000")
    assert doc["itemsPerPage"] == NDVI_ALL


def test_opensearch_result_cap(client):
    assert last_start(375433, 100) == 99901
    assert last_start(26445, 100) == 26401
    assert last_start(375433, 300) + 300 - 1 <= 100000
    r = client.get(f"/catalogue/products?collection={NDVI}&startIndex=99950&count=100")
    assert r.status_code == 400
    assert r.json["exceptions"][0]["locator"] == "startIndex"


def test_opensearch_date_filters_are_inclusive(client):
    doc = _products(client, f"collection={TOC}&start=2020-01-01&end=2020-01-02")
    assert doc["totalResults"] == 5
    assert {f["properties"]["date"][:10] for f in doc["features"]} == {"2020-01-01", "2020-01-02"}
    doc = _products(client, f"collection={TOC}&start=2020-01-01T10:54:31Z&end=2020-01-01T10:54:31.024Z")
    assert doc["totalResults"] == 3
    doc = _products(client, f"collection={TOC}&start=2021-01-01T00:00:00Z&end=2021-12-31T23:59:59.999999999Z")
    assert doc["totalResults"] == 3
    assert doc["queries"]["request"][0]["time:end"] == "2021-12-31T23:59:59Z"


def test_opensearch_cloud_cover_intervals(client, archive):
    covers = [p.cloud_cover for p in archive.products("terrascope-s2-toc-v2")]
    for expr, pred in [("50]", lambda c: c <= 50), ("[50", lambda c: c >= 50),
                       ("[10,60[", lambda c: 10 <= c < 60), ("]10,60]", lambda c: 10 < c <= 60)]:
        doc = _products(client, f"collection={TOC}&cloudCover={expr}")
        assert doc["totalResults"] == sum(1 for c in covers if pred(c)), expr
    assert parse_interval("[1.0,78]", lambda v, h: float(v)) == (1.0, True, 78.0, True)
    r = client.get(f"/catalogue/products?collection={TOC}&cloudCover=abc")
    assert r.status_code == 400


def test_opensearch_access_modes(client):
    http = _products(client, f"collection={TOC}&count=1&sortKeys=title")["features"][0]
    mep = _products(client, f"collection={TOC}&count=1&sortKeys=title&accessedFrom=MEP")["features"][0]
    assert http["id"] == mep["id"]
    for h, m in zip(http["properties"]["links"]["data"], mep["properties"]["links"]["data"]):
        assert h["href"].startswith(BASE + "/download/Sentinel2/TOC_V2/")
        assert m["href"].startswith("file:///data/MTDA/TERRASCOPE_Sentinel2/TOC_V2/")
        assert h["href"].rsplit("/", 1)[1] == m["href"].rsplit("/", 1)[1]
        assert h["length"] == m["length"]
    search = _products(client, f"collection={TOC}&count=1&accessedFrom=MEP")["properties"]["links"]["search"]
    assert search[0]["href"].count("?") == 2


def test_opensearch_feature_shape(client):
    f = _products(client, f"collection={TOC}&title=S2A_20200101T105431_31UFS_TOC_V210")["features"][0]
    p = f["properties"]
    assert f["id"] == p["identifier"] == f"{TOC}:S2A_20200101T105431_31UFS_TOC_V210"
    assert p["parentIdentifier"] == TOC
    assert p["acquisitionInformation"][0]["acquisitionParameters"]["tileId"] == "31UFS"
    assert set(p["links"]) == {"data", "related", "previews", "alternates"}
    assert p["links"]["alternates"][0]["title"] == "Inspire metadata"
    assert not any(l.get("category") == "CLOUD" for l in p["links"]["related"]), "CLOUDMASK only from V220"
    files = [l for g in p["links"].values() for l in g if "/wms/" not in l["href"]]
    assert all(isinstance(l["length"], int) for l in files)
    b04 = next(l for l in p["links"]["data"] if l["title"] == "TOC-B04_10M")
    assert b04["bandNames"] == ["B04"] and b04["conformsTo"] == "http://www.opengis.net/def/crs/EPSG/0/32631"
    assert any(l["title"] == "TOC-B01_60M" for l in p["links"]["data"])
    wms = [l for l in p["links"]["previews"] if l.get("title") == "WMS"]
    assert len(wms) == 1 and "length" not in wms[0] and "REQUEST=getMap" in wms[0]["href"]
    v220 = _products(client, f"collection={TOC}&title=S2A_20210701T103631_31UES_TOC_V220")["features"][0]
    assert any(l.get("category") == "CLOUD" for l in v220["properties"]["links"]["related"])
    lai = _products(client, f"collection={LAI}&count=1")["features"][0]["properties"]["links"]
    assert "length" not in lai["alternates"][0], "one link without length exercises HEAD fallbacks"


def test_opensearch_other_filters_and_sorting(client):
    assert _products(client, f"collection={TOC}&tileId=31UFT")["totalResults"] == 3
    assert _products(client, f"collection={TOC}&bbox=2.9,50.4,3.1,50.6")["totalResults"] >= 1
    wkt = "POLYGON ((2.9 50.4, 3.1 50.4, 3.1 50.6, 2.9 50.6, 2.9 50.4))"
    assert (_products(client, f"collection={TOC}&geometry={wkt}")["totalResults"]
            == _products(client, f"collection={TOC}&bbox=2.9,50.4,3.1,50.6")["totalResults"])
    assert _products(client, f"collection={LAI}&resolution=20")["totalResults"] == 5
    desc = _products(client, f"collection={TOC}&sortKeys=start,,0")["features"]
    dates = [f["properties"]["date"] for f in desc]
    assert dates == sorted(dates, reverse=True)
    r = client.get(f"/catalogue/products?collection={TOC}&orbitDirection=SIDEWAYS")
    assert r.status_code == 400


def test_opensearch_unknown_parameter_is_an_exception(client):
    r = client.get(f"/catalogue/products?collection={TOC}&cloudcover=10")
    assert r.status_code == 400
    assert r.json == {"exceptions": [{"locator": "cloudcover", "exceptionText": "Unsupported parameter 'cloudcover'"}]}
    r = client.get("/catalogue/products")
    assert r.status_code == 400 and r.json["exceptions"][0]["locator"] == "collection"


def test_opensearch_collections(client):
    r = client.get("/catalogue/collections.geojson")
    assert r.status_code == 200
    doc = r.json
    ids = [f["id"] for f in doc["features"]]
    assert "urn:eop:VITO:ESA_WorldCover_10m_2020_V1" in ids and TOC in ids
    toc = next(f for f in doc["features"] if f["id"] == TOC)
    assert toc["properties"]["identifier"] == TOC and toc["properties"]["date"].endswith("/")
    paged = client.get("/catalogue/collections?count=2").json
    assert paged["itemsPerPage"] == 2 and "next" in paged["properties"]["links"]
    assert client.get(f"/catalogue/description.geojson?collection={TOC}").status_code == 200


# ------------------------------------------------------------------------------------ STAC


def _stac(client, path: str) -> dict:
    r = client.get("/stac" + path)
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.json


def test_stac_landing_conformance_collections(client):
    root = _stac(client, "/")
    assert root["id"] == "terra-stac-api" and root["title"] == "Terrascope"
    assert not [l for l in root["links"] if l["rel"] == "child"], "no collection listing on the landing page"
    assert "https://api.stacspec.org/v1.0.0/item-search" in _stac(client, "/conformance")["conformsTo"]
    cols = _stac(client, "/collections")
    assert {c["id"] for c in cols["collections"]} >= {"terrascope-s2-toc-v2", "terrascope-s2-lai-v2"}
    page = _stac(client, "/collections?limit=2")
    nxt = [l for l in page["links"] if l["rel"] == "next"]
    assert len(page["collections"]) == 2 and nxt
    rest = _stac(client, _local(nxt[0]["href"])[len("/stac"):])
    assert not {c["id"] for c in rest["collections"]} & {c["id"] for c in page["collections"]}
    assert _stac(client, "/collections/terrascope-s2-toc-v2")["extent"]["temporal"]["interval"][0][0].startswith("2015")


def test_stac_items_token_paging_sees_every_item_once(client):
    doc = _stac(client, "/collections/terrascope-s2-ndvi-v2/items?limit=60")
    assert doc["numberMatched"] == NDVI_ALL
    seen = []
    while True:
        assert doc["numberReturned"] == len(doc["features"])
        seen += [f["id"] for f in doc["features"]]
        nxt = [l for l in doc["links"] if l["rel"] == "next"]
        if not nxt:
            break
        assert "token=" in nxt[0]["href"]
        doc = _stac(client, _local(nxt[0]["href"])[len("/stac"):])
    assert len(seen) == len(set(seen)) == NDVI_ALL


def test_stac_post_search_paging(client):
    body = {"collections": ["terrascope-s2-toc-v2", "terrascope-s2-ndvi-v2"], "limit": 100}
    seen = []
    while True:
        r = client.post("/stac/search", json=body)
        assert r.status_code == 200, r.get_data(as_text=True)
        doc = r.json
        seen += [(f["collection"], f["id"]) for f in doc["features"]]
        nxt = [l for l in doc["links"] if l["rel"] == "next"]
        if not nxt:
            break
        assert nxt[0]["method"] == "POST" and "token" in nxt[0]["body"]
        body = nxt[0]["body"]
    assert len(seen) == len(set(seen)) == NDVI_ALL + TOC_PRODUCTS


@pytest.mark.parametrize("dt, expected", [
    ("2020-01-01T10:54:31.024Z", 3),
    ("2020-01-01T00:00:00Z/2020-01-02T23:59:59Z", 5),
    ("../2020-01-02T23:59:59Z", 5),
    ("2020-02-01T00:00:00Z/..", 7),
    ("2020-02-01T00:00:00Z/", 7),
    ("2021-06-30/2021-06-30", 2),
])
def test_stac_datetime_filters(client, dt, expected):
    doc = _stac(client, f"/search?collections=terrascope-s2-toc-v2&limit=50&datetime={dt}")
    assert doc["numberMatched"] == expected == len(doc["features"])


def test_stac_bad_requests_are_json_errors(client):
    r = client.get("/stac/search?datetime=yesterday")
    assert r.status_code == 400 and set(r.json) == {"code", "description"}
    r = client.get("/stac/collections/nope")
    assert r.status_code == 404 and r.json["code"] == "NotFoundError"
    r = client.get("/stac/collections/terrascope-s2-toc-v2/items/nope")
    assert r.status_code == 404


def test_stac_query_filter_bbox_ids(client, archive):
    toc = archive.products("terrascope-s2-toc-v2")
    low = sum(1 for p in toc if p.cloud_cover <= 30)
    q = client.post("/stac/search", json={"collections": ["terrascope-s2-toc-v2"], "limit": 100,
                                          "query": {"eo:cloud_cover": {"lte": 30}}}).json
    assert q["numberMatched"] == low
    f = client.post("/stac/search", json={
        "collections": ["terrascope-s2-toc-v2"], "limit": 100, "filter-lang": "cql2-json",
        "filter": {"op": "<=", "args": [{"property": "properties.eo:cloud_cover"}, 30]}}).json
    assert f["numberMatched"] == low
    t = _stac(client, "/search?collections=terrascope-s2-toc-v2&filter=eo:cloud_cover <= 30")
    assert t["numberMatched"] == low
    tile = client.post("/stac/search", json={"collections": ["terrascope-s2-toc-v2"],
                                             "query": {"grid:code": {"eq": "MGRS-31UFT"}}}).json
    assert tile["numberMatched"] == 3
    ids = _stac(client, f"/search?ids={toc[0].id},{toc[1].id}")
    assert {x["id"] for x in ids["features"]} == {toc[0].id, toc[1].id}
    bb = _stac(client, "/search?collections=esa-worldcover-10m-2020-v1&bbox=3.5,51.5,4.0,52.0")
    assert [x["id"] for x in bb["features"]] == ["ESA_WorldCover_10m_2020_v100_N51E003"]


def test_stac_current_item_form(client, archive):
    p = archive.products("terrascope-s2-toc-v2")[0]
    item = _stac(client, f"/collections/terrascope-s2-toc-v2/items/{p.id}")
    assert item["stac_version"] == "1.1.0" and item["collection"] == "terrascope-s2-toc-v2"
    assert item["properties"]["proj:code"] == "EPSG:32631"
    assert item["properties"]["auth:schemes"]["oidc"]["openIdConnectUrl"] == (
        BASE + "/auth/realms/terrascope/.well-known/openid-configuration")
    assert {l["rel"] for l in item["links"]} >= {"self", "parent", "collection", "root"}
    b02 = item["assets"]["B02"]
    f = next(f for f in p.files if f.asset_key == "B02")
    assert b02["href"] == f"{BASE}/download/{f.download_path}"
    assert b02["file:size"] == f.size and b02["roles"] == ["data"] and b02["auth:refs"] == ["oidc"]
    assert b02["alternate"]["local"]["href"] == "file://" + f.platform_path
    assert "gsd" not in b02, "10 m assets have no gsd of their own"
    assert item["assets"]["B05"]["gsd"] == 20.0
    assert b02["updated"] and b02["raster:scale"] == 0.0001 and b02["raster:sampling"] == "area"
    assert b02["bands"] == [{"name": "B02"}] and b02["data_type"] == "int16"
    assert "CLOUDMASK" not in item["assets"], "CLOUDMASK only from V220"
    assert item["assets"]["QUICKLOOK"]["roles"] == ["thumbnail"]
    meta = item["assets"]["metadata"]
    assert meta["roles"] == ["metadata"] and meta["file:size"] > 0
    for key in ("QUICKLOOK", "metadata", "preview"):
        assert "auth:refs" not in item["assets"][key], f"{key}: auth:refs only on data assets"
    assert "REQUEST=getMap" in item["assets"]["preview"]["href"]
    v220 = next(q for q in archive.products("terrascope-s2-toc-v2") if q.title.endswith("_V220"))
    item = _stac(client, f"/collections/terrascope-s2-toc-v2/items/{v220.id}")
    assert item["assets"]["CLOUDMASK"]["roles"] == ["data-mask", "cloud"]
    assert item["assets"]["CLOUDMASK"]["auth:refs"] == ["oidc"]


def test_stac_older_item_form(client, archive):
    p = archive.products("terrascope-s2-lai-v2")[0]
    item = _stac(client, f"/collections/terrascope-s2-lai-v2/items/{p.id}")
    assert item["stac_version"] == "1.0.0"
    assert item["links"] == [{"rel": "collection", "href": "terrascope_s2_lai_v2", "type": "application/json"}]
    assert set(item["assets"]) == {f.name for f in p.files}
    for f in p.files:
        a = item["assets"][f.name]
        assert "file:size" not in a
        assert a["alternate"] == {"MEP": {"href": f.platform_path}}
        assert a["href"] == f"{BASE}/download/{f.download_path}"


def test_stac_leaves_out_nothing_and_uses_sfeos_default_order(client, archive):
    total = sum(len(archive.products(c.stac_id)) for c in archive.collections if c.in_stac)
    doc = _stac(client, "/search?limit=10000")
    assert doc["numberMatched"] == total == len(doc["features"])
    times = [datetime.fromisoformat(f["properties"]["datetime"].replace("Z", "+00:00")) for f in doc["features"]]
    assert times == sorted(times, reverse=True)
    assert times[0].tzinfo == timezone.utc


# ------------------------------------------------------------------------------------ shapes


def test_opensearch_empty_groups_angle_and_sigma0(client):
    s1 = _products(client, "collection=urn:eop:VITO:CGS_S1_GRD_SIGMA0_L1&productType=SIGMA0")
    assert s1["totalResults"] == 4
    links = s1["features"][0]["properties"]["links"]
    assert links["related"] == [] and links["previews"] == [], "empty groups are sent as []"
    assert [l["title"] for l in links["data"]] == ["VV", "VH", "angle"]
    assert links["alternates"][0]["type"] == "application/vnd.iso.19139+xml" and links["alternates"][0]["length"] > 0


def test_coherence_is_dated_by_its_first_acquisition_and_filed_under_its_second(client, archive):
    coh = archive.products("terrascope-s1-slc-coherence-v1")[0]
    assert coh.end_datetime > coh.datetime
    assert f"/{coh.end_datetime:%Y/%m/%d}/" in coh.files[0].platform_path
    assert f"/{coh.datetime:%Y/%m/%d}/" not in coh.files[0].platform_path
    item = _stac(client, f"/collections/terrascope-s1-slc-coherence-v1/items/{coh.id}")
    assert item["properties"]["end_datetime"].startswith(f"{coh.end_datetime:%Y-%m-%dT%H:%M:%S}")
    # A search on the second acquisition's day finds it: the acquisition spans both.
    day = f"{coh.end_datetime:%Y-%m-%d}"
    found = _stac(client, f"/search?collections=terrascope-s1-slc-coherence-v1&datetime={day}/{day}")
    assert coh.id in [f["id"] for f in found["features"]]
    os_found = _products(client, f"collection=urn:eop:VITO:TERRASCOPE_S1_SLC_COHERENCE_V1&start={day}&end={day}")
    assert coh.title in [f["properties"]["title"] for f in os_found["features"]]


def test_shape_paths_and_download_prefixes(archive):
    def first(stac_id):
        return archive.products(stac_id)[0].files[0]

    s5p = first("terrascope-s5p-l3-co-td-v1")
    assert s5p.platform_path.startswith("/data/MTDA/TERRASCOPE_Sentinel5P/L3_CO_TD_V1/2020/01/S5P_OFFL_L3_CO_TD_")
    assert s5p.download_path.startswith("Sentinel5P/L3_CO_TD_V1/2020/01/")
    ag = first("agera5-v1")
    assert ag.platform_path == "/data/MTDA/AgERA5/2020/20200101/AgERA5_dewpoint-temperature_20200101.tif"
    assert ag.download_path == ag.platform_path[len("/data/MTDA/"):], "AgERA5: a plain swap"
    dem = first("cop-dem-glo-30m-cog")
    assert dem.platform_path.count("/") == 6 and dem.platform_path.startswith("/data/MTDA/DEM/COPERNICUS-DEM-30/")
    cgls = [p.files[0].platform_path for p in archive.products("cgls-fapar300-v1-global")]
    folders = [path.rsplit("/", 1)[0] for path in cgls]
    assert folders.count("/data/MTDA/BIOPAR/FAPAR300_V1_GLOBAL/2020/20200110") == 3, "three versions, one folder"
    head = archive.products("cgls-fapar300-v1-global")[0].files[0].read(0, 4)
    assert head == b"CDF\x01", "a classic netCDF file"
    coh = first("terrascope-s1-slc-coherence-v1")
    assert coh.download_path.startswith("Sentinel1/SLC_COHERENCE/")


def test_raster_layouts_have_their_structure(archive):
    import rasterio

    files = {f.layout: f for f in archive.all_files() if f.layout in ("cog", "tiled", "striped")}
    expected = {"cog": ((512, 512), True, "deflate", "COG"), "tiled": ((256, 256), False, "lzw", None),
                "striped": ((16, 1536), False, "deflate", None)}
    for layout, (block, overviews, compression, tag) in expected.items():
        f = files[layout]
        with rasterio.open(f.read.args[0]) as ds:
            assert (ds.width, ds.height, ds.dtypes[0]) == (1536, 1536, "uint16"), layout
            assert ds.block_shapes[0] == block, layout
            assert bool(ds.overviews(1)) == overviews, layout
            assert ds.compression.value.lower() == compression, layout
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == tag, layout
            sizes = [ds.block_size(1, r, c) for r in range(2) for c in range(1 if layout == "striped" else 2)]
            assert len(set(sizes)) == len(sizes), f"{layout}: block byte counts should vary: {sizes}"
            raw = block[0] * block[1] * 2
            assert all(0.4 * raw < s < 1.2 * raw for s in sizes), f"{layout}: blocks compress to nothing: {sizes}"
