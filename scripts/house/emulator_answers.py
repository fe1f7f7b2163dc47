"""Record the emulator's catalogue answers to a fixed set of queries, or compare two records.

A check for refactoring the emulator: run it against the tree before and after, on separate data
folders, and compare. Every STAC and OpenSearch body (paging followed, fields, sortby, CQL2 text and
JSON, the query extension, POST search, errors) must be byte-identical once the base URL is replaced,
and so must every file the archive wrote.

Usage:
    python3 scripts/house/emulator_answers.py record SRC_ROOT DATA_DIR OUT.json
    python3 scripts/house/emulator_answers.py compare A.json B.json

SRC_ROOT is a folder holding a terrafs/ package (a checkout or an export of one); the emulator runs
from it (`python -m terrafs.emulator.server --port 0`, loopback) with `--bulk 250` and
PYTHONHASHSEED=0 (the key order of an item cut by `fields` follows the string hash).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

import requests

TOC, LAI, S1, WC = ("terrascope-s2-toc-v2", "terrascope-s2-lai-v2", "terrascope-s1-grd-sigma0-v1",
                    "esa-worldcover-10m-2020-v1")
NDVI = "terrascope-s2-ndvi-v2"
TOC_URN, NDVI_URN, S1_URN = ("urn:eop:VITO:TERRASCOPE_S2_TOC_V2", "urn:eop:VITO:TERRASCOPE_S2_NDVI_V2",
                             "urn:eop:VITO:CGS_S1_GRD_SIGMA0_L1")
AREA = "2.5,50.5,5.5,52.0"


def stac_gets() -> list[tuple[str, dict]]:
    q = [
        ("/stac/", {}), ("/stac", {}), ("/stac/conformance", {}), ("/stac/queryables", {}),
        ("/stac/_mgmt/ping", {}), ("/stac/collections", {}), ("/stac/collections", {"limit": 2}),
        (f"/stac/collections/{TOC}", {}), (f"/stac/collections/{TOC}/queryables", {}),
        (f"/stac/collections/{TOC}/items", {}), (f"/stac/collections/{TOC}/items", {"limit": 3}),
        (f"/stac/collections/{LAI}/items", {"limit": 2}), (f"/stac/collections/{S1}/items", {}),
        (f"/stac/collections/{WC}/items", {"fields": "-assets"}),
        (f"/stac/collections/nope", {}), (f"/stac/collections/{TOC}/items/nope", {}), ("/stac/nothing", {}),
        ("/stac/search", {"collections": TOC, "datetime": "2020-01-01/2020-02-28", "bbox": AREA, "limit": 2}),
        ("/stac/search", {"collections": f"{TOC},{LAI}", "datetime": "2020-01-01", "limit": 50}),
        ("/stac/search", {"datetime": "../2020-01-02T00:00:00Z", "limit": 100}),
        ("/stac/search", {"datetime": "2021-06-01T00:00:00.123456789Z/..", "limit": 100}),
        ("/stac/search", {"collections": NDVI, "limit": 40}),
        ("/stac/search", {"collections": TOC, "fields": "id,properties.datetime", "limit": 4}),
        ("/stac/search", {"collections": TOC, "fields": "-assets,-links", "limit": 4}),
        ("/stac/search", {"collections": TOC, "fields": "assets.B02.href", "limit": 2}),
        ("/stac/search", {"collections": TOC, "sortby": "-properties.eo:cloud_cover,+id", "limit": 20}),
        ("/stac/search", {"collections": f"{TOC},{S1}", "sortby": "collection,-datetime", "limit": 30}),
        ("/stac/search", {"collections": TOC, "filter": "eo:cloud_cover < 50", "limit": 20}),
        ("/stac/search", {"collections": TOC, "filter": "grid:code = 'MGRS-31UFS' AND eo:cloud_cover >= 1",
                          "filter-lang": "cql2-text"}),
        ("/stac/search", {"collections": TOC, "filter": json.dumps({"op": "and", "args": [
            {"op": "t_intersects", "args": [{"property": "datetime"},
                                            {"interval": ["2020-01-01T00:00:00Z", ".."]}]},
            {"op": "s_intersects", "args": [{"property": "geometry"}, {"bbox": [3.0, 51.0, 4.0, 52.0]}]},
            {"op": "like", "args": [{"property": "id"}, "S2A%"]},
            {"op": "in", "args": [{"property": "platform"}, ["sentinel-2a", "sentinel-2b"]]},
            {"op": "between", "args": [{"property": "eo:cloud_cover"}, 0, 80]},
            {"op": "not", "args": [{"op": "isnull", "args": [{"property": "updated"}]}]}]}),
            "filter-lang": "cql2-json"}),
        ("/stac/search", {"collections": TOC, "query": json.dumps({"eo:cloud_cover": {"lte": 60},
                                                                    "grid:code": {"startswith": "MGRS-31U"}})}),
        ("/stac/search", {"ids": "S2A_20200101T105431_31UFS_TOC_V210,nope"}),
        ("/stac/search", {"intersects": json.dumps({"type": "Point", "coordinates": [3.5, 51.2]}), "limit": 50}),
        # errors
        ("/stac/search", {"datetime": "yesterday"}), ("/stac/search", {"datetime": "2021-01-01/2020-01-01"}),
        ("/stac/search", {"bbox": "1,2,3"}), ("/stac/search", {"limit": "x"}), ("/stac/search", {"limit": 0}),
        ("/stac/search", {"token": "garbage!"}), ("/stac/search", {"filter": "{not json", "filter-lang": "cql2-json"}),
        ("/stac/search", {"filter": "a ~ b"}), ("/stac/search", {"filter": json.dumps({"op": "xor", "args": []})}),
        ("/stac/search", {"sortby": "size"}), ("/stac/search", {"query": "[1]"}), ("/stac/search", {"query": "{x"}),
        ("/stac/search", {"query": json.dumps({"id": {"regex": "."}})}), ("/stac/search", {"fields": "a..b"}),
        ("/stac/search", {"intersects": "{}"}),
    ]
    return q


def stac_posts() -> list[dict]:
    return [
        {"collections": [TOC], "limit": 3},
        {"collections": [TOC, S1], "limit": 4, "fields": {"include": ["id"], "exclude": ["assets"]},
         "sortby": [{"field": "properties.datetime", "direction": "asc"}]},
        {"collections": [TOC], "filter": {"op": ">", "args": [{"property": "eo:cloud_cover"}, 10]},
         "filter-lang": "cql2-json", "limit": 5},
        {"bbox": [2.0, 50.0, 6.0, 52.0], "datetime": "2020-01-01T00:00:00Z/2020-12-31T23:59:59Z", "limit": 6},
        {"query": {"sat:relative_orbit": {"eq": 51}}},
        {"sortby": [{"nofield": 1}]},
    ]


def opensearch_gets() -> list[tuple[str, dict]]:
    p = "/catalogue/products"
    return [
        ("/catalogue/description", {}), ("/catalogue/", {}), ("/catalogue/description.geojson", {"collection": TOC_URN}),
        ("/catalogue/description.xml", {"collection": "urn:nope"}),
        ("/catalogue/collections", {}), ("/catalogue/collections.geojson", {"platform": "sentinel-2"}),
        ("/catalogue/collections", {"uid": S1_URN}), ("/catalogue/collections", {"count": 2, "startIndex": 2}),
        ("/catalogue/collections", {"start": "2021-01-01", "end": "2021-02-01", "bbox": AREA}),
        (p, {"collection": TOC_URN, "count": 3}), (p + ".geojson", {"collection": TOC_URN}),
        (p, {"collection": TOC_URN, "sortKeys": "cloudCover,,0", "cloudCover": "[0,50]"}),
        (p, {"collection": TOC_URN, "sortKeys": "title", "cloudCover": "60]"}),
        (p, {"collection": TOC_URN, "start": "2020-01-01", "end": "2020-01-31T23:59:59Z", "tileId": "31UFS"}),
        (p, {"collection": TOC_URN, "bbox": AREA, "productType": "toc", "platform": "S2A"}),
        (p, {"collection": TOC_URN, "geometry": "POLYGON((3 51,4 51,4 52,3 52,3 51))"}),
        (p, {"collection": TOC_URN, "lat": "51.2", "lon": "3.5", "radius": "5000"}),
        (p, {"collection": TOC_URN, "accessedFrom": "MEP", "count": 2}),
        (p, {"collection": TOC_URN, "count": 0}),
        (p, {"collection": S1_URN, "relativeOrbitNumber": 88, "orbitDirection": "ascending"}),
        (p, {"collection": "urn:eop:VITO:TERRASCOPE_S2_LAI_V2", "resolution": "20"}),
        (p, {"collection": TOC_URN, "publicationDate": "[2020-01-01,2020-02-01[", "sortKeys": "published,,1"}),
        (p, {"collection": TOC_URN, "modificationDate": "]2020-01-01", "sortKeys": "updated,,0"}),
        (p, {"collection": NDVI_URN, "count": 100}), (p, {"collection": NDVI_URN, "count": 7, "startIndex": 240}),
        (p, {"collection": NDVI_URN, "count": 1000, "uid": "nope"}),
        (p, {"collection": TOC_URN, "count": 5000}),
        # errors
        (p, {}), (p, {"collection": TOC_URN, "bogus": 1}), (p, {"collection": TOC_URN, "startIndex": 0}),
        (p, {"collection": TOC_URN, "count": "x"}), (p, {"collection": TOC_URN, "startIndex": 99990}),
        (p, {"collection": TOC_URN, "cloudCover": "[,]"}), (p, {"collection": TOC_URN, "start": "soon"}),
        (p, {"collection": TOC_URN, "orbitDirection": "up"}), (p, {"collection": TOC_URN, "resolution": "ten"}),
        (p, {"collection": TOC_URN, "accessedFrom": "FTP"}), (p, {"collection": TOC_URN, "sortKeys": "size"}),
        (p, {"collection": TOC_URN, "geometry": "CIRCLE(1 2)"}), (p, {"collection": TOC_URN, "lat": "x"}),
        (p, {"collection": TOC_URN, "bbox": "1,2"}), ("/catalogue/nothing", {}),
    ]


def _wait_url(proc: subprocess.Popen) -> str:
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode().strip()
        if line.startswith("terrafs emulator: "):
            return line[len("terrafs emulator: "):].split()[0]
    raise RuntimeError(f"emulator exited with {proc.wait()}")


def _answer(r: requests.Response, base: str) -> dict:
    return {"status": r.status_code, "type": r.headers.get("Content-Type"),
            "body": r.content.decode("utf-8", "replace").replace(base, "BASE")}


def record(src: Path, data: Path, out: Path) -> None:
    data.mkdir(parents=True, exist_ok=True)
    # A fixed hash seed: the fields extension builds an included item from a set of names, so the
    # order of its keys follows the string hash.
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONHASHSEED="0")
    proc = subprocess.Popen([sys.executable, "-m", "terrafs.emulator.server", "--port", "0", "--data", str(data),
                             "--bulk", "250", "--log", str(data / "requests.jsonl")],
                            cwd=src, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        base = _wait_url(proc).rstrip("/")
        s = requests.Session()
        got: dict[str, dict] = {}

        def follow(key: str, r: requests.Response, depth: int = 3) -> None:
            """Record r and up to `depth` next pages (STAC next links, GET or POST, or OpenSearch's)."""
            got[key] = _answer(r, base)
            for i in range(depth):
                if r.status_code != 200 or "json" not in (r.headers.get("Content-Type") or ""):
                    return
                doc = r.json()
                links = doc.get("links", []) if isinstance(doc.get("links"), list) else []
                nxt = next((lk for lk in links if lk.get("rel") == "next"), None)
                os_next = (doc.get("properties", {}).get("links", {}) or {}).get("next") if "properties" in doc else None
                if nxt and nxt.get("method") == "POST":
                    r = s.post(nxt["href"], json=nxt["body"], timeout=60)
                elif nxt:
                    r = s.get(nxt["href"], timeout=60)
                elif os_next:
                    r = s.get(os_next[0]["href"], timeout=60)
                else:
                    return
                got[f"{key} next{i + 1}"] = _answer(r, base)

        for path, params in stac_gets() + opensearch_gets():
            key = "GET " + path + ("?" + urlencode(params) if params else "")
            follow(key, s.get(base + path, params=params, timeout=60))
        for body in stac_posts():
            follow("POST /stac/search " + json.dumps(body, sort_keys=True),
                   s.post(base + "/stac/search", json=body, timeout=60))
        got["POST /stac/search (not JSON)"] = _answer(s.post(base + "/stac/search", data="{x", timeout=60), base)
        got["PUT /stac/collections"] = _answer(s.put(base + "/stac/collections", timeout=60), base)
        got["POST /catalogue/products"] = _answer(s.post(base + "/catalogue/products", timeout=60), base)
        files = {str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in sorted(data.rglob("*")) if p.is_file() and not p.name.startswith(".")
                 and p.suffix not in (".jsonl", ".yaml") and "client" not in p.parts}
        out.write_text(json.dumps({"answers": got, "files": files}, indent=1, sort_keys=True))
        print(f"{len(got)} answers, {len(files)} files -> {out}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def compare(a: Path, b: Path) -> int:
    da, db = json.loads(a.read_text()), json.loads(b.read_text())
    bad = 0
    for part in ("answers", "files"):
        for key in sorted(set(da[part]) | set(db[part])):
            if da[part].get(key) != db[part].get(key):
                bad += 1
                print(f"DIFFERS {part}: {key}")
    print(f"{len(da['answers'])} answers, {len(da['files'])} files compared; {bad} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "record":
        record(Path(sys.argv[2]).resolve(), Path(sys.argv[3]).resolve(), Path(sys.argv[4]))
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
