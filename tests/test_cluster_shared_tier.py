"""The shared block tier (read/sharedtier.py, read/sharedfetch.py) on a real redis-server, without mounts:
entries verified, versions marked stale, claims that make one fetch of two, Redis away and back."""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from clustering import redis_server  # noqa: F401  (fixture)
from terrafs.cache.blocks import MemoryOnlyCache
from terrafs.cache.filemeta import FileMeta
from terrafs.read.remote import RemoteFile, blocks_of
from terrafs.read.sharedfetch import SharedFetch
from terrafs.read.sharedtier import PREFIX, SharedMeta, SharedTier, TierSettings

UNIT = 1 << 16
DATA = bytes(range(256)) * (5 * UNIT // 256 + 3)  # five units and a short one
F = RemoteFile("http://127.0.0.1:1/file.tif", len(DATA), f"http://127.0.0.1:1/file.tif#{len(DATA)}")
U = blocks_of(F, UNIT)


def node(url: str, **settings) -> tuple[SharedTier, FileMeta]:
    tier = SharedTier(TierSettings(url, **settings), retry_every=0.5)
    meta = FileMeta(MemoryOnlyCache(UNIT, "a node's file metadata, in RAM"))
    tier.bind(meta)
    return tier, meta


def unit(i: int) -> bytes:
    return DATA[i * UNIT: i * UNIT + U.length(i)]


def test_an_entry_put_by_one_node_is_read_verified_by_another(redis_server):
    a, meta_a = node(redis_server.url)
    b, _ = node(redis_server.url)
    SharedMeta(meta_a, a).set_identity(F.url, ('"v1"', "Mon"))  # the guard saw version v1
    a.put(U, 5, unit(5))
    a.flush()
    assert b.get(U, 5) == unit(5)
    assert b.get(U, 4) is None
    assert b.stats().hits == 1 and b.stats().misses == 1
    # A damaged entry (one byte flipped) is a miss, never an error or a wrong byte.
    r = redis_server.client()
    key = next(k for k in r.scan_iter(f"{PREFIX}:b:*"))
    entry = bytearray(r.get(key))
    entry[-1] ^= 0xFF
    r.set(key, bytes(entry))
    assert b.get(U, 5) is None and b.stats().corrupt == 1
    # An entry of another size (the same URL republished larger) is a miss too.
    r.set(key, bytes(entry[:-1]))
    assert b.get(U, 5) is None


def test_a_new_version_seen_by_one_node_makes_the_old_one_stale_everywhere(redis_server):
    a, meta_a = node(redis_server.url)
    b, meta_b = node(redis_server.url)
    SharedMeta(meta_a, a).set_identity(F.url, ('"v1"', "Mon"))
    a.put(U, 0, unit(0))
    a.flush()
    assert b.get(U, 0) == unit(0)  # b now holds v1 (adopted from the tier)
    assert meta_b.identity(F.url) == ('"v1"', "Mon")
    c, meta_c = node(redis_server.url)
    SharedMeta(meta_c, c).set_identity(F.url, ('"v2"', "Tue"))  # c's response is version 2
    assert c.get(U, 0) is None, "the old version's entry was served after a node saw the new one"
    assert b.stale(F) and a.stale(F), "the nodes holding v1 were not told it is stale"
    assert meta_b.identity(F.url) is None and not b.stale(F)
    # A late put of the old version (a fetch that began before the change) does not go in.
    a.put(U, 1, unit(1))
    a.flush()
    assert c.get(U, 1) is None


def test_two_nodes_missing_the_same_units_make_one_fetch(redis_server):
    fetched: list[tuple[int, int]] = []
    lock = threading.Lock()
    gate = threading.Event()

    def fetch(start: int, end: int) -> bytes:
        with lock:
            fetched.append((start, end))
        gate.wait(5)  # both nodes have claimed before the first fetch returns
        return DATA[start:end]

    nodes = [node(redis_server.url)[0] for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(SharedFetch(t).fetch_range, U, 0, 3 * UNIT, fetch) for t in nodes]
        while not any(t.stats().waits for t in nodes):
            if all(f.done() for f in futures):
                break
            threading.Event().wait(0.01)
        gate.set()
        results = [f.result() for f in futures]
    assert results == [DATA[:3 * UNIT]] * 2
    assert fetched == [(0, 3 * UNIT)], f"two nodes fetched {fetched}"


def test_a_claim_whose_fetch_fails_lets_the_others_fetch_at_once(redis_server):
    a, b = node(redis_server.url)[0], node(redis_server.url, wait=30)[0]

    def broken(start, end):
        raise OSError("link down")

    try:
        SharedFetch(a).fetch_range(U, 0, UNIT, broken)
    except OSError:
        pass
    got = SharedFetch(b).fetch_range(U, 0, UNIT, lambda s, e: DATA[s:e])
    assert got == DATA[:UNIT] and b.stats().wait_seconds < 1.0


def test_redis_away_is_a_miss_with_one_warning_each_way(redis_server, caplog):
    a, meta_a = node(redis_server.url)
    SharedMeta(meta_a, a).set_identity(F.url, ('"v1"', "Mon"))
    a.put(U, 2, unit(2))
    a.flush()
    caplog.set_level(logging.WARNING, logger="terrafs.read.sharedtier")
    redis_server.stop()
    for _ in range(20):
        assert a.get(U, 2) is None
        assert SharedFetch(a).fetch_range(U, UNIT, 2 * UNIT, lambda s, e: DATA[s:e]) == DATA[UNIT:2 * UNIT]
    redis_server.start()
    deadline = threading.Event()
    for _ in range(200):
        a.put(U, 3, unit(3))
        a.flush()
        if a.get(U, 3) == unit(3):
            break
        deadline.wait(0.05)
    assert a.get(U, 3) == unit(3), "the tier was not used again after Redis came back"
    away = [r for r in caplog.records if "cannot be reached" in r.message]
    back = [r for r in caplog.records if "answers again" in r.message]
    assert len(away) == 1 and len(back) == 1, [r.message for r in caplog.records]
    assert "127.0.0.1" in away[0].message


def test_a_call_begun_in_an_outage_that_fails_after_redis_is_back_warns_no_second_time(redis_server, caplog):
    import redis

    a, _ = node(redis_server.url)
    caplog.set_level(logging.WARNING, logger="terrafs.read.sharedtier")
    redis_server.stop()
    assert a.get(U, 0) is None  # the outage: one warning
    while not a.available:
        threading.Event().wait(0.05)  # retry_every has to pass before a call reaches Redis again
    entered, go = threading.Event(), threading.Event()

    def late_failure():
        entered.set()
        go.wait(30)
        raise redis.ConnectionError("a connection of the old outage")

    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(a.call, late_failure, "missed")
        assert entered.wait(30)
        redis_server.start()
        probe = redis.Redis.from_url(redis_server.url)
        assert a.call(probe.ping) is True  # Redis seen back
        go.set()
        assert slow.result() == "missed"
    assert a.available
    away = [r for r in caplog.records if "cannot be reached" in r.message]
    back = [r for r in caplog.records if "answers again" in r.message]
    assert len(away) == 1 and len(back) == 1, [r.message for r in caplog.records]


def test_the_config_names_the_tier_by_a_redis_url_and_never_echoes_it(tmp_path):
    import pytest

    from terrafs.config import load_config
    from terrafs.errors import ConfigError

    env = {"HOME": str(tmp_path)}
    config = load_config(None, env=env, overrides={"cache.shared": "rediss://:s3cret@tier:6380/2",
                                                   "cache.shared_stream_max": "8MiB"})
    assert config.shared_cache == "rediss://:s3cret@tier:6380/2" and config.shared_stream_max == 8 << 20
    assert "s3cret" not in repr(config)
    assert load_config(None, env=env).shared_cache is None
    for bad in ("http://:s3cret@tier:6380/0", "redis://:s3cret@tier:6380/x", 6380):
        with pytest.raises(ConfigError) as err:
            load_config(None, env=env, overrides={"cache.shared": bad})
        assert "cache.shared" in str(err.value) and "s3cret" not in str(err.value)
