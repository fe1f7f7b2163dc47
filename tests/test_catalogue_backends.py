"""Both catalogue backends over HTTP: against the emulator, and against a tiny
scripted server for the answers a real service may give when it misbehaves."""
from __future__ import annotations

import json
import math
import threading
from collections import Counter
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

import pytest

from terrafs.catalogue import fetch
import requests

from terrafs.catalogue.model import Collection, Filter
from terrafs.catalogue.opensearch import OpenSearchCatalogue
from terrafs.catalogue.stac import StacCatalogue
from terrafs.errors import CatalogueError
from expected import archive as build_expected, folder_id, product_relpath

UTC = timezone.utc
JAN_2020 = (datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 1, 31, 23, 59, 59, 999999, tzinfo=UTC))


@pytest.fixture(scope="module")
def arc(emulator_data):
    return build_expected(emulator_data)


@pytest.fixture
def session() -> Iterator[requests.Session]:
    s = requests.Session()
    yield s
    s.close()


def make(kind: str, emulator, session, page_size: int = 1000):
    if kind == "stac":
        return StacCatalogue(emulator.stac_url + "/", session, page_size=page_size)
    return OpenSearchCatalogue(emulator.opensearch_url, session, page_size=page_size)


def by_id(cat, key: str) -> Collection:
    for c in cat.collections():
        if key in (c.id, c.remote_id):
            return c
    raise AssertionError(f"collection {key} not listed; got {[c.id for c in cat.collections()]}")


def expected_products(arc, stac_id: str, start=None, end=None) -> dict[str, dict[str, int | None]]:
    """Product folder -> {relpath: size in the catalogue}, from the emulator's own archive."""
    out: dict[str, dict[str, int]] = {}
    for p in arc.products(stac_id):
        if start and p.datetime < start or end and p.datetime > end:
            continue
        for f in p.files:
            folder, rel = product_relpath(f.platform_path)
            out.setdefault(folder, {})[rel] = f.size if f.size_in_catalogue else None
    return out


def tree_of(products, with_sizes: bool = True) -> dict[str, dict[str, int | None]]:
    out: dict[str, dict[str, int | None]] = {}
    for p in products:
        for f in p.files:
            out.setdefault(p.folder, {})[f.relpath] = f.size if with_sizes else None
    return out


# ---- against the emulator --------------------------------------------------------


def test_both_backends_list_the_same_collections(emulator, session, arc):
    stac, osr = make("stac", emulator, session), make("opensearch", emulator, session)
    s_cols, o_cols = stac.collections(), osr.collections()
    assert {c.remote_id for c in s_cols} == {c.stac_id for c in arc.collections if c.in_stac}
    assert {c.remote_id for c in o_cols} == {c.urn for c in arc.collections}
    for c in arc.collections:
        o = next(x for x in o_cols if x.remote_id == c.urn)
        assert o.id == folder_id(c, "opensearch")
        assert o.start == c.start
        if c.in_stac:
            s = next(x for x in s_cols if x.remote_id == c.stac_id)
            assert s.id == folder_id(c, "stac") and s.title == o.title == c.title
            assert s.start == c.start and s.end == o.end


@pytest.mark.parametrize("stac_id", ["terrascope-s2-toc-v2", "terrascope-s2-lai-v2"])
def test_both_backends_give_the_same_month(emulator, session, arc, stac_id):
    coll = arc.collection(stac_id)
    stac, osr = make("stac", emulator, session), make("opensearch", emulator, session)
    s = stac.products(by_id(stac, coll.stac_id), *JAN_2020)
    o = osr.products(by_id(osr, coll.urn), *JAN_2020)
    expected = expected_products(arc, stac_id, *JAN_2020)
    assert expected, "the emulator archive has no products in January 2020"
    assert tree_of(o) == expected
    # The older STAC item form has no file:size: compare names there, sizes elsewhere.
    sizes = not coll.older_item_form
    assert tree_of(s, sizes) == tree_of(o, sizes)
    assert sorted(p.datetime for p in s) == sorted(p.datetime for p in o)
    assert all(JAN_2020[0] <= p.datetime <= JAN_2020[1] for p in s + o)
    for p in s:
        assert all(f.local_path and f.local_path.startswith("/data/") for f in p.files)
        assert all(f.href.startswith(emulator.base_url + "/download/") for f in p.files)


