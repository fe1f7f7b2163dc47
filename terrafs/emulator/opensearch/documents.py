"""OpenSearch documents: product and collection features, the response envelope with its
query echo, and the description document.

It builds documents only: no parameter checks beyond the echo's, no paging, nothing from the
client side of terrafs.
"""
from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape

from werkzeug.wrappers import Request, Response

from terrafs.emulator.archive import Archive, EmuCollection, EmuProduct
from terrafs.emulator.common import bbox_polygon, iso_z, wms_preview_url
from terrafs.emulator.opensearch.query import (
    COLLECTION_PARAMS,
    PRODUCT_PARAMS,
    OpenSearchError,
    instant_param,
    sort_echo,
)

GEOJSON = "application/geo+json"
CONTEXT = "http://schemas.opengis.net/os-geojson/1.0/os-geojson.jsonld"
PROFILES = [{"href": "http://www.opengis.net/spec/owc-geojson/1.0/req/core"},
            {"href": "http://www.opengis.net/spec/os-geojson/1.0/req/core"}]
# A fixed "server time" keeps responses deterministic.
SERVER_UPDATED = "2024-01-01T00:00:00Z"


def envelope(request: Request, title: str, total: int, start: int, features: list[dict],
              echo: dict, links: dict) -> dict:
    links["profiles"] = PROFILES
    return {
        "@context": CONTEXT,
        "type": "FeatureCollection",
        "id": request.url,
        "totalResults": total,
        "startIndex": start,
        "itemsPerPage": len(features),
        "queries": {"request": [echo]},
        "properties": {
            "title": title,
            "subtitle": f"Number of results: {total}",
            "creator": "VITO OpenSearch Service",
            "authors": [{"type": "Agent", "name": "VITO"}],
            "updated": SERVER_UPDATED,
            "lang": "en",
            "links": links,
        },
        "features": features,
    }


def echo(args: Any, start: int) -> dict:
    names = {"bbox": "geo:box", "geometry": "geo:geometry", "accessedFrom": "referrer:accessedFrom",
             "uid": "geo:uid", "title": "eo:title", "productType": "eo:productType", "tileId": "eo:tileId",
             "cloudCover": "eo:cloudCover", "platform": "eo:platform", "count": "count",
             "relativeOrbitNumber": "eo:orbitNumber", "orbitDirection": "eo:orbitDirection",
             "publicationDate": "eo:publicationDate", "modificationDate": "eo:modificationDate",
             "resolution": "eo:resolution", "productGroupId": "eo:productGroupId"}
    echo: dict[str, Any] = {}
    for key, name in names.items():
        if args.get(key) not in (None, ""):
            echo[name] = int(args[key]) if key == "count" else args[key]
    echo["startIndex"] = start
    if args.get("sortKeys"):
        echo["sru:sortKeys"] = sort_echo(args["sortKeys"])
    for key, name, end in (("start", "time:start", False), ("end", "time:end", True)):
        value = instant_param(args, key, end)
        if value is not None:
            echo[name] = iso_z(value, 0)
    return echo


def _file_href(f: Any, base_url: str, mep: bool) -> str:
    return "file://" + f.platform_path if mep else f"{base_url}/download/{f.download_path}"


def _product_links(p: EmuProduct, base_url: str, mep: bool) -> dict:
    """Link groups; an empty group is sent as [] (as the real service does)."""
    groups: dict[str, list[dict]] = {"previews": [], "alternates": [], "related": [], "data": []}
    for f in p.files:
        link: dict[str, Any] = {"href": _file_href(f, base_url, mep), "type": f.type}
        if f.size_in_catalogue:
            link["length"] = f.size
        if f.title and f.group != "previews":
            link["title"] = f.title
        if f.category:
            link["category"] = f.category
        ex = f.extra or {}
        if "epsg" in ex:
            link["conformsTo"] = f"http://www.opengis.net/def/crs/EPSG/0/{ex['epsg']}"
        if ex.get("bands") and f.group in ("data", "related"):
            link["bandNames"] = list(ex["bands"])
        groups.setdefault(f.group, []).append(link)
    wms = wms_preview_url(p, base_url)
    if wms:
        # A rendering service: stays http(s) under accessedFrom=MEP, and has no length.
        groups["previews"].append({"href": wms, "type": "image/png", "title": "WMS", "category": "QUICKLOOK"})
    return groups


