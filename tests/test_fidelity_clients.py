"""Fidelity: the real clients, unchanged, work against the emulator.

terracatalogueclient 0.1.19 (OpenSearch + token + download) and pystac-client
(STAC API) talk to a running emulator over 127.0.0.1 (fixture `emulator`).
"""
from __future__ import annotations

from pathlib import Path

import pytest

TOC = "urn:eop:VITO:TERRASCOPE_S2_TOC_V2"
LAI = "urn:eop:VITO:TERRASCOPE_S2_LAI_V2"


@pytest.fixture
def tcc(emulator, tmp_path: Path):
    import requests_auth
    from terracatalogueclient import Catalogue
    from terracatalogueclient.config import CatalogueConfig

    # requests-auth keeps tokens in one process-wide cache keyed by the token URL;
    # the emulator fixture revokes all tokens between tests, so start clean.
    requests_auth.OAuth2.token_cache.clear()
    ini = tmp_path / "emulator.ini"
    auth = emulator.base_url + "/auth/realms/terrascope/protocol/openid-connect"
    ini.write_text(
        "[Catalogue]\n"
        f"URL = {emulator.base_url}/catalogue/\n"
        "[Auth]\n"
        "ClientId = terracatalogueclient\n"
        "ClientSecret =\n"
        f"TokenEndpoint = {auth}/token\n"
        f"AuthorizationEndpoint = {auth}/auth\n"
        "InteractiveSupported = false\n"
        "NonInteractiveSupported = true\n"
    )
    return Catalogue(CatalogueConfig.from_file(str(ini)))


def test_tcc_lists_collections(tcc):
    ids = {c.id for c in tcc.get_collections()}
    assert {TOC, LAI, "urn:eop:VITO:CGS_S1_GRD_SIGMA0_L1", "urn:eop:VITO:ESA_WorldCover_10m_2020_V1"} <= ids


def test_tcc_counts_and_pages_through_products(tcc, emulator):
    total = tcc.get_product_count(TOC)
    assert total == 12
    # count=4 forces three pages through the `next` links
    products = list(tcc.get_products(TOC, count=4))
    assert len(products) == total == len({p.id for p in products})
    pages = [r for r in emulator.requests("opensearch") if r["path"].endswith("/products")]
    assert len(pages) >= 1 + 3, "the client must have followed next links"
    p = products[0]
    assert p.id == f"{TOC}:{p.title}"
    assert p.beginningDateTime.year in (2020, 2021)
    assert len(p.data) == 11 and p.alternates[0].title == "Inspire metadata"
    assert all(f.length and f.length > 0 for f in p.data)


def test_tcc_filters(tcc):
    import datetime as dt

    few = list(tcc.get_products(TOC, start=dt.date(2020, 1, 1), end=dt.date(2020, 1, 2)))
    assert len(few) == 5
    tiles = list(tcc.get_products(TOC, tileId="31UFT", cloudCover=(0, 100)))
    assert len(tiles) == 3
    assert len(list(tcc.get_products(TOC, limit=2))) == 2


def test_tcc_unknown_parameter_raises_search_exception(tcc):
    from terracatalogueclient.exceptions import SearchException

    with pytest.raises(SearchException) as info:
        list(tcc.get_products(TOC, notAParameter="x"))
    assert info.value.search_exceptions, "the OpenSearch exception body must be parsed"


def test_tcc_mep_links(tcc):
    products = list(tcc.get_products(TOC, accessedFrom="MEP", limit=3))
    assert len(products) == 3
    for p in products:
        for f in p.data + p.related + p.previews + p.alternates:
            if f.title == "WMS":
                # A rendering service, not a file: it stays http(s) (and has no length).
                assert f.get_protocol() == "http" and f.length is None
                continue
            assert f.href.startswith("file:///data/MTDA/TERRASCOPE_Sentinel2/TOC_V2/"), f.href
            assert f.get_protocol() == "file"


def test_tcc_authenticates_and_downloads_with_catalogue_length(tcc, tmp_path: Path):
    product = next(iter(tcc.get_products(TOC, tileId="31UES", limit=1)))
    small = min(product.related, key=lambda f: f.length)
    tcc.authenticate_non_interactive("demo", "demo")
    tcc.download_file(small, str(tmp_path / "out"))
    out = tmp_path / "out" / small.href.rsplit("/", 1)[1]
    assert out.stat().st_size == small.length
    assert out.read_bytes()[:4] == b"II*\x00"


def test_tcc_download_of_link_without_length(tcc, tmp_path: Path):
    product = next(iter(tcc.get_products(LAI, limit=1)))
    xml = product.alternates[0]
    assert xml.length is None
    tcc.authenticate_non_interactive("demo", "demo")
    tcc.download_file(xml, str(tmp_path))
    assert (tmp_path / xml.href.rsplit("/", 1)[1]).read_bytes().startswith(b"<?xml")


def test_tcc_download_unauthenticated_is_refused(tcc, tmp_path: Path):
    from terracatalogueclient.exceptions import ProductDownloadException

    product = next(iter(tcc.get_products(TOC, limit=1)))
    with pytest.raises(ProductDownloadException):
        tcc.download_file(product.data[0], str(tmp_path))