@pytest.mark.parametrize("kind", ["stac", "opensearch"])
@pytest.mark.parametrize("page_size", [3, 5])
def test_paging_gives_the_same_result_in_ceil_n_over_page_size_requests(emulator, session, kind, page_size):
    large = make(kind, emulator, session)
    small = make(kind, emulator, session, page_size=page_size)
    for key in ("terrascope-s2-toc-v2", "urn:eop:VITO:TERRASCOPE_S2_TOC_V2",
                "terrascope-s2-lai-v2", "urn:eop:VITO:TERRASCOPE_S2_LAI_V2"):
        if key.startswith("urn") != (kind == "opensearch"):
            continue
        coll = by_id(large, key)
        before_large = large.requests_made
        want = large.products(coll, None, None)
        assert large.requests_made - before_large == 1
        before = small.requests_made
        got = small.products(coll, None, None)
        n = len(want)
        assert n >= 10
        assert [p.id for p in got] == [p.id for p in want]
        assert tree_of(got) == tree_of(want)
        assert small.requests_made - before == math.ceil(n / page_size), (
            f"{kind}: {n} products with page size {page_size} took {small.requests_made - before} requests")


@pytest.mark.parametrize("kind", ["stac", "opensearch"])
def test_limit_costs_one_small_request(emulator, session, kind):
    cat = make(kind, emulator, session)
    coll = by_id(cat, "terrascope-s2-toc-v2" if kind == "stac" else "urn:eop:VITO:TERRASCOPE_S2_TOC_V2")
    before = cat.requests_made
    got = cat.products(coll, None, None, limit=1)
    assert len(got) == 1 and cat.requests_made - before == 1


