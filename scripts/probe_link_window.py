#!/usr/bin/env python3
"""Probe: one cold 512 x 512 window per file through a fresh mount, then through /vsicurl/, on a link,
printing the emulator's request log with times (docs/bench-cog-link.md).

Each line is a download request as the emulator logged it: the time (s after the command started) the
request reached the app, i.e. after the link's round trip (three on a new connection), its Range and
the body bytes sent. Uses scripts/bench_links.py's harness; nothing is asserted.

Usage: TERRAFS_BENCH_DATA=/tmp/terrafs-bench-r23link scripts/probe_link_window.py
  PROBE_LINK (default "rtt=30ms,bw=5MB/s"), PROBE_LAYOUT (cog), PROBE_FILES (3)
"""
from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
os.environ["BENCH_LINK_LIST"] = os.environ.get("PROBE_LINK", "rtt=30ms,bw=5MB/s")
spec = importlib.util.spec_from_file_location("bench_links", ROOT / "scripts" / "bench_links.py")
bl = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bl)
bench = bl.bench


def show(b, who: str, mark: int, paths: set[str], t0: float, t1: float) -> None:
    for e in b.entries_since(mark, paths):
        print(f"{who:8} {e['time'] - t0:6.3f} {e['method']} {e['range']} {e['bytes']}")
    print(f"{who:8} total {t1 - t0:.3f}")


def main() -> None:
    work = Path(bench.tempfile.mkdtemp(prefix="terrafs-probe-"))
    b = bl.LinkBench(work)
    b.start_emulator()
    try:
        b.link = bl.LINKS[0]
        listed = requests.get(b.base + "/_emulator/files", timeout=60,
                              params={"limit": 1000, "layout": os.environ.get("PROBE_LAYOUT", "cog")}).json()
        files = sorted((f for f in listed if f["name"].endswith(".tif")), key=lambda f: f["path"])
        env = bench.gdal_env(work)
        for i, f in enumerate(files[:int(os.environ.get("PROBE_FILES", "3"))]):
            paths = {"/download/" + f["path"].lstrip("/")}

            def cmd(p: str, out: str) -> list[str]:
                return ["gdal_translate", "-q", "-srcwin", "768", "768", "512", "512", p, out]

            b.set_link(bl.Link())  # the tree is listed on loopback
            mnt = b.mount(work / f"cache{i}", f"mnt{i}")
            (mnt / f["default_path"]).stat()
            b.reset_limits()
            mark, t0 = b.mark(), time.time()
            b.timed(cmd(str(mnt / f["default_path"]), str(work / f"mine{i}.tif")), env)
            t1 = time.time()
            b.unmount(mnt)
            show(b, "mount", mark, paths, t0, t1)
            b.reset_limits()
            mark, t0 = b.mark(), time.time()
            b.timed(cmd("/vsicurl/" + f["url"], str(work / f"ref{i}.tif")), dict(env, **bench.VSICURL_RETRY))
            t1 = time.time()
            time.sleep(0.3)  # a body the client gave up on is logged when the server notices
            show(b, "vsicurl", mark, paths, t0, t1)
    finally:
        b.stop()
        bench.shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
