"""A hostile catalogue (tests/hostile.py, on 127.0.0.2) against real mounts.

The emulator (127.0.0.1) plays the download service and the token endpoint; the
hostile server plays the catalogue and another host that some asset hrefs
name. terrafs must send it no credentials, keep good products visible next
to malformed ones, mount in spite of a malformed extent, keep a password
found in an href out of every log line, attribute and cache file, and bound
what a 429, a paging loop, a huge answer or a JSON bomb can cost.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

from hostile import HostileServer, asset, collection, item
from mounting import credentials_env, write_config

pytestmark = pytest.mark.mount
HREF_PASSWORD = "Href-Pa55word-7x"


@pytest.fixture
def hostile():
    server = HostileServer()
    yield server
    server.close()


def emulator_file(emulator, min_size: int = 100_000) -> tuple[str, int, bytes]:
    """(download URL, size, bytes) of a real emulator file."""
    f = max(emulator.files(limit=30, min_size=min_size), key=lambda f: f["size"])
    url = emulator.download_url(f["path"])
    data = requests.get(url, auth=("demo", "demo"), timeout=30).content
    assert len(data) == f["size"]
    return url, f["size"], data


def hostile_mount(mount_factory, emulator, hostile, **config):
    return mount_factory(emulator, endpoints={"stac": hostile.base_url + "/stac/"}, **config)


def only_child(path: Path) -> Path:
    children = sorted(path.iterdir())
    assert len(children) == 1, f"{path}: expected one entry, found {[c.name for c in children]}"
    return children[0]


# -- credentials ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["bearer", "basic"])
def test_no_credentials_reach_another_host(emulator, mount_factory, hostile, method):
    url, size, data = emulator_file(emulator)
    hostile_bytes = os.urandom(50_000)
    hostile.behaviour.files["H1/h1.tif"] = hostile_bytes
    hostile.behaviour.collections = [collection("evil")]
    # The hostile file comes first: the Basic check at mount time must pass it over.
    hostile.behaviour.items["evil"] = [
        item("H1", "2020-01-05T10:00:00Z", {"a": asset(hostile.file_url("H1/h1.tif"), len(hostile_bytes))}),
        item("E1", "2020-01-06T10:00:00Z", {"b": asset(url, size)}),
    ]
    emulator.mark()
    mount = hostile_mount(mount_factory, emulator, hostile, auth={"method": method})
    heads_at_mount = [r for r in emulator.requests("download") if r["method"] == "HEAD"]

    assert (mount.path / "evil/2020/01/05/H1/h1.tif").read_bytes() == hostile_bytes
    assert only_child(only_child(mount.path / "evil/2020/01/06")).read_bytes() == data

    leaked = hostile.authorization_headers()
    assert leaked == [], f"credentials reached the other host: {[(s.method, s.path) for s in leaked]}"
    assert hostile.requests_to("/files/"), "the hostile file was fetched at all (without credentials)"
    served = [r["status"] for r in emulator.requests("download") if r["method"] == "GET"]
    assert served and all(s in (200, 206) for s in served), f"the download host got credentials: {served}"
    if method == "basic":
        assert heads_at_mount, "the Basic check at mount time HEADs a file on the download host"
    warnings = [line for line in mount.log_text().splitlines() if "not sending credentials" in line]
    assert len(warnings) == 1 and "127.0.0.2" in warnings[0], warnings


# -- malformed catalogue input ----------------------------------------------------------------


def test_a_month_with_malformed_items_lists_the_good_ones(emulator, mount_factory, hostile):
    hostile.behaviour.files.update({"G1/g1.tif": b"1" * 10, "G2/g2.tif": b"2" * 10, "B1/b1.tif": b"b" * 10})
    hostile.behaviour.collections = [collection("mixed")]
    hostile.behaviour.items["mixed"] = [
        item("G1", "2020-01-05T10:00:00Z", {"a": asset(hostile.file_url("G1/g1.tif"), 10)}),
        item("BAD-ZONE", "2020-01-07T10:00:00+99:99", {"a": asset(hostile.file_url("B1/b1.tif"), 10)}),
        item("BAD-YEAR", "9999-12-31T23:00:00-02:00", {"a": asset(hostile.file_url("B1/b1.tif"), 10)}),
        item("BAD-SIZE", "2020-01-08T10:00:00Z", {"a": asset(hostile.file_url("B1/b1.tif"), 2**64)}),
        item("G2", "2020-01-09T10:00:00Z", {"a": asset(hostile.file_url("G2/g2.tif"), 10)}),
    ]
    mount = hostile_mount(mount_factory, emulator, hostile)
    days = sorted(p.name for p in (mount.path / "mixed/2020/01").iterdir())
    assert days == ["05", "08", "09"], f"the good products must stay visible: {days}"
    assert (mount.path / "mixed/2020/01/09/G2/g2.tif").read_bytes() == b"2" * 10
    assert list((mount.path / "mixed/2020/01/08/BAD-SIZE").iterdir()) == [], "a file of 2^64 bytes is refused"
    log = mount.log_text()
    assert "BAD-ZONE" in log and "BAD-YEAR" in log, "each dropped item is named in a warning"


def test_collections_with_malformed_extents_still_mount(emulator, mount_factory, hostile):
    hostile.behaviour.collections = [
        collection("bad-zone", ["2020-01-01T00:00:00+99:99", None]),
        collection("year-one", ["0001-01-01T00:00:00Z", "9999-12-31T23:00:00-02:00"]),
        collection("fine"),
    ]
    mount = hostile_mount(mount_factory, emulator, hostile)
    assert sorted(p.name for p in mount.path.iterdir()) == ["bad-zone", "fine", "year-one"]
    years = sorted(p.name for p in (mount.path / "year-one").iterdir())
    now = datetime.now(timezone.utc).year
    assert years[0] == "1950" and int(years[-1]) <= now + 1, f"the extent is clamped: {years[0]}..{years[-1]}"
    assert (mount.path / "bad-zone/2020").is_dir()


def test_a_password_in_an_href_reaches_no_log_attribute_or_cache_file(emulator, mount_factory, hostile,
                                                                      tmp_path):
    url, size, data = emulator_file(emulator)
    with_password = url.replace("http://", f"http://demo:{HREF_PASSWORD}@")
    missing = with_password.rsplit("/", 1)[0] + "/missing.tif"  # a read that fails: an ERROR line
    hostile.behaviour.collections = [collection("pw")]
    hostile.behaviour.items["pw"] = [
        item("E1\nERROR FORGED by the catalogue", "2020-01-06T10:00:00Z",
             {"b": asset(with_password, size), "c": asset(missing, 10),
              "d": asset(f"http://x:{HREF_PASSWORD}@[broken/x.tif", 1)}),
    ]
    cache = tmp_path / "cache"
    mount = hostile_mount(mount_factory, emulator, hostile, cache_dir=cache)
    folder = only_child(mount.path / "pw/2020/01/06")
    good = folder / url.rsplit("/", 1)[1]
    assert good.read_bytes() == data
    with pytest.raises(OSError):
        (folder / "missing.tif").read_bytes()
    attrs = b""
    for path in (folder, good, folder / "missing.tif"):
        for name in ("user.terrafs.url", "user.terrafs.record", "user.terrafs.product_id"):
            try:
                attrs += os.getxattr(path, name)
            except OSError:
                pass
    assert b"/download/" in attrs and HREF_PASSWORD.encode() not in attrs
    assert os.getxattr(good, "user.terrafs.url").decode() == url
    mount.stop()
    log = mount.log_text()
    assert HREF_PASSWORD not in log, "a password from an href reached the log"
    assert not any(line.startswith("ERROR FORGED") for line in log.splitlines()), "a forged log line"
    cache_files = [p for p in cache.rglob("*") if p.is_file()]
    assert cache_files, "the cache holds files"
    for p in cache_files:
        assert HREF_PASSWORD.encode() not in p.read_bytes(), f"the password is in the cache file {p}"


# -- what a 429, a paging loop, a huge answer and a JSON bomb may cost --------------------------


def test_an_absurd_retry_after_delays_another_read_by_at_most_the_bound(emulator, mount_factory, hostile,
                                                                         tmp_path):
    bound = 2.0
    url, size, data = emulator_file(emulator)
    hostile.behaviour.files["S/slow.tif"] = b"s" * 1000
    hostile.behaviour.throttle_once["S/slow.tif"] = "999999999"  # 31 years
    hostile.behaviour.collections = [collection("c")]
    hostile.behaviour.items["c"] = [
        item("S", "2020-01-05T10:00:00Z", {"a": asset(hostile.file_url("S/slow.tif"), 1000)}),
        item("E1", "2020-01-06T10:00:00Z", {"b": asset(url, size)}),
    ]
    mount = hostile_mount(mount_factory, emulator, hostile, rate_limit_max_pause=bound)
    other = only_child(only_child(mount.path / "c/2020/01/06"))
    other.stat()
    result: dict[str, bytes] = {}
    throttled = threading.Thread(target=lambda: result.update(s=(mount.path / "c/2020/01/05/S/slow.tif")
                                                              .read_bytes()))
    throttled.start()
    deadline = time.monotonic() + 20
    while not hostile.requests_to("/files/S/") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert hostile.requests_to("/files/S/"), "the throttled file was asked for"
    time.sleep(0.2)  # the 429 is in, the pause written
    state = json.loads((tmp_path / "ratelimit.state").read_text())
    assert state["paused_until"] <= time.time() + bound + 0.5, "the shared pause is bounded"
    t0 = time.monotonic()
    assert other.read_bytes() == data
    waited = time.monotonic() - t0
    print(f"another file's read waited {waited:.2f} s after a Retry-After of 31 years (bound {bound} s)")
    throttled.join(30)
    assert result.get("s") == b"s" * 1000, "the throttled read succeeds after the bounded pause"
    assert waited <= bound + 1.5, f"another file's read waited {waited:.1f} s (bound {bound} s)"


def test_paging_stops_at_the_configured_limit(emulator, mount_factory, hostile):
    hostile.behaviour.collections = [collection("endless")]
    hostile.behaviour.endless.add("endless")
    mount = hostile_mount(mount_factory, emulator, hostile, catalogue_limits={"max_pages": 5})
    at_mount = len(hostile.requests_to("/stac/search"))  # the mount's look at the download hosts (mount.py)
    t0 = time.monotonic()
    products = sorted(p.name for p in (mount.path / "endless/2020/01/10").iterdir())
    assert time.monotonic() - t0 < 30
    assert products == [f"P{i}" for i in range(5)]
    searches = [s for s in hostile.requests_to("/stac/search")[at_mount:] if s.method == "POST"]
    assert len(searches) == 5, f"{len(searches)} pages fetched with max_pages 5"
    assert "stopping after 5 pages" in mount.log_text()


def test_a_huge_answer_is_refused_and_the_mount_stays_up(emulator, mount_factory, hostile):
    hostile.behaviour.files["G1/g1.tif"] = b"1" * 10
    hostile.behaviour.collections = [collection("big"), collection("small")]
    hostile.behaviour.huge["big"] = 3_000_000
    hostile.behaviour.items["small"] = [item("G1", "2020-01-05T10:00:00Z",
                                             {"a": asset(hostile.file_url("G1/g1.tif"), 10)})]
    mount = hostile_mount(mount_factory, emulator, hostile, catalogue_limits={"max_response_size": "1MiB"})
    with pytest.raises(OSError):
        list((mount.path / "big/2020/01").iterdir())
    assert (mount.path / "small/2020/01/05/G1/g1.tif").read_bytes() == b"1" * 10
    assert "larger than the limit" in mount.log_text()


def test_a_json_bomb_at_mount_time_is_one_clear_line(emulator, hostile, tmp_path):
    hostile.behaviour.collections = b"[" * 100_000 + b"]" * 100_000
    (tmp_path / "w").mkdir()
    config = write_config(tmp_path / "w" / "config.yaml", emulator.base_url, tmp_path / "cache",
                          endpoints={"stac": hostile.base_url + "/stac/"})
    (tmp_path / "mnt").mkdir()
    done = subprocess.run([sys.executable, "-m", "terrafs", "mount", "--foreground", "--config", str(config),
                           str(tmp_path / "mnt")], capture_output=True, text=True, timeout=120,
                          env=credentials_env())
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("terrafs:")]
    assert len(lines) == 1 and "nested too deep" in lines[0], done.stderr[-2000:]
