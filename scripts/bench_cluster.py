#!/usr/bin/env python3
"""Cluster benchmark: requests for a time series read by one node against the same read by three nodes.

Three dask.distributed worker processes, each a node with its own local cache
folder, read a 64 x 64 window from each file of a time series through the
`terrascope` fsspec filesystem, against the emulator, with one redis-server for
the request budget and (where the row says so) the shared block tier. Prints a
Markdown table. A report, not a test: exits 0.

Usage: scripts/bench_cluster.py  (or BENCH_CASES=cluster scripts/bench)
  TERRAFS_BENCH_DATA     archive dir (default ~/.cache/terrafs-bench, as scripts/bench)
  BENCH_CLUSTER_PROFILE  emulator data profile (default bench; "small" is the tests' archive, quick)
  BENCH_CLUSTER_LAYOUT   raster layout of the series (default cog)
  BENCH_SERIES           files in the series (default 36)
"""
from __future__ import annotations

import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

DATA = Path(os.environ.get("TERRAFS_BENCH_DATA", "~/.cache/terrafs-bench")).expanduser()
PROFILE = os.environ.get("BENCH_CLUSTER_PROFILE", "bench")
LAYOUT = os.environ.get("BENCH_CLUSTER_LAYOUT", "cog")
SERIES = int(os.environ.get("BENCH_SERIES", "36"))
SIDE = 64


def note(msg: str) -> None:
    print(f"bench-cluster: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_emulator(work: Path) -> tuple[subprocess.Popen, str, Path]:
    log = work / "requests.jsonl"
    DATA.mkdir(parents=True, exist_ok=True)
    with open(work / "emulator.err", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "terrafs.emulator.server", "--port", "0", "--data", str(DATA),
                                 "--profile", PROFILE, "--log", str(log)],
                                stdout=subprocess.PIPE, stderr=err, start_new_session=True)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        if sel.select(1.0):
            line = proc.stdout.readline().decode()
            if line.startswith("terrafs emulator: "):
                return proc, line.split(": ", 1)[1].strip(), log
    raise RuntimeError(f"the emulator did not start; see {work / 'emulator.err'}")


def start_redis(work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    # As the README says to run the tier's Redis: a byte budget, LRU eviction, loopback only.
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--maxmemory", "512mb", "--maxmemory-policy", "allkeys-lru",
                             "--dir", str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    import redis

    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def downloads(log: Path, mark: int) -> list[dict]:
    out = []
    for line in log.read_text().splitlines()[mark:]:
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        if e.get("kind") == "download" and e.get("method") in ("GET", "HEAD"):
            out.append(e)
    return out


def marker(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def read_window(fs, path):  # on a worker
    import rasterio
    from rasterio.windows import Window

    with rasterio.open("terrascope://" + path, opener=fs.open) as ds:
        w = Window(min(500, ds.width - SIDE), min(500, ds.height - SIDE), SIDE, SIDE)
        pixels = ds.read(1, window=w)
    if fs.daemon.shared is not None:
        fs.daemon.shared.flush()
    return int(pixels.sum())


def main() -> int:
    import fsspec
    import redis
    from distributed import Client, LocalCluster

    work = Path(tempfile.mkdtemp(prefix="terrafs-bench-cluster-"))
    work.chmod(0o700)
    procs: list[subprocess.Popen] = []
    rows: list[tuple[str, str]] = []
    paths: list[str] = []
    try:
        emu, base, log = start_emulator(work)
        procs.append(emu)
        rds, redis_url = start_redis(work)
        procs.append(rds)
        listed = requests.get(base + "/_emulator/files", params={"limit": 1000, "layout": LAYOUT}, timeout=60).json()
        paths = [f["default_path"] for f in listed if f["name"].endswith(".tif")][:SERIES]
        note(f"{len(paths)} {LAYOUT} files in the series")

        def node(name: str, shared: bool):
            cfg = {"catalogue": "stac",
                   "endpoints": {"stac": f"{base}/stac/", "opensearch": f"{base}/catalogue/",
                                 "token": f"{base}/auth/realms/terrascope/protocol/openid-connect/token"},
                   "auth": {"hosts": [base], "username": "demo", "password": "demo"},
                   "cache": {"dir": str(work / name), "size": "4GiB",
                             **({"shared": redis_url} if shared else {})},
                   "rate_limit_state": redis_url, "log": {"level": "INFO", "file": str(work / f"{name}.log")}}
            return fsspec.filesystem("terrascope", config=cfg, skip_instance_cache=True)

        with LocalCluster(n_workers=3, threads_per_worker=1, processes=True, dashboard_address=None,
                          local_directory=str(work / "dask")) as cluster, Client(cluster) as client:
            workers = sorted(client.scheduler_info()["workers"])

            def measure(label: str, groups: list[list[tuple]]) -> None:
                """groups run one after another; the (fs, worker) pairs of a group at the same time."""
                requests.post(base + "/_emulator/settings", json={"reset": True}, timeout=30)
                redis.Redis.from_url(redis_url).flushdb()  # an empty tier (and budget) for each row
                t0 = time.monotonic()
                counts, throttled = [], 0
                for group in groups:
                    mark = marker(log)
                    futures = [f for fs, w in group
                               for f in client.map(read_window, [fs] * len(paths), paths, workers=[w],
                                                   allow_other_workers=False, pure=False)]
                    client.gather(futures)
                    got = downloads(log, mark)
                    counts.append(len(got))
                    throttled += sum(1 for r in got if r.get("status") == 429)
                total = sum(counts)
                split = f" ({' then '.join(map(str, counts))})" if len(counts) > 1 else ""
                rows.append((label, f"{total} req{split}, {total / len(paths):.1f}/file, {throttled} x 429, "
                                    f"{time.monotonic() - t0:.1f} s"))
                note(f"{label}: {rows[-1][1]}")

            measure("one node (no tier)", [[(node("one", False), workers[0])]])
            measure("three nodes at once, no tier", [[(node(f"n{i}", False), workers[i]) for i in range(3)]])
            measure("three nodes at once, shared tier", [[(node(f"t{i}", True), workers[i]) for i in range(3)]])
            measure("one node, then two others, shared tier",
                    [[(node("s0", True), workers[0])], [(node(f"s{i}", True), workers[i]) for i in (1, 2)]])
    except KeyboardInterrupt:
        note("interrupted")
    except Exception as exc:  # a report, not a test
        note(f"failed: {exc!r}")
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
    head = f"time series, {SIDE}x{SIDE} window from each of {len(paths)} {LAYOUT} files ({PROFILE} data)"
    print(f"\n| {head} | requests |")
    print("|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
