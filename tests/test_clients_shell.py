"""Acceptance: everyday shell tools and Python's file API on a real mount see what the source files hold.

ls, find, du, stat, cp -r, rsync -a, tar, sha256sum; os.walk, open/seek/read,
mmap and shutil.copy2. Names, sizes and bytes are compared with the emulator's
source files; where the mount rightly differs (owners, modes, directory
sizes), the test pins what the mount must show instead.
"""
from __future__ import annotations

import hashlib
import io
import mmap
import os
import random
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

from support import band, log_mark, report, sha256, source_of

TIMEOUT = 120


def sh(cmd: list[str], cwd: Path | None = None) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd)
    assert out.returncode == 0, f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}"
    assert not out.stderr.strip(), f"{' '.join(cmd)} complained:\n{out.stderr}"
    return out.stdout


def product_of(mount, day: str = "2020/01/01", name: str = "B04_10M") -> Path:
    return band(mount, name, day=day).parent


def served_files(emulator_data: Path, mounted_product: Path) -> dict[str, int]:
    """name -> size of the source product's files (side files GDAL may have left excluded)."""
    first = next(p for p in mounted_product.iterdir() if p.is_file())
    src_dir = source_of(emulator_data, first).parent
    return {p.name: p.stat().st_size for p in src_dir.iterdir()
            if p.is_file() and not p.name.endswith(".aux.xml")}


def test_ls_lR_shows_the_source_names_sizes_and_read_only_modes(emulator, emulator_data, mount_factory):
    mount = mount_factory(emulator)
    product = product_of(mount)
    expected = served_files(emulator_data, product)
    listing = sh(["ls", "-lR", "--time-style=+%Y-%m-%d", str(product.parent)])
    seen: dict[str, int] = {}
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) == 7 and parts[0].startswith("-"):
            assert parts[0] == "-r--r--r--", line
            seen[parts[6]] = int(parts[4])
        elif len(parts) == 7 and parts[0].startswith("d"):
            assert parts[0] == "dr-xr-xr-x", line
    for name, size in expected.items():
        assert seen.get(name) == size, f"ls -lR shows {name} as {seen.get(name)}, source has {size}"
    assert listing.count("_TOC_V210:") == 3, "ls -lR did not descend into the three products of the day"


def test_find_selects_the_same_files_as_on_the_source(emulator, emulator_data, mount_factory):
    mount = mount_factory(emulator)
    product = product_of(mount, day="2020/02/15")
    src_dir = source_of(emulator_data, next(product.glob("*.tif"))).parent
    query = ["-type", "f", "-name", "*.tif", "-size", "+100k"]
    mounted = sorted(Path(p).name for p in sh(["find", str(product), *query]).split())
    source = sorted(Path(p).name for p in sh(["find", str(src_dir), *query]).split())
    assert mounted == source and len(mounted) >= 9, mounted
    everything = sh(["find", str(mount.path / "terrascope-s2-toc-v2"), "-type", "f", "-name", "*B04_10M*"]).split()
    # 11 acquisitions x tiles, and an older version (V200) of one of them
    assert len(everything) == 12, f"find saw {len(everything)} B04 bands in the collection, expected 12"


def test_du_counts_the_bytes_of_the_files(emulator, emulator_data, mount_factory):
    mount = mount_factory(emulator)
    product = product_of(mount, day="2020/01/02")
    expected = served_files(emulator_data, product)
    per_file = {Path(p).name: int(n) for n, p in
                (line.split("\t") for line in sh(["du", "-ab", str(product)]).splitlines())}
    for name, size in expected.items():
        assert per_file.get(name) == size, f"du -ab: {name} {per_file.get(name)} != {size}"
    total = sum(expected.values())
    kib = int(sh(["du", "-sk", str(product)]).split()[0])
    # st_blocks is the size in 512-byte units: du must neither say 0 nor wildly more.
    assert total // 1024 <= kib <= total // 1024 + len(expected) + 1, f"du -sk {kib} KiB for {total} bytes"


def test_stat_reports_size_type_and_mode(emulator, emulator_data, mount_factory):
    mount = mount_factory(emulator)
    f = band(mount, "B8A_20M", day="2021/06/30")
    out = sh(["stat", "-c", "%s|%F|%a|%h", str(f)]).strip()
    assert out == f"{source_of(emulator_data, f).stat().st_size}|regular file|444|1"
    d = sh(["stat", "-c", "%F|%a", str(f.parent)]).strip()
    assert d == "directory|555"
    fs = sh(["stat", "-f", "-c", "%T", str(mount.path)]).strip()
    assert fs.startswith("fuse"), fs


def test_cp_r_of_a_product_equals_the_source(emulator, emulator_data, mount_factory, tmp_path):
    mount = mount_factory(emulator)
    product = product_of(mount, day="2021/07/01")
    expected = served_files(emulator_data, product)
    sh(["cp", "-r", str(product), str(tmp_path / "r")])
    sh(["cp", "-a", str(product), str(tmp_path / "a")])
    for dest in (tmp_path / "r", tmp_path / "a"):
        assert sorted(p.name for p in dest.iterdir()) == sorted(expected)
        for p in dest.iterdir():
            assert sha256(p) == sha256(source_of(emulator_data, product / p.name)), f"{dest.name}/{p.name}"
    # cp -a keeps the mount's mtimes
    f = next((tmp_path / "a").glob("*.tif"))
    assert f.stat().st_mtime == (product / f.name).stat().st_mtime


