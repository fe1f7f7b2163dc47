"""A real STAC API for the tests: stac-fastapi-pgstac on PostgreSQL with PostGIS (no containers).

PgStacServer runs a private PostgreSQL cluster (initdb into a temporary directory, listening on a
free 127.0.0.1 port and on a socket in that directory), migrates it with `pypgstac migrate`, and
serves it with stac-fastapi-pgstac under uvicorn on another free 127.0.0.1 port. load() copies a
running emulator's collections and items into it, read from the emulator's own STAC API, so
every asset href still points at the emulator's download service: only the catalogue changes.

The server's Python packages live in their own venv (.venv-pgstac, made by scripts/setup) so their
fastapi/pydantic/psycopg pins never meet the test venv's; everything runs as subprocesses. As root,
PostgreSQL refuses to run, so its programs run as the `postgres` system user (made by the Debian
package). stop() kills everything it started, whatever state it is in.

This module must not touch any PostgreSQL other than its own, nor need the network.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from clustering import free_port

REPO = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("TERRAFS_PGSTAC_VENV", REPO / ".venv-pgstac"))
START_TIMEOUT = 60.0
SETUP_HINT = ("scripts/setup installs them: the Debian packages postgresql and postgresql-postgis, "
              "and stac-fastapi-pgstac, pypgstac and uvicorn in .venv-pgstac")


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian puts each major version apart)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                   if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def missing() -> str | None:
    """Why the real STAC server cannot run here, or None when it can."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        return "PostgreSQL is not installed (no initdb)"
    version = bin_dir.parent.name
    if not list(Path(f"/usr/share/postgresql/{version}/extension").glob("postgis.control")):
        return f"PostGIS is not installed for PostgreSQL {version}"
    for tool in ("pypgstac", "uvicorn"):
        if not (VENV / "bin" / tool).exists():
            return f"{VENV / 'bin' / tool} is missing"
    if os.getuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run PostgreSQL as"
    return None


