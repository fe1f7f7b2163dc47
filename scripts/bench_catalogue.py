"""Catalogue benchmark (issue 19): terrafs listing the archive-size S2 TOC collection
(the emulator's `--profile archive`: about 100 products a day, 2020-01..2020-03, items
of ~19 kB) against the floor measured in the same run: a plain client (requests)
paging the same month's full items, 1000 a page, following `next` links.

Rows, in each layout (default, platform), each from a fresh mount and cache, timed
with every path lookup included (the command is given the full path):
  ls day     `ls -l` of one day's folder          target <= 0.25 x floor, <= 5 MB of catalogue
  ls month   `ls -l` of one month's folder        (reported against the floor)
  find month `find` over one month                target <= 1.5 x floor
  rss        the daemon's RSS after `find` over every month of the profile, one mount
             target <= 250 MiB
with the catalogue requests and bytes of each (the emulator's request log, kind "stac") and the
daemon's CPU time during the command (less sensitive than wall time to a shared machine).
Prints a Markdown table and the machine; a report, not a test: exits 0 unless it cannot run.

Usage: scripts/bench catalogue      (or: python scripts/bench_catalogue.py)
  TERRAFS_BENCH_DATA   emulator data dir (default ~/.cache/terrafs-bench; the archive profile writes
                       ~70 MB: <dir>/archive, the small profile's other collections, and
                       <dir>/archive-templates)
  BENCH_LAYOUTS        default,platform (default both)
  BENCH_DAY            the day listed (default 2020-01-15); its month is the floor's and find's
  BENCH_NOFIELDS       1: add the rows again against a STAC API without the fields extension
  BENCH_REPEAT         floor runs at the start (default 3); one more after each layout; the median of all is the floor
"""
from __future__ import annotations

import json
import os
import platform
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

DATA = Path(os.environ.get("TERRAFS_BENCH_DATA", "~/.cache/terrafs-bench")).expanduser()
LAYOUTS = [x for x in os.environ.get("BENCH_LAYOUTS", "default,platform").split(",") if x]
DAY = os.environ.get("BENCH_DAY", "2020-01-15")
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
MONTHS = ("2020-01", "2020-02", "2020-03")
COLLECTION = "terrascope-s2-toc-v2"
PREFIX = {"default": COLLECTION, "platform": "MTDA/TERRASCOPE_Sentinel2/TOC_V2"}
USER = PASSWORD = "demo"
TARGETS = {"ls day": 0.25, "find month": 1.5}
MAX_DAY_BYTES = 5_000_000
MAX_RSS_MIB = 250


def note(msg: str) -> None:
    print(f"bench-catalogue: {msg}", file=sys.stderr, flush=True)


def month_range(month: str) -> str:
    y, m = map(int, month.split("-"))
    ny, nm = (y + 1, 1) if m == 12 else (y, m + 1)
    return f"{y:04d}-{m:02d}-01T00:00:00Z/{ny:04d}-{nm:02d}-01T00:00:00Z"


