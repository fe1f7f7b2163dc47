"""Dask workers read the archive through the `terrascope` protocol on one Redis budget.

dask.distributed's LocalCluster with 3 worker processes (1 thread each), the
emulator with its limits tightened to 20 per 5 s and 60 per 30 s, a real
redis-server. The files are picked by listing, so the test follows the archive.
"""
from __future__ import annotations

import fsspec
import numpy as np
import rasterio
from rasterio.windows import Window

from clustering import TIGHT, TIGHT_CONFIG, fs_config, redis_server, source_file  # noqa: F401  (fixture)
from support import downloads, log_mark

COLLECTION = "terrascope-s2-toc-v2"
FILES = 24
SIDE = 64


def window_of(width: int, height: int) -> Window:
    """A 64 x 64 window away from the corner where the raster allows it."""
    return Window(min(32, width - SIDE), min(32, height - SIDE), SIDE, SIDE)


def pick_files(fs, emulator_data) -> list[str]:
    """GeoTIFFs of at least 64 x 64 pixels, one band each, found by listing."""
    picked = []
    for path in sorted(fs.glob(f"{COLLECTION}/*/*/*/*/*.tif")):
        with rasterio.open(source_file(emulator_data, fs, path)) as src:
            if src.width >= SIDE and src.height >= SIDE:
                picked.append(path)
    return picked


def test_three_dask_workers_read_windows_on_one_budget(emulator, emulator_data, redis_server, tmp_path):
    from distributed import Client, LocalCluster

    emulator.set(rate_limits=TIGHT)
    config = fs_config(emulator, tmp_path / "cache", redis_server.url, rate_limits=TIGHT_CONFIG)
    fs = fsspec.filesystem("terrascope", config=config, skip_instance_cache=True)
    paths = pick_files(fs, emulator_data)
    assert len(paths) >= FILES, f"the emulator's archive has only {len(paths)} GeoTIFFs of {SIDE} x {SIDE} or more"
    paths = paths[::max(1, len(paths) // 30)][:30]  # spread over the archive's days and bands

    def read_window(fs, path):  # runs on a worker: fs arrives pickled and builds its daemon there
        import os

        with rasterio.open("terrascope://" + path, opener=fs.open) as ds:
            return os.getpid(), ds.read(1, window=window_of(ds.width, ds.height))

    mark = log_mark(emulator)
    with LocalCluster(n_workers=3, threads_per_worker=1, processes=True, dashboard_address=None,
                      local_directory=str(tmp_path / "dask")) as cluster, Client(cluster) as client:
        results = client.gather(client.map(read_window, [fs] * len(paths), paths, pure=False))

    wrong = []
    for path, (_, pixels) in zip(paths, results):
        with rasterio.open(source_file(emulator_data, fs, path)) as src:
            if not np.array_equal(pixels, src.read(1, window=window_of(src.width, src.height))):
                wrong.append(path)
    reqs = downloads(emulator, mark)
    throttled = [r for r in reqs if r["status"] == 429]
    workers = {pid for pid, _ in results}
    print(f"dask: {len(paths)} windows read by {len(workers)} worker processes, {len(reqs)} requests, "
          f"{len(throttled)} x 429")
    assert wrong == [], f"windows that differ from the source: {wrong}"
    assert len(workers) == 3, f"the reads ran in {len(workers)} processes, not 3"
    assert not throttled, f"{len(throttled)} x 429 with one shared budget"
    members = redis_server.client().zrange("terrafs:ratelimit:members", 0, -1)
    assert len(members) == 3, f"not every worker sent through the Redis budget: {members}"
