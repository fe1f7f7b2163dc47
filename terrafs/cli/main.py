"""The `terrafs` command: mount, umount, login, cache, prefetch, resolve, emulator.

Every failure a user can cause ends here as one clear line on stderr and a
non-zero exit; tracebacks are for bugs only (and then go to the log).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from terrafs import __version__
from terrafs.errors import TerrafsError
from terrafs.localfs import make_parents, open_private_file

log = logging.getLogger("terrafs")

EXIT_ERROR = 1
EXIT_USAGE = 2


# Tokens look like JWTs ("eyJ..."); the modules never log them, and this catches
# anything that would (a library's debug line, an exception text).
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class RedactSecrets(logging.Filter):
    """Last line of defence: the password and anything token-shaped never reach a log."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        clean = _JWT.sub("<token>", text)
        for secret in self.secrets:
            clean = clean.replace(secret, "<secret>")
        if clean != text:
            record.msg, record.args = clean, ()
        return True


REDACT = RedactSecrets()


def setup_logging(level: str, *, log_file: Path | None = None) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if log_file is None:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        make_parents(log_file)  # 0700; the file 0600, ours alone, never through a symlink (localfs.py)
        fd = open_private_file(log_file, os.O_WRONLY | os.O_APPEND)
        handler = logging.StreamHandler(os.fdopen(fd, "a", buffering=1))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(REDACT)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def _level(args, config=None) -> str:
    if getattr(args, "verbose", 0) >= 2:
        return "DEBUG"
    if getattr(args, "verbose", 0) == 1:
        return "INFO"
    if config is not None:
        return config.log_level
    return os.environ.get("TERRAFS_LOG_LEVEL", "WARNING")


def _load(args, **overrides):
    from terrafs.config import load_config

    path = Path(args.config).expanduser() if getattr(args, "config", None) else None
    return load_config(path, overrides={k: v for k, v in overrides.items() if v is not None})


# ---- mount -----------------------------------------------------------
def _check_mountpoint(path: Path) -> None:
    if not path.is_dir():
        raise TerrafsError(f"mount point {path} is not a folder")
    if os.path.ismount(path):
        raise TerrafsError(f"{path} is already a mount point")


def cmd_mount(args) -> int:
    from terrafs.build import make_auth
    from terrafs.mount.daemon import run
    from terrafs.cli.preflight import check_auth, check_catalogue
    from terrafs.mount.options import parse_options

    opts = parse_options(args.options)  # a bad option stops here, before anything else
    args.config = args.config or opts.config  # -o config=, layout= as mount(8) and fstab give them
    args.layout = args.layout or opts.layout
    config = _load(args, layout=args.layout, catalogue=args.catalogue)
    mountpoint = Path(args.mountpoint).expanduser().resolve()
    _check_mountpoint(mountpoint)
    if args.foreground:
        setup_logging(_level(args, config))
    config = _prompt_for_credentials(config)
    if config.password and len(config.password) >= 4:
        REDACT.secrets.add(config.password)
    auth = make_auth(config)
    warning = check_catalogue(config)
    for note in [warning] if warning else check_auth(auth, config):
        print(f"terrafs: warning: {note}", file=sys.stderr, flush=True)
    if args.foreground:
        run(config, mountpoint, auth, options=args.options)
        return 0
    return _mount_in_background(config, mountpoint, auth, args)


def _prompt_for_credentials(config):
    """Ask on a terminal when no other source gave credentials (never echoed)."""
    import dataclasses
    import getpass

    from terrafs.remote.auth import load_refresh_token

    if config.username and config.password:
        return config
    if config.auth_method == "bearer" and load_refresh_token(config.refresh_token_file):
        return config
    if not sys.stdin.isatty():
        return config
    username = config.username or input("Terrascope username: ")
    password = getpass.getpass(f"Terrascope password for {username}: ")
    return dataclasses.replace(config, username=username, password=password, credential_source="the terminal prompt")


def _mount_in_background(config, mountpoint: Path, auth, args) -> int:
    from terrafs.mount.daemon import run

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(read_end)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        try:
            setup_logging(_level(args, config), log_file=config.log_file)
        except TerrafsError as exc:  # e.g. a log file that is another user's symlink: tell the parent
            os.write(write_end, f"error: {exc}\n".encode())
            os._exit(1)
        os.dup2(logging.getLogger().handlers[0].stream.fileno(), 2)
        told = False

        def ready() -> None:
            nonlocal told
            os.write(write_end, b"ok\n")
            os.close(write_end)
            told = True

        code = 0
        try:
            run(config, mountpoint, auth, options=args.options, on_ready=ready)
        except BaseException as exc:  # the parent must hear why, whatever it was
            log.exception("the mount failed")
            if not told:
                os.write(write_end, f"error: {exc}\n".encode())
            code = 1
        os._exit(code)
    os.close(write_end)
    answer = _read_with_timeout(read_end, 60.0)
    if answer.startswith("ok"):
        for _ in range(100):
            if os.path.ismount(mountpoint):
                break
            time.sleep(0.05)
        print(f"terrafs mounted at {mountpoint} (log: {config.log_file})")
        return 0
    message = answer.strip() or f"the daemon stopped before the mount was ready; see {config.log_file}"
    print(f"terrafs: {message.removeprefix('error: ')}", file=sys.stderr)
    return EXIT_ERROR


def _read_with_timeout(fd: int, timeout: float) -> str:
    import select

    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], deadline - time.monotonic())
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
        if data.endswith(b"\n"):
            break
    os.close(fd)
    return data.decode(errors="replace")


