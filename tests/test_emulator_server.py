"""The emulator's server side over real HTTP on 127.0.0.1: download service,
token endpoint, rate limits, fault knobs, request log, command line."""
from __future__ import annotations

import time
from urllib.parse import parse_qs, urlparse

import pytest
import requests

TOKEN_PATH = "/auth/realms/terrascope/protocol/openid-connect"
DEMO = ("demo", "demo")


@pytest.fixture
def tif(emulator) -> dict:
    """A served file of a few hundred KiB at most (fast to read whole)."""
    files = emulator.files(limit=1, min_size=50_000, max_size=2_000_000)
    assert files, "the emulator serves no file between 50 kB and 2 MB"
    return files[0]


def password_grant(emulator, client_id: str = "public", password: str = "demo") -> requests.Response:
    return requests.post(emulator.token_url, timeout=10, data={
        "grant_type": "password", "client_id": client_id, "username": "demo", "password": password})


def tokens(emulator) -> dict:
    r = password_grant(emulator)
    assert r.status_code == 200, r.text
    return r.json()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# -- download: auth -------------------------------------------------------------


def test_range_with_basic_auth_returns_206_and_100_bytes(emulator, tif):
    url = emulator.download_url(tif["path"])
    r = requests.get(url, auth=DEMO, headers={"Range": "bytes=0-99"}, timeout=10)
    assert r.status_code == 206
    assert len(r.content) == 100
    assert r.headers["Content-Range"] == f"bytes 0-99/{tif['size']}"
    whole = requests.get(url, auth=DEMO, timeout=10)
    assert whole.status_code == 200 and len(whole.content) == tif["size"]
    assert whole.content[:100] == r.content
    assert whole.content[:4] in (b"II*\x00", b"MM\x00*"), "the file is not a TIFF"


