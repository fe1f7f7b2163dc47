"""The emulator's link profile: parsing "--link", the pacing and the round
trips as pure logic (a fake clock), then the delays and the cap over real HTTP
on 127.0.0.1, measured by the client."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import requests

from terrafs.emulator.link import HANDSHAKE_TRIPS, Link, LinkProfile, SharedLink, paced, parse_link
from terrafs.emulator.settings import EmulatorSettings

DEMO = ("demo", "demo")


# -- parsing ------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("rtt=30ms,bw=5MB/s", Link(0.03, 5e6)),
    ("bw=25MB/s, rtt=30ms", Link(0.03, 25e6)),
    ("rtt=0.1", Link(0.1, 0.0)),
    ("rtt=500us", Link(0.0005, 0.0)),
    ("bw=1MiB/s", Link(0.0, 1024 ** 2)),
    ("bw=800kB", Link(0.0, 8e5)),
    ("bw=1000", Link(0.0, 1000.0)),
    ("RTT=2S", Link(2.0, 0.0)),
    ("rtt=30ms,bw=5MB/s,shared", Link(0.03, 5e6, True)),
    ("loopback", Link()),
    ("off", Link()),
    ("", Link()),
])
def test_parse_link(text, expected):
    got = parse_link(text)
    assert got.rtt == pytest.approx(expected.rtt) and got.bandwidth == pytest.approx(expected.bandwidth)
    assert got.shared == expected.shared


@pytest.mark.parametrize("text", ["rtt=-1ms", "rtt=30min", "bw=5Mbps", "speed=1MB/s", "rtt",
                                  "rtt=1ms,rtt=2ms", "rtt=1ms;bw=1MB", "bw=MB/s",
                                  "shared=yes", "bw=1MB,shared,shared"])
def test_parse_link_refuses(text):
    with pytest.raises(ValueError, match="link"):
        parse_link(text)


def test_describe():
    assert Link().describe() == "loopback"
    assert Link(0.03, 5e6).describe() == "30 ms, 5 MB/s"
    assert Link(0.03, 5e6, True).describe() == "30 ms, 5 MB/s shared"


# -- pacing and round trips on a fake clock ------------------------------------------

class FakeClock:
    """time.monotonic and time.sleep where sleeping only moves the clock."""

    def __init__(self):
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Body:
    def __init__(self, chunks):
        self.chunks = chunks
        self.closed = False

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        self.closed = True


@pytest.mark.parametrize("bandwidth", [5e6, 25e6, 3000.0])
def test_paced_body_takes_its_size_over_the_bandwidth(bandwidth):
    fake = FakeClock()
    data = bytes(range(256)) * 3000  # 768 000 bytes in uneven chunks, a flush in between
    body = Body([data[:100_000], b"", data[100_000:700_001], data[700_001:]])
    arrivals = []
    out = bytearray()
    for piece in paced(body, bandwidth, fake.sleep, fake.clock):
        arrivals.append((fake.now - 100.0, len(out) + len(piece)))
        out += piece
    assert bytes(out) == data and body.closed
    assert fake.now - 100.0 == pytest.approx(len(data) / bandwidth)
    # Never ahead of the link: each byte arrives no earlier than its place / bandwidth.
    assert all(t >= n / bandwidth - 1e-9 for t, n in arrivals)
    assert b"" in list(paced(Body([b"x", b""]), bandwidth, fake.sleep, fake.clock))


def test_paced_closes_the_body_when_the_client_goes_away():
    fake = FakeClock()
    body = Body([b"x" * 100_000])
    it = paced(body, 1e6, fake.sleep, fake.clock)
    next(it)
    it.close()
    assert body.closed


def test_a_shared_link_splits_its_bandwidth_between_answers():
    """Two answers at once on one client's shared link: each gets half, both end at (a + b) / bw."""
    fake = FakeClock()
    link = SharedLink(fake.clock)
    a = paced(Body([b"a" * 300_000]), 1e6, fake.sleep, fake.clock, link)
    b = paced(Body([b"b" * 100_000]), 1e6, fake.sleep, fake.clock, link)
    done: dict[str, float] = {}
    got = {"a": 0, "b": 0}
    live = {"a": a, "b": b}
    while live:  # the two answers take turns, as two server threads would
        for name, it in list(live.items()):
            piece = next(it, None)
            if piece is None:
                done[name] = fake.now - 100.0
                del live[name]
            else:
                got[name] += len(piece)
    assert got == {"a": 300_000, "b": 100_000}
    assert done["b"] == pytest.approx(0.2, abs=0.02)  # half the link while both ran
    assert done["a"] == pytest.approx(0.4, abs=0.02)  # the whole link once b was done