def mounted(mountpoint: str) -> bool:
    """Whether the kernel lists a mount at this path (a dead FUSE mount too, which os.path.ismount misses)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return os.path.ismount(mountpoint)
    return any(len(fields) > 4 and _unescape(fields[4]) == mountpoint for fields in map(str.split, lines))


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """A mountinfo field: space, tab, newline and backslash are written in octal (\\040)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def cmd_umount(args) -> int:
    mountpoint = str(Path(args.mountpoint).expanduser().resolve())
    if not mounted(mountpoint):
        print(f"terrafs: {mountpoint} is not mounted", file=sys.stderr)
        return EXIT_ERROR
    for tool in (["fusermount3", "-u"], ["fusermount", "-u"], ["umount"]):
        if shutil.which(tool[0]):
            result = subprocess.run([*tool, mountpoint], capture_output=True, text=True)
            if result.returncode == 0:
                return 0
            error = result.stderr.strip()
            break
    else:
        error = "no fusermount3, fusermount or umount found"
    print(f"terrafs: cannot unmount {mountpoint}: {error}", file=sys.stderr)
    return EXIT_ERROR


# ---- login, cache, prefetch, resolve -------------------------------------
def cmd_login(args) -> int:
    import requests

    from terrafs.remote.auth import device_login, save_refresh_token

    config = _load(args)
    device_url = config.token_url.rstrip("/").rsplit("/", 1)[0] + "/auth/device"
    token = device_login(
        config.token_url,
        device_url,
        config.client_id,
        session=requests.Session(),
        prompt=lambda text: print(text, flush=True),
    )
    save_refresh_token(config.refresh_token_file, token)
    print(f"logged in; the refresh token is kept in {config.refresh_token_file} (readable by you only)")
    return 0


def cmd_cache(args) -> int:
    from terrafs.cli.cache import cmd_cache as run_cache

    return run_cache(args, _load)


def cmd_prefetch(args) -> int:
    from terrafs.cli.cache import cmd_prefetch as run_prefetch

    setup_logging(_level(args))
    return run_prefetch(args, _load)


def cmd_resolve(args) -> int:
    from terrafs.mount.xattrs import XATTR_PREFIX
    from terrafs.cli.resolve import resolve

    mount = Path(args.mount).expanduser().resolve()
    try:
        layout = os.getxattr(mount, XATTR_PREFIX + "layout").decode()
    except OSError:
        print(f"terrafs: {mount} is not a terrafs mount", file=sys.stderr)
        return EXIT_ERROR
    found = resolve(args.target, mount, layout)
    if found is None:
        print(f"terrafs: {args.target} is not under {mount}", file=sys.stderr)
        return EXIT_ERROR
    print(found)
    return 0


def cmd_emulator(args, rest: list[str]) -> int:
    from terrafs.emulator.server import main as emulator_main

    return emulator_main(rest)


# ---- parser --------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="terrafs", description="The Terrascope archive as a filesystem.")
    p.add_argument("--version", action="version", version=f"terrafs {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--config", help="config file (default: $TERRAFS_CONFIG or ~/.config/terrafs/config.yaml)")
        sp.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")

    m = sub.add_parser("mount", help="mount the archive")
    common(m)
    m.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground, log to stderr")
    m.add_argument("-o", dest="options", help="mount options, comma separated (allow_other, uid=, gid=, umask=, "
                   "default_permissions, config=, layout=; see the README)")
    m.add_argument("--layout", choices=("default", "platform"), help="default: collection/YYYY/MM/DD; platform: /data paths")
    m.add_argument("--catalogue", choices=("stac", "opensearch"), help="which catalogue to use")
    m.add_argument("mountpoint")

    u = sub.add_parser("umount", help="unmount")
    u.add_argument("mountpoint")

    lg = sub.add_parser("login", help="log in with the device-code flow; keeps only a refresh token")
    common(lg)

    c = sub.add_parser("cache", help="cache statistics or clearing")
    common(c)
    c.add_argument("action", choices=("stats", "clear"))

    pf = sub.add_parser("prefetch", help="warm the cache for files or folders of a mount")
    common(pf)
    pf.add_argument("--check", action="store_true", help="report what is cached, fetch nothing")
    pf.add_argument("paths", nargs="+")

    r = sub.add_parser("resolve", help="where a platform path, file:// URL or download URL is under a mount")
    r.add_argument("--mount", required=True, help="the terrafs mount point")
    r.add_argument("target", help="/data/MTDA/... path, file:///data/MTDA/... URL or download URL")

    sub.add_parser("emulator", help="run the Terrascope emulator (see terrafs emulator --help)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "emulator":
        return cmd_emulator(None, argv[1:])
    args = parser().parse_args(argv)
    handlers = {
        "mount": cmd_mount,
        "umount": cmd_umount,
        "login": cmd_login,
        "cache": cmd_cache,
        "prefetch": cmd_prefetch,
        "resolve": cmd_resolve,
    }
    try:
        code = handlers[args.command](args)
        sys.stdout.flush()  # here, so that a closed pipe is told below, not at the interpreter's exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except TerrafsError as exc:
        print(f"terrafs: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def _stdout_closed() -> int:
    """Whoever read our output stopped (`| head -1`): end quietly, as Unix tools do on SIGPIPE."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # what is left in stdout's buffer goes nowhere at exit
    os.close(devnull)
    return 128 + signal.SIGPIPE
