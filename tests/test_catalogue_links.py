"""Links of catalogue records (catalogue/links.py): the fast split of plain hrefs gives what
urllib's urlsplit gives, and AssetTrim (catalogue/fields.py) leaves out only what the tree does
not read."""
from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pytest

from terrafs.catalogue.fields import ASSET_READ, TREE_FIELDS, AssetTrim
from terrafs.catalogue.links import Link, href_path, http_url, local_path

HREFS = [
    "https://services.terrascope.be/download/Sentinel2/TOC_V2/2020/01/15/P/P_B02_10M_V220.tif",
    "HTTPS://Host.example/a/b.tif", "http://host", "http://host/", "http:///x/y.tif", "http://h/p?",
    "http://h/p?x=1", "http://h/p#frag?x", "http://h/p?x#y", "http://h:8080/a%20b/c%2Fd.tif",
    "http://u:p@h/a.tif", "http://[::1]/a.tif", "http://[::1/a.tif", "https://h/a b.tif", "http://h/\x1b[31m.tif",
    "http://h/\u202ex.tif", "http://h/é.tif", "httpſ://h/a.tif", "http://h/a|b{c}`d.tif", "ftp://h/a.tif",
    "file:///data/a.tif", "/data/a.tif", "http:/h/a",
    "", "s3://bucket/key.tif", "http://h/a\tb.tif", " http://h/a.tif", "http://h/wms?SERVICE=WMS&REQUEST=GetMap",
]


def _reference(href: str) -> tuple[bool, str, bool]:
    if not http_url(href):
        return False, href_path(href), False
    return True, href_path(href), bool(urlsplit(href).query)


@pytest.mark.parametrize("href", HREFS)
def test_a_link_is_split_as_urlsplit_splits_it(href):
    link = Link(href)
    assert (link.is_http, link.path, link.has_query) == _reference(href)


def _local_reference(href: str) -> str | None:
    import posixpath
    parts = urlsplit(href)
    if parts.scheme.lower() == "file":
        path = unquote(parts.path)
    elif parts.scheme == "" and href.startswith("/"):
        path = href
    else:
        return None
    path = posixpath.normpath(path)
    return path if path.startswith("/") and "\x00" not in path else None


@pytest.mark.parametrize("href", [
    "file:///data/MTDA/a.tif", "FILE:///data/a%20b.tif", "file:////data/a.tif", "file:///data/../etc/x",
    "file:///data/a.tif?x=1", "file:///data/a.tif#f", "file://host/data/a.tif", "file:///data/a\tb.tif",
    "file:///data/é.tif", "/data/a.tif", "file:///data/%00x", "file:data/a.tif"])
def test_a_platform_path_is_read_as_before(href):
    assert local_path(href) == _local_reference(href)


ITEM = {"id": "P", "assets": {
    "B02": {"href": "http://h/P/B02.tif", "type": "image/tiff", "title": "B02", "file:size": 10, "roles": ["data"],
            "alternate": {"local": {"href": "file:///data/P/B02.tif"}}, "proj:transform": [1.0] * 9,
            "raster:bands": [{"nodata": 0}], "description": "blue"},
    "odd.key": {"href": "http://h/P/x.tif", "proj:shape": [1, 2]},
    "B03": {"href": "http://h/P/B03.tif", "weird,name": 1, "nodata": 0},
    "meta": "not an asset"}}


def test_asset_trim_excludes_only_members_the_tree_does_not_read():
    trim = AssetTrim(limit=10)
    assert trim.fields("c", TREE_FIELDS) == TREE_FIELDS, "nothing learnt: the tree's fields as they are"
    trim.learn("c", ITEM)
    trim.learn("c", "not an item")
    fields = trim.fields("c", TREE_FIELDS)
    assert fields["include"] == TREE_FIELDS["include"]
    added = fields["exclude"][len(TREE_FIELDS["exclude"]):]
    assert set(added) == {"assets.B02.proj:transform", "assets.B02.raster:bands", "assets.B02.description",
                          "assets.B03.nodata"}
    assert not any(name.rsplit(".", 1)[1] in ASSET_READ for name in added)
    assert trim.fields("other", TREE_FIELDS) == TREE_FIELDS, "learnt per collection"


def test_asset_trim_keeps_the_largest_members_within_its_limit():
    trim = AssetTrim(limit=1)
    trim.learn("c", ITEM)
    assert trim.fields("c", TREE_FIELDS)["exclude"][-1] == "assets.B02.proj:transform"


def test_asset_trim_stays_small_whatever_an_answer_holds():
    trim = AssetTrim(limit=5)
    trim.learn("c", {"assets": {f"A{i}": {"href": "http://h/x", **{f"m{j}": "x" * j for j in range(50)}}
                                for i in range(100)}})
    fields = trim.fields("c", TREE_FIELDS)
    assert len(fields["exclude"]) == len(TREE_FIELDS["exclude"]) + 5
    assert all(name.endswith(".m49") for name in fields["exclude"][len(TREE_FIELDS["exclude"]):])
