"""The STAC API's JSON documents: items (current and older item form) and their assets,
collections, the landing page, conformance classes and queryables.

It builds documents from the archive's products: no parameter parsing, no paging, no routing,
nothing from the client side of terrafs.
"""
from __future__ import annotations

from typing import Any

from terrafs.emulator import fields as fields_ext
from terrafs.emulator.archive import EmuCollection, EmuFile, EmuProduct
from terrafs.emulator.common import bbox_polygon, iso_z, wms_preview_url

COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
OLD_TIFF_TYPE = "image/tiff; application=geotiff"
GEOJSON = "application/geo+json"
CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
    "https://api.stacspec.org/v1.0.0/item-search#sort",
    "https://api.stacspec.org/v1.0.0/item-search#fields",
    "https://api.stacspec.org/v1.0.0-rc.2/item-search#filter",
    "https://api.stacspec.org/v1.0.0/ogcapi-features#query",
    "https://api.stacspec.org/v1.0.0/ogcapi-features#sort",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/features-filter",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text",
]
ITEM_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
    "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "https://stac-extensions.github.io/product/v0.1.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.1.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
    "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v2.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/alternate-assets/v1.2.0/schema.json",
    "https://stac-extensions.github.io/authentication/v1.1.0/schema.json",
]
OLD_ITEM_EXTENSIONS = [
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
    "https://stac-extensions.github.io/alternate-assets/v1.1.0/schema.json",
]


def stac_root(base_url: str) -> str:
    return base_url + "/stac/"


def _asset_type(f: EmuFile, old: bool) -> str:
    if f.type == "image/tiff":
        return OLD_TIFF_TYPE if old else COG_TYPE
    if "xml" in f.type:
        return "text/xml" if old else "application/xml"
    return f.type


# Roles of assets that carry no auth:refs (seen on the real items: quicklooks, metadata).
_NO_AUTH_ROLES = ("thumbnail", "metadata", "overview")


def _asset(f: EmuFile, p: EmuProduct, base_url: str, old: bool) -> dict:
    ex = f.extra or {}
    a: dict[str, Any] = {"href": f"{base_url}/download/{f.download_path}", "type": _asset_type(f, old)}
    title = ex.get("stac_title", f.title)
    if title and not (old and "metadata" in f.roles):
        a["title"] = title
    if old:
        if "data_type" in ex:
            band = {"data_type": ex["data_type"], "scale": 1.0, "offset": 0.0, "sampling": "area"}
            if ex.get("nodata") is not None:
                band["nodata"] = float(ex["nodata"])
            a["raster:bands"] = [band]
        if "proj_shape" in ex:
            a["proj:shape"] = ex["proj_shape"]
            a["proj:transform"] = ex["proj_transform"]
        a["alternate"] = {"MEP": {"href": f.platform_path}}
    else:
        a.update(_current_asset_fields(f, p))
        a["alternate"] = {"local": {"href": "file://" + f.platform_path}}
        if not any(r in _NO_AUTH_ROLES for r in f.roles):
            a["auth:refs"] = ["oidc"]
    a["roles"] = list(f.roles)
    return a


def _current_asset_fields(f: EmuFile, p: EmuProduct) -> dict:
    """file:size, updated and the raster details of an asset in the current item form."""
    ex = f.extra or {}
    a: dict[str, Any] = {}
    if f.size_in_catalogue:
        a["file:size"] = f.size
    if p.updated:
        a["updated"] = iso_z(p.updated)
    a["description"] = f.title
    if "data_type" in ex:
        a["data_type"] = ex["data_type"]
        a["raster:scale"] = ex.get("scale", 1.0)
        a["raster:offset"] = ex.get("offset", 0.0)
        a["raster:sampling"] = "area"
        a["bands"] = [{"name": name} for name in ex.get("bands", [])]
        a["unit"] = ex.get("unit", "1")
    if ex.get("nodata") is not None:
        a["nodata"] = ex["nodata"]
    if "proj_shape" in ex:
        a["proj:shape"] = ex["proj_shape"]
        a["proj:transform"] = ex["proj_transform"]
    # 10 m assets carry no gsd of their own (the item's gsd says it).
    if "gsd" in ex and ex["gsd"] != 10.0:
        a["gsd"] = ex["gsd"]
    return a