def installable() -> bool:
    """Whether scripts/setup installs the server on this machine (as root, with apt-get; or CI says so)."""
    return bool(os.environ.get("CI")) or (os.getuid() == 0 and shutil.which("apt-get") is not None)


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class PgStacServer:
    """PostgreSQL + pgstac + stac-fastapi-pgstac, all on loopback; start(), load(), stop()."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.work = Path(tempfile.mkdtemp(prefix="terrafs-pgstac-"))
        self.db_port = free_port()
        self.api_port = free_port()
        self.api: subprocess.Popen | None = None
        self.pg_started = False
        self.loaded_from: str | None = None
        self.counts = (0, 0)  # collections and items of the last load
        self.start_seconds = 0.0
        self.load_seconds = 0.0
        # As root, PostgreSQL's programs run as `postgres`, which must own the cluster's directory.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        if self.as_user:
            pw = pwd.getpwnam("postgres")
            os.chown(self.work, pw.pw_uid, pw.pw_gid)
        self.work.chmod(0o755)

    @property
    def url(self) -> str:
        """The STAC API's root, with a trailing slash (as the config's `endpoints.stac` wants)."""
        return f"http://127.0.0.1:{self.api_port}/"

    @property
    def data(self) -> Path:
        return self.work / "data"

    def env(self) -> dict[str, str]:
        """libpq's and stac-fastapi-pgstac's connection settings (a trusted local cluster: no password)."""
        return dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(self.db_port), PGUSER="postgres",
                    PGDATABASE="postgres", PGPASSWORD="unused", PYTHONPATH="")

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> "PgStacServer":
        t0 = time.monotonic()
        assert self.bin is not None
        self._run([*self.as_user, str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                   "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"], "initdb")
        # A throwaway cluster: durability off, so loading and migrating cost no fsyncs.
        options = (f"-c listen_addresses=127.0.0.1 -p {self.db_port} -k {self.work} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        self._run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.work / "postgres.log"),
                   "-w", "-t", str(int(START_TIMEOUT)), "-o", options, "start"], "pg_ctl start")
        self.pg_started = True
        self._run([str(VENV / "bin" / "pypgstac"), "migrate"], "pypgstac migrate")
        log = open(self.work / "api.log", "ab")
        self.api = subprocess.Popen(
            [str(VENV / "bin" / "uvicorn"), "stac_fastapi.pgstac.app:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(self.api_port), "--log-level", "warning"],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=self.work)
        log.close()
        self._wait_for_api()
        self.start_seconds = time.monotonic() - t0
        return self

    def _wait_for_api(self) -> None:
        assert self.api is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "_mgmt/ping", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if self.api.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"stac-fastapi-pgstac did not answer on {self.url}:\n{_tail(self.work / 'api.log')}")

    def _run(self, cmd: list[str], what: str, timeout: float = 120.0) -> None:
        done = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout, cwd=self.work)
        if done.returncode != 0:
            raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}\n"
                               f"{_tail(self.work / 'postgres.log', 1500)}")

    def stop(self) -> None:
        """Kill the API and stop PostgreSQL at once; remove the cluster. Safe to call twice."""
        if self.api is not None and self.api.poll() is None:
            try:
                os.killpg(self.api.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.api.wait(timeout=10)
        if self.pg_started:
            subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                            "stop"], env=self.env(), capture_output=True, timeout=60, cwd="/")
            self.pg_started = False
        shutil.rmtree(self.work, ignore_errors=True)

    # -- data -----------------------------------------------------------------
    def load(self, stac_url: str) -> None:
        """Make the catalogue hold exactly the collections and items a STAC API serves (the
        emulator's, so hrefs point at its download service); nothing when already loaded from it."""
        if self.loaded_from == stac_url:
            return
        t0 = time.monotonic()
        collections = list(_pages(stac_url.rstrip("/") + "/collections", "collections"))
        items = [item for c in collections
                 for item in _pages(f"{stac_url.rstrip('/')}/collections/{c['id']}/items?limit=1000", "features")]
        (self.work / "collections.ndjson").write_text("".join(json.dumps(c) + "\n" for c in collections))
        (self.work / "items.ndjson").write_text("".join(json.dumps(i) + "\n" for i in items))
        # Another emulator's items (other hrefs) must not linger: empty the catalogue first.
        self._run([str(self.bin / "psql"), "-v", "ON_ERROR_STOP=1", "-q", "-c",
                   "DELETE FROM pgstac.items; DELETE FROM pgstac.collections;"], "emptying pgstac")
        pypgstac = str(VENV / "bin" / "pypgstac")
        self._run([pypgstac, "load", "collections", str(self.work / "collections.ndjson"), "--method", "insert"],
                  "pypgstac load collections")
        self._run([pypgstac, "load", "items", str(self.work / "items.ndjson"), "--method", "insert"],
                  "pypgstac load items")
        self.loaded_from = stac_url
        self.counts = (len(collections), len(items))
        self.load_seconds = time.monotonic() - t0


def _pages(url: str, key: str) -> Iterator[dict]:
    """Every entry of `key` over a STAC listing's `next` links (GET)."""
    seen = 0
    while url:
        r = requests.get(url, timeout=60)
        r.raise_for_status()
        page = r.json()
        yield from page[key]
        seen += 1
        assert seen < 1000, f"{url}: more than 1000 pages"
        url = next((link["href"] for link in page.get("links", []) if link.get("rel") == "next"), "")


@pytest.fixture(scope="session")
def pgstac_server() -> Iterator[PgStacServer]:
    """One stac-fastapi-pgstac server (and PostgreSQL) for the whole session, empty; see real_stac."""
    reason = missing()
    if reason is not None:
        message = f"no real STAC server: {reason}; {SETUP_HINT}"
        if installable():
            pytest.fail(message)  # scripts/setup would have installed it here: a broken setup, not a skip
        pytest.skip(message)
    server = PgStacServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def real_stac(pgstac_server: PgStacServer, emulator) -> PgStacServer:
    """The session's stac-fastapi-pgstac server holding the current emulator's collections and items."""
    if pgstac_server.api is None or pgstac_server.api.poll() is not None:
        pytest.fail(f"stac-fastapi-pgstac died:\n{_tail(pgstac_server.work / 'api.log')}")
    pgstac_server.load(emulator.stac_url)
    emulator.mark()  # the copy's own requests are not the test's
    return pgstac_server
