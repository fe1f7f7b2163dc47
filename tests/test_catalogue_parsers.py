"""The catalogue parsers on real captured responses and on hand-made variants."""
from __future__ import annotations

import copy
import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import pytest

from terrafs.catalogue import opensearch, stac
from terrafs.catalogue.model import Filter
from terrafs.catalogue.parse import (
    link_size,
    local_path,
    parse_datetime,
    parse_interval,
    post_filter,
    query_range,
    safe_name,
)
from terrafs.text import redact_url

FIXTURES = Path(__file__).parent / "fixtures"  # real captured responses, kept as they are
UTC = timezone.utc


@pytest.fixture(scope="module")
def os_page() -> dict:
    return json.loads((FIXTURES / "opensearch_products_real.json").read_text())


@pytest.fixture(scope="module")
def stac_item() -> dict:
    return json.loads((FIXTURES / "stac_item_oldform_real.json").read_text())


def _http_form(feature: dict) -> dict:
    """The same feature as the default (HTTP) access mode would give it."""
    text = json.dumps(feature).replace(
        "file:///data/MTDA/TERRASCOPE_Sentinel2/", "https://services.terrascope.be/download/Sentinel2/")
    return json.loads(text)


# ---- small helpers ---------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("2022-02-11T11:33:21.024Z", datetime(2022, 2, 11, 11, 33, 21, 24000, UTC)),
    ("2023-02-20T07:49:41.024000Z", datetime(2023, 2, 20, 7, 49, 41, 24000, UTC)),
    ("2020-01-02T23:59:59.999999999Z", datetime(2020, 1, 2, 23, 59, 59, 999999, UTC)),
    ("2020-01-01T00:00:00+00:00", datetime(2020, 1, 1, tzinfo=UTC)),
    ("2020-01-01T02:00:00+02:00", datetime(2020, 1, 1, tzinfo=UTC)),
    ("2020-01-01T10:00:00", datetime(2020, 1, 1, 10, tzinfo=UTC)),
    ("2020-01-01", datetime(2020, 1, 1, tzinfo=UTC)),
    ("2020-01-01T10:00Z", datetime(2020, 1, 1, 10, tzinfo=UTC)),
])
def test_parse_datetime_accepts_every_seen_form(text, expected):
    assert parse_datetime(text) == expected


@pytest.mark.parametrize("bad", [None, "", "yesterday", "2020-13-01", 17, "2020-02-30T00:00:00Z"])
def test_parse_datetime_rejects_garbage(bad):
    assert parse_datetime(bad) is None


def test_parse_interval_open_closed_and_instant():
    assert parse_interval("2017-06-15T00:00:00Z/") == (datetime(2017, 6, 15, tzinfo=UTC), None)
    assert parse_interval("2017-06-15/2018-01-01") == (
        datetime(2017, 6, 15, tzinfo=UTC), datetime(2018, 1, 1, 23, 59, 59, 999999, UTC))
    assert parse_interval("2017-06-15T00:00:00Z") == (datetime(2017, 6, 15, tzinfo=UTC), None)


@pytest.mark.parametrize("value, expected", [
    (12, 12), ("12", 12), (12.0, 12), ("12.0", 12), (None, None), ("x", None), (-1, None),
    (True, None), (1.5, None),
])
def test_link_size_tolerates_strings_and_floats(value, expected):
    assert link_size(value) == expected


@pytest.mark.parametrize("raw, expected", [
    ("S2A_x", "S2A_x"), ("../x", ".._x"), ("a/b", "a_b"), ("\x00", None), ("..", None),
    (".", None), ("", None), ("a\x00b\x1fc", "abc"), ("  ", None), ("x" * 300, None), (None, None),
])
def test_safe_name(raw, expected):
    assert safe_name(raw) == expected


def test_local_path_with_and_without_file_scheme():
    assert local_path("file:///data/MTDA/a/b.tif") == "/data/MTDA/a/b.tif"
    assert local_path("/data/MTDA/a/b.tif") == "/data/MTDA/a/b.tif"
    assert local_path("https://x/a.tif") is None
    assert local_path("relative/a.tif") is None


def test_redact_url_drops_user_info():
    assert "secret" not in redact_url("https://user:secret@host:8443/x?y=1")
    assert redact_url("https://user:secret@host:8443/x?y=1") == "https://host:8443/x?y=1"


# ---- OpenSearch fixture ----------------------------------------------------