def test_no_credentials_redirects_to_login_without_accept_ranges(emulator, tif):
    r = requests.get(emulator.download_url(tif["path"]), allow_redirects=False, timeout=10)
    assert r.status_code == 302
    assert "Accept-Ranges" not in r.headers
    loc = urlparse(r.headers["Location"])
    assert f"{loc.scheme}://{loc.netloc}{loc.path}" == emulator.url(TOKEN_PATH + "/auth")
    q = parse_qs(loc.query)
    assert q["response_type"] == ["code"] and q["client_id"] and q["redirect_uri"]
    page = requests.get(r.headers["Location"], timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert "<form" in page.text


def test_json_only_client_without_credentials_gets_401(emulator, tif):
    # terracatalogueclient probes with HEAD + Accept: application/json and needs a non-OK answer.
    r = requests.head(emulator.download_url(tif["path"]), headers={"Accept": "application/json"}, timeout=10)
    assert r.status_code == 401


@pytest.mark.parametrize("headers, auth", [
    ({}, ("demo", "wrong")),
    ({}, ("nobody", "demo")),
    ({"Authorization": "Bearer not-a-token"}, None),
    ({"Authorization": "Bearer "}, None),
    ({"Authorization": "Bearer"}, None),
    ({"Authorization": "Negotiate abc"}, None),
])
def test_bad_credentials_get_401(emulator, tif, headers, auth):
    r = requests.get(emulator.download_url(tif["path"]), headers=headers, auth=auth,
                     allow_redirects=False, timeout=10)
    assert r.status_code == 401, f"{headers or auth} answered {r.status_code}"


def test_unknown_path_is_404(emulator):
    r = requests.get(emulator.download_url("Sentinel2/NOPE/file.tif"), auth=DEMO, timeout=10)
    assert r.status_code == 404


# -- token endpoint --------------------------------------------------------------


def test_password_grant_token_works_as_bearer(emulator, tif):
    t = tokens(emulator)
    assert t["token_type"] == "Bearer" and t["expires_in"] == 300 and t["refresh_expires_in"] == 3600
    assert {"access_token", "refresh_token", "session_state", "scope", "not-before-policy"} <= set(t)
    assert t["access_token"].count(".") == 2, "access token should look like a JWT"
    r = requests.get(emulator.download_url(tif["path"]), headers={**bearer(t["access_token"]), "Range": "bytes=10-19"},
                     timeout=10)
    assert r.status_code == 206 and len(r.content) == 10


def test_terracatalogueclient_client_id_is_accepted(emulator):
    r = requests.post(emulator.token_url, timeout=10, data={
        "grant_type": "password", "client_id": "terracatalogueclient", "client_secret": "",
        "username": "demo", "password": "demo"})
    assert r.status_code == 200 and r.json()["access_token"]


def test_token_endpoint_errors_look_like_keycloak(emulator):
    bad_pw = password_grant(emulator, password="nope")
    assert bad_pw.status_code == 401
    assert bad_pw.json() == {"error": "invalid_grant", "error_description": "Invalid user credentials"}
    bad_client = password_grant(emulator, client_id="someone-else")
    assert bad_client.status_code in (400, 401) and bad_client.json()["error"] in ("invalid_client", "unauthorized_client")
    bad_grant = requests.post(emulator.token_url, data={"grant_type": "magic", "client_id": "public"}, timeout=10)
    assert bad_grant.status_code == 400 and bad_grant.json()["error"] == "unsupported_grant_type"


def test_refresh_rotates_the_refresh_token(emulator, tif):
    first = tokens(emulator)
    r = requests.post(emulator.token_url, timeout=10, data={
        "grant_type": "refresh_token", "client_id": "public", "refresh_token": first["refresh_token"]})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert requests.head(emulator.download_url(tif["path"]), headers=bearer(second["access_token"]),
                         timeout=10).status_code == 200
    again = requests.post(emulator.token_url, timeout=10, data={
        "grant_type": "refresh_token", "client_id": "public", "refresh_token": first["refresh_token"]})
    assert again.status_code == 400
    assert again.json() == {"error": "invalid_grant", "error_description": "Token is not active"}


def test_expired_access_token_gets_401(emulator, tif):
    emulator.set(access_token_lifetime=1)
    t = tokens(emulator)
    assert t["expires_in"] == 1
    url = emulator.download_url(tif["path"])
    assert requests.head(url, headers=bearer(t["access_token"]), timeout=10).status_code == 200
    time.sleep(1.3)
    assert requests.head(url, headers=bearer(t["access_token"]), timeout=10).status_code == 401


def test_expired_refresh_token_is_not_active(emulator):
    emulator.set(refresh_token_lifetime=1)
    t = tokens(emulator)
    time.sleep(1.3)
    r = requests.post(emulator.token_url, timeout=10, data={
        "grant_type": "refresh_token", "client_id": "public", "refresh_token": t["refresh_token"]})
    assert r.status_code == 400 and r.json()["error_description"] == "Token is not active"


def test_revoke_tokens_kills_every_issued_token(emulator, tif):
    t = tokens(emulator)
    url = emulator.download_url(tif["path"])
    assert requests.head(url, headers=bearer(t["access_token"]), timeout=10).status_code == 200
    emulator.set(revoke_tokens=True)
    assert requests.head(url, headers=bearer(t["access_token"]), timeout=10).status_code == 401
    fresh = tokens(emulator)
    assert requests.head(url, headers=bearer(fresh["access_token"]), timeout=10).status_code == 200


def test_device_flow_pending_until_approved(emulator, tif):
    r = requests.post(emulator.url(TOKEN_PATH + "/auth/device"), data={"client_id": "public"}, timeout=10)
    assert r.status_code == 200, r.text
    dev = r.json()
    assert {"device_code", "user_code", "verification_uri", "verification_uri_complete", "expires_in",
            "interval"} <= set(dev)
    poll = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "client_id": "public",
            "device_code": dev["device_code"]}
    pending = requests.post(emulator.token_url, data=poll, timeout=10)
    assert pending.status_code == 400 and pending.json()["error"] == "authorization_pending"
    emulator.approve_device(dev["user_code"])
    done = requests.post(emulator.token_url, data=poll, timeout=10)
    assert done.status_code == 200, done.text
    access = done.json()["access_token"]
    assert requests.head(emulator.download_url(tif["path"]), headers=bearer(access), timeout=10).status_code == 200
    reused = requests.post(emulator.token_url, data=poll, timeout=10)
    assert reused.status_code == 400, "a device code must work only once"


