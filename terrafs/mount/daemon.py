"""The mount's run loop: libfuse's options, the FUSE loop over a built daemon, the control socket, metrics and the
memory trimmer beside it. The one module that starts libfuse's loop; it builds nothing itself (build.py does).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import requests

from terrafs.build import Daemon, build
from terrafs.config import Config
from terrafs.errors import TerrafsError
from terrafs.mount.memtrim import Trimmer
from terrafs.tree.nodes import limit_malloc_arenas

log = logging.getLogger(__name__)


def fuse_options(extra: str | None) -> dict:
    opts: dict = {"ro": True, "fsname": "terrafs", "subtype": "terrafs"}
    if _libfuse_major() == 2:
        # libfuse 3 takes these in init (mount/fuseops.py); libfuse 2 only as options.
        # No kernel_cache: open() keeps a file's pages unless the file changed on the server.
        opts.update(entry_timeout=3600, attr_timeout=3600)
    for item in (extra or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, _, value = item.partition("=")
        opts[key] = value if value else True
    return opts


def _libfuse_major() -> int:
    from terrafs.mount.libfuse import load

    return load().fuse_version_major


def run(config: Config, mountpoint: Path, auth: requests.auth.AuthBase, *, options: str | None = None,
        on_ready: Callable[[], None] | None = None) -> None:
    """Mounts and serves until unmounted (blocks); the cache's pending writes are on disk when it returns.

    A plain umount (or fusermount -u) ends libfuse's loop like a SIGTERM does,
    and everything after it below runs either way.
    """
    from terrafs.mount.fuseops import FUSE, TerraFS
    from terrafs.mount.options import parse_options

    opts = parse_options(options)  # only its FUSE options reach libfuse (uid=, _netdev, config= ... do not)
    limit_malloc_arenas()  # before FUSE's threads: listings parsed in many threads keep many heaps
    daemon = build(config, auth)
    control = metrics = trimmer = None
    try:
        control = _start_control(daemon, config, mountpoint)
        metrics = _start_metrics(config, daemon, auth)
        trimmer = Trimmer().start()  # memtrim.py: what a long load frees goes back to the system
        ops = TerraFS(daemon.tree, daemon.files, on_ready=on_ready, owner=opts.ownership())
        from terrafs.mount.libfuse import describe

        log.info("%s", describe())
        log.info("mounting %s (libfuse %d, layout %s, catalogue %s, options %s)", mountpoint,
                 _libfuse_major(), config.layout, config.catalogue, options or "-")
        try:
            FUSE(ops, str(mountpoint), foreground=True, nothreads=False, **fuse_options(opts.fuse_text()))
        except RuntimeError as exc:  # mfusepy's way of saying fuse_main failed; libfuse logged why
            given = opts.fuse_text() or "none"
            raise TerrafsError(f"libfuse could not mount {mountpoint} (code {exc}); an option it does not "
                               f"know? FUSE options given: {given}; see {config.log_file}") from None
    finally:
        for part in (control, metrics, trimmer):
            if part is not None:
                part.stop()
        daemon.close()
        log.info("stopped serving %s; cache writes flushed", mountpoint)


def _start_control(daemon: Daemon, config: Config, mountpoint: Path):
    """The control socket, or None: a mount without one still serves files."""
    from terrafs.mount.control import ControlServer, handlers

    try:
        control = ControlServer(mountpoint, handlers(daemon, config, mountpoint))
        return control if control.start() else None
    except (OSError, TerrafsError) as exc:
        log.warning("no control socket (terrafs prefetch and cache stats will not reach this mount): %s", exc)
        return None


def _start_metrics(config: Config, daemon: Daemon, auth):
    listen = getattr(config, "metrics_listen", None)
    if not listen:
        return None
    from terrafs.mount.metrics import MetricsServer

    server = MetricsServer(listen, daemon, auth)
    server.start()
    return server