def test_rsync_a_copies_once_and_then_finds_nothing_to_do(emulator, emulator_data, mount_factory, tmp_path):
    mount = mount_factory(emulator)
    product = product_of(mount, day="2020/01/01", name="B03_10M")
    dest = tmp_path / "r"
    sh(["rsync", "-a", f"{product}/", f"{dest}/"])
    for name, size in served_files(emulator_data, product).items():
        assert sha256(dest / name) == sha256(source_of(emulator_data, product / name)), name
    mark = log_mark(emulator)
    again = sh(["rsync", "-a", "--itemize-changes", f"{product}/", f"{dest}/"])
    assert again.strip() == "", f"a second rsync -a found changes:\n{again}"
    assert report("second rsync -a (nothing to do)", emulator, mark) == []


def test_tar_c_archives_the_source_bytes(emulator, emulator_data, mount_factory, tmp_path):
    mount = mount_factory(emulator)
    product = product_of(mount, day="2020/01/02", name="B02_10M")
    archive = tmp_path / "p.tar"
    # GNU tar exits 1 and warns if a file's size or times change while it reads it.
    sh(["tar", "cf", str(archive), "-C", str(product.parent), product.name])
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        expected = served_files(emulator_data, product)
        assert sorted(Path(m.name).name for m in members) == sorted(expected)
        for m in members:
            data = tar.extractfile(m).read()
            src = source_of(emulator_data, product / Path(m.name).name)
            assert hashlib.sha256(data).hexdigest() == sha256(src), m.name


def test_sha256sum_matches_the_source(emulator, emulator_data, mount_factory):
    mount = mount_factory(emulator)
    product = product_of(mount, day="2021/06/30", name="B05_20M")
    names = sorted(served_files(emulator_data, product))
    out = sh(["sha256sum", *names], cwd=product)
    src_dir = source_of(emulator_data, product / names[0]).parent
    assert out == sh(["sha256sum", *names], cwd=src_dir)


def test_os_walk_finds_every_source_file_of_the_collection(emulator, emulator_data, mount_factory):
    mount = mount_factory(emulator)
    root = mount.path / "terrascope-s2-toc-v2"
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            f = Path(dirpath) / name
            src = source_of(emulator_data, f)
            assert src.is_file(), f"{f} has no source file {src}"
            assert f.stat().st_size == src.stat().st_size, f
            seen += 1
    source_root = emulator_data / "small" / "TERRASCOPE_Sentinel2" / "TOC_V2"
    expected = sum(1 for p in source_root.rglob("*") if p.is_file() and not p.name.endswith(".aux.xml"))
    assert seen == expected, f"os.walk found {seen} files, the source has {expected}"


def test_open_seek_read_returns_the_source_bytes(emulator, emulator_data, mount_factory):
    mount = mount_factory(emulator)
    f = band(mount, "B04_10M", day="2021/07/01")
    data = source_of(emulator_data, f).read_bytes()
    size = len(data)
    rng = random.Random(7)
    with open(f, "rb", buffering=0) as fh:
        for _ in range(50):
            offset = rng.randrange(size)
            length = rng.choice([1, 7, 4096, 65536, 300_000])
            fh.seek(offset)
            assert fh.read(length) == data[offset:offset + length], (offset, length)
        fh.seek(-100, io.SEEK_END)
        assert fh.read() == data[-100:]
        assert fh.read(10) == b"", "a read at EOF returned bytes"
        fh.seek(size + 1000)
        assert fh.read(10) == b"", "a read past EOF returned bytes"
        assert os.pread(fh.fileno(), 1000, 12345) == data[12345:13345]


def test_mmap_of_a_mounted_file_equals_the_source(emulator, emulator_data, mount_factory):
    mount = mount_factory(emulator)
    f = band(mount, "B12_20M", day="2020/01/01")
    data = source_of(emulator_data, f).read_bytes()
    with open(f, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert len(m) == len(data)
        assert m[:8] == data[:8]
        assert m[len(data) // 2: len(data) // 2 + 5000] == data[len(data) // 2: len(data) // 2 + 5000]
        assert m[:] == data


def test_python_copy2_keeps_bytes_and_does_not_fail_on_xattrs(emulator, emulator_data, mount_factory, tmp_path):
    """shutil.copy2 / copytree copy user.* xattrs too; a mount xattr too big for the
    destination file system (ext4 takes about 4 KiB per file) made them fail with ENOSPC."""
    mount = mount_factory(emulator)
    f = band(mount, "B06_20M", day="2020/01/02")
    dest = Path(shutil.copy2(f, tmp_path / f.name))
    assert sha256(dest) == sha256(source_of(emulator_data, f))
    assert stat.S_IMODE(dest.stat().st_mode) == 0o444
    tree = Path(shutil.copytree(f.parent, tmp_path / "tree"))  # the product directory's xattrs too
    assert sorted(p.name for p in tree.iterdir()) == sorted(served_files(emulator_data, f.parent))
    assert os.getxattr(f, "user.terrafs.record"), "the record must stay readable by name"