def test_discovery_document(emulator):
    r = requests.get(emulator.url("/auth/realms/terrascope/.well-known/openid-configuration"), timeout=10)
    doc = r.json()
    issuer = emulator.url("/auth/realms/terrascope")
    assert doc["issuer"] == issuer
    assert doc["token_endpoint"] == emulator.token_url
    assert doc["authorization_endpoint"] == issuer + "/protocol/openid-connect/auth"
    assert doc["device_authorization_endpoint"] == issuer + "/protocol/openid-connect/auth/device"
    assert "password" in doc["grant_types_supported"]


# -- download: HEAD and ranges -------------------------------------------------------


def test_head_headers(emulator, tif):
    url = emulator.download_url(tif["path"])
    r = requests.head(url, auth=DEMO, timeout=10)
    assert r.status_code == 200
    assert int(r.headers["Content-Length"]) == tif["size"]
    assert r.headers["Accept-Ranges"] == "bytes"
    assert r.headers["ETag"].startswith('"') and not r.headers["ETag"].startswith("W/")
    assert r.headers["Last-Modified"].endswith("GMT")
    assert r.headers["Content-Type"].startswith("image/tiff")
    assert r.content == b""
    assert requests.head(url, auth=DEMO, timeout=10).headers["ETag"] == r.headers["ETag"], "ETag is not stable"
    ranged = requests.head(url, auth=DEMO, headers={"Range": "bytes=0-9"}, timeout=10)
    assert ranged.status_code == 206 and ranged.headers["Content-Length"] == "10"


def test_range_forms(emulator, tif):
    url, size = emulator.download_url(tif["path"]), tif["size"]
    whole = requests.get(url, auth=DEMO, timeout=10).content

    def get(spec: str) -> requests.Response:
        return requests.get(url, auth=DEMO, headers={"Range": spec}, timeout=10)

    open_end = get(f"bytes={size - 50}-")
    assert open_end.status_code == 206 and open_end.content == whole[-50:]
    assert open_end.headers["Content-Range"] == f"bytes {size - 50}-{size - 1}/{size}"
    suffix = get("bytes=-30")
    assert suffix.status_code == 206 and suffix.content == whole[-30:]
    clamped = get(f"bytes={size - 5}-{size + 1000}")
    assert clamped.status_code == 206 and clamped.content == whole[-5:]
    beyond = get(f"bytes={size}-{size + 10}")
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{size}"
    multi = get("bytes=0-9,20-29")  # documented choice: whole body
    assert multi.status_code == 200 and multi.content == whole
    stale = requests.get(url, auth=DEMO, headers={"Range": "bytes=0-9", "If-Range": '"other"'}, timeout=10)
    assert stale.status_code == 200 and len(stale.content) == size


# -- rate limits -----------------------------------------------------------------------


def test_rate_limit_429_with_retry_after_and_rejections_do_not_count(emulator, tif):
    emulator.set(rate_limits=[[5, 2.0]])
    url = emulator.download_url(tif["path"])
    codes = [requests.head(url, auth=DEMO, timeout=10).status_code for _ in range(5)]
    assert codes == [200] * 5
    limited = requests.head(url, auth=DEMO, timeout=10)
    assert limited.status_code == 429
    wait = int(limited.headers["Retry-After"])
    assert 1 <= wait <= 2
    assert requests.head(url, auth=DEMO, timeout=10).status_code == 429
    time.sleep(wait + 0.1)
    # The two rejected requests did not count, so a full window is free again.
    assert [requests.head(url, auth=DEMO, timeout=10).status_code for _ in range(5)] == [200] * 5


def test_rate_limit_without_retry_after_and_off(emulator, tif):
    emulator.set(rate_limits=[[2, 5.0]], send_retry_after=False)
    url = emulator.download_url(tif["path"])
    for _ in range(2):
        assert requests.head(url, auth=DEMO, timeout=10).status_code == 200
    r = requests.head(url, auth=DEMO, timeout=10)
    assert r.status_code == 429 and "Retry-After" not in r.headers
    emulator.set(rate_limits=[])
    assert all(requests.head(url, auth=DEMO, timeout=10).status_code == 200 for _ in range(5))


