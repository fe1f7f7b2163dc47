"""Read benchmark on links: scripts/bench's read rows (a series of windows, a
cold 512 x 512 window, gdalinfo, a cold copy) on loopback and on slower links
made by the emulator's link profile, the mount against GDAL's /vsicurl/ (curl
for the copy) on the same URLs in the same run. Prints a Markdown table. A
report, not a test: exits 0.

It reuses scripts/bench's Python (loaded from that file: the Bench harness,
gdal_env, measure, median and the report's machine line) and adds only the
link, the cases' loop and the table. Each measured run starts on a fresh mount
with an empty cache and an empty rate-limit window; the tree is listed on
loopback first (catalogue calls are not measured), then the link is set.

Usage: scripts/bench_links.py   (or BENCH_LINKS=1 scripts/bench)
  BENCH_LINK_LIST   links, ";"-separated (default "loopback;rtt=30ms,bw=25MB/s;rtt=30ms,bw=5MB/s")
  BENCH_LAYOUTS     raster layouts (default sentinel2,cog,tiled,striped)
  BENCH_LINK_CASES  subset of series,window,gdalinfo,copy (default all)
  BENCH_SERIES      files in the series (default 12); BENCH_WINDOW_FILES: files for the window median (3)
  TERRAFS_BENCH_DATA, PYTHON as for scripts/bench
"""
from __future__ import annotations

import filecmp
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The emulator and the mounts run this checkout's terrafs too.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

from terrafs.emulator.link import Link, parse_link  # noqa: E402

LINKS = [parse_link(t) for t in os.environ.get(
    "BENCH_LINK_LIST", "loopback;rtt=30ms,bw=25MB/s;rtt=30ms,bw=5MB/s").split(";")]
CASES = os.environ.get("BENCH_LINK_CASES", "series,window,gdalinfo,copy").split(",")
SERIES_FILES = int(os.environ.get("BENCH_SERIES", "12"))
WINDOW_FILES = int(os.environ.get("BENCH_WINDOW_FILES", "3"))
COPY_MAX = 64 << 20  # the copied file: the first of its layout at most this big


def load_bench() -> types.ModuleType:
    """scripts/bench's Python (the heredoc of that shell script) as a module, without running its main."""
    path = ROOT / "scripts" / "bench"
    text = path.read_text()
    start = text.index("<<'PYTHON'\n") + len("<<'PYTHON'\n")
    end = text.rindex("\nPYTHON")
    mod = types.ModuleType("terrafs_bench")
    mod.__file__ = str(path)
    exec(compile(text[start:end], str(path), "exec"), mod.__dict__)
    return mod


bench = load_bench()
note = bench.note


class LinkBench(bench.Bench):
    """scripts/bench's harness with a link: set with each reset of the emulator's limiter."""

    link = Link()

    def set_link(self, link: Link, reset: bool = False) -> None:
        body = {"link_rtt": link.rtt, "link_bandwidth": link.bandwidth}
        if reset:
            body["reset"] = True
        requests.post(self.base + "/_emulator/settings", json=body, timeout=30).raise_for_status()

    def reset_limits(self) -> None:
        self.set_link(self.link, reset=True)