def test_opensearch_fixture_products(os_page):
    products = [opensearch.parse_feature(f, "TERRASCOPE_S2_TOC_V2") for f in os_page["features"]]
    assert [p.title for p in products] == [
        "S2A_20220211T113321_29SMC_TOC_V210", "S2A_20220211T113321_29SMD_TOC_V210",
        "S2A_20220211T113321_29SNC_TOC_V210", "S2A_20220211T113321_29SND_TOC_V210"]
    first = products[0]
    assert first.id == "urn:eop:VITO:TERRASCOPE_S2_TOC_V2:S2A_20220211T113321_29SMC_TOC_V210"
    assert first.collection == "TERRASCOPE_S2_TOC_V2"
    assert first.datetime == datetime(2022, 2, 11, 11, 33, 21, 24000, UTC)
    # The folder comes from the platform paths (file:// links), not the WMS URL.
    assert first.folder == "S2A_20220211T113321_29SMC_TOC_V210"
    assert json.loads(first.record)["id"] == first.id
    # accessedFrom=MEP answer: the only http link is the WMS preview, a rendering service, not a file.
    assert first.files == ()


def test_opensearch_fixture_every_link(os_page):
    props = os_page["features"][0]["properties"]
    links = opensearch.feature_links(props)
    by_name = {link.basename: link for link in links if link.local_path}
    assert len(links) == 20 and len(by_name) == 19
    b02 = by_name["S2A_20220211T113321_29SMC_TOC-B02_10M_V210.tif"]
    assert b02.size == 106320625 and b02.role == "data" and b02.title == "TOC-B02_10M"
    assert b02.local_path == ("/data/MTDA/TERRASCOPE_Sentinel2/TOC_V2/2022/02/11/"
                              "S2A_20220211T113321_29SMC_TOC_V210/S2A_20220211T113321_29SMC_TOC-B02_10M_V210.tif")
    assert by_name["S2A_20220211T113321_29SMC_TOC_V210.xml"].role == "alternates"
    assert by_name["S2A_20220211T113321_29SMC_TOC_V210.xml"].size == 39920
    assert by_name["S2A_20220211T113321_29SMC_AOT_60M_V210.tif"].role == "related"
    # Every link of the capture has a length except the WMS preview.
    assert [link.title for link in links if link.size is None] == ["WMS"]


def test_opensearch_http_form_every_file_with_relpath_and_size(os_page):
    feature = _http_form(os_page["features"][0])
    p = opensearch.parse_feature(feature, "TERRASCOPE_S2_TOC_V2")
    sizes = {f.relpath: f.size for f in p.files}
    assert len(p.files) == 19  # every link but the WMS preview
    assert sizes["S2A_20220211T113321_29SMC_TOC-B02_10M_V210.tif"] == 106320625
    assert sizes["S2A_20220211T113321_29SMC_TOC_QUICKLOOK_V210.tif"] == 275598
    assert not any(f.href.startswith("https://services.terrascope.be/wms") for f in p.files)
    assert p.folder == "S2A_20220211T113321_29SMC_TOC_V210"
    assert all(f.local_path is None for f in p.files)
    # Pairing with the MEP answer's file:// links by base name fills local paths.
    mep = {link.basename: link.local_path
           for link in opensearch.feature_links(os_page["features"][0]["properties"]) if link.local_path}
    paired = opensearch.parse_feature(feature, "TERRASCOPE_S2_TOC_V2", mep)
    with_paths = [f for f in paired.files if f.local_path]
    assert len(with_paths) == 19
    assert all(f.local_path.endswith("/" + f.relpath) for f in with_paths)


def test_opensearch_singular_alternate_and_date_only():
    feature = {
        "type": "Feature", "id": "urn:eop:VITO:X:P1",
        "properties": {
            "date": "2020-05-01", "title": "P1",
            "links": {"alternate": {"href": "https://h/download/X/P1/P1.xml", "length": "10"},
                      "data": [{"href": "https://h/download/X/P1/10M/P1_B02.tif", "length": 5.0}]},
        },
    }
    p = opensearch.parse_feature(feature, "X")
    assert p.datetime == datetime(2020, 5, 1, tzinfo=UTC)
    assert {(f.relpath, f.size, f.role) for f in p.files} == {
        ("P1.xml", 10, "alternates"), ("10M/P1_B02.tif", 5, "data")}
    assert p.folder == "P1"


def test_opensearch_datetime_from_acquisition_parameters():
    props = {"acquisitionInformation": [{"platform": {}},
                                        {"acquisitionParameters": {"beginningDateTime": "2019-04-24T14:37:59Z"}}]}
    assert opensearch.feature_datetime(props) == datetime(2019, 4, 24, 14, 37, 59, tzinfo=UTC)
    props = {"acquisitionInformation": {"acquisitionParameters": {"beginningDateTime": "2019-04-24"}}}
    assert opensearch.feature_datetime(props) == datetime(2019, 4, 24, tzinfo=UTC)


