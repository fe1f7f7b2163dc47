"""A file republished under its name (new bytes, ETag and Last-Modified, same size):
no copy is ever a mix of the old and the new version, and the next open reads
the new version whole, in the same mount and after a remount."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.mount
DEMO = ("demo", "demo")


def _copy(path: Path) -> bytes | None:
    """The file's bytes through a fresh open, or None if the read failed (EIO)."""
    try:
        return path.read_bytes()
    except OSError:
        return None


def _touch_head_and_middle(path: Path, size: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, 16 << 10, 0)
        os.pread(fd, 16 << 10, size // 2)
    finally:
        os.close(fd)


@pytest.fixture
def big(emulator) -> dict:
    rows = [r for r in emulator.files(limit=2000, min_size=3 << 20) if r["name"].endswith(".tif")]
    assert rows, "the emulator serves no file over 3 MiB"
    return rows[0]


def _check_never_mixed(path: Path, old: bytes, new: bytes) -> None:
    first = _copy(path)
    assert first is None or first == new, (
        "a copy after the republish was neither refused nor the new file"
        + (" (it is the old file)" if first == old else " (a mix of old and new bytes)"))
    again = _copy(path)
    assert again == new, "the next open did not read the new version whole"


def test_republished_file_in_the_same_mount(emulator, mount_factory, big):
    url = emulator.download_url(big["path"])
    old = requests.get(url, auth=DEMO, timeout=60).content
    m = mount_factory(emulator)
    path = m.path / big["default_path"]
    _touch_head_and_middle(path, big["size"])
    emulator.set(republish=big["path"])
    new = requests.get(url, auth=DEMO, timeout=60).content
    assert new != old and len(new) == len(old)
    _check_never_mixed(path, old, new)


def test_republished_file_after_a_remount(emulator, mount_factory, big, tmp_path):
    url = emulator.download_url(big["path"])
    old = requests.get(url, auth=DEMO, timeout=60).content
    cache = tmp_path / "shared-cache"
    m = mount_factory(emulator, cache_dir=cache, name="before")
    path = m.path / big["default_path"]
    _touch_head_and_middle(path, big["size"])
    m.stop()
    emulator.set(republish=big["path"])
    new = requests.get(url, auth=DEMO, timeout=60).content
    m2 = mount_factory(emulator, cache_dir=cache, name="after")
    _check_never_mixed(m2.path / big["default_path"], old, new)


@pytest.mark.parametrize("delta", [+300_000, -1_000_000], ids=["grown", "shrunk"])
def test_republished_at_another_size(emulator, mount_factory, big, delta):
    """A file republished at another size (and listed so in the catalogue from then on): the open
    that read the old version fails, and every later open reads the new file whole, in this mount
    (whose listing and the kernel's idea of the size still hold the old size) and after a remount."""
    url = emulator.download_url(big["path"])
    old = requests.get(url, auth=DEMO, timeout=60).content
    m = mount_factory(emulator)
    path = m.path / big["default_path"]
    assert path.stat().st_size == len(old)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 16 << 10, 0) == old[: 16 << 10]
        emulator.set(republish=big["path"], republish_size=len(old) + delta)
        new = requests.get(url, auth=DEMO, timeout=60).content
        assert len(new) == len(old) + delta and new[:4096] != old[:4096]
        with pytest.raises(OSError):  # this open read the old version: it may not go on with the new
            os.pread(fd, 16 << 10, len(old) // 2)
    finally:
        os.close(fd)
    got = _copy(path)
    assert got is None or got == new, "a copy after the change was neither refused nor the new file"
    assert _copy(path) == new, "the next open did not read the new file whole"
    assert path.stat().st_size in (len(old), len(new))  # the kernel may keep the old size for a while
    m.stop()
    m2 = mount_factory(emulator, name="after")
    assert (m2.path / big["default_path"]).stat().st_size == len(new)
    assert _copy(m2.path / big["default_path"]) == new