@pytest.mark.parametrize("kind", ["stac", "opensearch"])
def test_filters_cloud_tile_bbox_and_dates(emulator, session, arc, kind):
    cat = make(kind, emulator, session)
    emu = arc.collection("terrascope-s2-toc-v2")
    coll = by_id(cat, emu.stac_id if kind == "stac" else emu.urn)
    everything = arc.products(emu.stac_id)
    tiles = Counter(p.tile_id for p in everything)
    tile = tiles.most_common(1)[0][0]
    covers = sorted(p.cloud_cover for p in everything if p.cloud_cover is not None)
    limit = covers[len(covers) // 2]
    flt = Filter(cloud_cover_max=limit, tile_ids=(tile,))
    got = cat.products(coll, None, None, flt)
    want = {p.id for p in everything if p.tile_id == tile and p.cloud_cover is not None and p.cloud_cover <= limit}
    assert want and len(want) < len(everything), "the filter should keep some products, not all"
    assert {p.title for p in got} == want
    # A filter's dates intersect the query's range; disjoint ranges ask nothing.
    before = cat.requests_made
    assert cat.products(coll, *JAN_2020, Filter(start=datetime(2021, 1, 1, tzinfo=UTC))) == []
    assert cat.requests_made == before
    late = Filter(start=datetime(2020, 1, 2, tzinfo=UTC))
    got = cat.products(coll, *JAN_2020, late)
    want = {p.id for p in everything if late.start <= p.datetime <= JAN_2020[1]}
    assert want and {p.title for p in got} == want
    # Boxes: one product's own box finds it; a box in the empty South Pacific finds nothing.
    target = everything[0]
    assert target.id in {p.title for p in cat.products(coll, None, None, Filter(bbox=target.bbox))}
    nowhere = (-150.0, -50.0, -149.0, -49.0)
    assert not any(p.bbox[0] <= nowhere[2] and nowhere[0] <= p.bbox[2] and p.bbox[1] <= nowhere[3]
                   and nowhere[1] <= p.bbox[3] for p in everything)
    assert cat.products(coll, None, None, Filter(bbox=nowhere)) == []


def test_opensearch_local_paths_from_a_second_mep_query(emulator, session, arc):
    plain = make("opensearch", emulator, session, page_size=4)
    mep = OpenSearchCatalogue(emulator.opensearch_url, session, page_size=4, with_local_paths=True)
    coll = by_id(plain, "urn:eop:VITO:TERRASCOPE_S2_LAI_V2")
    a = plain.products(coll, *JAN_2020)
    before = mep.requests_made
    b = mep.products(coll, *JAN_2020)
    assert mep.requests_made - before == 2 * math.ceil(len(a) / 4)
    assert tree_of(a) == tree_of(b)
    platform = {f.platform_path for p in arc.products("terrascope-s2-lai-v2") for f in p.files}
    for p in b:
        for f in p.files:
            assert f.local_path in platform and f.local_path.endswith("/" + p.folder + "/" + f.relpath)


@pytest.mark.parametrize("kind", ["stac", "opensearch"])
def test_unknown_collection_is_a_catalogue_error(emulator, session, kind):
    cat = make(kind, emulator, session)
    bogus = Collection(id="nope", remote_id="urn:eop:VITO:NOPE" if kind == "opensearch" else "nope")
    try:
        got = cat.products(bogus, None, None)
    except CatalogueError as e:
        assert "\n" not in str(e)
    else:
        assert got == []  # a service may answer an empty result instead


# ---- against a scripted server: misbehaving services ---------------------------------


class Scripted:
    """A loopback HTTP server answering from a function (method, path+query, body) -> (status, body)."""

    def __init__(self, answer: Callable[[str, str, bytes], tuple[int, object]]):
        self.answer = answer
        self.seen: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.seen.append((self.command, self.path))
                status, doc = outer.answer(self.command, self.path, body)
                data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html" if isinstance(doc, bytes) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    servers: list[Scripted] = []

    def start(answer) -> Scripted:
        servers.append(Scripted(answer))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def os_feature(i: int) -> dict:
    return {"type": "Feature", "id": f"urn:x:C:P{i:03d}", "properties": {
        "date": "2020-01-01T00:00:00Z", "title": f"P{i:03d}",
        "links": {"data": [{"href": f"https://h/download/C/P{i:03d}/P{i:03d}.tif", "length": i}]}}}


def os_page(features: list[dict], next_href: str | None, total: int | None = None) -> dict:
    links: dict = {}
    if next_href:
        links["next"] = [{"href": next_href, "type": "application/geo+json", "title": "next"}]
    doc = {"type": "FeatureCollection", "features": features, "itemsPerPage": len(features),
           "properties": {"links": links}}
    if total is not None:
        doc["totalResults"] = total
    return doc


COLL = Collection(id="C", remote_id="urn:x:C")


def test_opensearch_repeated_next_link_and_duplicates_stop_safely(scripted, session):
    def answer(method, path, body):
        if "startIndex=1&" in path or path.endswith("startIndex=1"):
            return 200, os_page([os_feature(1), os_feature(2)], srv.url + "products?page=2")
        # page 2 repeats a product of page 1 and links to itself forever
        return 200, os_page([os_feature(2), os_feature(3)], srv.url + "products?page=2")

    srv = scripted(answer)
    cat = OpenSearchCatalogue(srv.url, session, page_size=2)
    got = cat.products(COLL, None, None)
    assert [p.title for p in got] == ["P001", "P002", "P003"]
    assert cat.requests_made == 2


def test_opensearch_empty_page_and_missing_links_end_the_walk(scripted, session):
    def answer(method, path, body):
        if "page=2" in path:
            return 200, {"type": "FeatureCollection", "features": []}
        return 200, os_page([os_feature(1)], srv.url + "products?page=2")

    srv = scripted(answer)
    cat = OpenSearchCatalogue(srv.url, session, page_size=1)
    assert [p.title for p in cat.products(COLL, None, None)] == ["P001"]
    assert cat.requests_made == 2


def test_stac_auth_errors_are_not_retried(scripted, session):
    srv = scripted(lambda m, p, b: (401, {"detail": "Not authenticated"}))
    cat = StacCatalogue(srv.url, session)
    with pytest.raises(CatalogueError, match="HTTP 401 .Not authenticated."):
        cat.products(COLL, None, None)
    assert cat.requests_made == 1


def test_opensearch_page_size_error_retries_once_with_100_and_remembers(scripted, session):
    def answer(method, path, body):
        if "count=1000" in path:
            return 400, {"exceptions": [{"locator": "count", "exceptionText": "count too large"}]}
        return 200, os_page([os_feature(1)], None, total=1)

    srv = scripted(answer)
    cat = OpenSearchCatalogue(srv.url, session)
    assert len(cat.products(COLL, None, None)) == 1
    assert cat.requests_made == 2
    assert len(cat.products(COLL, None, None)) == 1
    assert cat.requests_made == 3  # count=100 straight away the second time
    assert "count=100&" in srv.seen[-1][1] or srv.seen[-1][1].endswith("count=100")


@pytest.mark.parametrize("status, doc, words", [
    (500, {"exceptions": [{"exceptionText": "boom"}]}, ["HTTP 500", "boom"]),
    (200, b"<html>login</html>", ["non-JSON"]),
    (200, {"type": "FeatureCollection", "features": "nope"}, ["features"]),
    (200, [1, 2, 3], ["features"]),
])
def test_garbage_answers_are_one_line_catalogue_errors(scripted, session, status, doc, words):
    srv = scripted(lambda m, p, b: (status, doc))
    for cat in (OpenSearchCatalogue(srv.url, session), StacCatalogue(srv.url, session)):
        with pytest.raises(CatalogueError) as e:
            cat.products(COLL, None, None)
        msg = str(e.value)
        assert "\n" not in msg and all(w in msg for w in words), msg
        # A 5xx and a page that is not JSON are tried again (a proxy, a maintenance page); an
        # error status may also be the page size refused: then the smaller page is tried too.
        transient = status >= 500 or words == ["non-JSON"]
        tries = fetch.ATTEMPTS if transient else 1
        assert cat.requests_made == (2 * tries if status >= 400 else tries)


def test_network_failure_is_a_catalogue_error_after_its_attempts(session):
    cat = StacCatalogue("http://127.0.0.1:9/", session)
    with pytest.raises(CatalogueError, match=f"catalogue request failed.*after {fetch.ATTEMPTS} attempts"):
        cat.collections()
    assert cat.requests_made == fetch.ATTEMPTS


def test_a_failing_then_answering_catalogue_is_tried_again(scripted, session):
    answers = iter([(503, b"<html>maintenance</html>"), (200, b"<html>proxy</html>")])
    srv = scripted(lambda m, p, b: next(answers, (200, {"type": "FeatureCollection", "features": []})))
    cat = StacCatalogue(srv.url, session)
    assert cat.products(COLL, None, None) == []
    assert cat.requests_made == 3


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch):
    """Catalogue retries without their waits: these tests count requests, not seconds."""
    monkeypatch.setattr(fetch, "BACKOFF", 0.0)