class Run:
    def __init__(self, work: Path):
        self.work = work
        self.log = work / "requests.jsonl"
        self.emu: subprocess.Popen | None = None
        self.base = ""
        self.mounts: list[tuple[Path, subprocess.Popen]] = []

    # -- the emulator ---------------------------------------------------------
    def start_emulator(self) -> None:
        DATA.mkdir(parents=True, exist_ok=True)
        err = open(self.work / "emulator.err", "wb")
        self.emu = subprocess.Popen(
            [sys.executable, "-m", "terrafs.emulator.server", "--port", "0", "--data", str(DATA),
             "--profile", "archive", "--log", str(self.log)],
            stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        sel = selectors.DefaultSelector()
        sel.register(self.emu.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and self.emu.poll() is None:
            if sel.select(1.0):
                line = self.emu.stdout.readline().decode()
                if line.startswith("terrafs emulator: "):
                    self.base = line.split(": ", 1)[1].strip()
                    return
        raise RuntimeError(f"the emulator did not start; see {self.work / 'emulator.err'}")

    def settings(self, **patch) -> None:
        requests.post(self.base + "/_emulator/settings", json=patch, timeout=30).raise_for_status()

    def mark(self) -> int:
        try:
            return len(self.log.read_text().splitlines())
        except FileNotFoundError:
            return 0

    def catalogue_since(self, mark: int) -> tuple[int, int]:
        """(catalogue requests, body bytes) logged since mark."""
        n = sent = 0
        for line in self.log.read_text().splitlines()[mark:]:
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            if e.get("kind") in ("stac", "opensearch"):
                n += 1
                sent += int(e.get("bytes") or 0)
        return n, sent

    # -- the floor: a plain client paging a month's full items -----------------
    def floor(self, month: str) -> tuple[float, int, int, int]:
        """(seconds, items, requests, bytes) of paging `month` in full."""
        t0 = time.monotonic()
        url: str | None = self.base + "/stac/search"
        params: dict | None = {"collections": COLLECTION, "datetime": month_range(month), "limit": 1000}
        items = pages = size = 0
        with requests.Session() as s:
            while url:
                r = s.get(url, params=params, timeout=600)
                r.raise_for_status()
                doc = r.json()
                items += len(doc["features"])
                pages += 1
                size += len(r.content)
                url = next((lk["href"] for lk in doc.get("links", []) if lk.get("rel") == "next"), None)
                params = None
        return time.monotonic() - t0, items, pages, size

    # -- mounts ---------------------------------------------------------------
    def mount(self, name: str, layout: str) -> tuple[Path, subprocess.Popen]:
        mnt = self.work / name
        mnt.mkdir()
        cache = self.work / f"{name}.cache"
        cfg = self.work / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump({
            "catalogue": "stac", "layout": layout,
            "endpoints": {"stac": f"{self.base}/stac/", "opensearch": f"{self.base}/catalogue/",
                          "token": f"{self.base}/auth/realms/terrascope/protocol/openid-connect/token"},
            "auth": {"method": "basic", "hosts": [self.base]},
            "cache": {"dir": str(cache)},
            "rate_limit_state": str(cache) + ".ratelimit",
            "log": {"level": "INFO", "file": str(self.work / f"{name}.log")},
        }))
        cfg.chmod(0o600)
        env = dict(os.environ, TERRASCOPE_USERNAME=USER, TERRASCOPE_PASSWORD=PASSWORD, NETRC="/nonexistent")
        env.pop("TERRAFS_CONFIG", None)
        out = open(self.work / f"{name}.out", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "terrafs", "mount", "--foreground", "--config", str(cfg),
                                 str(mnt)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        self.mounts.append((mnt, proc))
        deadline = time.monotonic() + 120
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the mount did not come up; see {self.work / (name + '.out')}")
            time.sleep(0.05)
        return mnt, proc

    def unmount(self, mnt: Path, proc: subprocess.Popen) -> None:
        tool = "fusermount3" if shutil.which("fusermount3") else "fusermount"
        if os.path.ismount(mnt):
            subprocess.run([tool, "-u", str(mnt)], capture_output=True)
            if os.path.ismount(mnt):
                subprocess.run([tool, "-uz", str(mnt)], capture_output=True)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.mounts = [(m, p) for m, p in self.mounts if p is not proc]

    def stop(self) -> None:
        for mnt, proc in list(self.mounts):
            self.unmount(mnt, proc)
        if self.emu is not None and self.emu.poll() is None:
            os.killpg(self.emu.pid, signal.SIGTERM)
            try:
                self.emu.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.emu.pid, signal.SIGKILL)


def timed(cmd: list[str]) -> tuple[float, bytes]:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=1800)
    elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-400:]}")
    return elapsed, proc.stdout


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(run: Run, layout: str, label: str, floor_s: float, rows: list[dict]) -> None:
    """The rows of one layout; floor_s: the floor's median time (it may change once all are in)."""
    y, m, d = DAY.split("-")
    base = PREFIX[layout]
    cases = [("ls day", ["ls", "-l"], f"{base}/{y}/{m}/{d}"), ("ls month", ["ls", "-l"], f"{base}/{y}/{m}"),
             ("find month", ["find"], f"{base}/{y}/{m}")]
    for i, (case, cmd, rel) in enumerate(cases):
        mnt, proc = run.mount(f"{layout}{label}-{i}", layout)
        try:
            mark = run.mark()
            cpu0 = cpu_seconds(proc.pid)
            seconds, out = timed(cmd + [str(mnt / rel)])
            cpu = cpu_seconds(proc.pid) - cpu0
            time.sleep(0.2)  # the emulator logs a request as its last chunk goes out
            n, size = run.catalogue_since(mark)
            entries = len(out.splitlines())
        finally:
            run.unmount(mnt, proc)
        rows.append({"layout": layout + label, "case": case, "seconds": seconds, "floor": floor_s,
                     "requests": n, "bytes": size, "entries": entries, "cpu": cpu})
        note(f"{layout}{label} {case}: {seconds:.2f} s, {n} requests, {size / 1e6:.1f} MB, {entries} lines")
    mnt, proc = run.mount(f"{layout}{label}-rss", layout)
    try:
        mark = run.mark()
        t0 = time.monotonic()
        walked = []
        for month in MONTHS:
            y, m = month.split("-")
            _, out = timed(["find", str(mnt / base / y / m)])
            walked.append(f"{month}: {rss_mib(proc.pid):.0f}")
        seconds = time.monotonic() - t0
        time.sleep(0.2)
        n, size = run.catalogue_since(mark)
        rows.append({"layout": layout + label, "case": "rss", "seconds": seconds, "floor": None, "requests": n,
                     "bytes": size, "rss": rss_mib(proc.pid), "steps": ", ".join(walked)})
        note(f"{layout}{label} rss after find over {len(MONTHS)} months: {rows[-1]['rss']:.0f} MiB ({walked})")
    finally:
        run.unmount(mnt, proc)