def test_rate_limit_only_on_downloads(emulator):
    emulator.set(rate_limits=[[1, 10.0]])
    disc = emulator.url("/auth/realms/terrascope/.well-known/openid-configuration")
    assert all(requests.get(disc, timeout=10).status_code == 200 for _ in range(3))


# -- faults --------------------------------------------------------------------------------


def test_error_rate_one_gives_5xx(emulator, tif):
    emulator.set(error_rate=1.0)
    codes = {requests.get(emulator.download_url(tif["path"]), auth=DEMO, timeout=10).status_code for _ in range(6)}
    assert codes <= {500, 503} and codes


def test_ignore_range_gives_200_and_whole_body(emulator, tif):
    emulator.set(ignore_range=True)
    r = requests.get(emulator.download_url(tif["path"]), auth=DEMO, headers={"Range": "bytes=0-99"}, timeout=10)
    assert r.status_code == 200 and len(r.content) == tif["size"]


def test_drop_cuts_the_body_short(emulator, tif):
    emulator.set(drop_rate=1.0)
    url = emulator.download_url(tif["path"])
    got = bytearray()
    with pytest.raises(requests.exceptions.RequestException):
        with requests.get(url, auth=DEMO, stream=True, timeout=10) as r:
            assert r.status_code == 200 and int(r.headers["Content-Length"]) == tif["size"]
            for chunk in r.iter_content(1024):
                got += chunk
    assert 0 < len(got) < tif["size"]
    # HEAD has no body to cut.
    assert requests.head(url, auth=DEMO, timeout=10).status_code == 200
    entry = [e for e in emulator.requests("download") if e["method"] == "GET"][-1]
    # The client may lose the last partial chunk it buffered; the server sent at least what arrived.
    assert len(got) <= entry["bytes"] < tif["size"] and entry["status"] == 200


def test_latency_is_added(emulator, tif):
    emulator.set(latency=0.4)
    began = time.monotonic()
    requests.head(emulator.download_url(tif["path"]), auth=DEMO, timeout=10)
    assert time.monotonic() - began >= 0.4


def test_bandwidth_cap(emulator, tif):
    rate = tif["size"] * 2  # the whole file should take about half a second
    emulator.set(bandwidth=rate)
    began = time.monotonic()
    r = requests.get(emulator.download_url(tif["path"]), auth=DEMO, timeout=10)
    took = time.monotonic() - began
    assert len(r.content) == tif["size"]
    assert took >= 0.4, f"{tif['size']} bytes at {rate} B/s took only {took:.2f} s"


def _get_cut(url: str, headers: dict | None = None) -> tuple[requests.Response, bytes, float]:
    """GET a body that the server cuts: (response, what arrived, seconds between
    the first bytes and the cut)."""
    got = bytearray()
    first = None
    with pytest.raises(requests.exceptions.RequestException):
        with requests.get(url, auth=DEMO, headers=headers or {}, stream=True, timeout=10) as r:
            for chunk in r.iter_content(64):  # small: a partial chunk is lost at the cut
                first = first or time.monotonic()
                got += chunk
    return r, bytes(got), time.monotonic() - (first or time.monotonic())


