"""A cache that cannot write never fails a read: a full cache filesystem, a read-only
cache folder. Reads are served from the network and memory; the copy is exact."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.mount


def _source(emulator_data: Path, row: dict) -> Path:
    return emulator_data / "small" / row["platform_path"].removeprefix("/data/MTDA/")


def _copy_all_exact(m, emulator, emulator_data, at_least: int) -> int:
    rows = [r for r in emulator.files(limit=1000, collection="terrascope-layouts-test")]
    total = 0
    for row in rows:
        got = (m.path / row["default_path"]).read_bytes()
        assert got == _source(emulator_data, row).read_bytes(), f"{row['name']} differs from its source"
        total += len(got)
    assert total >= at_least, f"only {total} bytes copied"
    return total


@pytest.fixture
def tmpfs(tmp_path):
    made = []

    def make(name: str, size: str) -> Path:
        d = tmp_path / name
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(d)], check=True)
        made.append(d)
        return d

    yield make
    for d in reversed(made):
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_a_copy_with_the_cache_on_a_full_16_mib_filesystem_is_exact(emulator, emulator_data, mount_factory, tmpfs):
    tiny = tmpfs("tiny", "16m")
    m = mount_factory(emulator, cache_dir=tiny / "cache")
    _copy_all_exact(m, emulator, emulator_data, at_least=32 << 20)
    m.stop()
    log = m.log_text()
    warnings = [line for line in log.splitlines() if "cannot write to the cache" in line]
    assert warnings, "no warning that the cache is full"
    assert len(warnings) <= 3, f"the same cause was warned about {len(warnings)} times"
    assert str(tiny) in warnings[0], "the warning does not name the cache folder"


def test_a_copy_with_a_read_only_cache_folder_is_exact(emulator, emulator_data, mount_factory, tmp_path):
    cache = tmp_path / "ro-cache"
    first = mount_factory(emulator, cache_dir=cache, name="fill")
    assert any(first.path.iterdir())
    first.stop()
    subprocess.run(["mount", "--bind", str(cache), str(cache)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(cache)], check=True)
        m = mount_factory(emulator, cache_dir=cache, name="ro")
        _copy_all_exact(m, emulator, emulator_data, at_least=32 << 20)
    finally:
        subprocess.run(["umount", "-l", str(cache)], check=False)


def test_cache_stats_says_a_running_mount_s_cache_is_degraded_and_why(
        emulator, emulator_data, mount_factory, tmpfs, tmp_path):
    import os
    import sys

    tiny = tmpfs("tiny", "16m")
    m = mount_factory(emulator, cache_dir=tiny / "cache")
    _copy_all_exact(m, emulator, emulator_data, at_least=32 << 20)
    out = subprocess.run([sys.executable, "-m", "terrafs", "cache", "stats", "--config", str(m.config)],
                         capture_output=True, text=True, timeout=60, env=m.env)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("degraded:")]
    assert lines and str(tiny) in lines[0], out.stdout
    assert os.path.ismount(m.path)
