"""The `terrascope` fsspec filesystem against the emulator: the archive without FUSE.

fsspec's own abstract suite (fsspec.tests.abstract) builds its scenarios by
writing (makedirs, touch, pipe) files named file1, subdir/subfile1...: none of
it can run on a read-only archive whose names the catalogue gives (see the
README). The `get` cases it covers are run here on the archive's own folders.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import pickle
from pathlib import Path

import fsspec
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from clustering import fs_config, source_file
from support import downloads, log_mark

COLLECTION = "terrascope-s2-toc-v2"


@pytest.fixture
def fs(emulator, tmp_path):
    config = fs_config(emulator, tmp_path / "fscache", str(tmp_path / "ratelimit.state"))
    return fsspec.filesystem("terrascope", config=config, skip_instance_cache=True)


def a_product(fs) -> str:
    day = f"{COLLECTION}/2020/01/01"
    return sorted(fs.ls(day, detail=False))[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ls_and_info_follow_the_default_layout(fs, emulator_data):
    assert COLLECTION in fs.ls("", detail=False)
    assert f"{COLLECTION}/2020" in fs.ls("terrascope://" + COLLECTION, detail=False)
    product = a_product(fs)
    entries = fs.ls(product)
    assert entries and all(e["type"] == "file" for e in entries)
    for e in entries:
        assert e["size"] == source_file(emulator_data, fs, e["name"]).stat().st_size, e["name"]
        assert fs.info(e["name"]) == e
    assert fs.info(product)["type"] == "directory"
    assert fs.isdir(product) and fs.isfile(entries[0]["name"])
    with pytest.raises(FileNotFoundError):
        fs.info(f"{COLLECTION}/2020/01/01/no-such-product")


def test_open_seeks_and_reads_the_archives_bytes(fs, emulator_data):
    path = max(fs.ls(a_product(fs)), key=lambda e: e["size"])["name"]
    source = source_file(emulator_data, fs, path).read_bytes()
    with fs.open(path) as f:
        assert f.read(100) == source[:100]
        f.seek(len(source) // 2)
        assert f.read(5000) == source[len(source) // 2: len(source) // 2 + 5000]
        f.seek(-10, os.SEEK_END)
        assert f.read() == source[-10:]
        assert f.read(10) == b""
    assert fs.cat_file(path, 1000, 3000) == source[1000:3000]
    assert fs.cat_file(path, -100) == source[-100:]
    assert fs.cat(path) == source


def test_get_copies_files_folders_globs_and_lists(fs, emulator_data, tmp_path):
    """What fsspec's AbstractGetTests check, on the archive's own folders."""
    product = a_product(fs)
    names = fs.ls(product, detail=False)
    target = tmp_path / "got"
    target.mkdir()
    fs.get(names[0], str(target) + "/")  # a file into an existing folder
    assert digest(target / Path(names[0]).name) == digest(source_file(emulator_data, fs, names[0]))
    fs.get(names[1], str(target / "new" / "renamed.bin"))  # a file to a new name in a new folder
    assert (target / "new" / "renamed.bin").read_bytes() == source_file(emulator_data, fs, names[1]).read_bytes()
    fs.get(product, str(target / "tree"), recursive=True)  # a folder, recursively
    got = sorted(p.name for p in (target / "tree").rglob("*") if p.is_file())
    assert got == sorted(Path(n).name for n in names)
    tifs = fs.glob(product + "/*.tif")
    assert tifs and set(tifs) < set(names)
    fs.get(tifs, str(target / "globbed") + "/")  # a list of files into a new folder
    for n in tifs:
        assert digest(target / "globbed" / Path(n).name) == digest(source_file(emulator_data, fs, n))


def test_the_archive_is_read_only(fs):
    path = fs.ls(a_product(fs), detail=False)[0]
    for attempt in (lambda: fs.open(path, "wb"), lambda: fs.rm(path), lambda: fs.pipe(path, b"x"),
                    lambda: fs.mkdir(f"{COLLECTION}/new"), lambda: fs.touch(path)):
        with pytest.raises(PermissionError):
            attempt()
    assert fs.cat_file(path, 0, 4)  # and still reads


def test_window_through_the_opener_costs_no_more_than_through_a_mount(emulator, emulator_data, fs, mount_factory):
    mount = mount_factory(emulator, name="m")
    path = next(e["name"] for e in fs.ls(a_product(fs)) if e["name"].endswith("B04_10M_V210.tif"))
    window = Window(128, 128, 64, 64)
    expected = rasterio.open(source_file(emulator_data, fs, path)).read(1, window=window)

    mark = log_mark(emulator)
    with rasterio.open(mount.path / path) as ds:
        assert np.array_equal(ds.read(1, window=window), expected)
    through_mount = downloads(emulator, mark)

    mark = log_mark(emulator)
    with rasterio.open("terrascope://" + path, opener=fs.open) as ds:
        assert np.array_equal(ds.read(1, window=window), expected)
    through_fs = downloads(emulator, mark)
    print(f"64x64 window: {len(through_mount)} requests through the mount, {len(through_fs)} through fsspec")
    assert 0 < len(through_fs) <= len(through_mount), (through_fs, through_mount)


def test_rasterio_file_object_and_rioxarray(fs, emulator_data):
    import rioxarray

    path = next(e["name"] for e in fs.ls(a_product(fs)) if e["name"].endswith(".tif"))
    expected = rasterio.open(source_file(emulator_data, fs, path)).read()
    with fs.open(path) as f, rasterio.open(f) as ds:
        assert np.array_equal(ds.read(), expected)
    da = rioxarray.open_rasterio("terrascope://" + path, opener=fs.open)
    assert np.array_equal(da.values, expected)
    da.close()


def _read_in_child(fs, path: str) -> tuple[int, bytes]:
    return os.getpid(), fs.cat_file(path)


def test_pickled_filesystem_reads_in_another_process(fs, emulator_data):
    path = fs.ls(a_product(fs), detail=False)[0]
    clone = pickle.loads(pickle.dumps(fs))
    assert clone.config == fs.config
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pid, data = pool.apply(_read_in_child, (fs, path))
    assert pid != os.getpid()
    assert data == source_file(emulator_data, fs, path).read_bytes()


def test_no_credentials_is_one_clear_oserror(emulator, tmp_path, monkeypatch):
    for name in ("TERRASCOPE_USERNAME", "TERRASCOPE_PASSWORD", "TERRAFS_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    monkeypatch.setenv("HOME", str(tmp_path))
    config = fs_config(emulator, tmp_path / "fscache", str(tmp_path / "ratelimit.state"))
    del config["auth"]
    fs = fsspec.filesystem("terrascope", config=config, skip_instance_cache=True)
    with pytest.raises(OSError, match="no credentials"):
        fs.ls(COLLECTION)


def test_config_from_a_file_and_by_url(fs, emulator, emulator_data, tmp_path):
    """fsspec.open("terrascope://...", config=PATH) as a user who never names the class."""
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(fs.config))
    path.chmod(0o600)  # it holds a password
    name = fs.ls(a_product(fs), detail=False)[0]
    with fsspec.open(f"terrascope://{name}", config=str(path)) as f:
        assert f.read() == source_file(emulator_data, fs, name).read_bytes()
    with pytest.raises(IsADirectoryError):
        fsspec.open(f"terrascope://{a_product(fs)}", config=str(path)).open()