def verdict(row: dict) -> str:
    if row["case"] == "rss":
        return "ok" if row["rss"] <= MAX_RSS_MIB else "MISSED"
    target = TARGETS.get(row["case"])
    if target is None:
        return ""
    ok = row["seconds"] <= target * row["floor"] and (row["case"] != "ls day" or row["bytes"] <= MAX_DAY_BYTES)
    return "ok" if ok else "MISSED"


def table(rows: list[dict], floor: tuple[float, int, int, int], month: str, samples: list[float]) -> str:
    fs, items, pages, size = floor
    lines = [f"Floor: a plain client paging {month}'s full items: {fs:.2f} s (median of {len(samples)} runs spread "
             f"over the run: {', '.join(f'{s:.1f}' for s in samples)}), {items} items, {pages} requests, "
             f"{size / 1e6:.1f} MB.", "",
             "| layout | case | time (s) | x floor | target | daemon CPU (s) | catalogue requests | catalogue MB | result |",
             "|---|---|---:|---:|---|---:|---:|---:|---|"]
    for r in rows:
        if r["case"] == "rss":
            lines.append(f"| {r['layout']} | RSS after find over {len(MONTHS)} months ({r['steps']} MiB) | "
                         f"{r['seconds']:.1f} | | <= {MAX_RSS_MIB} MiB: **{r['rss']:.0f} MiB** | | {r['requests']} | "
                         f"{r['bytes'] / 1e6:.1f} | {verdict(r)} |")
            continue
        target = {"ls day": "<= 0.25 x, <= 5 MB", "find month": "<= 1.5 x"}.get(r["case"], "")
        lines.append(f"| {r['layout']} | {r['case']} ({r['entries']} lines) | {r['seconds']:.2f} | "
                     f"{r['seconds'] / r['floor']:.2f} | {target} | {r['cpu']:.1f} | {r['requests']} | "
                     f"{r['bytes'] / 1e6:.2f} | {verdict(r)} |")
    return "\n".join(lines)


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    load = os.getloadavg()
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.node()}: {cpu}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, load average {load[0]:.1f} at the end")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="terrafs-bench-catalogue-"))
    run = Run(work)
    month = DAY[:7]
    try:
        note(f"starting the emulator (archive profile) on {DATA}; work dir {work}")
        run.start_emulator()
        note("warming the emulator: every month once (it makes each day's products on first use)")
        for m in MONTHS:
            requests.get(run.base + "/stac/search", timeout=600, params={
                "collections": COLLECTION, "datetime": month_range(m), "limit": 10000, "fields": "id,-links"})
        # The machine is shared: floor runs at the start and after each layout, the median is the floor.
        floors = [run.floor(month) for _ in range(REPEAT)]
        note(f"floor {month}: {floors[0][0]:.2f} s, {floors[0][1]} items, {floors[0][2]} pages, "
             f"{floors[0][3] / 1e6:.1f} MB")
        rows: list[dict] = []
        variants = [("", {})] + ([("-nofields", {"stac_fields": False})] if os.environ.get("BENCH_NOFIELDS") else [])
        for label, patch in variants:
            for layout in LAYOUTS:
                run.settings(reset=True, **patch)
                measure(run, layout, label, statistics.median(f[0] for f in floors), rows)
                run.settings(reset=True)
                floors.append(run.floor(month))
                note(f"floor {month}: {floors[-1][0]:.2f} s")
        floor = (statistics.median(f[0] for f in floors), *floors[0][1:])
        for r in rows:
            r["floor"] = floor[0]
        print(table(rows, floor, month, [f[0] for f in floors]))
        print()
        print(machine())
    finally:
        run.stop()
        if not any(os.path.ismount(p) for p in work.iterdir()):
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
