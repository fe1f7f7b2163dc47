"""Catalogue input is total and bounded: pure logic (the mounts are in test_trust_hostile.py)."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

import pytest

from terrafs.catalogue import stac
from terrafs.catalogue.fetch import without_userinfo
from terrafs.catalogue.model import Collection, Product, ProductFile
from terrafs.catalogue.parse import link_size, parse_datetime, safe_name
from terrafs.remote.scope import CredentialScope
from terrafs.text import SizeTooLarge, parse_origin, parse_size, redact_url, shown, strip_userinfo
from terrafs.tree.paths import Tree, platform_placement, product_folders

UTC = timezone.utc


@pytest.mark.parametrize("bad", ["2020-01-07T10:00:00+99:99", "9999-12-31T23:00:00-02:00",
                                 "0001-01-01T00:30:00+01:00", "10000-01-01T00:00:00Z", "2020-01-07T25:00:00Z"])
def test_a_malformed_datetime_is_none_never_an_exception(bad):
    assert parse_datetime(bad) is None


def test_sizes_beyond_off_t_are_refused():
    assert link_size(2**63 - 1) == 2**63 - 1
    for huge in (2**63, 2**64, 1e300, "18446744073709551616"):
        with pytest.raises(SizeTooLarge):
            link_size(huge)
    assert parse_size("1TiB") == 1024**4


@pytest.mark.parametrize("raw, expected", [
    ("a\u0085b", "ab"),                     # C1 control (NEL)
    ("evil\u202egnp.tif", "evilgnp.tif"),    # right-to-left override
    ("x\u2066y\u2069", "xy"),                # isolates
    ("cafe\u0301", "caf\u00e9"),             # NFD becomes NFC
    ("\u200f", None),
])
def test_names_lose_c1_and_bidi_characters_and_are_nfc(raw, expected):
    assert safe_name(raw) == expected


def test_logged_catalogue_strings_are_one_line_and_plain():
    text = shown("id\nERROR forged\u202e\x85")
    assert "\n" not in text and "\u202e" not in text and "\x85" not in text
    assert "\\u000a" in text


def test_user_info_is_taken_out_of_every_url_of_an_answer():
    doc = {"features": [{"assets": {"a": {"href": "https://u:pw@h/x.tif"}},
                         "links": [{"href": "http://u:pw@[broken/x"}], "note": "see https://a:b@c/d"}]}
    text = repr(without_userinfo(doc))
    assert "pw" not in text and "a:b" not in text
    assert doc["features"][0]["assets"]["a"]["href"] == "https://h/x.tif"
    assert redact_url("https://u:pw@h/x") == "https://h/x"
    assert strip_userinfo("https://h/x@y") == "https://h/x@y", "an @ in the path is no user info"


def test_deep_nesting_is_walked_without_recursion():
    doc: list = []
    node = doc
    for _ in range(100_000):
        node.append([])
        node = node[0]
    node.append("https://u:pw@h/x")
    without_userinfo(doc)
    assert node == ["https://h/x"]


def test_credential_scope_names_hosts_and_http_only_where_said(caplog):
    scope = CredentialScope([parse_origin("services.terrascope.be"), parse_origin("http://127.0.0.1:8080")])
    assert scope.allows("https://services.terrascope.be/download/x.tif")
    assert not scope.allows("http://services.terrascope.be/download/x.tif"), "plain http only where named"
    assert not scope.allows("https://services.terrascope.be.evil.example/x")
    assert scope.allows("http://127.0.0.1:8080/download/x")
    assert not scope.allows("http://127.0.0.1:8081/download/x")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert not scope.allows("https://evil.example/x")
    assert caplog.text.count("https://evil.example:443") == 1, "one warning per refused host"
    for bad in ("https://u:p@h", "h/path", "ftp://h", ""):
        with pytest.raises(ValueError):
            parse_origin(bad)


def test_an_absurd_collection_extent_is_parsed_to_none():
    raw = {"id": "c", "extent": {"temporal": {"interval": [["2020-01-01T00:00:00+99:99", "99999"]]}}}
    c = stac.parse_collection(raw)
    assert c is not None and c.start is None and c.end is None


# -- collisions -----------------------------------------------------------------------------


def _product(pid: str, title: str, folder: str, name: str) -> Product:
    f = ProductFile(relpath=name, href=f"https://h/{pid}/{name}", size=1,
                    local_path=f"/data/MTDA/X/2020/01/05/{folder}/{name}")
    return Product(pid, title, "c", datetime(2020, 1, 5, tzinfo=UTC), folder, (f,))


def test_two_products_naming_one_file_keep_a_stable_owner_and_warn(caplog):
    a, b = _product("id-a", "T", "F", "x.tif"), _product("id-b", "T", "F", "x.tif")
    with caplog.at_level(logging.WARNING):
        first = product_folders([a, b])["F"].children["x.tif"].product.id
        second = product_folders([b, a])["F"].children["x.tif"].product.id
    assert first == second == "id-a", "the owner must not depend on the catalogue's order"
    assert "id-a" in caplog.text and "id-b" in caplog.text


class _Catalogue:
    def __init__(self, collections, products):
        self._collections, self._products = collections, products

    def collections(self):
        return self._collections

    def products(self, collection, start, end, flt=None, limit=None):
        return self._products[collection.id]

    requests_made = 0


def test_two_collections_claiming_one_prefix_keep_a_stable_owner_and_warn(caplog):
    c1 = Collection("b-coll", "b-coll", "", datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 1, 31, tzinfo=UTC))
    c2 = Collection("a-coll", "a-coll", "", datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 1, 31, tzinfo=UTC))
    products = {c.id: [_product(f"{c.id}-p", "T", "F", "x.tif")] for c in (c1, c2)}
    for order in ([c1, c2], [c2, c1]):
        with caplog.at_level(logging.WARNING):
            tree = Tree(_Catalogue(order, products), selection=None, layout="platform")
            node = tree.lookup("/MTDA/X/2020/01/05/F/x.tif")
        assert node.product.id == "a-coll-p", "the owner must not depend on the catalogue's order"
    assert "a-coll" in caplog.text and "b-coll" in caplog.text and "both claim" in caplog.text


def test_a_platform_prefix_with_bidi_characters_is_not_used():
    bad = ProductFile("x.tif", "https://h/x.tif", 1, "/data/MTDA/\u202eX/2020/01/05/F/x.tif")
    c = Collection("c", "c")
    assert platform_placement(c, [Product("p", "T", "c", datetime(2020, 1, 5, tzinfo=UTC), "F", (bad,))]) is None


def test_an_item_nested_at_the_edge_of_the_recursion_limit_is_skipped_not_raised():
    raw = None
    for depth in range(1000, 0, -5):  # the deepest item json.loads takes here...
        text = '{"id":"x","properties":{"datetime":"2020-01-01T00:00:00Z","deep":' + "[" * depth + "]" * depth + "}}"
        try:
            raw = json.loads(text)
            break
        except RecursionError:
            continue

    def from_deep_frames(n: int):
        return stac.parse_item(raw, "c") if n == 0 else from_deep_frames(n - 1)

    assert from_deep_frames(40) is None  # ...cannot be written back from deeper frames


def test_an_href_with_a_line_break_is_no_file():
    raw = {"id": "p", "properties": {"datetime": "2020-01-05T00:00:00Z"},
           "assets": {"a": {"href": "https://h/P/a.tif\nERROR forged"}, "b": {"href": "https://h/P/b.tif"}}}
    product = stac.parse_item(raw, "c")
    assert [f.relpath for f in product.files] == ["b.tif"]
