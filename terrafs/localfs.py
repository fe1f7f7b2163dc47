"""Local folders and files that only their owner may touch: cache, state, log.

Another local user must not be able to prepare a place where terrafs will
write or read: a cache folder they created (and fill with blocks the mount
would serve as file bytes), or a symlink named like our state or log file
(pointing at a file of ours, which we would then overwrite). So, as ssh does
with its own files:

- folders and files we create are 0700 / 0600, missing parent folders too;
- an existing folder or file that belongs to another user, or that group or
  others may write, is refused with one line that says what to do;
- files are opened without following a symlink in their last component, and
  only regular files are accepted (no FIFO that would block an open).

Parents of an existing path are not checked (a cache under /tmp is fine: the
sticky bit keeps others from replacing our entries there).
Must not: log, or create anything with a wider mode than 0700 / 0600.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from terrafs.errors import TerrafsError

DIR_MODE = 0o700
FILE_MODE = 0o600


class UnsafePathError(TerrafsError):
    """A local path another user could have prepared or could change."""


class FolderUnusable(UnsafePathError):
    """The folder cannot be made or looked at (a read-only or full disk): not a trust problem,
    so a cache may do without it."""


def make_parents(path: Path) -> None:
    """Create the missing folders above `path`, 0700 each (existing ones are left as they are)."""
    _make_missing(Path(path).parent)


def _make_missing(path: Path) -> None:
    missing = []
    probe = path
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, DIR_MODE)
        except FileExistsError:
            pass  # made by a concurrent terrafs process: checked like any existing folder
        except OSError as exc:
            raise FolderUnusable(f"cannot create the folder {folder}: {exc.strerror}") from None


def private_dir(path: Path) -> Path:
    """`path` as a folder of ours that nobody else may write; created 0700 when missing."""
    path = Path(path)
    _make_missing(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        raise FolderUnusable(f"cannot use the folder {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePathError(f"refusing {path}: it is not a folder")
    # An existing folder readable by others is left as the user made it (it may be
    # their home); what terrafs creates inside it is 0700.
    _check_owner_and_mode(path, info, "folder", DIR_MODE)
    return path


def open_private_file(path: Path, flags: int) -> int:
    """A descriptor of `path` (a regular file of ours, never through a symlink), created 0600.

    `flags` are the access flags (os.O_RDWR, os.O_WRONLY | os.O_APPEND, ...);
    O_CREAT, O_NOFOLLOW and O_CLOEXEC are added here.
    """
    path = Path(path)
    flags |= os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, FILE_MODE)
    except OSError as exc:
        if os.path.islink(path):
            raise UnsafePathError(f"refusing {path}: it is a symbolic link (remove it; terrafs creates "
                                  f"its own file there)") from None
        raise UnsafePathError(f"cannot open {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePathError(f"refusing {path}: it is not a regular file")
        _check_owner_and_mode(path, info, "file", FILE_MODE)
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.fchmod(fd, FILE_MODE)  # ours: logs and state are nobody else's to read
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_open_file(fd: int, path: Path) -> None:
    """Refuse an already open file that is no longer ours alone (cheap: one fstat)."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePathError(f"refusing {path}: it is not a regular file")
    _check_owner_and_mode(path, info, "file", FILE_MODE)


def _check_owner_and_mode(path: Path, info: os.stat_result, kind: str, mode: int) -> None:
    if info.st_uid != os.getuid():
        raise UnsafePathError(f"refusing the {kind} {path}: it belongs to another user (uid {info.st_uid}); "
                              f"remove it or choose another path")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePathError(f"refusing the {kind} {path}: group or others may write to it "
                              f"(permissions {stat.S_IMODE(info.st_mode):04o}); run: chmod {mode:o} '{path}'")
