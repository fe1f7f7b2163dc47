"""Running terrafs as operators do: mount -t terrafs / fstab options, metrics, prefetch and stats through a mount.

Real parts only: the helper is linked at /sbin/mount.terrafs for the test and
called by util-linux's mount(8); the emulator's request log is the reference
for request counts; GDAL reads the windows.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from mounting import write_config
from support import sha256, source_of
from terrafs.cache.blocks import BlockCache
from terrafs.mount.control import ask, socket_path
from terrafs.openfiles import RemoteFile, file_key  # files names the read path's module, wherever it lives
from terrafs.read.prefetch import cached_bytes

HELPER_LINK = Path("/sbin/mount.terrafs")


def bare_env(home: Path) -> dict[str, str]:
    """No credentials anywhere: no TERRASCOPE_*, no netrc, an empty home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TERRASCOPE_", "TERRAFS_"))}
    env.update(NETRC="/nonexistent", HOME=str(home))
    home.mkdir(parents=True, exist_ok=True)
    return env


def terrafs(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "terrafs", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def daemons_of(mountpoint: Path) -> list[int]:
    """Processes whose command line names the mount point (the forked daemon keeps the helper's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.fsencode(mountpoint) in args:
            found.append(int(entry.name))
    return found


def proc_mounts_line(mountpoint: Path) -> list[str]:
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[1] == str(mountpoint):
            return fields
    return []


@pytest.fixture
def helper_link():
    """/sbin/mount.terrafs -> this venv's helper, for the test's duration only.

    Test sessions of other checkouts on the machine may want the same path:
    they take turns under a lock, and a link left by a killed session (to
    some mount.terrafs) is replaced; anything else there is not ours to touch.
    """
    import fcntl

    helper = Path(sys.executable).parent / "mount.terrafs"
    assert helper.exists(), f"{helper} missing: pip install -e . makes it"
    fd = os.open("/tmp/terrafs-mount-helper-test.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if HELPER_LINK.is_symlink() and os.readlink(HELPER_LINK).endswith("/mount.terrafs"):
            HELPER_LINK.unlink()
        assert not HELPER_LINK.exists(), f"{HELPER_LINK} exists and is not a test's link; not touching it"
        HELPER_LINK.symlink_to(helper)
        try:
            yield HELPER_LINK
        finally:
            HELPER_LINK.unlink()


@pytest.fixture
def unmount_later():
    mounts: list[Path] = []
    yield mounts.append
    for m in mounts:
        if os.path.ismount(m):
            subprocess.run(["umount", "-l", str(m)], capture_output=True)


def test_mount_t_terrafs_with_fstab_options_and_umount_ends_the_daemon(
        emulator, emulator_data, helper_link, unmount_later, tmp_path):
    cache = tmp_path / "cache"
    (tmp_path / "etc").mkdir()
    config = write_config(tmp_path / "etc" / "config.yaml", emulator.base_url, cache,
                          auth={"username": "demo", "password": "demo"})
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    unmount_later(mnt)
    options = f"config={config},allow_other,uid=1234,gid=2345,umask=027,_netdev,nofail,x-systemd.automount"
    out = subprocess.run(["mount", "-t", "terrafs", "terrascope", str(mnt), "-o", options],
                         env=bare_env(tmp_path / "home"), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"mount -t terrafs failed ({out.returncode}): {out.stderr}{out.stdout}"
    assert os.path.ismount(mnt), "mount(8) returned before the mount was ready"

    fields = proc_mounts_line(mnt)
    assert fields[0] == "terrascope" and fields[2] == "fuse.terrafs", fields
    assert "allow_other" in fields[3].split(","), f"allow_other not in /proc/mounts: {fields}"
    assert not {"_netdev", "nofail"} & set(fields[3].split(",")), fields

    f = next((mnt / "terrascope-s2-toc-v2/2020/01/01").rglob("*B04_10M*.tif"))
    for path, mode in ((mnt, 0o550), (f.parent, 0o550), (f, 0o440)):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (1234, 2345), f"{path}: owner {st.st_uid}:{st.st_gid}"
        assert stat.S_IMODE(st.st_mode) == mode, f"{path}: mode {stat.S_IMODE(st.st_mode):o}, want {mode:o}"
    assert sha256(f) == sha256(source_of(emulator_data, f)), "bytes differ from the source"
    url = os.getxattr(f, "user.terrafs.url").decode()
    size = f.stat().st_size

    pids = daemons_of(mnt)
    assert len(pids) == 1, f"expected one daemon for {mnt}, found {pids}"
    out = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + 60
    while daemons_of(mnt) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemons_of(mnt) == [], "the daemon outlived a plain umount"
    assert not socket_path(mnt).exists(), "the daemon left its control socket behind"
    log = (tmp_path / "etc" / "terrafs.log").read_text()
    assert "stopped serving" in log and "cache writes flushed" in log, log[-2000:]
    with BlockCache(cache / "blocks", 2 << 30) as blocks:
        cached = cached_bytes(blocks, RemoteFile(url, size, file_key(url, size)))
    assert cached == size, f"after umount only {cached} of {size} bytes of the copied file are in the cache"


def test_mount_helper_accepts_mount8_flags_and_fakes_with_f(tmp_path):
    helper = Path(sys.executable).parent / "mount.terrafs"
    out = subprocess.run([str(helper), "terrascope", str(tmp_path), "-s", "-n", "-f", "-v", "-o",
                          "rw,config=/etc/terrafs/config.yaml,allow_other,_netdev,defaults"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "fsname=terrascope" in out.stdout and "allow_other" in out.stdout
    bad = subprocess.run([str(helper), "terrascope", str(tmp_path), "-o", "uid=nosuchuser"],
                         capture_output=True, text=True, timeout=60, env=bare_env(tmp_path / "home"))
    assert bad.returncode == 32 and "no user named 'nosuchuser'" in bad.stderr, bad.stderr


def test_prefetch_through_the_mount_needs_no_credentials_and_then_reads_cost_nothing(
        emulator, mount_factory, tmp_path):
    mount = mount_factory(emulator)
    sock = socket_path(mount.path)
    for path, mode in ((sock.parent, 0o700), (sock, 0o600)):
        st = path.lstat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.getuid(), mode), f"{path}: {st}"
    folder = next((mount.path / "terrascope-s2-toc-v2/2020/01/02").iterdir())
    env = bare_env(tmp_path / "home")
    out = terrafs("prefetch", str(folder), env=env)
    assert out.returncode == 0, out.stderr
    names = [p for p in folder.rglob("*") if p.is_file()]
    assert f"prefetched {len(names)} files" in out.stdout, out.stdout

    other = next((mount.path / "terrascope-s2-toc-v2/2020/01/01").iterdir())
    events = list(ask(sock, {"op": "prefetch", "paths": ["/" + str(other.relative_to(mount.path))]}))
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "progress" in kinds, kinds
    progress = [e["done"] for e in events if e["event"] == "progress"]
    assert progress == sorted(progress) and progress[-1] == events[0]["bytes"] > 0, progress

    check = terrafs("prefetch", "--check", str(folder), env=env)
    assert check.returncode == 0, check.stderr
    shares = re.findall(r"^\s*([\d.]+)%", check.stdout, re.MULTILINE)
    assert len(shares) == len(names) and all(s == "100.0" for s in shares), check.stdout

    emulator.mark()
    for p in names:
        p.read_bytes()
    assert emulator.requests("download") == [], "reads after a prefetch through the mount reached the server"
    stats = terrafs("cache", "stats", "--config", str(mount.config), env=env)
    assert stats.returncode == 0, stats.stderr
    assert f"mounted:      {mount.path} (pid" in stats.stdout, stats.stdout
    hits = int(re.search(r"\((\d+) hits", stats.stdout).group(1))
    assert hits > 0, f"cache stats shows no hits while the mount reads from the cache:\n{stats.stdout}"


def test_prefetch_without_a_daemon_runs_the_same_loop_in_the_command(emulator, mount_factory, tmp_path):
    """No daemon answers (as for another user's mount): the command fetches with its own credentials,
    reader and cache, and prints what a prefetch through the daemon prints."""
    from mounting import credentials_env

    mount = mount_factory(emulator)
    sock = socket_path(mount.path)
    hidden = sock.with_name(sock.name + ".hidden")
    folder = sorted((mount.path / "terrascope-s2-toc-v2/2020/01/01").iterdir())[-1]
    names = [p for p in folder.rglob("*") if p.is_file()]
    env = credentials_env()
    sock.rename(hidden)  # the command finds no daemon for the mount
    try:
        emulator.mark()
        before = terrafs("prefetch", "--check", "--config", str(mount.config), str(folder), env=env)
        checked = emulator.requests("download")
        out = terrafs("prefetch", "--config", str(mount.config), str(folder), env=env)
        after = terrafs("prefetch", "--check", "--config", str(mount.config), str(folder), env=env)
    finally:
        hidden.rename(sock)
    assert before.returncode == 0 and checked == [], before.stderr
    shares = re.findall(r"^\s*([\d.]+)%.*  (\S+)$", before.stdout, re.MULTILINE)
    assert sorted(p for _, p in shares) == sorted(str(p) for p in names), before.stdout
    assert out.returncode == 0, out.stderr
    assert f"prefetched {len(names)} files" in out.stdout, out.stdout
    assert any(r["method"] == "GET" for r in emulator.requests("download")), "the command fetched nothing itself"
    shares = re.findall(r"^\s*([\d.]+)%", after.stdout, re.MULTILINE)
    assert len(shares) == len(names) and all(s == "100.0" for s in shares), after.stdout


def test_bad_control_requests_get_an_error_and_the_mount_stays_up(emulator, mount_factory):
    import json

    mount = mount_factory(emulator)
    for raw in (b"not json\n", b'{"op": "format_disk"}\n', b'{"op": "prefetch", "paths": "/"}\n', b"[1]\n"):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(socket_path(mount.path)))
            s.sendall(raw)
            answer = json.loads(s.makefile("rb").readline())
        assert answer["event"] == "error" and answer["message"], (raw, answer)
    assert "terrascope-s2-toc-v2" in os.listdir(mount.path)


def test_prefetch_says_so_when_the_daemon_dies_midway(emulator_factory, mount_factory, tmp_path):
    # An emulator of its own: the killed daemon's slow response ends (and is logged) after this test.
    emulator = emulator_factory()
    mount = mount_factory(emulator)
    folder = next((mount.path / "terrascope-s2-toc-v2/2020/01/02").iterdir())
    emulator.set(bandwidth=100_000)  # the folder's ~3 MB take half a minute
    proc = subprocess.Popen([sys.executable, "-m", "terrafs", "prefetch", str(folder)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=bare_env(tmp_path / "home"))
    time.sleep(2)
    mount.kill9()
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "stopped" in err, err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_download_requests_total_equals_the_emulators_count(emulator, mount_factory, tmp_path):
    port = free_port()
    # Small blocks: a window costs several ranged requests, not one whole small file.
    mount = mount_factory(emulator, metrics={"listen": f"127.0.0.1:{port}"}, cache={"block_size": "64KiB"})
    emulator.set(error_rate=0.2)  # retries must be counted too

    def counted() -> tuple[float, int]:
        """(metric, emulator's count), once they agree or after 10 s: the emulator logs a
        request when its body is sent, the daemon counts it when it is sent."""
        deadline = time.monotonic() + 10
        while True:
            sent = sum(scrape(port).get("terrafs_download_requests_total", {}).values())
            logged = len(emulator.requests("download"))
            if sent == logged or time.monotonic() > deadline:
                return sent, logged
            time.sleep(0.2)

    product = next((mount.path / "terrascope-s2-toc-v2/2020/01/02").iterdir())
    shutil.copytree(product, tmp_path / "copy")
    sent, logged = counted()
    assert logged > 0 and sent == logged, f"after a copy: metric {sent}, emulator {logged}"

    emulator.set(revoke_tokens=True)  # the next request gets a 401 and is resent with a new token
    bands = sorted((mount.path / "terrascope-s2-toc-v2/2020/01/01").rglob("*_10M*.tif"))[:4]
    assert len(bands) >= 2
    for i, b in enumerate(bands):
        subprocess.run(["gdal_translate", "-q", "-srcwin", str(64 * i), "32", "128", "128", str(b),
                        str(tmp_path / f"w{i}.tif")], check=True, capture_output=True, timeout=120)
    sent, logged = counted()
    assert sent == logged, f"after {len(bands)} windows: metric {sent}, emulator {logged}"

    metrics = scrape(port)
    by_status = {dict(labels)["status"]: n for labels, n in metrics["terrafs_download_requests_total"].items()}
    logged_by_status: dict[str, int] = {}
    for r in emulator.requests("download"):
        logged_by_status[str(r["status"])] = logged_by_status.get(str(r["status"]), 0) + 1
    assert by_status == logged_by_status, f"by status: metric {by_status}, emulator {logged_by_status}"
    assert {"206", "401"} <= set(by_status) and ({"500", "503"} & set(by_status)), by_status
    assert metrics["terrafs_token_renewals_total"][()] >= 2, "the renewal after the 401 was not counted"
    assert metrics["terrafs_catalogue_requests_total"], "no catalogue requests counted"
    assert "terrafs_limiter_wait_seconds_total" in metrics
    assert "terrafs_cache_hits_total" in metrics and "terrafs_cache_size_bytes" in metrics


# libfuse 3 is the system's (chosen even beside a system libfuse 2); scripts/setup unpacks libfuse 2 into .venv.
LIBFUSE = {3: None, 2: str(Path(sys.executable).parent.parent / "libfuse2" / "libfuse.so.2")}


@pytest.fixture
def public_dir():
    """A folder other users can traverse (pytest's own tmp folders are 0700)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="terrafs-ops-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for mnt in path.iterdir():
            if os.path.ismount(mnt):
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


def as_user(uid: int, gid: int, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *cmd],
                          capture_output=True, timeout=60)


@pytest.mark.parametrize("libfuse", [3, 2])
def test_mount_options_on_both_libfuse_versions(libfuse, emulator, emulator_data, public_dir, tmp_path):
    from mounting import credentials_env

    library = LIBFUSE[libfuse]
    assert library is None or Path(library).exists(), f"{library} missing: scripts/setup unpacks it"
    env = credentials_env()
    if library:
        env["FUSE_LIBRARY_PATH"] = library
    config = write_config(tmp_path / "config.yaml", emulator.base_url, tmp_path / "cache")
    mnt = public_dir / "mnt"
    mnt.mkdir()
    out = terrafs("mount", "--config", str(config), "-o",
                  "allow_other,default_permissions,uid=1234,gid=2345,umask=077,nofail", str(mnt), env=env)
    assert out.returncode == 0, out.stderr
    try:
        assert f"libfuse {libfuse}," in (tmp_path / "terrafs.log").read_text()
        opts = proc_mounts_line(mnt)[3].split(",")
        assert {"allow_other", "default_permissions"} <= set(opts), opts
        f = next((mnt / "terrascope-s2-toc-v2/2020/01/01").rglob("*B04_10M*.tif"))
        st = f.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 2345, 0o400), st
        assert stat.S_IMODE(f.parent.stat().st_mode) == 0o500
        owner = as_user(1234, 2345, "sha256sum", str(f))
        assert owner.returncode == 0, owner.stderr
        assert owner.stdout.split()[0].decode() == sha256(source_of(emulator_data, f))
        other = as_user(65534, 65534, "cat", str(f))
        assert other.returncode != 0 and b"Permission denied" in other.stderr, \
            "default_permissions with umask=077 let another user read"
    finally:
        assert terrafs("umount", str(mnt), env=env).returncode == 0
    deadline = time.monotonic() + 30
    while daemons_of(mnt) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemons_of(mnt) == []


def test_an_option_libfuse_does_not_know_is_one_clear_line(emulator, tmp_path):
    from mounting import credentials_env

    config = write_config(tmp_path / "config.yaml", emulator.base_url, tmp_path / "cache")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    out = terrafs("mount", "--config", str(config), "-o", "allow_other,bogus_option", str(mnt), env=credentials_env())
    assert out.returncode == 1 and not os.path.ismount(mnt)
    assert "libfuse could not mount" in out.stderr and "bogus_option" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert "fuse: unknown option" in (tmp_path / "terrafs.log").read_text()


@pytest.mark.parametrize("libfuse", [3, 2])
def test_allow_root_lets_root_in_and_keeps_others_out(libfuse, emulator, public_dir, tmp_path):
    from mounting import credentials_env

    env = credentials_env()
    if LIBFUSE[libfuse]:
        env["FUSE_LIBRARY_PATH"] = LIBFUSE[libfuse]
    config = write_config(tmp_path / "config.yaml", emulator.base_url, tmp_path / "cache")
    mnt = public_dir / "mnt"
    mnt.mkdir()
    out = terrafs("mount", "--config", str(config), "-o", "allow_root,uid=1234", str(mnt), env=env)
    assert out.returncode == 0, out.stderr
    try:
        assert "terrascope-s2-toc-v2" in os.listdir(mnt)
        other = as_user(1234, 1234, "ls", str(mnt))
        assert other.returncode != 0, "allow_root let a user other than root in"
    finally:
        assert terrafs("umount", str(mnt), env=env).returncode == 0