def test_fault_kinds_one_at_a_time(emulator, tif):
    url, size = emulator.download_url(tif["path"]), tif["size"]
    whole = requests.get(url, auth=DEMO, timeout=10).content
    ranged = {"Range": "bytes=100-1099"}

    def one(kind: str, headers: dict | None = None) -> requests.Response:
        emulator.set(fault_rate=1.0, fault_kinds=[kind])
        return requests.get(url, auth=DEMO, headers=headers or {}, timeout=10)

    assert one("500").status_code == 500 and one("503").status_code == 503
    r = one("429")
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    r = one("wrong_range", ranged)
    assert r.status_code == 206 and r.headers["Content-Range"] == f"bytes 101-1100/{size}"
    assert r.content == whole[101:1101], "the header names what is sent"
    r = one("ignore_range", ranged)
    assert r.status_code == 200 and r.content == whole
    emulator.set(fault_kinds=["cut"])
    r, got, _ = _get_cut(url)
    assert r.status_code == 200 and 0 < len(got) < size and whole.startswith(got)
    emulator.set(fault_kinds=["stall"], stall_seconds=0.6)
    r, got, stalled = _get_cut(url, ranged)
    assert r.status_code == 206 and 0 < len(got) < 1000 and whole[100:].startswith(got)
    assert stalled >= 0.5, f"the body was cut after {stalled:.2f} s, not after a stall"
    # A Range-only kind is not drawn for a plain GET, and HEAD is never faulted.
    emulator.set(fault_kinds=["wrong_range", "ignore_range"])
    plain = requests.get(url, auth=DEMO, timeout=10)
    assert plain.status_code == 200 and plain.content == whole
    emulator.set(fault_kinds=["500"])
    assert requests.head(url, auth=DEMO, timeout=10).status_code == 200
    faults = [e.get("fault") for e in emulator.requests("download")]
    assert faults == [None, "500", "503", "429", "wrong_range", "ignore_range", "cut", "stall", None, None]


def test_mixed_fault_rate_draws_every_kind(emulator, tif):
    emulator.set(fault_rate=0.4, stall_seconds=0.0, rate_limits=[])
    url = emulator.download_url(tif["path"])
    emulator.mark()
    for i in range(150):
        try:
            with requests.get(url, auth=DEMO, headers={"Range": f"bytes={i}-{i + 2000}"}, stream=True,
                              timeout=10) as r:
                for _ in r.iter_content(4096):
                    pass
        except requests.exceptions.RequestException:
            pass
    entries = emulator.requests("download")
    assert len(entries) == 150
    kinds = [e.get("fault") for e in entries if e.get("fault")]
    assert 0.25 <= len(kinds) / 150 <= 0.55, f"{len(kinds)} of 150 GETs faulted at fault_rate 0.4"
    assert set(kinds) == {"500", "503", "429", "cut", "stall", "wrong_range", "ignore_range", "html"}


def test_republish_serves_new_bytes_tag_and_date_and_keeps_the_size(emulator, tif):
    url, size = emulator.download_url(tif["path"]), tif["size"]
    before = requests.get(url, auth=DEMO, timeout=10)
    head = requests.head(url, auth=DEMO, timeout=10)
    assert before.headers["ETag"] == head.headers["ETag"] and before.headers["Last-Modified"]
    emulator.set(republish=tif["path"])
    after = requests.get(url, auth=DEMO, timeout=10)
    assert after.status_code == 200 and len(after.content) == size
    assert all(a != b for a, b in zip(before.content, after.content)), "a byte of the new version equals the old"
    assert after.headers["ETag"] != before.headers["ETag"]
    assert after.headers["Last-Modified"] != before.headers["Last-Modified"]
    for r in (requests.head(url, auth=DEMO, timeout=10),
              requests.get(url, auth=DEMO, headers={"Range": "bytes=10-19"}, timeout=10)):
        assert (r.headers["ETag"], r.headers["Last-Modified"]) == (after.headers["ETag"], after.headers["Last-Modified"])
    part = requests.get(url, auth=DEMO, headers={"Range": "bytes=10-19"}, timeout=10)
    assert part.status_code == 206 and part.content == after.content[10:20]
    # An If-Range with the old tag gets the whole new file, not a piece of it.
    stale = requests.get(url, auth=DEMO, headers={"Range": "bytes=0-9", "If-Range": before.headers["ETag"]}, timeout=10)
    assert stale.status_code == 200 and stale.content == after.content
    # Again: a third version, different from both.
    time.sleep(0.01)
    emulator.set(republish=[tif["path"]])
    third = requests.get(url, auth=DEMO, timeout=10)
    assert all(a != b for a, b in zip(after.content, third.content)) and third.content != before.content
    assert third.headers["ETag"] not in (before.headers["ETag"], after.headers["ETag"])
    assert third.headers["Last-Modified"] != after.headers["Last-Modified"]
    # The catalogue keeps the size; a reset serves the original again.
    files = {f["path"]: f["size"] for f in emulator.files(limit=10000)}
    assert files[tif["path"]] == size
    emulator.reset()
    assert requests.get(url, auth=DEMO, timeout=10).content == before.content
    r = requests.post(emulator.url("/_emulator/settings"), json={"republish": "no/such/file.tif"}, timeout=10)
    assert r.status_code == 400 and "no/such/file.tif" in r.json()["error"]


