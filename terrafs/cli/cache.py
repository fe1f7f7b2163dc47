"""`terrafs cache` and `terrafs prefetch`: the cache's figures and warming it, through running mounts.

A running mount's daemon is asked first (control.py): it has the live
figures, and it prefetches with its own credentials, limiter and cache, so
nothing is needed in the environment. Paths no daemon answers for (another
user's mount) are prefetched in this process with this user's credentials.

Must not: print a credential or a token; touch a mount's files except
through the daemon or by reading their attributes.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from terrafs.errors import TerrafsError

log = logging.getLogger("terrafs")

EXIT_ERROR = 1


def cmd_cache(args, load) -> int:
    """load(args) -> Config (cli's loader)."""
    from terrafs.build import open_block_cache, open_meta_cache

    config = load(args)
    # Running daemons first: asking them for their figures also writes their
    # counters to the cache, so the totals below include what they just did.
    live = _live_daemons(config.cache_dir) if args.action == "stats" else []
    blocks = open_block_cache(config)
    meta = open_meta_cache(config)
    try:
        if args.action == "clear":
            blocks.clear()
            meta.clear()
            print(f"cache cleared: {config.cache_dir}")
            return 0
        s = blocks.stats()
        print(f"cache folder: {config.cache_dir}")
        print(f"size:         {_human(s.size)} of {_human(config.cache_size)}")
        print(f"blocks:       {s.entries}")
        print(f"hit rate:     {s.hit_rate * 100:.1f}% ({s.hits} hits, {s.misses} misses)")
        print(f"listings:     {len(meta)} entries")
        if s.degraded:
            print(f"degraded:     {s.degraded}")
        for d in live:  # each daemon's figures: control.py sends them as nested objects (read/stats.py)
            reader = d.get("reader") or {}
            print(f"mounted:      {d['mountpoint']} (pid {d['pid']}){_served(reader)}")
            if sh := reader.get("shared"):
                print(f"shared tier:  {sh['hits']} hits, {sh['misses']} misses, "
                      f"{_human(sh['bytes_read'])} read, {_human(sh['bytes_written'])} "
                      f"written, {sh['waits']} waits ({sh['wait_seconds']:.1f} s)"
                      f"{'' if sh.get('available', True) else ', Redis away'}")
            why = (reader.get("write_behind") or {}).get("degraded") or (d.get("cache") or {}).get("degraded")
            if why:
                print(f"degraded:     {why}")
        if not live:
            print("mounted:      no running mount uses this cache")
        return 0
    finally:
        blocks.close()
        meta.close()


def _live_daemons(cache_dir: Path) -> list[dict]:
    from terrafs.mount.control import live_stats

    try:
        found = live_stats()
    except TerrafsError as exc:  # an unusable runtime folder: the on-disk figures still stand
        log.warning("%s", exc)
        return []
    return [d for d in found if os.path.realpath(d.get("cache_dir", "")) == os.path.realpath(cache_dir)]


def _served(r: dict) -> str:
    if "bytes_from_network" not in r:
        return ""
    held = r.get("held") or {}
    return (f": {held.get('hits', 0)} hits, {held.get('misses', 0)} misses, {_human(held.get('bytes_from_cache', 0))} "
            f"from the cache, {_human(r['bytes_from_network'])} from the network, "
            f"{r.get('open_streams', 0)} open streams")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def cmd_prefetch(args, load) -> int:
    """Through each path's mount daemon where one answers; else in this process with our own credentials."""
    from terrafs.mount.control import daemon_socket, mount_root

    by_daemon: dict[tuple[Path, Path], list[str]] = {}  # (socket, mount point) -> paths in the mount
    local: list[str] = []
    for p in args.paths:
        real = os.path.realpath(p)
        if not os.path.exists(real):
            print(f"terrafs: {p}: no such file or folder", file=sys.stderr)
            return EXIT_ERROR
        root = mount_root(real)
        sock = daemon_socket(root) if root is not None else None
        if sock is None:
            local.append(real)
        else:
            rel = os.path.relpath(real, root)
            by_daemon.setdefault((sock, root), []).append("/" if rel == "." else "/" + rel)
    code = 0
    for (sock, root), paths in by_daemon.items():
        code = max(code, _prefetch_through(sock, root, paths, args.check))
    if local:
        code = max(code, _prefetch_here(args, local, load))
    return code


def _prefetch_through(sock: Path, root: Path, paths: list[str], check: bool) -> int:
    from terrafs.mount.control import ask

    show = _Events(check, str(root))
    events = ask(sock, {"op": "prefetch", "paths": paths, "check": check}, timeout=None)
    while True:
        try:  # only the socket's errors here: a closed stdout (`| head`) is the command's to handle
            event = next(events, None)
        except OSError as exc:
            print(f"terrafs: the daemon of {root} stopped answering ({exc})", file=sys.stderr)
            return EXIT_ERROR
        if event is None:
            break
        show(event)
    if not show.finished:
        print(f"terrafs: the daemon of {root} stopped before the prefetch was done; see its log", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_ERROR if show.failed else 0


class _Events:
    """Prints the prefetch loop's events (read/prefetch.py), from a daemon or from this process."""

    def __init__(self, check: bool, prefix: str = ""):
        self.check, self.prefix = check, prefix
        self.bar: _Progress | None = None
        self.failed = 0
        self.finished = False

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "start" and not self.check:
            self.bar = _Progress(event["bytes"])
        elif kind == "progress" and self.bar is not None:
            self.bar.set(event["done"])
        elif kind == "check":
            _print_check(self.prefix + event["path"], event["size"], event["cached"])
        elif kind == "error":
            self.failed += 1
            print(f"\nterrafs: {self.prefix}{event.get('path')}: {event.get('message')}", file=sys.stderr)
        elif kind == "done":
            self.finished = True
            if self.bar is not None:
                self.bar.finish()
            if not self.check:
                print(f"prefetched {event['files']} files, {_human(event['bytes'])}")


def _print_check(path: str, size: int, cached: int) -> None:
    share = 100.0 if size == 0 else cached * 100 / size
    print(f"{share:5.1f}% {_human(cached):>10} of {_human(size):>10}  {path}")


def _mounted_files(paths: list[str]):
    for p in paths:
        path = Path(p)
        if path.is_dir():
            for dirpath, _dirs, names in os.walk(path):
                for name in sorted(names):
                    yield Path(dirpath) / name
        else:
            yield path


def _prefetch_here(args, paths: list[str], load) -> int:
    """No daemon answers for these paths (another user's mount, or an older terrafs): fetch in this process."""
    # RemoteFile and Reader through files/mount, which name the read path's module (it moves to terrafs.read).
    from terrafs.openfiles import RemoteFile, file_key
    from terrafs.mount.xattrs import XATTR_PREFIX
    from terrafs.read.prefetch import PrefetchTarget

    config = load(args)
    files = []
    for path in _mounted_files(paths):
        try:
            url = os.getxattr(path, XATTR_PREFIX + "url").decode()
        except OSError:
            print(f"terrafs: {path} is not a file of a terrafs mount", file=sys.stderr)
            return EXIT_ERROR
        size = path.stat().st_size
        files.append((path, RemoteFile(url=url, size=size, key=file_key(url, size))))
    targets = [PrefetchTarget(str(path), remote) for path, remote in files]
    return _run_here(config, targets, args.check)


def _run_here(config, targets: list, check: bool) -> int:
    """The prefetch loop in this process: only the block cache for --check, else credentials and a reader too."""
    from terrafs.build import make_auth, make_downloader, make_reader, open_block_cache
    from terrafs.cli.preflight import check_auth
    from terrafs.read.prefetch import prefetch

    reader = None
    if not check:
        auth = make_auth(config)
        check_auth(auth, config)
    blocks = open_block_cache(config)
    show = _Events(check)
    try:
        if not check:
            reader = make_reader(config, make_downloader(config, auth), blocks)
        prefetch(reader, blocks, targets, check=check, emit=show)
    finally:
        if show.bar is not None and not show.finished:
            show.bar.finish()
        if reader is not None:
            reader.close()
        blocks.close()
    return EXIT_ERROR if show.failed else 0


class _Progress:
    def __init__(self, total: int):
        self.total = max(total, 1)
        self.done = 0
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()

    def set(self, done: int) -> None:
        self.done = done
        if self.tty:
            frac = min(self.done / self.total, 1.0)
            rate = self.done / max(time.monotonic() - self.start, 1e-6)
            bar = "#" * int(frac * 30)
            sys.stderr.write(f"\r[{bar:<30}] {frac * 100:5.1f}% {_human(self.done)} {_human(rate)}/s")
            sys.stderr.flush()

    def finish(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