def test_opensearch_resolution_subfolders_share_one_folder():
    def feature(res: str) -> dict:
        prod = "S2B_20190424T143759_19HCC_FAPAR_V200"
        name = f"S2B_20190424T143759_19HCC_FAPAR_{res}_V200.tif"
        return {"id": f"urn:eop:VITO:FAPAR:{prod}_{res}", "properties": {
            "date": "2019-04-24T14:37:59Z", "title": f"{prod.replace('_V200', '')}_{res}_V200",
            "links": {"data": [{"href": f"https://h/download/Sentinel2/FAPAR_V2/2019/04/24/{prod}/{res}/{name}",
                                "length": 7}]}}}
    p10, p20 = (opensearch.parse_feature(feature(r), "FAPAR") for r in ("10M", "20M"))
    assert p10.folder == p20.folder == "S2B_20190424T143759_19HCC_FAPAR_V200"
    assert p10.files[0].relpath == "10M/S2B_20190424T143759_19HCC_FAPAR_10M_V200.tif"
    assert p20.files[0].relpath == "20M/S2B_20190424T143759_19HCC_FAPAR_20M_V200.tif"


@pytest.mark.parametrize("title, folder", [("../x", ".._x"), ("a/b", "a_b")])
def test_opensearch_hostile_titles_become_safe_folders(title, folder):
    feature = {"id": "urn:x:" + title, "properties": {"date": "2020-01-01T00:00:00Z", "title": title,
                                                      "links": {}}}
    p = opensearch.parse_feature(feature, "X")
    assert p.folder == folder and "/" not in p.folder


def test_opensearch_nul_title_and_hostile_file_names_are_skipped(caplog):
    feature = {"id": "urn:x:nul", "properties": {"date": "2020-01-01T00:00:00Z", "title": "\x00",
                                                 "links": {}}}
    with caplog.at_level(logging.WARNING):
        assert opensearch.parse_feature(feature, "X") is None
    assert "no safe folder name" in caplog.text
    feature = {"id": "urn:x:p", "properties": {"date": "2020-01-01T00:00:00Z", "title": "p", "links": {
        "data": [{"href": "https://h/download/p/..", "length": 1},
                 {"href": "https://h/download/p/%2E%2E", "length": 1},
                 {"href": "https://h/download/p/a%2Fb.tif", "length": 2},
                 {"href": "https://h/download/p/ok.tif", "length": 3}]}}}
    p = opensearch.parse_feature(feature, "X")
    names = [f.relpath for f in p.files]
    assert "ok.tif" in names and ".." not in names
    assert all("/" not in n and n not in (".", "..") for n in names)


def test_opensearch_other_schemes_are_not_files():
    feature = {"id": "urn:x:p", "properties": {"date": "2020-01-01T00:00:00Z", "title": "p", "links": {
        "data": [{"href": "s3://bucket/p/a.tif"}, {"href": "ftp://h/p/b.tif"},
                 {"href": "http://h/download/p/c.tif"}]}}}
    assert [f.relpath for f in opensearch.parse_feature(feature, "X").files] == ["c.tif"]


def test_opensearch_collection_ids_and_dates():
    c = opensearch.parse_collection({"id": "urn:eop:VITO:TERRASCOPE_S2_TOC_V2", "properties": {
        "title": "TOC", "date": "2015-07-06T00:00:00Z/"}})
    assert (c.id, c.remote_id, c.title) == ("TERRASCOPE_S2_TOC_V2", "urn:eop:VITO:TERRASCOPE_S2_TOC_V2", "TOC")
    assert c.start == datetime(2015, 7, 6, tzinfo=UTC) and c.end is None
    c = opensearch.parse_collection({"id": "urn:ogc:def:EOP:VITO:VGT_S10", "properties": {
        "date": "1998-04-01T00:00:00Z/2014-05-31T23:59:59Z"}})
    assert c.id == "VGT_S10" and c.end == datetime(2014, 5, 31, 23, 59, 59, tzinfo=UTC)
    c = opensearch.parse_collection({"id": "urn:x:Y", "properties": {"acquisitionInformation": [
        {"acquisitionParameters": {"beginningDateTime": "2020-01-01T00:00:00Z"}}]}})
    assert c.start == datetime(2020, 1, 1, tzinfo=UTC)


# ---- STAC fixture ------------------------------------------------------------


