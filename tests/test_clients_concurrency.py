"""Acceptance: 8 processes reading at once through one mount get every byte right, never hang,
and the daemon's memory stays bounded (its peak RSS is printed as "daemon-peak-rss:").

Readers are separate processes (not threads), as separate programs are, and
start together at one agreed instant so their first reads overlap.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from support import band, log_mark, report, sha256, source_of

READERS = 8
DEADLINE = 120.0  # seconds for all readers together; more means a hang
# The daemon keeps at most its hot-block set (16 MiB) plus in-flight buffers in
# memory: what 8 readers pull through it must not show up in its RSS.
PEAK_GROWTH_LIMIT = 128 << 20

# Each reader: wait for the start instant, then hash whole files and read random
# windows of each; print {path: [sha256, [[offset, length, sha256 of window] ...]]}.
READER = r"""
import hashlib, json, os, random, sys, time
start, seed, paths = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
time.sleep(max(0.0, start - time.time()))
rng = random.Random(seed)
out = {}
for p in paths:
    windows = []
    with open(p, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        for _ in range(5):
            off, n = rng.randrange(size), rng.choice([512, 16384, 200000])
            windows.append([off, n, hashlib.sha256(os.pread(f.fileno(), n, off)).hexdigest()])
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 17), b""):
            h.update(chunk)
    out[p] = [h.hexdigest(), windows]
print(json.dumps(out))
"""


def run_readers(assignments: list[list[Path]]) -> list[dict]:
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", READER, str(start), str(i), *map(str, paths)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, paths in enumerate(assignments)]
    deadline = time.monotonic() + DEADLINE
    results = []
    try:
        for p in procs:
            try:
                out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"readers still running after {DEADLINE} s: a deadlock or a stall") from None
            assert p.returncode == 0, f"a reader failed ({p.returncode}):\n{err[-2000:]}"
            results.append(json.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def check(results: list[dict], emulator_data: Path) -> None:
    for result in results:
        for path, (digest, windows) in result.items():
            src = source_of(emulator_data, Path(path))
            assert digest == sha256(src), f"wrong bytes for {path}"
            data = src.read_bytes()
            for off, n, wdigest in windows:
                assert hashlib.sha256(data[off:off + n]).hexdigest() == wdigest, (path, off, n)


def peak_rss(mount) -> int:
    for line in Path(f"/proc/{mount.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM for the daemon")


def test_eight_processes_read_eight_different_files(emulator, emulator_data, mount_factory):
    mount = mount_factory(emulator)
    names = ["B02_10M", "B03_10M", "B04_10M", "B08_10M", "B05_20M", "B11_20M", "B12_20M", "B8A_20M"]
    files = [band(mount, n, day="2020/02/15") for n in names]
    mark = log_mark(emulator)
    check(run_readers([[f] for f in files]), emulator_data)
    reqs = report("8 processes x 8 different files", emulator, mark)
    assert len(reqs) <= 2 * len(files), f"{len(reqs)} requests for {len(files)} files"
    print(f"daemon-peak-rss: after 8 different files: {peak_rss(mount) / 2**20:.1f} MiB")


def test_eight_processes_read_the_same_file(emulator, emulator_data, mount_factory):
    mount = mount_factory(emulator)
    f = band(mount, "B04_10M", day="2021/06/30")
    mark = log_mark(emulator)
    check(run_readers([[f]] * READERS), emulator_data)
    reqs = report("8 processes x the same file", emulator, mark)
    fetched = sum(r["bytes"] for r in reqs)
    assert fetched <= 2 * f.stat().st_size, f"{fetched} bytes fetched for one {f.stat().st_size}-byte file"


def test_eight_processes_read_whole_products_with_bounded_daemon_memory(emulator, emulator_data, mount_factory):
    mount = mount_factory(emulator)
    root = mount.path / "terrascope-s2-toc-v2"
    products = sorted({p.parent for p in root.rglob("*B04_10M*.tif")})
    assert len(products) >= READERS
    # Every reader reads a product of its own and, all of them, one shared product.
    shared = sorted(products[-1].iterdir())
    assignments = [sorted(products[i].iterdir()) + shared for i in range(READERS)]
    baseline = peak_rss(mount)
    total = sum(f.stat().st_size for paths in assignments for f in set(paths))
    mark = log_mark(emulator)
    started = time.monotonic()
    check(run_readers(assignments), emulator_data)
    elapsed = time.monotonic() - started
    reqs = report("8 processes x whole products", emulator, mark)
    peak = peak_rss(mount)
    print(f"daemon-peak-rss: {peak / 2**20:.1f} MiB (before {baseline / 2**20:.1f} MiB) after "
          f"{total / 2**20:.1f} MiB read by {READERS} processes in {elapsed:.1f} s, {len(reqs)} requests")
    assert peak - baseline < PEAK_GROWTH_LIMIT, f"daemon peak RSS grew {(peak - baseline) >> 20} MiB"
    assert all(r["status"] in (200, 206) for r in reqs), [r["status"] for r in reqs if r["status"] not in (200, 206)]