class Sock:
    """Stands for a connection's socket (werkzeug puts it in the environ)."""


def _app(environ, start_response):
    start_response("200 OK", [("Content-Length", "10")])
    return [b"0123456789"]


def test_round_trips_per_request_and_per_new_connection():
    settings = EmulatorSettings()
    settings.update({"link_rtt": 0.03, "link_bandwidth": 0})
    fake = FakeClock()
    profile = LinkProfile(_app, settings, fake.sleep, fake.clock)
    first, second = Sock(), Sock()
    for sock in (first, first, first, second, second):
        body = profile({"PATH_INFO": "/download/x", "werkzeug.socket": sock}, lambda *a: None)
        assert b"".join(body) == b"0123456789"
    assert fake.slept == pytest.approx([0.03 * (1 + HANDSHAKE_TRIPS), 0.03, 0.03, 0.03 * (1 + HANDSHAKE_TRIPS), 0.03])
    # The harness's control API is not on the link.
    fake.slept.clear()
    profile({"PATH_INFO": "/_emulator/settings", "werkzeug.socket": Sock()}, lambda *a: None)
    assert fake.slept == []
    # Off: nothing waits, the body is passed as it is.
    settings.update({"link_rtt": 0})
    assert profile({"PATH_INFO": "/stac", "werkzeug.socket": Sock()}, lambda *a: None) == [b"0123456789"]
    assert fake.slept == []


# -- over real HTTP -------------------------------------------------------------------

@pytest.fixture
def tif(emulator) -> dict:
    files = emulator.files(limit=1, min_size=200_000, max_size=3_000_000)
    assert files, "the emulator serves no file between 200 kB and 3 MB"
    return files[0]


def _timed(fn):
    began = time.monotonic()
    result = fn()
    return result, time.monotonic() - began


def test_round_trips_over_http(emulator, tif):
    rtt = 0.15
    emulator.set(link_rtt=rtt)
    url = emulator.download_url(tif["path"])
    with requests.Session() as s:
        r, new = _timed(lambda: s.head(url, auth=DEMO, timeout=30))
        assert r.status_code == 200
        r, again = _timed(lambda: s.head(url, auth=DEMO, timeout=30))
        assert r.status_code == 200
    # A new connection pays the handshakes and the request; a kept one, the request only.
    assert new >= 3 * rtt, f"first request on a new connection took {new:.3f} s"
    assert rtt <= again < 3 * rtt, f"second request on the same connection took {again:.3f} s"
    # The catalogue is on the link too; the control API is not.
    _, stac = _timed(lambda: requests.get(emulator.url("/stac"), timeout=30))
    assert stac >= 3 * rtt
    _, control = _timed(lambda: requests.get(emulator.url("/_emulator/settings"), timeout=30))
    assert control < rtt


