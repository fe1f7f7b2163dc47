"""Three Dask workers, each its own local cache, one Redis for the budget and the shared block tier:
a window of the same COGs read by one node and then the others costs the others almost no request,
and three nodes reading at once cost about what one node alone does. Real redis-server, the emulator,
dask.distributed's LocalCluster with 3 worker processes."""
from __future__ import annotations

import fsspec
import numpy as np
import rasterio

from clustering import fs_config, redis_server, source_file  # noqa: F401  (fixture)
from support import downloads, log_mark
from test_cluster_dask import pick_files, window_of

FILES = 12


def read_window(fs, path):  # runs on a worker: fs arrives pickled and builds its daemon there
    import os

    with rasterio.open("terrascope://" + path, opener=fs.open) as ds:
        pixels = ds.read(1, window=window_of(ds.width, ds.height))
    if fs.daemon.shared is not None:
        fs.daemon.shared.flush()  # the tier's puts are sent (they are within a second anyway)
    return os.getpid(), pixels


def tier_stats(fs):
    return fs.daemon.reader.stats().shared


def test_nodes_share_what_one_fetched_and_fetch_each_block_once(emulator, emulator_data, redis_server, tmp_path):
    from distributed import Client, LocalCluster

    def node(name: str, shared: bool = True):
        extra = {"cache": {"shared": redis_server.url}} if shared else {}
        config = fs_config(emulator, tmp_path / name / "cache", redis_server.url, **extra)
        return fsspec.filesystem("terrascope", config=config, skip_instance_cache=True)

    probe = node("probe", shared=False)
    paths = pick_files(probe, emulator_data)
    assert len(paths) >= 2 * FILES, f"only {len(paths)} GeoTIFFs of 64 x 64 or more"
    spread = paths[::max(1, len(paths) // (2 * FILES))]
    first_set, second_set = spread[:FILES], spread[FILES:2 * FILES]
    assert len(second_set) == FILES

    with LocalCluster(n_workers=3, threads_per_worker=1, processes=True, dashboard_address=None,
                      local_directory=str(tmp_path / "dask")) as cluster, Client(cluster) as client:
        workers = sorted(client.scheduler_info()["workers"])

        def run(fs, worker, files):
            return client.map(read_window, [fs] * len(files), files, workers=[worker], pure=False,
                              allow_other_workers=False)

        # One node reads the windows of 12 COGs; then the two others read the same.
        nodes = [node(f"a{i}") for i in range(3)]
        mark = log_mark(emulator)
        first = client.gather(run(nodes[0], workers[0], first_set))
        mid = log_mark(emulator)
        others = client.gather(run(nodes[1], workers[1], first_set) + run(nodes[2], workers[2], first_set))
        by_first, by_others = downloads(emulator, mark)[: mid - mark], downloads(emulator, mid)
        stats = client.gather([client.submit(tier_stats, nodes[i], workers=[workers[i]], pure=False)
                               for i in (1, 2)])

        # One node alone (no tier) on another 12 COGs, then three fresh nodes reading them at once.
        mark = log_mark(emulator)
        alone = client.gather(run(node("alone", shared=False), workers[0], second_set))
        by_alone = downloads(emulator, mark)
        fresh = [node(f"b{i}") for i in range(3)]
        mark = log_mark(emulator)
        futures = [f for i in range(3) for f in run(fresh[i], workers[i], second_set)]
        together = client.gather(futures)
        by_three = downloads(emulator, mark)

    wrong = [p for p, (_, px) in zip(first_set * 3, first + others)
             if not np.array_equal(px, expected(probe, emulator_data, p))]
    wrong += [p for p, (_, px) in zip(second_set * 4, alone + together)
              if not np.array_equal(px, expected(probe, emulator_data, p))]
    throttled = [r for r in by_first + by_others + by_alone + by_three if r["status"] == 429]
    print(f"\nshared tier: first node {len(by_first)} requests, the two others {len(by_others)} "
          f"(tier hits {[s.hits for s in stats]}); one node alone {len(by_alone)}, "
          f"three at once {len(by_three)}; {len(throttled)} x 429")
    assert wrong == [], f"windows that differ from the source: {sorted(set(wrong))}"
    assert not throttled, f"{len(throttled)} x 429"
    assert len({pid for pid, _ in first + others}) == 3, "the nodes did not run in 3 processes"
    assert len(by_others) <= 0.1 * len(by_first), (
        f"the two other nodes sent {len(by_others)} requests, over 10% of the first node's {len(by_first)}")
    assert len(by_three) <= 1.3 * len(by_alone), (
        f"three nodes at once sent {len(by_three)} requests, over 1.3 x one node alone ({len(by_alone)})")


_sources: dict = {}


def expected(fs, emulator_data, path):
    if path not in _sources:
        with rasterio.open(source_file(emulator_data, fs, path)) as src:
            _sources[path] = src.read(1, window=window_of(src.width, src.height))
    return _sources[path]
