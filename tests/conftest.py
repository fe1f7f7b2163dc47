"""Test harness: the emulator as a real subprocess on a free loopback port.

Fixtures:
- emulator_data (session): the archive directory, generated once and kept
  across runs ($TERRAFS_TEST_DATA, default /tmp/terrafs-test-data).
- emulator (function): a module-shared emulator, reset to its start-up
  settings (and with an empty limiter, no live tokens) before each test.
- emulator_factory (function): emulator_factory(args=[...]) starts a fresh one
  with extra command-line arguments; all are stopped after the test.
- archive_emulator (function): a module-shared emulator of the archive profile
  (--profile archive: S2 TOC at the real archive's size, 2020-01..03), reset per test.

Every emulator runs in its own session / process group, which teardown kills
even when the test fails.
"""
from __future__ import annotations

import fcntl
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from terrafs.emulator.app import read_log

from mounting import mount_factory  # noqa: F401  (a fixture for every test module)

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 300.0  # the first run generates the archive
BASE_LINE = "terrafs emulator: "


class Emulator:
    """A running emulator subprocess and helpers to drive it."""

    def __init__(self, proc: subprocess.Popen, base_url: str, log_path: Path, stderr_path: Path):
        self.proc = proc
        self.base_url = base_url
        self.log_path = log_path
        self.stderr_path = stderr_path
        self._mark = 0

    # -- URLs ---------------------------------------------------------------
    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def stac_url(self) -> str:
        return self.base_url + "/stac"

    @property
    def opensearch_url(self) -> str:
        return self.base_url + "/catalogue/"

    @property
    def token_url(self) -> str:
        return self.base_url + "/auth/realms/terrascope/protocol/openid-connect/token"

    def download_url(self, path: str) -> str:
        return self.base_url + "/download/" + path.lstrip("/")

    # -- control ------------------------------------------------------------
    def set(self, **settings) -> dict:
        """Change settings at runtime (POST /_emulator/settings); returns them all."""
        r = requests.post(self.url("/_emulator/settings"), json=settings, timeout=10)
        assert r.status_code == 200, f"settings {settings} refused: {r.status_code} {r.text}"
        return r.json()

    def settings(self) -> dict:
        return requests.get(self.url("/_emulator/settings"), timeout=10).json()

    def reset(self) -> None:
        """Start-up settings, empty limiter, no tokens; requests() restarts from here."""
        self.set(reset=True)
        self._mark = len(read_log(self.log_path))

    def mark(self) -> None:
        """requests() counts from here; settings, limiter and tokens stay as they are."""
        self._mark = len(read_log(self.log_path))

    def files(self, limit: int = 100, min_size: int = 0, max_size: int | None = None, layout: str | None = None,
              collection: str | None = None) -> list[dict]:
        """Served files, smallest first: [{"path", "size", "type", "name", "url", "platform_path",
        "default_path", "default_path_opensearch", "layout", "collection", "collection_urn", "product"}];
        layout: sentinel2, cog, tiled or striped; collection: STAC id or URN."""
        params = {"limit": limit, "min_size": min_size}
        if max_size is not None:
            params["max_size"] = max_size
        params.update({k: v for k, v in (("layout", layout), ("collection", collection)) if v is not None})
        r = requests.get(self.url("/_emulator/files"), params=params, timeout=30)
        r.raise_for_status()
        return r.json()

    def issued_tokens(self) -> list[str]:
        """Every access and refresh token the emulator has issued."""
        r = requests.get(self.url("/_emulator/tokens"), timeout=10)
        r.raise_for_status()
        return r.json()

    def approve_device(self, user_code: str) -> None:
        r = requests.post(self.url("/_emulator/device/approve"), params={"user_code": user_code}, timeout=10)
        assert r.status_code == 200, f"device approval failed: {r.status_code} {r.text}"

    def catalogue(self) -> tuple[int, int]:
        """(catalogue requests, body bytes) since start or the last reset()/mark(): STAC and OpenSearch."""
        entries = [e for e in self.requests() if e.get("kind") in ("stac", "opensearch")]
        return len(entries), sum(int(e.get("bytes") or 0) for e in entries)

    def requests(self, kind: str | None = None) -> list[dict]:
        """Logged requests since start or the last reset(). kind=None gives
        every kind except "control" (the harness's own calls)."""
        entries = read_log(self.log_path)[self._mark:]
        if kind is None:
            return [e for e in entries if e.get("kind") != "control"]
        return [e for e in entries if e.get("kind") == kind]

    # -- lifecycle ----------------------------------------------------------
    def stop(self) -> int | None:
        """Stop the whole process group (SIGTERM, then SIGKILL); the exit code."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def start_emulator(data_dir: Path, work_dir: Path, args: list[str] | None = None) -> Emulator:
    """Start `python -m terrafs.emulator.server --port 0 ...` and wait for its URL."""
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / "requests.jsonl"
    stderr_path = work_dir / "emulator.stderr"
    cmd = [sys.executable, "-m", "terrafs.emulator.server", "--port", "0", "--data", str(data_dir),
           "--log", str(log_path), *(args or [])]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err,
                                start_new_session=True)
    emu = Emulator(proc, "", log_path, stderr_path)
    try:
        emu.base_url = _wait_for_url(proc, stderr_path)
    except BaseException:
        emu.stop()
        raise
    return emu


def _wait_for_url(proc: subprocess.Popen, stderr_path: Path) -> str:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if sel.select(timeout=0.5):
                line = proc.stdout.readline().decode("utf-8", "replace").strip()
                if line.startswith(BASE_LINE):
                    return line[len(BASE_LINE):]
                if not line and proc.poll() is not None:
                    break
            elif proc.poll() is not None:
                break
    finally:
        sel.close()
    stderr = stderr_path.read_text(errors="replace")[-3000:] if stderr_path.exists() else ""
    raise RuntimeError(f"emulator did not start (exit code {proc.poll()}); stderr:\n{stderr}")


def _build(data: Path, profile: str) -> None:
    """build_archive(data, profile) in a child process, under a lock (concurrent sessions build once)."""
    with open(data / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        subprocess.run(
            [sys.executable, "-c",
             "import sys; from pathlib import Path; from terrafs.emulator.data import build_archive; "
             "build_archive(Path(sys.argv[1]), profile=sys.argv[2])", str(data), profile],
            cwd=REPO, env=env, check=True, timeout=START_TIMEOUT)


@pytest.fixture(scope="session")
def emulator_data() -> Path:
    """The archive directory, generated once (under a lock, so concurrent test
    sessions do not generate it twice at the same time)."""
    data = Path(os.environ.get("TERRAFS_TEST_DATA", "/tmp/terrafs-test-data"))
    data.mkdir(parents=True, exist_ok=True)
    _build(data, "small")
    return data


@pytest.fixture(scope="module")
def _shared_emulator(emulator_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emu = start_emulator(emulator_data, tmp_path_factory.mktemp("emulator"))
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def emulator(_shared_emulator: Emulator) -> Emulator:
    """A running emulator with start-up settings; see Emulator for helpers."""
    if _shared_emulator.proc.poll() is not None:
        pytest.fail(f"the shared emulator died (exit code {_shared_emulator.proc.returncode})")
    _shared_emulator.reset()
    return _shared_emulator


@pytest.fixture
def emulator_factory(emulator_data: Path, tmp_path: Path) -> Iterator[Callable[..., Emulator]]:
    """emulator_factory(args=[...]) -> a fresh Emulator; all stopped at teardown."""
    started: list[Emulator] = []

    def factory(args: list[str] | None = None) -> Emulator:
        emu = start_emulator(emulator_data, tmp_path / f"emulator{len(started)}", args)
        started.append(emu)
        return emu

    try:
        yield factory
    finally:
        for emu in started:
            emu.stop()


# -- the archive profile (issue 19): S2 TOC at the real archive's size ---------------------------
# About 100 products a day for 2020-01..2020-03 in terrascope-s2-toc-v2, items of the real size,
# bytes made on demand (terrafs/emulator/daily.py); every other collection as in the small profile.
ARCHIVE_TOC = "terrascope-s2-toc-v2"
ARCHIVE_MONTHS = ("2020/01", "2020/02", "2020/03")


@pytest.fixture(scope="session")
def archive_data(emulator_data: Path) -> Path:
    """emulator_data with the archive profile's files (templates and the small collections) built."""
    _build(emulator_data, "archive")
    return emulator_data


@pytest.fixture(scope="module")
def _shared_archive_emulator(archive_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emu = start_emulator(archive_data, tmp_path_factory.mktemp("archive-emulator"), ["--profile", "archive"])
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def archive_emulator(_shared_archive_emulator: Emulator) -> Emulator:
    """A running emulator of the archive profile, reset to its start-up settings
    (pass {"stac_fields": False} to emulator.set() for a STAC API without the fields extension)."""
    if _shared_archive_emulator.proc.poll() is not None:
        pytest.fail(f"the archive emulator died (exit code {_shared_archive_emulator.proc.returncode})")
    _shared_archive_emulator.reset()
    return _shared_archive_emulator