def test_bandwidth_cap_over_http(emulator, tif):
    size = tif["size"]
    bandwidth = size / 0.8  # the whole file in 0.8 s
    emulator.set(link_bandwidth=bandwidth)
    url = emulator.download_url(tif["path"])
    with requests.Session() as s:
        whole, took = _timed(lambda: s.get(url, auth=DEMO, timeout=30).content)
        part, took_part = _timed(lambda: s.get(url, auth=DEMO, headers={"Range": "bytes=0-%d" % (size // 4 - 1)},
                                                 timeout=30).content)
    assert len(whole) == size and part == whole[:size // 4]
    assert took >= 0.8, f"{size} bytes at {bandwidth:.0f} B/s took only {took:.3f} s"
    assert took < 0.8 * 2.5 + 0.5, f"{size} bytes at {bandwidth:.0f} B/s took {took:.3f} s"
    assert 0.2 <= took_part < took, f"a quarter of the file took {took_part:.3f} s"
    # The request log still counts the body bytes sent.
    gets = [e for e in emulator.requests("download") if e["method"] == "GET"]
    assert [e["bytes"] for e in gets] == [size, size // 4]


def test_shared_bandwidth_over_http(emulator, tif):
    """Two GETs at once from one client on a shared link take as long as both bodies in turn."""
    size = tif["size"]
    bandwidth = size / 0.4
    emulator.set(link_bandwidth=bandwidth, link_shared=True)
    url = emulator.download_url(tif["path"])
    start = threading.Barrier(2)
    bodies: list[bytes] = []

    def get() -> None:
        start.wait()
        bodies.append(requests.get(url, auth=DEMO, timeout=30).content)

    threads = [threading.Thread(target=get) for _ in range(2)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - began
    assert len(bodies) == 2 and bodies[0] == bodies[1] and len(bodies[0]) == size
    assert took >= 0.8, f"two answers of {size} bytes on a shared {bandwidth:.0f} B/s link took {took:.3f} s"


def test_reset_restores_the_start_up_link_and_refuses_bad_values(emulator_factory):
    emu = emulator_factory(["--link", "rtt=40ms,bw=5MB/s"])
    s = emu.settings()
    assert s["link_rtt"] == pytest.approx(0.04) and s["link_bandwidth"] == pytest.approx(5e6)
    emu.set(link_rtt=0, link_bandwidth=0)
    assert emu.settings()["link_rtt"] == 0
    emu.reset()
    assert emu.settings()["link_rtt"] == pytest.approx(0.04)
    r = requests.post(emu.url("/_emulator/settings"), json={"link_rtt": -1}, timeout=10)
    assert r.status_code == 400 and "link_rtt" in r.json()["error"]


def test_bad_link_option_is_refused(emulator_data, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "terrafs.emulator.server", "--data", str(emulator_data),
                           "--link", "rtt=fast"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "bad rtt value" in proc.stderr


def test_connections_are_kept_on_a_link_only(emulator, tif):
    url = emulator.download_url(tif["path"])
    r = requests.head(url, auth=DEMO, timeout=30)
    assert r.headers.get("Connection") == "close"  # loopback: werkzeug's one answer per connection
    emulator.set(link_rtt=0.001)
    whole = requests.get(url, auth=DEMO, timeout=30).content
    with requests.Session() as s:
        # Many answers on one kept connection, each whole, a token POST (a body: closes) in between.
        for i in range(6):
            r = s.get(url, auth=DEMO, headers={"Range": f"bytes={i * 1000}-{i * 1000 + 999}"}, timeout=30)
            assert r.status_code == 206 and r.content == whole[i * 1000:i * 1000 + 1000]
            assert "close" not in r.headers.get("Connection", "")
        r = s.post(emulator.token_url, timeout=30, data={"grant_type": "password", "client_id": "public",
                                                          "username": "demo", "password": "demo"})
        assert r.status_code == 200 and r.headers.get("Connection") == "close"
        assert s.get(url, auth=DEMO, timeout=30).content == whole


def test_the_mount_reads_exact_bytes_over_a_link(emulator, emulator_data, mount_factory, tmp_path):
    """terrafs's own client on a kept-alive, paced link: the copy is whole, one GET, at the link's pace."""
    from support import band, sha256, source_of

    mount = mount_factory(emulator)
    f = band(mount, "B08_10M")
    size = f.stat().st_size
    bandwidth = max(size / 0.5, 1e6)
    emulator.set(link_rtt=0.02, link_bandwidth=bandwidth)
    emulator.mark()
    began = time.monotonic()
    subprocess.run(["cp", str(f), str(tmp_path / "x.tif")], check=True, timeout=120)
    took = time.monotonic() - began
    assert sha256(tmp_path / "x.tif") == sha256(source_of(emulator_data, f))
    gets = [e for e in emulator.requests("download") if e["method"] == "GET"]
    assert len(gets) == 1 and gets[0]["bytes"] == size, gets
    assert took >= size / bandwidth + 0.02
