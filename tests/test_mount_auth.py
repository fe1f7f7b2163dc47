"""Authentication and rate limits through real mounts (issue: auth and limits)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path


from mounting import credentials_env, write_config

SECRET_USER = "alice"
SECRET_PASSWORD = "Pa55-w0rd-that-must-not-leak"


def read_all(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            n += len(chunk)
    return n


def windows_exceeded(times: list[float], windows=((80, 10.0), (200, 60.0))) -> list[str]:
    times = sorted(times)
    problems = []
    for limit, seconds in windows:
        j = 0
        for i, t in enumerate(times):
            while times[j] <= t - seconds:
                j += 1
            if i - j + 1 > limit:
                problems.append(f"{i - j + 1} requests within {seconds}s at t={t - times[0]:.1f}")
                break
    return problems


def test_reads_survive_token_expiry_for_a_minute(emulator_factory, mount_factory, tmp_path):
    emu = emulator_factory(args=["--access-token-lifetime", "5", "--rate-limit", "off"])
    mount = mount_factory(emu, cache_dir=tmp_path / "cache")
    files = sorted(p for p in mount.path.rglob("*") if p.is_file())
    assert len(files) > 60
    # Every file is read once, uncached, spread over more than a minute: each read reaches
    # the server with whatever token is current by then.
    interval = 62.0 / len(files)
    started = time.monotonic()
    failures = []
    for i, f in enumerate(files):
        time.sleep(max(0.0, started + i * interval - time.monotonic()))
        try:
            assert read_all(f) == f.stat().st_size
        except OSError as exc:
            failures.append(f"{f.name}: {exc}")
    assert time.monotonic() - started >= 60
    assert failures == [], f"{len(failures)} failed reads: {failures[:3]}"
    grants = [r for r in emu.requests("auth") if r["path"].endswith("/token")]
    assert len(grants) >= 60 // 5, f"only {len(grants)} token requests in 60 s with 5 s tokens"


def test_300_small_files_within_the_limits_without_429(emulator_factory, mount_factory, tmp_path):
    emu = emulator_factory(args=["--bulk", "300", "--rate-limit", "80/10,200/60"])
    mount = mount_factory(emu, collections=["terrascope-s2-ndvi-v2"],
                          rate_limits=[{"requests": 80, "seconds": 10}, {"requests": 200, "seconds": 60}])
    files = sorted((mount.path / "terrascope-s2-ndvi-v2" / "2021" / "06" / "15").rglob("*"))  # the bulk day
    files = [f for f in files if f.is_file()]
    assert len(files) == 300
    emu.mark()
    started = time.monotonic()
    for f in files:
        read_all(f)
    elapsed = time.monotonic() - started
    downloads = emu.requests("download")
    assert [r for r in downloads if r["status"] == 429] == []
    assert len([r for r in downloads if r["status"] in (200, 206)]) == 300
    # 80 per 10 s and 200 per 60 s: the 300th request can go at t = 70 s at the earliest.
    assert elapsed <= 70 * 1.10, f"300 files took {elapsed:.1f} s; the limits require 70 s"


def test_two_mounts_together_keep_the_limits(emulator_factory, mount_factory, tmp_path):
    emu = emulator_factory(args=["--bulk", "240", "--rate-limit", "80/10,200/60"])
    mounts = [mount_factory(emu, name=f"m{i}", cache_dir=tmp_path / f"cache{i}",
                            collections=["terrascope-s2-ndvi-v2"]) for i in range(2)]
    lists = [[f for f in sorted((m.path / "terrascope-s2-ndvi-v2").rglob("*")) if f.is_file()] for m in mounts]
    emu.mark()
    threads = [threading.Thread(target=lambda fs=fs: [read_all(f) for f in fs[:120]]) for fs in lists]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    downloads = emu.requests("download")
    assert len(downloads) >= 240
    assert [r for r in downloads if r["status"] == 429] == []
    assert windows_exceeded([r["time"] for r in downloads]) == []


def test_bad_password_refuses_to_mount_with_a_clear_line(emulator, tmp_path):
    config = write_config(tmp_path / "config.yaml", emulator.base_url, tmp_path / "cache")
    (tmp_path / "mnt").mkdir()
    env = credentials_env("demo", SECRET_PASSWORD)
    result = subprocess.run([sys.executable, "-m", "terrafs", "mount", "--config", str(config), str(tmp_path / "mnt")],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "TERRASCOPE_USERNAME" in lines[0] or "environment" in lines[0], lines[0]
    assert SECRET_PASSWORD not in result.stderr + result.stdout
    assert not os.path.ismount(tmp_path / "mnt")


def test_bad_basic_password_refuses_to_mount(emulator, tmp_path):
    config = write_config(tmp_path / "config.yaml", emulator.base_url, tmp_path / "cache", auth={"method": "basic"})
    (tmp_path / "mnt").mkdir()
    result = subprocess.run([sys.executable, "-m", "terrafs", "mount", "--config", str(config), str(tmp_path / "mnt")],
                            capture_output=True, text=True, env=credentials_env("demo", SECRET_PASSWORD), timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "environment" in lines[0], result.stderr
    assert SECRET_PASSWORD not in result.stderr + result.stdout
    assert not os.path.ismount(tmp_path / "mnt")


def test_basic_auth_mount_reads(emulator, mount_factory):
    mount = mount_factory(emulator, auth={"method": "basic"})
    f = next(mount.path.rglob("*B02_10M*.tif"))
    assert read_all(f) == f.stat().st_size
    assert all(r["status"] in (200, 206) for r in emulator.requests("download"))


def test_debug_logs_hold_no_password_or_token(emulator, mount_factory, tmp_path):
    emulator.set(users={"demo": "demo", SECRET_USER: SECRET_PASSWORD})
    mount = mount_factory(emulator, env=credentials_env(SECRET_USER, SECRET_PASSWORD))
    for f in list(mount.path.rglob("*10M*.tif"))[:3]:
        read_all(f)
    tokens = emulator.issued_tokens()
    assert tokens, "the emulator issued no token to check for"
    mount.stop()
    text = mount.log_text()
    assert "DEBUG" in text, "the mount did not log at debug level"
    assert SECRET_PASSWORD not in text
    leaked = [t[:8] + "..." for t in tokens if t in text]
    assert leaked == [], f"tokens in the log: {leaked}"


def test_a_config_without_auth_hosts_for_its_download_host_says_so_at_mount_and_at_read(emulator, tmp_path):
    """A first config for another download host (the emulator) that leaves out auth.hosts."""
    import yaml

    config = write_config(tmp_path / "config.yaml", emulator.base_url, tmp_path / "cache")
    values = yaml.safe_load(config.read_text())
    del values["auth"]
    config.write_text(yaml.safe_dump(values))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = credentials_env()
    result = subprocess.run([sys.executable, "-m", "terrafs", "mount", "--config", str(config), str(mnt)],
                            capture_output=True, text=True, env=env, timeout=120)
    try:
        assert result.returncode == 0, result.stderr
        host = emulator.base_url  # http://127.0.0.1:PORT, as auth.hosts would name it
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, f"not one line: {result.stderr}"
        assert host in lines[0] and "no credentials" in lines[0] and "auth.hosts" in lines[0], lines[0]
        f = next((mnt / "terrascope-s2-toc-v2/2020/01/01").rglob("*B02_10M*.tif"))
        try:
            read_all(f)
            raise AssertionError("a download host that got no credentials served the file")
        except OSError:
            pass
        log = (tmp_path / "terrafs.log").read_text()
        refused = [line for line in log.splitlines() if "ERROR" in line and f.name in line]
        assert refused, f"the failed read left no error in the log:\n{log[-2000:]}"
        assert "not in auth.hosts" in refused[-1] and "credentials missing" not in refused[-1], refused[-1]
    finally:
        subprocess.run([sys.executable, "-m", "terrafs", "umount", str(mnt)], capture_output=True, env=env)


def test_a_basic_mount_during_a_pause_says_why_and_does_not_wait(emulator, tmp_path):
    """After a 429 paused the shared budget, a new mount's credential check does not spend it."""
    from terrafs.config import load_config
    from terrafs.build import make_limiter

    config = write_config(tmp_path / "config.yaml", emulator.base_url, tmp_path / "cache",
                          auth={"method": "basic"}, rate_limit_max_pause=600,
                          rate_limit_state=str(tmp_path / "ratelimit.state"))  # this test's own: it pauses it
    make_limiter(load_config(config, env=credentials_env())).pause(300)  # as another mount's 429 leaves it
    emulator.mark()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = credentials_env()
    try:
        result = subprocess.run([sys.executable, "-m", "terrafs", "mount", "--config", str(config), str(mnt)],
                                capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "no download request may be sent for" in result.stderr and "first read" in result.stderr, \
            f"the mount did not say why it would wait: {result.stderr!r}"
        assert os.path.ismount(mnt)
        assert emulator.requests("download") == [], "the check spent the paused budget"
    finally:
        subprocess.run([sys.executable, "-m", "terrafs", "umount", str(mnt)], capture_output=True, env=env)