def compare(b: LinkBench, work: Path, tag: str, picked: list[dict], mine_cmd, theirs_cmd,
            check=None) -> tuple[dict, dict, bool]:
    """One run of the mount, then one of the reference, over `picked` in turn:
    (measure of the mount, measure of the reference, outputs equal).
    mine_cmd(path in the mount, out) and theirs_cmd(file row, out) give the commands."""
    env = bench.gdal_env(work)
    paths = {"/download/" + f["path"].lstrip("/") for f in picked}
    outs = [(work / f"{tag}-{i}-mine.tif", work / f"{tag}-{i}-ref.tif") for i in range(len(picked))]
    cache = work / f"cache-{tag}"
    b.set_link(Link())  # the tree is listed on loopback: catalogue calls are not measured
    mnt = b.mount(cache, f"mnt-{tag}")
    try:
        for f in picked:
            (mnt / f["default_path"]).stat()
        b.reset_limits()
        mark = b.mark()
        t0 = time.monotonic()
        for f, (out, _) in zip(picked, outs):
            b.timed(mine_cmd(str(mnt / f["default_path"]), str(out)), env)
        mine = bench.measure(b.entries_since(mark, paths), time.monotonic() - t0)
    finally:
        b.unmount(mnt)
        bench.shutil.rmtree(cache, ignore_errors=True)
    b.reset_limits()
    mark = b.mark()
    t0 = time.monotonic()
    for f, (_, out) in zip(picked, outs):
        b.timed(theirs_cmd(f, str(out)), dict(env, **bench.VSICURL_RETRY))
    elapsed = time.monotonic() - t0
    time.sleep(0.3)  # a body the client gave up on is logged when the server notices
    theirs = bench.measure(b.entries_since(mark, paths), elapsed)
    exact = all(same(m, r, check) for m, r in outs) if check != "none" else True
    for pair in outs:
        for p in pair:
            p.unlink(missing_ok=True)
    return mine, theirs, exact


def same(mine: Path, ref: Path, check) -> bool:
    """The two outputs hold the same data: the same bytes, or (GeoTIFFs) the same band checksums."""
    if not (mine.exists() and ref.exists()):
        return False
    if filecmp.cmp(mine, ref, shallow=False):
        return True
    if check != "raster":
        return False
    sums = []
    for p in (mine, ref):
        out = subprocess.run(["gdalinfo", "-checksum", str(p)], capture_output=True, text=True).stdout
        sums.append([line.strip() for line in out.splitlines() if "Checksum=" in line])
    return sums[0] == sums[1] and bool(sums[0])


def vsicurl(cmd_of):
    return lambda f, out: cmd_of("/vsicurl/" + f["url"], out)


def layout_rows(b: LinkBench, work: Path, link: Link, layout: str, rows: list) -> None:
    listed = requests.get(b.base + "/_emulator/files", params={"limit": 1000, "layout": layout}, timeout=60).json()
    files = sorted((f for f in listed if f["name"].endswith(".tif")), key=lambda f: f["path"])
    if not files:
        note(f"no {layout} files served: skipped")
        return
    slow = link.bandwidth and link.bandwidth <= 5e6
    name = link.describe()

    def add(case: str, n: int, m: dict, v: dict, exact: bool, target: str, met: bool) -> None:
        per = lambda x: f" ({x / n:.1f}/file)" if n > 1 else ""  # noqa: E731
        rows.append((name, f"{layout}: {case}",
                     f"{m['req']:.0f} req{per(m['req'])}, {m['bytes'] / 1e3:.0f} kB, {m['s']:.2f} s",
                     f"{v['req']:.0f} req{per(v['req'])}, {v['bytes'] / 1e3:.0f} kB, {v['s']:.2f} s",
                     f"{m['s'] / max(v['s'], 1e-9):.2f} time, {m['req'] / max(v['req'], 1):.2f} req, "
                     f"{m['bytes'] / max(v['bytes'], 1):.2f} bytes",
                     target, ("yes" if met and exact else "no") + ("" if exact else " (output differs)")))
        note(f"{name} | {layout}: {case}: {rows[-1][2]} vs {rows[-1][3]}")

    def translate(x: int, y: int, w: int, h: int):
        return lambda p, out: ["gdal_translate", "-q", "-srcwin", str(x), str(y), str(w), str(h), p, out]

    if "series" in CASES:
        picked = files[:SERIES_FILES]
        x, y, w, h = bench.SERIES_WINDOW
        cmd = translate(x, y, w, h)
        m, v, exact = compare(b, work, f"{layout}-series", picked, cmd, vsicurl(cmd), "raster")
        if slow:
            target, met = "<= 1.1 x time, <= req", m["s"] <= 1.1 * v["s"] and m["req"] <= v["req"]
        else:
            target, met = "<= 3 req/file", m["req"] <= 3 * len(picked)
        add(f"series, {w}x{h} at ({x}, {y}) from each of {len(picked)} files", len(picked), m, v, exact,
            target, met and m["429"] == 0)
    if "window" in CASES:
        x, y, w, h = bench.WINDOWS["window"]
        cmd = translate(x, y, w, h)
        runs = [compare(b, work, f"{layout}-window{i}", [f], cmd, vsicurl(cmd), "raster")
                for i, f in enumerate(files[:WINDOW_FILES])]
        m, v = bench.med([r[0] for r in runs]), bench.med([r[1] for r in runs])
        if slow:
            target, met = "<= 1.1 x time", m["s"] <= 1.1 * v["s"]
        else:
            target, met = "<= 3 req", m["req"] <= 3
        add(f"cold window {w}x{h} at ({x}, {y}), median of {len(runs)} files", 1, m, v,
            all(r[2] for r in runs), target, met)
    if "gdalinfo" in CASES:
        cmd = lambda p, out: ["gdalinfo", p]  # noqa: E731
        m, v, exact = compare(b, work, f"{layout}-gdalinfo", files[:1], cmd, vsicurl(cmd), "none")
        add("gdalinfo", 1, m, v, exact, "1 req", m["req"] <= 1)
    if "copy" in CASES:
        small = [f for f in files if f["size"] <= COPY_MAX][:1]
        if small:
            f = small[0]
            m, v, exact = compare(b, work, f"{layout}-copy", small, lambda p, out: ["cp", p, out],
                                  lambda f, out: ["curl", "-sf", "--netrc-file", str(b.netrc), "-o", out, f["url"]])
            add(f"cold copy (cp; reference curl), {f['size'] / 1e6:.1f} MB", 1, m, v, exact, "1 req",
                m["req"] == 1)