def test_stac_old_form_item(stac_item):
    p = stac.parse_item(stac_item, "terrascope-s2-toc-v2")
    assert p.id == p.title == p.folder == "S2A_20230220T074941_38SKG_TOC_V210"
    assert p.collection == "terrascope-s2-toc-v2"
    assert p.datetime == datetime(2023, 2, 20, 7, 49, 41, 24000, UTC)
    assert len(p.files) == len(stac_item["assets"]) == 19
    # Assets keyed by file name: relpath is the href's base name, which equals the key here.
    assert [f.relpath for f in p.files] == list(stac_item["assets"])
    assert all(f.size is None for f in p.files)  # the older form has no file:size
    for f in p.files:
        assert f.local_path == ("/data/MTDA/TERRASCOPE_Sentinel2/TOC_V2/2023/02/20/"
                                "S2A_20230220T074941_38SKG_TOC_V210/" + f.relpath)
        assert f.href.startswith("https://services.terrascope.be/download/Sentinel2/TOC_V2/2023/02/20/")
    roles = {f.relpath: f.role for f in p.files}
    assert roles["S2A_20230220T074941_38SKG_TOC_QUICKLOOK_V210.tif"] == "thumbnail"
    assert roles["S2A_20230220T074941_38SKG_TOC_V210.xml"] == "metadata"
    assert stac.item_tile_id(stac_item["properties"]) == "38SKG"
    assert json.loads(p.record) == stac_item


def test_stac_current_form_item(stac_item):
    item = copy.deepcopy(stac_item)
    key, asset = next(iter(item["assets"].items()))
    item["assets"] = {"AOT": {**asset, "file:size": "219373",
                              "alternate": {"Local": {"href": "file://" + asset["alternate"]["MEP"]["href"]}}},
                      "B02": {"href": asset["href"].replace("AOT_60M", "TOC-B02_10M"), "file:size": 7.0,
                              "roles": ["data"]},
                      "local-only": {"href": "file:///data/MTDA/x.tif"}}
    del item["properties"]["datetime"]
    item["properties"]["grid:code"] = "MGRS-31TCN"
    p = stac.parse_item(item, "terrascope-s2-toc-v2")
    assert p.datetime == datetime(2023, 2, 20, 7, 49, 41, 24000, UTC)  # from start_datetime
    assert [(f.relpath, f.size, f.title) for f in p.files] == [
        (key, 219373, "AOT"), ("S2A_20230220T074941_38SKG_TOC-B02_10M_V210.tif", 7, "B02")]
    assert p.files[0].local_path == asset["alternate"]["MEP"]["href"]
    assert stac.item_tile_id(item["properties"]) == "31TCN"


def test_stac_item_without_datetime_is_skipped(stac_item, caplog):
    item = copy.deepcopy(stac_item)
    for k in ("datetime", "start_datetime", "end_datetime"):
        item["properties"].pop(k)
    with caplog.at_level(logging.WARNING):
        assert stac.parse_item(item, "c") is None
    assert "no datetime" in caplog.text


def test_stac_collection_extent():
    c = stac.parse_collection({"id": "terrascope-s2-toc-v2", "title": "TOC", "extent": {
        "temporal": {"interval": [["2015-07-06T00:00:00Z", None]]}}})
    assert (c.id, c.remote_id, c.title) == ("terrascope-s2-toc-v2", "terrascope-s2-toc-v2", "TOC")
    assert c.start == datetime(2015, 7, 6, tzinfo=UTC) and c.end is None
    assert stac.parse_collection({"id": "../etc"}) is None


# ---- filters -----------------------------------------------------------------


def test_query_range_intersects_with_the_filter():
    a, b = datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 1, 31, tzinfo=UTC)
    flt = Filter(start=datetime(2020, 1, 10, tzinfo=UTC), end=datetime(2020, 3, 1, tzinfo=UTC))
    assert query_range(a, b, flt) == (datetime(2020, 1, 10, tzinfo=UTC), b, True)
    assert query_range(a, b, Filter(start=datetime(2021, 1, 1, tzinfo=UTC)))[2] is False
    assert query_range(None, None, None) == (None, None, True)


def test_post_filter_on_cloud_tile_and_time(stac_item):
    p = stac.parse_item(stac_item, "c")
    assert post_filter(p, None, None, 7.156, "38SKG", Filter(cloud_cover_max=10, tile_ids=("38skg",)))
    assert not post_filter(p, None, None, 7.156, "38SKG", Filter(cloud_cover_max=5))
    assert not post_filter(p, None, None, None, "38SKG", Filter(tile_ids=("31UFS",)))
    # No tile field: the tile token of the title decides.
    assert post_filter(p, None, None, None, None, Filter(tile_ids=("38SKG",)))
    assert not post_filter(p, datetime(2023, 2, 21, tzinfo=UTC), None, None, None, None)
