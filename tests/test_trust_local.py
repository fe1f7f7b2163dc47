"""Local trust boundaries: folders and files another user prepared, symlinks, planted
pickles, and shared pauses, without a mount (the mount-level tests are in
test_trust_hostile.py and test_trust_mount.py)."""
from __future__ import annotations

import json
import os
import stat
import time
from datetime import datetime, timezone
from pathlib import Path

import diskcache
import pytest

from terrafs.catalogue.model import Collection, Product, ProductFile
from terrafs.remote.http import parse_retry_after
from terrafs.cache.listings import ListingStore, NoPickleDisk, decode, encode
from terrafs.localfs import UnsafePathError, open_private_file, private_dir
from terrafs.remote.ratelimit import DEFAULT_MAX_PAUSE, RateLimiter

NOBODY = 65534  # another local user, as on every Debian system
UTC = timezone.utc


def foreign_dir(path: Path, mode: int = 0o777) -> Path:
    """A folder as another user would leave it for us."""
    path.mkdir(parents=True)
    os.chown(path, NOBODY, NOBODY)
    path.chmod(mode)
    return path


# -- folders ----------------------------------------------------------------------------


def test_missing_folders_are_created_0700_each(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "cache"
    private_dir(target)
    for folder in (tmp_path / "a", tmp_path / "a" / "b", target):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, f"{folder} not created 0700"


def test_a_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    cache = foreign_dir(tmp_path / "cache", 0o755)
    with pytest.raises(UnsafePathError, match="belongs to another user") as err:
        private_dir(cache)
    assert str(cache) in str(err.value) and "\n" not in str(err.value)


def test_a_world_writable_folder_of_ours_is_refused_with_the_fix(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    with pytest.raises(UnsafePathError, match="group or others may write") as err:
        private_dir(cache)
    assert "chmod 700" in str(err.value)


def test_a_file_where_a_folder_should_be_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("x")
    with pytest.raises(UnsafePathError, match="not a folder"):
        private_dir(tmp_path / "cache")


# -- files --------------------------------------------------------------------------------


def test_files_are_created_0600(tmp_path: Path) -> None:
    fd = open_private_file(tmp_path / "state", os.O_RDWR)
    os.close(fd)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o600


def test_a_symlink_is_not_followed_and_its_target_is_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    (tmp_path / "terrafs.log").symlink_to(victim)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        open_private_file(tmp_path / "terrafs.log", os.O_WRONLY | os.O_APPEND)
    assert victim.read_text() == "keep me"


def test_a_file_of_another_user_is_refused(tmp_path: Path) -> None:
    planted = tmp_path / "ratelimit.state"
    planted.write_text("{}")
    os.chown(planted, NOBODY, NOBODY)
    with pytest.raises(UnsafePathError, match="belongs to another user"):
        open_private_file(planted, os.O_RDWR)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "state")
    t0 = time.monotonic()
    with pytest.raises(UnsafePathError, match="not a regular file"):
        open_private_file(tmp_path / "state", os.O_RDWR)
    assert time.monotonic() - t0 < 2


# -- the shared rate-limit state ------------------------------------------------------------


def test_a_symlinked_state_file_is_refused_and_not_written(tmp_path: Path) -> None:
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    (tmp_path / "ratelimit.state").symlink_to(victim)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        RateLimiter([(80, 10.0)], tmp_path / "ratelimit.state")
    assert victim.read_text() == "keep me"


def test_an_absurd_pause_is_bounded_here_and_in_the_shared_file(tmp_path: Path) -> None:
    state = tmp_path / "ratelimit.state"
    lim = RateLimiter([(80, 10.0), (200, 60.0)], state)
    before = time.time()
    lim.pause(999_999_999)
    paused_until = json.loads(state.read_text())["paused_until"]
    assert paused_until <= before + 60.0 + 1, "a pause past the longest window reached the shared file"
    assert lim.wait_time() <= 60.0 + 1


def test_a_pause_read_from_disk_is_bounded(tmp_path: Path) -> None:
    state = tmp_path / "ratelimit.state"
    RateLimiter([(80, 10.0)], state, max_pause=5.0)  # creates the file (0600, ours)
    state.write_text(json.dumps({"sends": [time.time() + 10**9] * 80, "paused_until": time.time() + 10**9}))
    lim = RateLimiter([(80, 10.0)], state, max_pause=5.0)
    assert lim.wait_time() <= 10.0 + 0.5, "state from disk (future sends, a years-long pause) must be bounded"


def test_an_oversized_state_file_is_ignored(tmp_path: Path) -> None:
    state = tmp_path / "ratelimit.state"
    RateLimiter([(80, 10.0)], state)
    state.write_text(json.dumps({"sends": [0.0] * 300_000, "paused_until": time.time() + 30}))
    assert RateLimiter([(80, 10.0)], state).wait_time() <= 0, "a state file of MBs must be ignored, not obeyed"


def test_retry_after_is_bounded_when_read() -> None:
    assert parse_retry_after("999999999") == DEFAULT_MAX_PAUSE
    assert parse_retry_after("999999999", limit=3.0) == 3.0
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", limit=3.0) == 3.0
    assert parse_retry_after("7") == 7.0


# -- listings on disk: JSON, never a pickle ----------------------------------------------------


class _Boom:
    """Unpickling this creates a file: proof that a pickle was run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _product() -> Product:
    f = ProductFile("10M/x.tif", "https://services.terrascope.be/download/x.tif", 12, "/data/x/10M/x.tif")
    return Product("id:1", "P", "c", datetime(2020, 1, 5, 10, tzinfo=UTC), "P", (f,), record='{"a":1}')


def test_listings_round_trip_as_json() -> None:
    value = [_product(), Collection("c", "urn:c", "C", datetime(2020, 1, 1, tzinfo=UTC), None)]
    text = encode({"value": value})
    assert json.loads(text)  # plain JSON
    assert decode(text)["value"] == value


def test_a_planted_pickle_is_a_miss_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pickle-ran"
    cache = diskcache.Cache(str(tmp_path / "meta"), disk=NoPickleDisk)
    store = ListingStore(cache, "stac:https://x/", 3600, 300)
    store.put("collections", [], recent=False)
    # What an older terrafs wrote (a pickled tuple under a tuple key), and a pickle planted
    # under the key the store reads now: neither may be unpickled.
    with diskcache.Cache(str(tmp_path / "meta")) as plain:
        plain.set(("stac:https://x/", "month:c:2020-01"), (time.time(), 3600, _Boom(marker)))
        plain.set(store.storage_key("month:c:2020-01"), _Boom(marker))
    assert store.get("month:c:2020-01") is None
    assert store.get_stale("month:c:2020-01") is None
    assert not marker.exists(), "a pickled listing was unpickled"
    assert store.get("collections") == [], "the JSON entry next to it still reads"
    cache.close()


def test_old_pickled_listings_are_ignored_by_a_mount_store(tmp_path: Path) -> None:
    marker = tmp_path / "pickle-ran"
    with diskcache.Cache(str(tmp_path / "meta")) as plain:
        plain.set(("stac:https://x/", "collections"), (time.time(), 3600, _Boom(marker)))
    with diskcache.Cache(str(tmp_path / "meta"), disk=NoPickleDisk) as cache:
        assert ListingStore(cache, "stac:https://x/", 3600, 300).get_stale("collections") is None
    assert not marker.exists()


def test_remembered_file_facts_are_parsed_as_hostile(tmp_path: Path) -> None:
    """Sizes of republished files, HEAD sizes and identities come back from the block cache's metadata,
    which is a file on disk: only well-formed entries are taken, anything else reads as unknown."""
    from terrafs.cache.blocks import BlockCache
    from terrafs.cache.filemeta import FileMeta

    def reopened(key: str, text: str) -> FileMeta:
        cache = BlockCache(tmp_path / "c", size_limit=64 << 20, block_size=1 << 16)
        cache.set_meta(key, text)  # what someone else may have written there
        return FileMeta(cache)

    sizes = {"https://h/a.tif": [10, 12], "https://h/b.tif": [-1, 5], "https://h/c.tif": [1, True],
             "https://h/d.tif": "x", "https://h/e.tif": [1, 2, 3]}
    meta = reopened("resized", json.dumps(sizes))
    assert [meta.size_change(u) for u in sizes] == [(10, 12), None, None, None, None]
    for junk in ("not json", json.dumps([1, 2]), json.dumps("text"), "{" * 100000):
        assert reopened("resized", junk).size_change("https://h/a.tif") is None
    for junk in ("not json", json.dumps([1, 2, 3]), json.dumps([None, None]), json.dumps([1, "x"]), "{" * 100000):
        meta = reopened("ident:https://h/a.tif", junk)
        assert meta.identity("https://h/a.tif") is None
    for junk in (json.dumps(-1), json.dumps(True), json.dumps("12"), "[" * 100000):
        assert reopened("size:https://h/a.tif", junk).head_size("https://h/a.tif") is None
    meta = reopened("ident:https://h/a.tif", json.dumps(['"e1"', None]))
    assert meta.identity("https://h/a.tif") == ('"e1"', None)