def item_properties(p: EmuProduct, base_url: str, old: bool) -> dict:
    ex = p.extra or {}
    when = iso_z(p.datetime)
    props: dict[str, Any] = {"title": p.title, "datetime": when, "start_datetime": when,
                             "end_datetime": iso_z(p.end_datetime or p.datetime)}
    if p.published:
        props["created"] = iso_z(p.published)
    if p.updated:
        props["updated"] = iso_z(p.updated)
    if "platform" in ex:
        props["platform"] = ex["platform"].lower().replace("s2", "sentinel-2").replace("s1", "sentinel-1")
    if "instrument" in ex:
        props["instruments"] = [ex["instrument"]]
    if "constellation" in ex:
        props["constellation"] = ex["constellation"]
    if not old and "gsd" in ex:
        props["gsd"] = ex["gsd"]
    if p.cloud_cover is not None:
        props["eo:cloud_cover"] = p.cloud_cover
    if "absolute_orbit" in ex:
        props["sat:absolute_orbit"] = ex["absolute_orbit"]
    if "relative_orbit" in ex:
        props["sat:relative_orbit"] = ex["relative_orbit"]
    if "orbit_direction" in ex:
        props["sat:orbit_state"] = ex["orbit_direction"].lower()
    if not old:
        props["product:type"] = p.product_type
    if "mgrs" in ex:
        zone, band, square = ex["mgrs"]
        props.update({"mgrs:utm_zone": zone, "mgrs:latitude_band": band, "mgrs:grid_square": square})
    if old:
        return props
    if p.tile_id:
        props["grid:code"] = (f"MGRS-{p.tile_id}" if "mgrs" in ex or p.collection.startswith("terrascope-s2")
                              else f"WORLDCOVER-{p.tile_id}")
    if "product_version" in ex:
        props["processing:version"] = ex["product_version"].lstrip("V")
    if "epsg" in ex:
        props["proj:code"] = f"EPSG:{ex['epsg']}"
    if "proj_bbox" in ex:
        props["proj:bbox"] = ex["proj_bbox"]
    props["auth:schemes"] = {"oidc": {
        "type": "openIdConnect",
        "description": "Authenticate with Terrascope OpenID Connect",
        "openIdConnectUrl": base_url + "/auth/realms/terrascope/.well-known/openid-configuration",
    }}
    return props


def item_json(p: EmuProduct, coll: EmuCollection, base_url: str, with_assets: bool = True) -> dict:
    """The STAC item of a product, in the collection's item form (without its assets when
    the fields asked for leave them out: they are most of an item's cost)."""
    old = coll.older_item_form
    root = stac_root(base_url)
    doc: dict[str, Any] = {
        "type": "Feature",
        "stac_version": "1.0.0" if old else "1.1.0",
        "stac_extensions": OLD_ITEM_EXTENSIONS if old else ITEM_EXTENSIONS,
        "id": p.id,
        "collection": coll.stac_id,
        "bbox": list(p.bbox),
        "geometry": bbox_polygon(p.bbox),
        "properties": item_properties(p, base_url, old),
    }
    if old:
        # The older form carried only a bare, underscored collection link (see the real fixture).
        doc["links"] = [{"rel": "collection", "href": coll.stac_id.replace("-", "_"), "type": "application/json"}]
    else:
        coll_url = f"{root}collections/{coll.stac_id}"
        doc["links"] = [
            {"rel": "self", "type": GEOJSON, "href": f"{coll_url}/items/{p.id}"},
            {"rel": "parent", "type": "application/json", "href": coll_url},
            {"rel": "collection", "type": "application/json", "href": coll_url},
            {"rel": "root", "type": "application/json", "href": root},
        ]
    if not with_assets:
        return doc
    doc["assets"] = {f.asset_key: _asset(f, p, base_url, old) for f in p.files}
    wms = None if old else wms_preview_url(p, base_url)
    if wms:
        doc["assets"]["preview"] = {"href": wms, "type": "image/png", "title": "WMS", "roles": ["overview"]}
    return doc