def product_feature(p: EmuProduct, coll: EmuCollection, base_url: str, mep: bool) -> dict:
    ex = p.extra or {}
    when = iso_z(p.datetime, 3)
    published = iso_z(p.published or p.datetime, 0)
    updated = iso_z(p.updated or p.datetime, 3)
    params: dict[str, Any] = {"acquisitionType": "NOMINAL"}
    if "orbit_direction" in ex:
        params["orbitDirection"] = ex["orbit_direction"]
    if "absolute_orbit" in ex:
        params["orbitNumber"] = ex["absolute_orbit"]
    if "relative_orbit" in ex:
        params["relativeOrbitNumber"] = ex["relative_orbit"]
    params["beginningDateTime"] = when
    params["endingDateTime"] = iso_z(p.end_datetime or p.datetime, 3)
    if p.tile_id:
        params["tileId"] = p.tile_id
    params.update(ex.get("acquisition", {}))
    acquisition: dict[str, Any] = {}
    if "platform_short" in ex:  # WorldCover has no platform
        acquisition["platform"] = {"platformShortName": ex["platform_short"]}
        if "platform" in ex:
            acquisition["platform"]["platformSerialIdentifier"] = ex["platform"]
    acquisition["acquisitionParameters"] = params
    info: dict[str, Any] = {}
    if p.cloud_cover is not None:
        info["cloudCover"] = p.cloud_cover
    info.update({"productType": p.product_type, "availabilityTime": published,
                 "productVersion": ex.get("product_version", "V100"), "processingCenter": "VITO",
                 "processingDate": updated})
    if "epsg" in ex:
        info["referenceSystemIdentifier"] = f"http://www.opengis.net/def/crs/EPSG/0/{ex['epsg']}"
    props: dict[str, Any] = {
        "date": when, "updated": updated, "available": published, "published": published,
        "status": "ARCHIVED", "parentIdentifier": coll.urn, "title": p.title,
        "identifier": f"{coll.urn}:{p.title}",
        "acquisitionInformation": [acquisition],
        "productInformation": info,
    }
    if "resolution" in ex:
        props["additionalAttributes"] = {"resolution": ex["resolution"]}
    props["links"] = _product_links(p, base_url, mep)
    return {"type": "Feature", "id": f"{coll.urn}:{p.title}", "geometry": bbox_polygon(p.bbox),
            "bbox": list(p.bbox), "properties": props}


def collection_feature(c: EmuCollection, base_url: str) -> dict:
    date = iso_z(c.start, 0) + "/" + (iso_z(c.end, 0) if c.end else "")
    platform = ("Sentinel-1" if "S1" in c.urn else "Sentinel-2" if "S2" in c.urn else "Sentinel-1, Sentinel-2")
    return {
        "type": "Feature",
        "id": c.urn,
        "geometry": bbox_polygon(c.bbox),
        "bbox": list(c.bbox),
        "properties": {
            "title": c.title,
            "identifier": c.urn,
            "abstract": f"{c.title} (Terrascope emulator)",
            "rights": "Terrascope data policy",
            "date": date,
            "updated": SERVER_UPDATED,
            "lang": "en",
            "keyword": ["terrascope", "emulator"],
            "publisher": "VITO",
            "authors": [{"type": "Agent", "name": "VITO"}],
            "acquisitionInformation": [{"acquisitionParameters": {"beginningDateTime": iso_z(c.start, 0)},
                                        "platform": {"platformShortName": platform}}],
            "productInformation": {"format": "geotiff", "resolution": [10, 20, 60]},
            "links": {
                "search": [{"href": f"{base_url}/catalogue/description.geojson?collection={c.urn}",
                            "type": GEOJSON, "title": "OpenSearch Description Document"}],
                "describedby": [{"href": f"{base_url}/catalogue/collections?uid={c.urn}", "type": GEOJSON,
                                 "title": "Collection metadata"}],
            },
        },
    }


def description(request: Request, archive: Archive, base_url: str) -> Response:
    urn = request.args.get("collection")
    if urn:
        urn = urn.split("?", 1)[0]  # tolerate the server's own double-'?' search links
        if archive.collection(urn) is None:
            raise OpenSearchError("collection", f"Unknown collection '{urn}'", 404)
    names = sorted(PRODUCT_PARAMS if urn else COLLECTION_PARAMS)
    endpoint = "products" if urn else "collections"
    template = "&amp;".join(f"{n}={{{n}?}}" for n in names if n != "collection")
    prefix = f"collection={escape(urn)}&amp;" if urn else ""
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<OpenSearchDescription xmlns="http://a9.com/-/spec/opensearch/1.1/">\n'
        "  <ShortName>Terrascope</ShortName>\n"
        f"  <Description>Terrascope OpenSearch (emulator){' for ' + escape(urn) if urn else ''}</Description>\n"
        f'  <Url type="{GEOJSON}" rel="results" template="{base_url}/catalogue/{endpoint}?{prefix}{template}"/>\n'
        f'  <Url type="application/json" rel="results" template="{base_url}/catalogue/{endpoint}.geojson?{prefix}{template}"/>\n'
        "</OpenSearchDescription>\n"
    )
    return Response(xml, content_type="application/opensearchdescription+xml")