def test_catalogue_fail_next_is_used_up_one_per_catalogue_request(emulator):
    emulator.set(catalogue_fail_next=["503", "html"])
    first = requests.get(emulator.stac_url + "/collections", timeout=10)
    assert first.status_code == 503 and first.headers["Content-Type"].startswith("text/html")
    second = requests.get(emulator.opensearch_url + "collections", timeout=10)
    assert second.status_code == 200 and second.headers["Content-Type"].startswith("text/html")
    assert "<html>" in second.text
    third = requests.get(emulator.stac_url + "/collections", timeout=10)
    assert third.status_code == 200 and third.json()["collections"]
    assert emulator.settings()["catalogue_fail_next"] == []
    assert [e.get("fault") for e in emulator.requests()] == ["503", "html", None]


@pytest.mark.parametrize("patch", [{"fault_rate": 1.5}, {"fault_kinds": ["teapot"]}, {"fault_kinds": []},
                                   {"catalogue_fail_next": ["404"]}, {"catalogue_fail_next": "503"},
                                   {"stall_seconds": -1}, {"republish": 7}])
def test_fault_knobs_refuse_bad_values(emulator, patch):
    r = requests.post(emulator.url("/_emulator/settings"), json=patch, timeout=10)
    assert r.status_code == 400, f"{patch} was accepted"
    assert emulator.settings()["fault_rate"] == 0.0


def test_files_by_layout_with_urls_and_paths(emulator):
    for layout in ("cog", "tiled", "striped"):
        rows = emulator.files(limit=1000, layout=layout)
        assert len(rows) >= 4, f"{len(rows)} files of layout {layout}"
        assert len({r["platform_path"] for r in rows}) == len(rows)
        for r in rows:
            assert r["url"] == emulator.download_url(r["path"]) and r["layout"] == layout
            assert r["platform_path"].startswith("/data/MTDA/TERRASCOPE_LayoutsTest/V1/")
            assert r["default_path"].startswith("terrascope-layouts-test/20")
            assert r["default_path"].endswith("/".join(r["platform_path"].split("/")[-2:]))
            assert r["default_path_opensearch"].startswith("TERRASCOPE_LAYOUTS_TEST/")
    toc = emulator.files(limit=1000, collection="urn:eop:VITO:TERRASCOPE_S2_TOC_V2")
    assert toc and {r["layout"] for r in toc} == {"sentinel2", None}  # None: the xml files
    assert {r["collection"] for r in emulator.files(limit=1000, layout="sentinel2")} == {"terrascope-s2-toc-v2"}


# -- request log and control -------------------------------------------------------------


def test_request_log_lines_and_byte_counts(emulator, tif):
    t = tokens(emulator)
    url = emulator.download_url(tif["path"])
    requests.get(url, auth=DEMO, headers={"Range": "bytes=0-99"}, timeout=10)
    requests.get(url + "?x=1", headers=bearer(t["access_token"]), timeout=10)
    requests.head(url, auth=DEMO, timeout=10)
    requests.get(url, allow_redirects=False, timeout=10)
    entries = emulator.requests()
    assert [e["kind"] for e in entries] == ["auth", "download", "download", "download", "download"]
    token_req, ranged, whole, head, anon = entries
    assert token_req["method"] == "POST" and token_req["status"] == 200
    assert ranged["range"] == "bytes=0-99" and ranged["status"] == 206 and ranged["bytes"] == 100
    assert whole["query"] == "x=1" and whole["bytes"] == tif["size"] and whole["range"] is None
    assert head["method"] == "HEAD" and head["bytes"] == 0
    assert anon["status"] == 302
    for e in entries:
        assert set(e) == {"time", "method", "path", "query", "range", "status", "bytes", "client", "kind"}
        assert e["client"] == "127.0.0.1"
    text = emulator.log_path.read_text()
    assert t["access_token"] not in text and t["refresh_token"] not in text
    assert "password" not in text and "Basic" not in text