def test_pystac_client_searches_and_pages_everything(emulator):
    from pystac_client import Client

    client = Client.open(emulator.base_url + "/stac/")
    assert client.id == "terra-stac-api"
    search = client.search(collections=["terrascope-s2-toc-v2"], limit=4, max_items=None)
    items = list(search.items())
    assert len(items) == 12 == len({i.id for i in items})
    assert search.matched() == 12
    stac_pages = [r for r in emulator.requests("stac") if r["path"].endswith("/search")]
    assert len(stac_pages) >= 3, "pystac-client must have followed next links"
    b02 = items[0].assets["B02"]
    assert b02.href.startswith(emulator.base_url + "/download/Sentinel2/TOC_V2/")
    assert b02.extra_fields["file:size"] > 0


def test_pystac_client_get_method_filters_and_older_form(emulator):
    from pystac_client import Client

    client = Client.open(emulator.base_url + "/stac/")
    search = client.search(collections=["terrascope-s2-toc-v2"], datetime="2020-01-01/2020-01-02",
                           limit=2, method="GET")
    assert len(list(search.items())) == 5
    cloudy = client.search(collections=["terrascope-s2-toc-v2"], limit=3,
                           filter={"op": "<=", "args": [{"property": "properties.eo:cloud_cover"}, 30.0]})
    covers = [i.properties["eo:cloud_cover"] for i in cloudy.items()]
    assert covers and all(c <= 30.0 for c in covers)
    lai = list(client.search(collections=["terrascope-s2-lai-v2"], limit=3).items_as_dicts())
    assert len(lai) == 10
    assert all(a["alternate"]["MEP"]["href"].startswith("/data/MTDA/") for i in lai for a in i["assets"].values())
    cols = {c.id for c in client.get_collections()}
    assert "terrascope-s2-toc-v2" in cols
    items = list(client.get_collection("terrascope-s1-grd-sigma0-v1").get_items())
    assert len(items) == 4


def test_tcc_sigma0_product_type_search(tcc):
    """A script that filters productType=SIGMA0 finds the S1 sigma0 products, with
    the angle file among the data links and the xml as Inspire metadata with a length."""
    products = list(tcc.get_products("urn:eop:VITO:CGS_S1_GRD_SIGMA0_L1", productType="SIGMA0"))
    assert len(products) == 4
    assert list(tcc.get_products("urn:eop:VITO:CGS_S1_GRD_SIGMA0_L1", productType="GRD")) == []
    for p in products:
        assert p.properties["productInformation"]["productType"] == "SIGMA0"
        assert sorted(f.title for f in p.data) == ["VH", "VV", "angle"]
        xml = p.alternates[0]
        assert xml.title == "Inspire metadata" and xml.type == "application/vnd.iso.19139+xml" and xml.length > 0
        assert p.related == [], "an empty link group is an empty list"


def test_tcc_shapes_of_section_10(tcc):
    """WorldCover's title, type, date and quality file; NDVI's product names and 4 files."""
    wc = list(tcc.get_products("urn:eop:VITO:ESA_WorldCover_10m_2020_V1"))
    assert wc and all(not p.title.endswith("_Map") for p in wc)
    for p in wc:
        assert p.properties["productInformation"]["productType"] == "ESA_WORLDCOVER_10M"
        assert p.beginningDateTime.isoformat().startswith("2020-12-31T23:59:59")
        assert "platform" not in p.properties["acquisitionInformation"][0]
        assert [f.href.rsplit("_", 1)[1] for f in p.related] == ["InputQuality.tif"]
    ndvi = next(iter(tcc.get_products("urn:eop:VITO:TERRASCOPE_S2_NDVI_V2", limit=1)))
    assert ndvi.title.endswith("_NDVI_10M_V200")
    files = ndvi.data + ndvi.related + [f for f in ndvi.previews if f.title != "WMS"] + ndvi.alternates
    names = sorted(f.href.rsplit("/", 1)[1] for f in files)
    stem = ndvi.title[: -len("_NDVI_10M_V200")]
    assert names == sorted([f"{stem}_NDVI_10M_V200.tif", f"{stem}_SCENECLASSIFICATION_20M_V200.tif",
                            f"{stem}_NDVI_QUICKLOOK_V200.tif", f"{stem}_NDVI_10M_V200.xml"])
    assert all(f"/{stem}_NDVI_V200/" in f.href for f in files)


def test_pystac_client_reads_current_item_details(emulator):
    from pystac_client import Client

    client = Client.open(emulator.base_url + "/stac/")
    item = next(client.search(collections=["terrascope-s2-toc-v2"], ids=["S2B_20210630T104619_31UFS_TOC_V220"]).items())
    assert {"B01", "CLOUDMASK", "metadata", "preview", "QUICKLOOK"} <= set(item.assets)
    assert item.assets["metadata"].media_type == "application/xml"
    assert "auth:refs" in item.assets["B04"].extra_fields and "auth:refs" not in item.assets["metadata"].extra_fields
    v200, v210 = (next(client.search(collections=["terrascope-s2-toc-v2"], ids=[f"S2A_20200215T105021_31UFS_TOC_{v}"])
                       .items()) for v in ("V200", "V210"))
    assert v200.datetime == v210.datetime, "two versions of one acquisition"
    assert "CLOUDMASK" not in v200.assets and "CLOUDMASK" not in v210.assets, "CLOUDMASK only from V220"
