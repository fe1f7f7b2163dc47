"""Another local user prepared our cache folder, state file or log file: `terrafs`
refuses with one clear line and writes nothing through their symlinks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mounting import credentials_env, fusermount, write_config

pytestmark = pytest.mark.mount
NOBODY = 65534


def terrafs(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "terrafs", *args], capture_output=True, text=True,
                          timeout=timeout, env=credentials_env(), stdin=subprocess.DEVNULL)


def one_line(done: subprocess.CompletedProcess, *expected: str) -> str:
    assert done.returncode == 1, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("terrafs:")]
    assert len(lines) == 1, done.stderr[-2000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "w").mkdir()
    (tmp_path / "mnt").mkdir()
    yield tmp_path
    if os.path.ismount(tmp_path / "mnt"):  # only if a test failed by mounting
        subprocess.run([*fusermount(), str(tmp_path / "mnt")], capture_output=True)


def test_a_cache_folder_another_user_made_world_writable_is_refused(work: Path) -> None:
    cache = work / "cache"
    cache.mkdir()
    os.chown(cache, NOBODY, NOBODY)
    cache.chmod(0o777)
    planted = cache / "blocks"
    planted.mkdir()  # what the other user would fill with blocks
    config = write_config(work / "w" / "config.yaml", "http://127.0.0.1:9", cache)
    line = one_line(terrafs("mount", "--foreground", "--config", str(config), str(work / "mnt")),
                    str(cache), "another user")
    assert not os.path.ismount(work / "mnt")
    one_line(terrafs("cache", "stats", "--config", str(config)), "another user")
    assert "chmod" in line or "remove it" in line


def test_a_symlinked_state_file_is_not_followed(emulator, work: Path) -> None:
    victim = work / "precious.txt"
    victim.write_text("the user's own file")
    config = write_config(work / "w" / "config.yaml", emulator.base_url, work / "cache")
    (work / "ratelimit.state").symlink_to(victim)  # write_config puts the state file here
    one_line(terrafs("mount", "--foreground", "--config", str(config), str(work / "mnt")),
             "ratelimit.state", "symbolic link")
    assert victim.read_text() == "the user's own file"
    assert not os.path.ismount(work / "mnt")


def test_a_symlinked_log_file_is_not_followed(emulator, work: Path) -> None:
    victim = work / "precious.txt"
    victim.write_text("the user's own file")
    config = write_config(work / "w" / "config.yaml", emulator.base_url, work / "cache")
    (work / "w" / "terrafs.log").symlink_to(victim)  # write_config's log file
    one_line(terrafs("mount", "--config", str(config), str(work / "mnt")), "terrafs.log", "symbolic link")
    assert victim.read_text() == "the user's own file"
    assert not os.path.ismount(work / "mnt")