def stac_item(i: int) -> dict:
    return {"type": "Feature", "id": f"P{i:03d}", "properties": {"datetime": "2020-01-01T00:00:00Z"},
            "assets": {"B": {"href": f"https://h/download/C/P{i:03d}/P{i:03d}.tif", "file:size": i}}}


def test_stac_post_next_link_with_merge_and_capped_page_size(scripted, session):
    bodies: list[dict] = []

    def answer(method, path, body):
        doc = json.loads(body or b"{}")
        bodies.append(doc)
        page = int(doc.get("page", 1))
        # The server serves at most 2 items a page whatever the limit.
        items = [stac_item(2 * page - 1), stac_item(2 * page)] if page < 3 else [stac_item(5)]
        links = []
        if page < 3:
            links.append({"rel": "next", "href": srv.url + "search", "method": "POST",
                          "body": {"page": page + 1}, "merge": True})
        return 200, {"type": "FeatureCollection", "features": items, "links": links}

    srv = scripted(answer)
    cat = StacCatalogue(srv.url, session)
    got = cat.products(Collection(id="C", remote_id="C"), None, None)
    assert [p.id for p in got] == ["P001", "P002", "P003", "P004", "P005"]
    assert [b.get("page") for b in bodies] == [None, 2, 3]
    assert all(b["collections"] == ["C"] for b in bodies)  # merged into the first body
    assert bodies[0]["limit"] == 1000
    assert bodies[1]["limit"] == 1000
    # The short page with a successor taught the client the server's cap: the next walk asks for it.
    bodies.clear()
    assert len(cat.products(Collection(id="C", remote_id="C"), None, None)) == 5
    assert bodies[0]["limit"] == 2


def test_stac_get_fallback_when_post_search_is_missing(scripted, session):
    def answer(method, path, body):
        if method == "POST":
            return 405, {"detail": "Method Not Allowed"}
        assert path.startswith("/collections/C/items?")
        return 200, {"type": "FeatureCollection", "features": [stac_item(1)], "links": [],
                     "numberMatched": 1}

    srv = scripted(answer)
    cat = StacCatalogue(srv.url, session)
    assert [p.id for p in cat.products(Collection(id="C", remote_id="C"), None, None)] == ["P001"]
    assert [p.id for p in cat.products(Collection(id="C", remote_id="C"), None, None)] == ["P001"]
    assert [m for m, _ in srv.seen] == ["POST", "GET", "GET"]


def test_opensearch_results_beyond_the_last_page_are_reported(scripted, session, caplog):
    srv = scripted(lambda m, p, b: (200, os_page([os_feature(1), os_feature(2)], None, total=5)))
    cat = OpenSearchCatalogue(srv.url, session, page_size=2)
    with caplog.at_level("WARNING"):
        assert len(cat.products(COLL, None, None)) == 2
    assert "5 results announced but only 2 served" in caplog.text
