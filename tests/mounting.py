"""Real FUSE mounts of terrafs for the tests, against the emulator.

A Mount runs `terrafs mount --foreground` in its own process group; stop()
always unmounts and kills, whatever state the test left it in.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml


def fusermount() -> list[str]:
    for tool in ("fusermount3", "fusermount"):
        if shutil.which(tool):
            return [tool, "-u"]
    return ["umount"]


def write_config(path: Path, base_url: str, cache_dir: Path, **overrides) -> Path:
    config = {
        "catalogue": "stac",
        "endpoints": {
            "stac": f"{base_url}/stac/",
            "opensearch": f"{base_url}/catalogue/",
            "token": f"{base_url}/auth/realms/terrascope/protocol/openid-connect/token",
        },
        # The emulator is the download service here, over plain http: the config must say so,
        # or no credentials go to it (scope.py).
        "auth": {"hosts": [base_url]},
        "cache": {"dir": str(cache_dir), "size": "2GiB"},
        # One limiter per test (not the user's): earlier tests' requests must not slow this one.
        "rate_limit_state": str(path.parent.parent / "ratelimit.state"),
        "log": {"level": "DEBUG", "file": str(path.parent / "terrafs.log")},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class Mount:
    def __init__(self, path: Path, config: Path, log: Path, env: dict[str, str], args: list[str]):
        self.path = path
        self.config = config
        self.log = log
        self.env = env
        self.args = args
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "Mount":
        self.path.mkdir(parents=True, exist_ok=True)
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "terrafs", "mount", "--foreground", "-vv", "--config", str(self.config),
             *self.args, str(self.path)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,
        )
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.ismount(self.path):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"terrafs mount exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"terrafs mount did not come up in {timeout}s:\n{self.log_text()[-4000:]}")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if os.path.ismount(self.path):
            result = subprocess.run([*fusermount(), str(self.path)], capture_output=True)
            if result.returncode != 0:
                subprocess.run([*fusermount()[:1], "-uz", str(self.path)], capture_output=True)
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if os.path.ismount(self.path):
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)

    def kill9(self) -> None:
        """The daemon dies at once (no unmount): for crash tests."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        subprocess.run([*fusermount()[:1], "-uz", str(self.path)], capture_output=True)


@pytest.fixture
def emulator_is_download_host(emulator, monkeypatch):
    """For tests that build a Downloader without a config: the emulator (plain http on
    loopback) gets the credentials, as `auth.hosts` in write_config says for mounts."""
    from terrafs.remote import scope
    from terrafs.text import origin_of

    monkeypatch.setattr(scope, "DEFAULT_SCOPE", scope.CredentialScope([origin_of(emulator.base_url)]))
    return emulator


def credentials_env(user: str = "demo", password: str = "demo") -> dict[str, str]:
    env = dict(os.environ)
    env.update(TERRASCOPE_USERNAME=user, TERRASCOPE_PASSWORD=password, NETRC="/nonexistent")
    env.pop("TERRAFS_CONFIG", None)
    return env


@pytest.fixture
def mount_factory(tmp_path: Path):
    """mount_factory(emulator, catalogue="stac", layout=None, cache_dir=None, env=None, **config) -> Mount.

    Every mount it made is stopped at teardown, whatever the test did.
    """
    made: list[Mount] = []

    def factory(emulator, *, catalogue: str = "stac", layout: str | None = None, cache_dir: Path | None = None,
                env: dict[str, str] | None = None, name: str | None = None, **config) -> Mount:
        n = len(made)
        work = tmp_path / (name or f"mount{n}")
        work.mkdir(parents=True, exist_ok=True)
        cfg = write_config(work / "config.yaml", emulator.base_url, cache_dir or (tmp_path / "cache"),
                           catalogue=catalogue, **({"layout": layout} if layout else {}), **config)
        mount = Mount(work / "mnt", cfg, work / "mount.log", env or credentials_env(), [])
        made.append(mount)
        return mount.start()

    try:
        yield factory
    finally:
        for m in made:
            m.stop()
