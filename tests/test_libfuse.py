"""libfuse 3 wherever it is installed, also beside libfuse 2 (terrafs/mount/libfuse.py).

The mount test makes a real "both installed" machine for its process: libfuse 2
(scripts/setup unpacks it into .venv, or the system has it) is put where the
system's library search finds it as `fuse`, which is what mfusepy asks for
first, beside the system's libfuse 3.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mounting import credentials_env
from terrafs.mount.libfuse import ENV, choose

LIBFUSE2 = Path(sys.executable).parent.parent / "libfuse2" / "libfuse.so.2"


def _found(names: dict[str, str]):
    return lambda name: names.get(name)


def test_libfuse_3_is_chosen_when_both_are_installed():
    choice = choose({}, _found({"fuse": "libfuse.so.2", "fuse3": "libfuse3.so.3"}))
    assert choice.path == "libfuse3.so.3", choice


def test_fuse_library_path_set_by_the_user_wins():
    choice = choose({ENV: "/opt/libfuse.so.2"}, _found({"fuse": "libfuse.so.2", "fuse3": "libfuse3.so.3"}))
    assert choice.path is None, "terrafs overrode the user's FUSE_LIBRARY_PATH"


def test_without_libfuse_3_mfusepy_searches_for_itself():
    assert choose({}, _found({"fuse": "libfuse.so.2"})).path is None


def test_libfuse_3_is_named_on_linux_only():
    both = _found({"fuse": "libfuse.so.2", "fuse3": "libfuse3.so.3"})
    assert choose({}, both, system="FreeBSD").path is None, "mfusepy takes libfuse 3 on Linux only"


def _find(name: str, env: dict[str, str]) -> str:
    code = f"import ctypes.util; print(ctypes.util.find_library({name!r}))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def both_installed(tmp_path) -> dict[str, str]:
    """An environment in which the library search finds libfuse 2 as `fuse` and libfuse 3 as `fuse3`."""
    env = credentials_env()
    env.pop(ENV, None)
    if _find("fuse", env) == "None":
        assert LIBFUSE2.exists(), f"{LIBFUSE2} missing: scripts/setup unpacks libfuse 2 there"
        libs = tmp_path / "libs"
        libs.mkdir()
        (libs / "libfuse.so").symlink_to(LIBFUSE2)  # what the search (ld -lfuse) looks for
        (libs / "libfuse.so.2").symlink_to(LIBFUSE2)  # what dlopen then loads
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libs), env.get("LD_LIBRARY_PATH")]))
    assert _find("fuse", env).startswith("libfuse.so.2"), "libfuse 2 is not found as `fuse`"
    assert _find("fuse3", env) != "None", "libfuse 3 is not installed"
    return env


def test_mount_runs_on_libfuse_3_when_libfuse_2_is_installed_too(emulator, mount_factory, both_installed):
    probe = subprocess.run([sys.executable, "-c", "import mfusepy; print(mfusepy.fuse_version_major)"],
                           env=both_installed, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "2", "the setup is not one where mfusepy alone picks libfuse 2"
    mount = mount_factory(emulator, env=both_installed)
    log = mount.log_text()
    assert "(libfuse 3," in log, f"the mount did not run on libfuse 3:\n{log[-2000:]}"
    assert "libfuse 3 is preferred" in log, "the log does not say which library was chosen and why"
    assert ENV not in both_installed, "the test's environment named a library itself"
    assert sorted(os.listdir(mount.path)), "the mount on libfuse 3 lists nothing"
