"""A real redis-server for the cluster tests, on a free loopback port (no containers).

RedisServer can be stopped and started again on the same port within a test,
to take Redis away in the middle of a run and bring it back.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, work: Path, port: int):
        self.work = work
        self.port = port
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self, timeout: float = 20.0) -> "RedisServer":
        self.work.mkdir(parents=True, exist_ok=True)
        cmd = [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--dir", str(self.work), "--daemonize", "no"]
        with open(self.work / "redis.log", "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.ConnectionError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        log = (self.work / "redis.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server, killed at teardown whatever the test did."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (scripts/setup installs the Debian package redis-server)")
    server = RedisServer(tmp_path / "redis", free_port()).start()
    try:
        yield server
    finally:
        server.stop()


# The emulator's limits tightened for the cluster tests (POST /_emulator/settings), and the same in the config.
TIGHT = [[20, 5.0], [60, 30.0]]
TIGHT_CONFIG = [{"requests": n, "seconds": s} for n, s in TIGHT]


def budget_bound(duration: float, windows=TIGHT) -> int:
    """Most requests that every window together allows in `duration` seconds from an unused budget."""
    return min(int(n * (duration // s + 1)) for n, s in windows)


def budget_report(downloads: list[dict]) -> tuple[int, float, float, int]:
    """(requests, seconds from first to last, share of the bound used, 429s) of logged download requests."""
    times = [r["time"] for r in downloads]
    duration = max(times) - min(times) if times else 0.0
    use = len(downloads) / budget_bound(duration) if times else 0.0
    return len(downloads), duration, use, sum(1 for r in downloads if r["status"] == 429)


def fs_config(emulator, cache_dir: Path, rate_limit_state: str, **overrides) -> dict:
    """A config dict for the terrascope filesystem against the emulator: the mount tests' config
    (mounting.write_config), with credentials in it, as a worker would get them."""
    import yaml

    from mounting import write_config

    cache_dir.mkdir(parents=True, exist_ok=True)
    path = write_config(cache_dir.parent / "fs-config.yaml", emulator.base_url, cache_dir,
                        rate_limit_state=rate_limit_state, log={"file": str(cache_dir.parent / "terrafs.log")},
                        **overrides)
    config = yaml.safe_load(path.read_text())
    config["auth"] = {**config.get("auth", {}), "username": "demo", "password": "demo"}
    return config


def source_file(emulator_data: Path, fs, path: str) -> Path:
    """The emulator's file on disk behind a path of the terrascope filesystem."""
    node = fs.node(path)
    local = node.file.local_path
    assert local and local.startswith("/data/MTDA/"), f"{path}: no platform path in the catalogue ({local!r})"
    return emulator_data / "small" / local[len("/data/MTDA/"):]
