"""scripts/soak: a long read load on a real mount of the emulator, reported minute by minute.

Soak (MINUTES): READERS threads loop over every file of the emulator's default ("small")
profile: one pass in four reads a file whole and checks its sha256, the others make 8 random
64 KiB reads checked against the source bytes. FAULT_RATE of the download GETs fault (every
kind the emulator has), and the cache is bounded (CACHE, below the archive's size) so that it
evicts throughout. Each minute: reads, wrong, EIO, whole-file failures, the daemon's RSS,
open files and threads.

--copy-twice: READERS threads copy every file twice under FAULT_RATE (default 0.4) faults;
wrong and failed copies per pass.

Uses the test harness (tests/conftest.py, tests/mounting.py) to start the emulator and write
the mount's config; everything runs on 127.0.0.1 in a temporary directory, removed at the end.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import start_emulator  # noqa: E402
from mounting import credentials_env, fusermount, write_config  # noqa: E402

from terrafs.emulator.data import build_archive  # noqa: E402

PIECE = 64 * 1024


def note(msg: str) -> None:
    print(f"soak: {msg}", file=sys.stderr, flush=True)


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reads = self.wrong = self.eio = self.whole = self.whole_failed = 0
        self.wrong_names: list[str] = []


def daemon_state(pid: int) -> tuple[float, int, int, float, float]:
    """(RSS MiB, open files, threads, anonymous RSS MiB, file-backed RSS MiB) of the daemon."""
    kib = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile"):
                kib[name] = int(value.split()[0])
    return (kib.get("VmRSS", 0) / 1024, len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task")),
            kib.get("RssAnon", 0) / 1024, kib.get("RssFile", 0) / 1024)


def mount(emu, work: Path, cache: str, trace: bool, py_trace: bool) -> tuple[subprocess.Popen, Path]:
    mnt = work / "mnt"
    mnt.mkdir()
    (work / "cfg").mkdir()
    cfg = write_config(work / "cfg" / "config.yaml", emu.base_url, work / "cache",
                       cache={"size": cache}, rate_limits=[{"requests": 100000, "seconds": 1}],
                       log={"level": "INFO", "file": str(work / "terrafs.log")})
    env = credentials_env()
    if trace:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "scripts" / "soak_trace"), str(REPO)])
        env["TERRAFS_SOAK_TRACE"] = str(work / "memory.txt")
        env["TERRAFS_SOAK_TRACEMALLOC"] = "1" if py_trace else "0"
    out = open(work / "mount.out", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "terrafs", "mount", "--foreground", "--config", str(cfg),
                             str(mnt)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the mount did not come up; see {work / 'mount.out'}")
        time.sleep(0.1)
    return proc, mnt


def unmount(proc: subprocess.Popen, mnt: Path) -> None:
    subprocess.run([*fusermount(), str(mnt)], capture_output=True)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def soak(files, minutes: float, readers: int, pid: int) -> int:
    counts = Counts()
    stop = threading.Event()

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        while not stop.is_set():
            path, source, size, digest = rnd.choice(files)
            if rnd.random() < 0.25:
                h = hashlib.sha256()
                try:
                    with open(path, "rb") as f:
                        while chunk := f.read(1 << 20):
                            h.update(chunk)
                except OSError:
                    with counts.lock:
                        counts.whole += 1
                        counts.whole_failed += 1
                        counts.eio += 1
                    continue
                with counts.lock:
                    counts.whole += 1
                    counts.reads += 1
                    if h.digest() != digest:
                        counts.wrong += 1
                        counts.wrong_names.append(path.name)
                continue
            try:
                with open(path, "rb") as f, open(source, "rb") as s:
                    for _ in range(8):
                        off = rnd.randrange(0, max(1, size - PIECE))
                        try:
                            got = os.pread(f.fileno(), PIECE, off)
                        except OSError:
                            with counts.lock:
                                counts.reads += 1
                                counts.eio += 1
                            continue
                        ok = got == os.pread(s.fileno(), PIECE, off)
                        with counts.lock:
                            counts.reads += 1
                            if not ok:
                                counts.wrong += 1
                                counts.wrong_names.append(f"{path.name}@{off}")
            except OSError:  # the open failed
                with counts.lock:
                    counts.reads += 1
                    counts.eio += 1

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(readers)]
    for t in threads:
        t.start()
    began = time.monotonic()
    print("minute  reads(total)  reads/min  wrong  EIO  whole(failed)  RSS MiB (anon+file)  open files  threads",
          flush=True)
    last = 0
    rss_at: dict[int, float] = {}
    try:
        for minute in range(1, int(minutes) + 1):
            time.sleep(max(0.0, began + 60 * minute - time.monotonic()))
            rss, fds, nthreads, anon, filed = daemon_state(pid)
            rss_at[minute] = rss
            with counts.lock:
                reads, wrong, eio, whole, whole_failed = (counts.reads, counts.wrong, counts.eio,
                                                          counts.whole, counts.whole_failed)
            print(f"{minute:6d}  {reads:12d}  {reads - last:9d}  {wrong:5d}  {eio:3d}  {whole:6d}({whole_failed})"
                  f"  {rss:7.1f} ({anon:.0f}+{filed:.0f})  {fds:10d}  {nthreads:7d}", flush=True)
            last = reads
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    end = max(rss_at)
    ref = 3 if end >= 6 else 1
    if ref in rss_at and ref < end:
        print(f"RSS minute {ref} -> {end}: {rss_at[ref]:.1f} -> {rss_at[end]:.1f} MiB "
              f"({100 * (rss_at[end] / rss_at[ref] - 1):+.1f}%); failed reads {counts.eio} of {counts.reads} "
              f"({100 * counts.eio / max(1, counts.reads):.3f}%); wrong {counts.wrong}", flush=True)
    if counts.wrong_names:
        print("wrong:", counts.wrong_names[:20], flush=True)
    return 1 if counts.wrong else 0


def copy_twice(files, readers: int, pid: int, emu) -> int:
    status = 0
    for rnd in (1, 2):
        wrong, failed = [], []

        def copy(item) -> None:
            path, source, size, digest = item
            try:
                got = path.read_bytes()
            except OSError as exc:
                failed.append(f"{path.name} ({exc.strerror})")
                return
            if hashlib.sha256(got).digest() != digest:
                wrong.append(path.name)

        t0 = time.monotonic()
        with ThreadPoolExecutor(readers) as pool:
            list(pool.map(copy, files))
        rss, fds, nthreads, _, _ = daemon_state(pid)
        print(f"pass {rnd}: {len(files)} files copied by {readers} readers in {time.monotonic() - t0:.1f} s: "
              f"wrong {len(wrong)}, failed {len(failed)} {failed[:5]}; RSS {rss:.1f} MiB, {fds} open files",
              flush=True)
        status |= bool(wrong) or (rnd == 1 and len(failed) > 1) or (rnd == 2 and bool(failed))
    gets = [e for e in emu.requests("download") if e.get("method") == "GET"]
    kinds = Counter(k for e in gets if e.get("fault") for k in e["fault"].split(","))
    print(f"download GETs {len(gets)}, faulted {sum(1 for e in gets if e.get('fault'))}: "
          + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())), flush=True)
    return int(status)


def main() -> int:
    p = argparse.ArgumentParser(prog="scripts/soak")
    p.add_argument("minutes", type=float, nargs="?", default=6.0)
    p.add_argument("--copy-twice", action="store_true")
    p.add_argument("--readers", type=int, default=8)
    p.add_argument("--fault-rate", type=float, default=None)
    p.add_argument("--cache", default="40MiB", help="the mount's cache size (below the archive's ~100 MB)")
    p.add_argument("--trace", action="store_true", help="the daemon notes where its memory is each minute")
    p.add_argument("--tracemalloc", action="store_true", help="... and what Python allocations grew (slow)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, tracemalloc.txt)")
    a = p.parse_args()
    fault_rate = a.fault_rate if a.fault_rate is not None else (0.4 if a.copy_twice else 0.1)
    data = Path(os.environ.get("TERRAFS_TEST_DATA", "/tmp/terrafs-test-data"))
    build_archive(data, profile="small")
    work = Path(tempfile.mkdtemp(prefix="terrafs-soak-"))
    note(f"work directory {work}")
    emu = start_emulator(data, work / "emulator", ["--rate-limit", "off"])
    proc = mnt = None
    try:
        proc, mnt = mount(emu, work, a.cache, a.trace or a.tracemalloc, a.tracemalloc)
        rows = emu.files(limit=10000)
        files = []
        for r in rows:
            source = data / "small" / r["platform_path"].removeprefix("/data/MTDA/")
            files.append((mnt / r["default_path"], source, r["size"], hashlib.sha256(source.read_bytes()).digest()))
        for path, *_ in files:
            path.stat()  # the listing first
        note(f"{len(files)} files, {sum(f[2] for f in files) / 2**20:.0f} MiB; cache {a.cache}; "
             f"{a.readers} readers; {fault_rate:.0%} of GETs faulted; daemon pid {proc.pid}")
        emu.set(fault_rate=fault_rate)
        if a.copy_twice:
            return copy_twice(files, a.readers, proc.pid, emu)
        return soak(files, a.minutes, a.readers, proc.pid)
    finally:
        if proc is not None and mnt is not None:
            unmount(proc, mnt)
        emu.stop()
        if a.trace or a.tracemalloc:
            print((work / "memory.txt").read_text() if (work / "memory.txt").exists() else "", end="", flush=True)
        if a.trace or a.tracemalloc or a.keep:
            note(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
