"""The emulator's STAC fields extension (stac-fastapi-pgstac semantics) and its switch.

Pure parsing/trimming is tested on dicts; the served behaviour through a running
emulator over HTTP (GET and POST /search, /collections/{id}/items, conformance,
next links keeping `fields`, the switch at runtime and on the command line).
"""
from __future__ import annotations

import pytest
import requests

from terrafs.emulator.fields import CONFORMANCE_CLASS, FieldsError, apply, parse_fields

TOC = "terrascope-s2-toc-v2"


def _item() -> dict:
    return {"id": "X", "collection": "c", "type": "Feature", "geometry": {"type": "Point"}, "bbox": [0, 0, 1, 1],
            "links": [{"rel": "self", "href": "h"}],
            "properties": {"datetime": "2020-01-01T00:00:00Z", "title": "X", "eo:cloud_cover": 3.0},
            "assets": {"B02": {"href": "a", "file:size": 5, "proj:shape": [1, 1]}, "QL": {"href": "q"}}}


def test_get_syntax_splits_include_and_exclude():
    f = parse_fields("id,-geometry,+properties.datetime, assets")
    assert f.include == {"id", "properties.datetime", "assets"}
    assert f.exclude == {"geometry"}
    assert parse_fields("") is None and parse_fields(None) is None


def test_post_syntax_and_hostile_values():
    f = parse_fields({"include": ["properties.datetime"], "exclude": ["links"]})
    assert f.include == {"properties.datetime"} and f.exclude == {"links"}
    for bad in ({"include": "id"}, {"select": ["id"]}, {"include": [1]}, 5, "a..b", {"include": [""]},
                ",".join(f"p{i}" for i in range(500))):
        with pytest.raises(FieldsError):
            parse_fields(bad)


def test_include_keeps_named_keys_plus_id_collection_and_links():
    out = apply(_item(), parse_fields("properties.datetime,assets.B02.href"))
    assert out == {"id": "X", "collection": "c", "properties": {"datetime": "2020-01-01T00:00:00Z"},
                   "assets": {"B02": {"href": "a"}}, "links": [{"rel": "self", "href": "h"}]}


def test_exclude_only_removes_and_drops_emptied_parents():
    out = apply(_item(), parse_fields("-geometry,-links,-assets.QL.href,-properties.title"))
    assert "geometry" not in out and "links" not in out and "QL" not in out["assets"]
    assert out["properties"] == {"datetime": "2020-01-01T00:00:00Z", "eo:cloud_cover": 3.0}
    assert out["bbox"] == [0, 0, 1, 1] and out["assets"]["B02"]["file:size"] == 5


def test_include_wins_over_exclude_of_itself_or_its_parent():
    f = parse_fields({"include": ["properties.datetime", "bbox"], "exclude": ["properties", "bbox", "assets"]})
    assert f.exclude == {"assets"}
    out = apply(_item(), f)
    assert out["properties"] == {"datetime": "2020-01-01T00:00:00Z"} and out["bbox"] == [0, 0, 1, 1]


def test_keeps_tells_what_survives():
    assert parse_fields("properties.datetime").keeps("assets") is False
    assert parse_fields("assets.B02.href").keeps("assets") is True
    assert parse_fields("-assets").keeps("assets") is False
    assert parse_fields("-geometry").keeps("assets") is True


def test_missing_keys_are_left_out():
    # As stac-fastapi: a parent that exists stays (empty) when the named child does not.
    out = apply(_item(), parse_fields("properties.nope,nothing"))
    assert out == {"id": "X", "collection": "c", "properties": {}, "links": [{"rel": "self", "href": "h"}]}


# ------------------------------------------------------------------------- served over HTTP


def _search(emulator, **params) -> dict:
    r = requests.get(emulator.stac_url + "/search", params=params, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_server_conforms_and_trims_get_and_post(emulator):
    assert CONFORMANCE_CLASS in requests.get(emulator.stac_url + "/", timeout=10).json()["conformsTo"]
    assert CONFORMANCE_CLASS in requests.get(emulator.stac_url + "/conformance", timeout=10).json()["conformsTo"]
    full = _search(emulator, collections=TOC, limit=3)
    emulator.mark()
    slim = _search(emulator, collections=TOC, limit=3, fields="properties.datetime,-links")
    assert [f["id"] for f in slim["features"]] == [f["id"] for f in full["features"]]
    for feat in slim["features"]:
        assert feat == {"id": feat["id"], "collection": TOC,
                        "properties": {"datetime": feat["properties"]["datetime"]}}
    # The request log counts the catalogue bytes: the slim page is a small share of the full one.
    logged = emulator.requests("stac")
    assert emulator.catalogue() == (1, logged[0]["bytes"])
    assert len(logged) == 1 and 0 < logged[0]["bytes"] < len(requests.get(
        emulator.stac_url + "/search", params={"collections": TOC, "limit": 3}, timeout=30).content) / 5
    nxt = [link for link in slim["links"] if link["rel"] == "next"][0]
    assert "fields=" in nxt["href"]
    page2 = requests.get(nxt["href"], timeout=30).json()
    assert page2["features"] and all(set(f) == {"id", "collection", "properties"} for f in page2["features"])

    r = requests.post(emulator.stac_url + "/search", timeout=30,
                      json={"collections": [TOC], "limit": 2,
                            "fields": {"include": ["assets", "properties.datetime"], "exclude": ["links"]}})
    assert r.status_code == 200
    for feat in r.json()["features"]:
        assert set(feat) == {"id", "collection", "properties", "assets"}
        assert all("file:size" in a for k, a in feat["assets"].items() if k != "preview")
    nxt = [link for link in r.json()["links"] if link["rel"] == "next"][0]
    assert nxt["body"]["fields"]["include"] == ["assets", "properties.datetime"]

    items = requests.get(f"{emulator.stac_url}/collections/{TOC}/items", timeout=30,
                         params={"limit": 2, "fields": "-assets,-geometry"}).json()
    assert items["features"] and all("assets" not in f and "geometry" not in f and "links" in f
                                     for f in items["features"])
    bad = requests.get(emulator.stac_url + "/search", params={"fields": "a..b"}, timeout=10)
    assert bad.status_code == 400


def test_switch_off_at_runtime_and_on_the_command_line(emulator, emulator_factory):
    emulator.set(stac_fields=False)
    assert CONFORMANCE_CLASS not in requests.get(emulator.stac_url + "/conformance", timeout=10).json()["conformsTo"]
    page = _search(emulator, collections=TOC, limit=2, fields="properties.datetime")
    assert all("assets" in f and "geometry" in f for f in page["features"])
    emulator.reset()
    assert CONFORMANCE_CLASS in requests.get(emulator.stac_url + "/", timeout=10).json()["conformsTo"]

    without = emulator_factory(["--no-stac-fields"])
    assert CONFORMANCE_CLASS not in requests.get(without.stac_url + "/", timeout=10).json()["conformsTo"]
    assert without.settings()["stac_fields"] is False