def test_settings_get_hides_passwords_and_rejects_unknown_keys(emulator):
    s = emulator.settings()
    assert s["users"] == ["demo"] and s["rate_limits"] == [[80, 10.0], [200, 60.0]]
    r = requests.post(emulator.url("/_emulator/settings"), json={"no_such_knob": 1}, timeout=10)
    assert r.status_code == 400
    r = requests.post(emulator.url("/_emulator/settings"), json={"error_rate": 2}, timeout=10)
    assert r.status_code == 400


# -- command line ------------------------------------------------------------------------------


def test_command_line_knobs_and_clean_exit(emulator_factory):
    emu = emulator_factory(["--ignore-range", "--rate-limit", "off", "--access-token-lifetime", "7",
                            "--no-retry-after", "--latency", "0.01"])
    s = emu.settings()
    assert s["ignore_range"] is True and s["rate_limits"] == [] and s["access_token_lifetime"] == 7
    assert s["send_retry_after"] is False and s["latency"] == 0.01
    f = emu.files(limit=1, min_size=1000)[0]
    r = requests.get(emu.download_url(f["path"]), auth=DEMO, headers={"Range": "bytes=0-9"}, timeout=10)
    assert r.status_code == 200 and len(r.content) == f["size"]
    assert emu.stop() == 0, "the emulator did not exit 0 on SIGTERM"


# -- pure logic (no server) ----------------------------------------------------------------------


@pytest.mark.parametrize("header, expected", [
    (None, None),
    ("bytes=0-99", (0, 99)),
    ("bytes=10-", (10, 999)),
    ("bytes=-100", (900, 999)),
    ("bytes=-5000", (0, 999)),
    ("bytes=990-5000", (990, 999)),
    ("bytes=1000-1001", "unsatisfiable"),
    ("bytes=-0", "unsatisfiable"),
    ("bytes=0-9,20-29", None),  # several ranges: whole body
    ("bytes=9-0", None),  # malformed: ignored
    ("items=0-9", None),
    ("bytes=a-b", None),
])
def test_parse_range(header, expected):
    from terrafs.emulator.download import parse_range
    assert parse_range(header, 1000) == expected


def test_limiter_windows_and_retry_after():
    from terrafs.emulator.limits import SlidingWindowLimiter, retry_after_header
    lim = SlidingWindowLimiter()
    windows = [(3, 10.0), (4, 60.0)]
    assert [lim.check("a", windows, now=t) for t in (0.0, 1.0, 2.0)] == [None, None, None]
    wait = lim.check("a", windows, now=3.0)
    assert wait == pytest.approx(7.0) and retry_after_header(wait) == "7"
    assert lim.check("b", windows, now=3.0) is None, "limits are per client"
    assert lim.check("a", windows, now=10.5) is None  # the request at t=0 left the 10 s window
    wait = lim.check("a", windows, now=12.0)  # 4 in the last 60 s
    assert wait == pytest.approx(48.0)
    assert lim.check("a", [], now=12.0) is None, "no windows: no limit"


def test_parse_rate_limits():
    from terrafs.emulator.limits import parse_rate_limits
    assert parse_rate_limits("80/10,200/60") == [(80, 10.0), (200, 60.0)]
    assert parse_rate_limits("off") == []
    with pytest.raises(ValueError):
        parse_rate_limits("80")
    with pytest.raises(ValueError):
        parse_rate_limits("5/0")


def test_settings_update_is_all_or_nothing():
    from terrafs.emulator.settings import EmulatorSettings
    s = EmulatorSettings()
    with pytest.raises(ValueError):
        s.update({"latency": 1.0, "drop_rate": -1})
    assert s.latency == 0.0
    s.update({"latency": 1, "rate_limits": [[5, 2]], "ignore_range": True})
    assert s.latency == 1.0 and s.rate_limits == [(5, 2.0)] and s.ignore_range is True
    with pytest.raises(ValueError):
        s.update({"ignore_range": "yes"})
