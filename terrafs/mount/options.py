"""Mount options (`-o a,b=c`) as mount(8), fstab, systemd and libfuse see them.

One comma-separated list arrives from `terrafs mount -o`, from `mount -t terrafs`
and from an /etc/fstab line. It holds four kinds of option, told apart here:
terrafs's own (`config=`, `layout=`), ownership and modes that the FUSE
operations apply themselves (`uid=`, `gid=`, `umask=`; the same on libfuse 2
and 3), options meant for mount(8) or systemd that must never reach libfuse
(`_netdev`, `nofail`, `x-systemd.*`, ...), and the rest, which go to libfuse
(`allow_other`, `allow_root`, `default_permissions`, ...).

Must not: mount anything, read the config file or touch the filesystem.
"""
from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass, field

from terrafs.errors import TerrafsError

# Read by mount(8), systemd's fstab generator or the boot scripts; meaningless to libfuse.
MOUNT8_ONLY = frozenset({
    "_netdev", "nofail", "noauto", "auto", "user", "users", "nouser", "owner", "group", "defaults",
    "rw", "sync", "async", "loud", "silent",
})
MOUNT8_PREFIXES = ("x-", "comment=", "X-")
# The mount is read-only whatever is asked: a `rw` from mount(8)'s defaults is dropped.
READ_ONLY_DIR = 0o555
READ_ONLY_FILE = 0o444


@dataclass(frozen=True)
class Ownership:
    """What getattr reports as owner and permission bits."""

    uid: int
    gid: int
    dir_mode: int = READ_ONLY_DIR
    file_mode: int = READ_ONLY_FILE


@dataclass(frozen=True)
class MountOptions:
    fuse: dict[str, object] = field(default_factory=dict)  # for libfuse, in order
    uid: int | None = None
    gid: int | None = None
    umask: int | None = None
    config: str | None = None
    layout: str | None = None
    ignored: tuple[str, ...] = ()  # mount(8)/systemd options, accepted and not passed on

    def fuse_text(self) -> str:
        """The options for libfuse, as a list again."""
        return ",".join(k if v is True else f"{k}={v}" for k, v in self.fuse.items())

    def ownership(self) -> Ownership:
        """Owner and modes: the caller's by default; umask only takes bits away (the mount is read-only)."""
        mask = self.umask or 0
        return Ownership(
            uid=os.getuid() if self.uid is None else self.uid,
            gid=os.getgid() if self.gid is None else self.gid,
            dir_mode=READ_ONLY_DIR & ~mask,
            file_mode=READ_ONLY_FILE & ~mask,
        )


def parse_options(text: str | None) -> MountOptions:
    """Split a mount option list; raises TerrafsError naming the bad option."""
    fuse: dict[str, object] = {}
    found: dict[str, object] = {}
    ignored: list[str] = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        if key in MOUNT8_ONLY or item.startswith(MOUNT8_PREFIXES):
            ignored.append(item)
        elif key in ("uid", "gid", "umask", "config", "layout"):
            found[key] = _value(key, value, eq)
        elif key == "ro":
            continue  # always read-only
        else:
            fuse[key] = value if eq else True
    return MountOptions(fuse=fuse, ignored=tuple(ignored), **found)  # type: ignore[arg-type]


def _value(key: str, value: str, eq: str) -> object:
    if not eq or not value:
        raise TerrafsError(f"mount option '{key}' needs a value ({key}=...)")
    if key == "uid":
        return _id(value, lambda name: pwd.getpwnam(name).pw_uid, "user")
    if key == "gid":
        return _id(value, lambda name: grp.getgrnam(name).gr_gid, "group")
    if key == "umask":
        try:
            mask = int(value, 8)
        except ValueError:
            mask = -1
        if not 0 <= mask <= 0o777:
            raise TerrafsError(f"mount option 'umask={value}': an octal mask from 000 to 777 is expected")
        return mask
    if key == "layout" and value not in ("default", "platform"):
        raise TerrafsError(f"mount option 'layout={value}': default or platform is expected")
    return value


def _id(value: str, lookup, kind: str) -> int:
    """A numeric id, or a user/group name looked up on this host."""
    if value.isdigit():
        return int(value)
    try:
        return int(lookup(value))
    except KeyError:
        raise TerrafsError(f"mount option: no {kind} named '{value}' on this host") from None
