"""FUSE mounts (as on several hosts) with separate caches and one Redis for the budget and the shared tier:
a republished file is never served old once a node saw the new version; Redis stopped mid-read leaves
every read exact, and the tier is used again once it is back."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from clustering import free_port, redis_server  # noqa: F401  (fixture)
from mounting import credentials_env
from support import sha256, source_of

pytestmark = pytest.mark.mount
DEMO = ("demo", "demo")


def shared_mounts(n, emulator, mount_factory, redis_url: str, tmp_path: Path) -> list:
    env = dict(credentials_env(), HOME=str(tmp_path / "home"))
    mounts = []
    for i in range(n):
        m = mount_factory(emulator, name=f"node{i}", cache_dir=tmp_path / f"cache{i}", env=env,
                          rate_limit_state=redis_url, cache={"shared": redis_url},
                          metrics={"listen": f"127.0.0.1:{free_port()}"})
        m.metrics_port = int(re.search(r"listen: 127\.0\.0\.1:(\d+)", m.config.read_text()).group(1))
        mounts.append(m)
    return mounts


def shared_figure(mount, name: str, labels: str = "") -> float:
    text = requests.get(f"http://127.0.0.1:{mount.metrics_port}/metrics", timeout=10).text
    found = re.search(rf"^{name}(?:_total)?{re.escape(labels)} (\S+)$", text, re.M)
    assert found, f"{name} is not in the mount's metrics"
    return float(found.group(1))


def pread(path: Path, offset: int, n: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, n, offset)
    finally:
        os.close(fd)


def test_a_republished_file_is_served_old_by_no_node_once_one_saw_it(emulator, redis_server, mount_factory,
                                                                     tmp_path):
    rows = [r for r in emulator.files(limit=2000, min_size=3 << 20) if r["name"].endswith(".tif")]
    assert rows, "the emulator serves no file over 3 MiB"
    big = rows[0]
    url = emulator.download_url(big["path"])
    old = requests.get(url, auth=DEMO, timeout=60).content
    a, b, c = shared_mounts(3, emulator, mount_factory, redis_server.url, tmp_path)
    path = Path(big["default_path"])
    size = big["size"]
    assert pread(a.path / path, 0, 16 << 10) == old[:16 << 10]
    assert pread(a.path / path, size // 2, 16 << 10) == old[size // 2: size // 2 + (16 << 10)]

    emulator.set(republish=big["path"])
    new = requests.get(url, auth=DEMO, timeout=60).content
    assert new != old and len(new) == len(old)
    # Node b reads a part nobody holds: its answer is the new version, which it tells the cluster.
    assert pread(b.path / path, size - (16 << 10), 16 << 10) == new[-(16 << 10):]

    for m in (a, c, b):
        got = (m.path / path).read_bytes()
        assert got == new, f"{m.path.parent.name} served " + ("the old version" if got == old else "a mix")


def test_redis_stopped_mid_read_every_read_is_exact_and_the_tier_comes_back(emulator, emulator_data, redis_server,
                                                                            mount_factory, tmp_path):
    a, b = shared_mounts(2, emulator, mount_factory, redis_server.url, tmp_path)
    rows = [r for r in emulator.files(limit=400, min_size=200 << 10) if r["name"].endswith(".tif")][:40]
    names = [Path(r["default_path"]) for r in rows]
    assert len(names) >= 30
    for name in names[:12]:
        (a.path / name).read_bytes()  # into a's cache and the tier
    copied: list[tuple[Path, bytes]] = []
    started = threading.Event()

    def copy(name: Path) -> None:
        data = (b.path / name).read_bytes()
        copied.append((name, data))
        started.set()

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(copy, n) for n in names[:24]]
        assert started.wait(60)
        redis_server.stop()  # in the middle of b's reads
        for f in futures:
            f.result()
    wrong = [str(n) for n, data in copied if data != source_of(emulator_data, b.path / n).read_bytes()]
    assert wrong == [], f"reads that were not exact with Redis stopped: {wrong}"

    redis_server.start()
    hits_before = shared_figure(b, "terrafs_shared_hits")
    deadline = time.monotonic() + 60
    while not shared_figure(b, "terrafs_shared_available") and time.monotonic() < deadline:
        time.sleep(0.1)  # b tries Redis again once RETRY_EVERY has passed since its last failure
    back = False
    written = '{direction="written"}'
    for name in names[24:]:  # each a new file: a fills the tier, b reads it from there
        before = shared_figure(a, "terrafs_shared_bytes", written)
        (a.path / name).read_bytes()
        while shared_figure(a, "terrafs_shared_bytes", written) == before and time.monotonic() < deadline:
            time.sleep(0.05)  # a's puts go out from its writer thread, and the first after RETRY_EVERY
        assert sha256(b.path / name) == sha256(source_of(emulator_data, b.path / name))
        if shared_figure(b, "terrafs_shared_hits") > hits_before:
            back = True
            break
        if time.monotonic() > deadline:
            break
    assert back, "the tier was not used again after Redis came back"
    out = subprocess.run([sys.executable, "-m", "terrafs", "cache", "stats", "--config", str(b.config)],
                         capture_output=True, text=True, timeout=60, env=b.env)
    lines = [line for line in out.stdout.splitlines() if line.startswith("shared tier:")]
    assert out.returncode == 0 and lines and re.match(r"shared tier:\s+[1-9]\d* hits", lines[0]), out.stdout
    for m in (a, b):
        text = m.log_text()
        away = re.findall(r"shared tier at redis://127\.0\.0\.1:\d+/0 cannot be reached", text)
        again = re.findall(r"shared tier at redis://127\.0\.0\.1:\d+/0 answers again", text)
        assert len(away) <= 1 and len(again) == len(away), f"{m.path}: {len(away)} / {len(again)} warnings"
    assert len(re.findall(r"shared tier at \S+ cannot be reached", b.log_text())) == 1, \
        "b read with Redis stopped but did not warn once"
