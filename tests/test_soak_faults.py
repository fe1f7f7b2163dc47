"""Soak: 8 readers copy every file twice while 40% of download GETs fault (every kind the
emulator has: 500, 503, 429, cut, stall, wrong range, ignored range, and a login page answered
200 as text/html). No wrong byte; at most
1% of first-pass copies fail; none on the second pass; the mount stays up; the daemon ends
with the threads and open files it started with (after a warm-up of the same work)."""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support import fault_test_files

pytestmark = pytest.mark.mount

READERS = 8


POOL = 16  # the Downloader's connection pool: up to this many keep-alive sockets stay open


SQLITE = (".db", ".db-wal", ".db-shm")


def _targets(pid: int) -> list[str]:
    out = []
    for n in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{n}"))
        except FileNotFoundError:  # closed between the listing and the readlink
            pass
    return out


def _resources(pid: int) -> tuple[int, int]:
    """(threads, open files other than sockets); sockets are checked against the pool's bound."""
    return len(os.listdir(f"/proc/{pid}/task")), sum(1 for t in _targets(pid) if not t.startswith("socket:"))


def _kinds(pid: int) -> tuple[int, int, int]:
    """(SQLite files of the caches, block files of the disk cache, other open files but sockets)."""
    files = [t for t in _targets(pid) if not t.startswith("socket:")]
    sqlite = sum(1 for t in files if t.endswith(SQLITE))
    blocks = sum(1 for t in files if "/blocks/" in t and not t.endswith(SQLITE))
    return sqlite, blocks, len(files) - sqlite - blocks


def _files(pid: int) -> list[str]:
    return sorted(t.rsplit("/", 2)[-2] + "/" + t.rsplit("/", 1)[-1][:12]
                  for t in _targets(pid) if not t.startswith("socket:"))


def _sockets(pid: int) -> int:
    return sum(1 for n in os.listdir(f"/proc/{pid}/fd") if os.readlink(f"/proc/{pid}/fd/{n}").startswith("socket:"))


def _read_quietly(path: Path) -> None:
    try:
        path.read_bytes()
    except OSError:
        pass


def _settle(pid: int, want: tuple[int, int], timeout: float = 20.0) -> tuple[int, int]:
    """The daemon's (threads, fds) once idle streams and workers have gone (or after timeout)."""
    deadline = time.monotonic() + timeout
    got = _resources(pid)
    while time.monotonic() < deadline and (got[0] > want[0] or got[1] > want[1]):
        time.sleep(0.5)
        got = _resources(pid)
    return got


def test_copies_under_40_percent_faults_are_exact(emulator_factory, emulator_data, mount_factory):
    emu, m, paths = fault_test_files(emulator_factory, emulator_data, mount_factory)  # listing first
    # The same work once on other files: libfuse grows its pool of worker threads to what 8
    # readers need (it keeps up to 10 idle), and each thread opens its SQLite connections to
    # the caches (diskcache keeps one per thread). That is the baseline.
    others = [r for r in emu.files(limit=1000, collection="terrascope-s2-toc-v2") if "/2020/02/" in r["default_path"]]
    emu.set(fault_rate=0.4)
    with ThreadPoolExecutor(READERS) as pool:
        list(pool.map(lambda r: _read_quietly(m.path / r["default_path"]), others[:60]))
    emu.set(fault_rate=0.0)
    time.sleep(3)
    before = _resources(m.proc.pid)
    emu.set(fault_rate=0.4)
    wrong, failed = [], {1: [], 2: []}
    lock = threading.Lock()

    def copy(item, rnd: int) -> None:
        path, source = item
        try:
            got = path.read_bytes()
        except OSError as exc:
            with lock:
                failed[rnd].append((path.name, exc.errno))
            return
        if got != source.read_bytes():
            with lock:
                wrong.append((rnd, path.name))

    settled, kinds = {}, {}
    for rnd in (1, 2):
        with ThreadPoolExecutor(READERS) as pool:
            list(pool.map(lambda it: copy(it, rnd), paths))
        settled[rnd] = _settle(m.proc.pid, before)
        kinds[rnd] = _kinds(m.proc.pid)
    emu.set(fault_rate=0.0)
    faulted = [e for e in emu.requests("download") if e.get("fault")]
    assert len(faulted) > len(paths) / 2, f"only {len(faulted)} faults were served: the soak tested little"
    # (wrong_range is drawn as often, but applies only to a range that ends before the file does:
    # copies mostly stream to the end, so it is seldom served.)
    kinds_served = {k for e in faulted for k in e["fault"].split(",")}
    assert {"503", "cut", "ignore_range", "html"} <= kinds_served, f"fault kinds served: {sorted(kinds_served)}"
    assert not wrong, f"wrong bytes served: {wrong}"
    assert len(failed[1]) <= 0.01 * len(paths), f"first pass: {len(failed[1])} of {len(paths)} copies failed: {failed[1]}"
    assert not failed[2], f"second pass failures: {failed[2]}"
    assert os.path.ismount(m.path) and m.proc.poll() is None, "the mount went down"
    after = settled[2]
    assert after[0] <= before[0], f"threads {before[0]} -> {after[0]}"
    # A pass leaves nothing behind: the second pass ends with no more open files other than the
    # cache's than the first (spool, pipes, logs: a leak per file or per request would show here
    # as tens). The cache's own are bounded instead of compared, as they come and go with use:
    # SQLite files are diskcache's connections, one set (db, -wal, -shm, for up to 3 caches) per
    # thread that has used a cache, so at most 9 for each thread (libfuse may retire an idle
    # worker thread and start another between passes, which opens its own set); block files are
    # those the RAM hot set serves from (64 MiB of 1 MiB blocks at most), evicted ones included.
    assert kinds[2][2] <= kinds[1][2], (
        f"open files other than the cache's grew over a pass: {kinds[1][2]} -> {kinds[2][2]}: {_files(m.proc.pid)}")
    threads = max(before[0], settled[1][0], after[0])
    assert kinds[2][0] <= 9 * threads, f"{kinds[2][0]} SQLite files open for {threads} threads"
    assert kinds[2][1] <= 64, f"{kinds[2][1]} cache block files open"
    assert settled[1][1] - before[1] <= 9 * before[0], (
        f"open files {before[1]} -> {settled[1][1]}: {_files(m.proc.pid)}")
    assert _sockets(m.proc.pid) <= POOL + 4, f"{_sockets(m.proc.pid)} sockets open"