def main() -> int:
    work = Path(bench.tempfile.mkdtemp(prefix="terrafs-bench-links-"))
    work.chmod(0o700)
    b = LinkBench(work)
    rows: list[tuple] = []
    began = time.strftime("%Y-%m-%d %H:%M %Z")
    try:
        b.start_emulator()
        for link in LINKS:
            b.link = link
            for layout in bench.LAYOUTS:
                try:
                    layout_rows(b, work, link, layout, rows)
                except (RuntimeError, OSError, requests.RequestException) as exc:
                    note(f"{link.describe()} | {layout} failed: {exc!r}")
                    rows.append((link.describe(), f"{layout}: failed ({str(exc)[:200]})", "-", "-", "-", "-", "no"))
    except KeyboardInterrupt:
        note("interrupted")
    except Exception as exc:  # a report, not a test: say what broke and exit 0
        note(f"failed: {exc!r}")
    finally:
        b.stop()
        report(rows, began)
        bench.shutil.rmtree(work, ignore_errors=True)
    return 0


def report(rows: list[tuple], began: str) -> None:
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print()
    print(f"terrafs read benchmark on links, {began}; one run per case (windows: median of {WINDOW_FILES} files)")
    print(f"machine: {os.cpu_count()} CPUs ({cpu}), Linux {bench.platform.release()}, "
          f"load average at the end {os.getloadavg()[0]:.1f}; emulator link profile: a round trip per request, "
          f"two more per new connection, each answer capped at the bandwidth")
    print()
    print("| link | case | terrafs mount | /vsicurl/ (copy: curl) | ratio | target | met |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print(f"/vsicurl/ retries its 429s with {' '.join(f'{k}={v}' for k, v in bench.VSICURL_RETRY.items())}; "
          f"targets on 5 MB/s links: series <= 1.1 x /vsicurl/'s time with <= its requests, window <= 1.1 x "
          f"its time; elsewhere series <= 3 requests a file (head + 2 tile rows), window <= 3; gdalinfo 1; copy 1")


if __name__ == "__main__":
    sys.exit(main())
