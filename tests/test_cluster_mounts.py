"""Several mounts (as on several hosts behind one address) on one Redis budget, against the emulator
with its limits tightened to 20 per 5 s and 60 per 30 s. Real FUSE mounts, a real redis-server."""
from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from clustering import TIGHT, TIGHT_CONFIG, budget_report, redis_server  # noqa: F401  (fixture)
from mounting import credentials_env
from support import downloads, log_mark, sha256, source_of

pytestmark = pytest.mark.mount

COLLECTION = "terrascope-s2-toc-v2"


def cluster_mounts(n, emulator, mount_factory, redis_url: str, tmp_path: Path) -> list:
    """n mounts with separate caches naming one Redis; HOME (the local fallback's state) is the test's."""
    env = dict(credentials_env(), HOME=str(tmp_path / "home"))
    return [mount_factory(emulator, name=f"host{i}", cache_dir=tmp_path / f"cache{i}", env=env,
                          rate_limit_state=redis_url, rate_limits=TIGHT_CONFIG) for i in range(n)]


def archive_files(mount) -> list[str]:
    """Every file of the collection, relative to the mount (listing costs catalogue requests only)."""
    root = mount.path / COLLECTION
    return sorted(str(Path(d, f).relative_to(mount.path)) for d, _, fs in os.walk(root) for f in fs)


def copy_all(jobs: list[tuple[Path, Path]], threads: int) -> None:
    def copy(job):
        src, dst = job
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(copy, jobs))


def tightest_window_use(reqs: list[dict]) -> float:
    """How full the tightest window was, on average over the run (after the first longest window).

    Sampled every 0.5 s: for each instant, the largest share of any window's
    limit that the requests of the trailing window fill."""
    times = sorted(r["time"] for r in reqs)
    longest = max(s for _, s in TIGHT)
    start, end = times[0] + longest, times[-1]
    assert end > start, f"the run ({end - times[0]:.0f} s) is shorter than the longest window"
    shares = []
    t = start
    while t <= end:
        shares.append(max(sum(1 for u in times if t - s < u <= t) / n for n, s in TIGHT))
        t += 0.5
    return sum(shares) / len(shares)


def exact(emulator_data: Path, jobs: list[tuple[Path, Path]]) -> list[str]:
    return [str(src) for src, dst in jobs if sha256(dst) != sha256(source_of(emulator_data, src))]


def test_three_mounts_share_one_budget(emulator, emulator_data, redis_server, mount_factory, tmp_path):
    """Three mounts, separate caches, one Redis: distinct files copied at once, 0 x 429, the budget used >= 80%."""
    emulator.set(rate_limits=TIGHT)
    mounts = cluster_mounts(3, emulator, mount_factory, redis_server.url, tmp_path)
    names = archive_files(mounts[0])[:150]
    jobs = [(mounts[i % 3].path / name, tmp_path / "out" / name) for i, name in enumerate(names)]
    for m in mounts[1:]:
        archive_files(m)  # every mount lists before the clock starts
    mark = log_mark(emulator)
    t0 = time.monotonic()
    copy_all(jobs, threads=6)
    elapsed = time.monotonic() - t0
    reqs = downloads(emulator, mark)
    throttled = [r for r in reqs if r["status"] == 429]
    use = tightest_window_use(reqs)
    _, span, of_bound, _ = budget_report(reqs)
    print(f"three mounts: {len(jobs)} files, {len(reqs)} requests in {elapsed:.1f} s, {len(throttled)} x 429, "
          f"tightest window {use:.0%} full on average, {of_bound:.0%} of the most the windows allow "
          f"in {span:.1f} s")
    assert not throttled, f"{len(throttled)} x 429 with one shared budget"
    assert exact(emulator_data, jobs) == []
    assert use >= 0.8, f"the budget was used at {use:.0%} only"
    members = redis_server.client().zrange("terrafs:ratelimit:members", 0, -1)
    assert len(members) == 3, f"not every mount sent through the Redis budget: {members}"


def test_redis_stopped_mid_run_reads_go_on_and_rejoin(emulator, emulator_data, redis_server, mount_factory,
                                                      tmp_path):
    emulator.set(rate_limits=TIGHT)
    mounts = cluster_mounts(2, emulator, mount_factory, redis_server.url, tmp_path)
    names = archive_files(mounts[0])
    for m in mounts[1:]:
        archive_files(m)
    batches = [names[0:20], names[20:50], names[50:70]]
    done: list[tuple[Path, Path]] = []
    mark = log_mark(emulator)

    def run(batch):
        jobs = [(mounts[i % 2].path / name, tmp_path / "out" / name) for i, name in enumerate(batch)]
        copy_all(jobs, threads=4)
        done.extend(jobs)

    run(batches[0])
    redis_server.stop()
    t0 = time.monotonic()
    run(batches[1])
    away = time.monotonic() - t0
    redis_server.start()
    time.sleep(5.5)  # RETRY_EVERY: the mounts try Redis again after this long
    redis_server.client().delete("terrafs:ratelimit:members")
    back = time.time()
    run(batches[2])

    assert exact(emulator_data, done) == [], "wrong bytes"
    assert len(done) == 70
    for m in mounts:
        text = m.log_text()
        lost = re.findall(r"Redis at redis://127\.0\.0\.1:\d+/0 cannot be reached", text)
        assert len(lost) == 1, f"{m.path}: {len(lost)} warnings about Redis (want 1)"
        assert "answers again" in text, f"{m.path} did not rejoin Redis"
    members = redis_server.client().zrange("terrafs:ratelimit:members", 0, -1)
    assert len(members) == 2, f"after Redis came back, not both mounts shared it: {members}"
    reqs = downloads(emulator, mark)
    throttled = [r for r in reqs if r["status"] == 429]
    print(f"Redis away for {away:.1f} s of the run: {len(reqs)} requests, {len(throttled)} x 429 "
          f"({sum(1 for r in throttled if r['time'] >= back)} after Redis came back)")
    # One host: its local budget saw every send made through Redis, and Redis every send made
    # while it was away, so the budget held throughout.
    assert not throttled, "429s while Redis was away or after it came back"