def collection_json(c: EmuCollection, base_url: str) -> dict:
    root = stac_root(base_url)
    url = f"{root}collections/{c.stac_id}"
    return {
        "type": "Collection",
        "id": c.stac_id,
        "stac_version": "1.1.0",
        "stac_extensions": [],
        "title": c.title,
        "description": f"{c.title} (Terrascope emulator)",
        "license": "proprietary",
        "keywords": ["terrascope", "emulator"],
        "providers": [{"name": "VITO", "roles": ["producer", "processor", "host"], "url": "https://terrascope.be"}],
        "extent": {
            "spatial": {"bbox": [list(c.bbox)]},
            "temporal": {"interval": [[iso_z(c.start), iso_z(c.end) if c.end else None]]},
        },
        "summaries": {"opensearch:identifier": [c.urn]},
        "links": [
            {"rel": "self", "type": "application/json", "href": url},
            {"rel": "parent", "type": "application/json", "href": root},
            {"rel": "root", "type": "application/json", "href": root},
            {"rel": "items", "type": GEOJSON, "href": f"{url}/items"},
            {"rel": "queryables", "type": "application/schema+json", "href": f"{url}/queryables"},
        ],
    }


def conformance(fields_extension: bool = True) -> list[str]:
    """The conformance classes served (without the fields class when that extension is off)."""
    return [c for c in CONFORMANCE if fields_extension or c != fields_ext.CONFORMANCE_CLASS]


def landing(base_url: str, fields_extension: bool = True) -> dict:
    root = stac_root(base_url)
    return {
        "type": "Catalog",
        "id": "terra-stac-api",
        "title": "Terrascope",
        "description": "Terrascope STAC API",
        "stac_version": "1.0.0",
        "conformsTo": conformance(fields_extension),
        "links": [
            {"rel": "self", "type": "application/json", "href": root},
            {"rel": "root", "type": "application/json", "href": root},
            {"rel": "data", "type": "application/json", "href": root + "collections"},
            {"rel": "conformance", "type": "application/json", "href": root + "conformance"},
            {"rel": "search", "type": GEOJSON, "method": "GET", "href": root + "search"},
            {"rel": "search", "type": GEOJSON, "method": "POST", "href": root + "search"},
            {"rel": "http://www.opengis.net/def/rel/ogc/1.0/queryables", "type": "application/schema+json",
             "href": root + "queryables"},
            {"rel": "service-desc", "type": "application/vnd.oai.openapi+json;version=3.0", "href": root + "api"},
        ],
    }


def queryables(base_url: str, coll: str | None) -> dict:
    props = {
        "id": {"type": "string"}, "collection": {"type": "string"},
        "datetime": {"type": "string", "format": "date-time"},
        "eo:cloud_cover": {"type": "number", "minimum": 0, "maximum": 100},
        "grid:code": {"type": "string"}, "mgrs:utm_zone": {"type": "integer"},
        "mgrs:latitude_band": {"type": "string"}, "mgrs:grid_square": {"type": "string"},
        "platform": {"type": "string"}, "sat:relative_orbit": {"type": "integer"},
        "sat:orbit_state": {"type": "string"}, "product:type": {"type": "string"},
    }
    sfx = f"collections/{coll}/queryables" if coll else "queryables"
    return {"$schema": "https://json-schema.org/draft/2019-09/schema", "$id": stac_root(base_url) + sfx,
            "type": "object", "title": "Queryables", "properties": props, "additionalProperties": True}
