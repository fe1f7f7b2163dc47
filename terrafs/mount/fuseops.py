"""The FUSE operations: a path in, a tree or reader call, a result or an errno out.

Nothing else lives here: no HTTP, no JSON, no cache policy.
"""
from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import stat
import threading
from itertools import count

from terrafs.mount.xattrs import XATTR_PREFIX
from terrafs.mount import libfuse
from terrafs.errors import AuthError, TerrafsError
from terrafs.openfiles import Files
from terrafs.mount.options import Ownership
from terrafs.tree.paths import DirNode, FileNode, NotFound, Tree

log = logging.getLogger(__name__)
fuse = libfuse.load()  # mfusepy on libfuse 3 wherever it is installed (libfuse.py)

# Catalogue files never change once published, so the kernel may keep what it saw.
CACHE_TIMEOUT = 3600.0


def _errno_of(exc: Exception) -> int:
    if isinstance(exc, NotFound):
        return errno.ENOENT
    if isinstance(exc, AuthError):
        return errno.EACCES
    return errno.EIO


def translated(method):
    """Turn our exceptions into errnos; an unexpected one is logged, never fatal."""

    @functools.wraps(method)
    def wrapper(self, path, *args):
        try:
            return method(self, path, *args)
        except fuse.FuseOSError:
            raise
        except NotFound:
            raise fuse.FuseOSError(errno.ENOENT) from None
        except TerrafsError as exc:
            log.error("%s %s: %s", method.__name__, path, exc)
            raise fuse.FuseOSError(_errno_of(exc)) from None
        except Exception:
            log.exception("%s %s failed unexpectedly", method.__name__, path)
            raise fuse.FuseOSError(errno.EIO) from None

    return wrapper


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


class TerraFS(fuse.Operations):
    use_ns = True

    def __init__(self, tree: Tree, files: Files, *, on_ready=None, owner: Ownership | None = None):
        self.tree = tree
        self.files = files
        self._on_ready = on_ready
        self._handles: dict[int, object] = {}
        self._next_fh = count(1)
        self._lock = threading.Lock()
        # uid=, gid=, umask= are applied here rather than by libfuse: libfuse 2
        # and 3 parse them differently (and 3 only in its high-level options).
        owner = owner or Ownership(os.getuid(), os.getgid())
        self._uid, self._gid = owner.uid, owner.gid
        self._dir_mode = stat.S_IFDIR | owner.dir_mode
        self._file_mode = stat.S_IFREG | owner.file_mode

    # ---- life cycle --------------------------------------------------
    def init_with_config(self, conn_info, config_3) -> None:
        # Kernel read-ahead 96 KiB (its default is 128 KiB; init may only lower
        # it). The kernel reads past each tile range a COG reader asks for, and
        # that is what a 512x512 window costs beyond its tiles: measured on
        # kernel 6.18 (GDAL, ~260 KB tile ranges), the kernel asks ~520 KiB per
        # range at 128 KiB, 384 KiB at 96 KiB, 352 KiB at 64 KiB. A copy gets
        # reads of twice this (192 KiB; 256 KiB at the default); at 64 KiB its
        # 128 KiB reads made a cold `cat` ~15% slower, at 96 KiB no measurable change.
        readahead = 96 << 10
        if conn_info is not None and getattr(conn_info, "max_readahead", 0) > readahead:
            conn_info.max_readahead = readahead
        if config_3 is not None:
            config_3.kernel_cache = 0  # open() decides per file (keep_cache), see FUSE.open
            config_3.entry_timeout = CACHE_TIMEOUT
            config_3.attr_timeout = CACHE_TIMEOUT
            config_3.negative_timeout = 1.0
        if self._on_ready is not None:
            self._on_ready()

    # ---- metadata ----------------------------------------------------
    @translated
    def getattr(self, path, fh=None):
        node = self.tree.lookup(path)
        if isinstance(node, DirNode):
            return {
                "st_mode": self._dir_mode,
                "st_nlink": 2,
                "st_uid": self._uid,
                "st_gid": self._gid,
                "st_mtime": _ns(node.mtime),
                "st_ctime": _ns(node.mtime),
                "st_atime": _ns(node.mtime),
            }
        size = self.files.size(node)
        return {
            "st_mode": self._file_mode,
            "st_nlink": 1,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_blksize": 1 << 20,
            "st_uid": self._uid,
            "st_gid": self._gid,
            "st_mtime": _ns(node.mtime),
            "st_ctime": _ns(node.mtime),
            "st_atime": _ns(node.mtime),
        }

    @translated
    def readdir(self, path, fh):
        # With each entry's type (d_type), a walk such as find need not look up every file.
        modes = (self._file_mode, self._dir_mode)
        return [".", "..", *((name, modes[folder], 0) for name, folder in self.tree.entries(path))]

    @translated
    def getxattr(self, path, name, position=0):
        attrs = self._xattrs(path)
        if name not in attrs:
            raise fuse.FuseOSError(fuse.ENOATTR)
        if name == XATTR_PREFIX + "record":  # read from the disk cache or the catalogue only when asked
            return self.tree.record(path).encode()
        return attrs[name].encode()

    @translated
    def listxattr(self, path):
        # The record is left out of the list (it stays readable by name): copy tools
        # (cp -a, shutil.copytree, rsync -X) copy every listed attribute, and a
        # record of many KiB does not fit in a local filesystem's xattr space.
        return [name for name in self._xattrs(path) if name != XATTR_PREFIX + "record"]

    def _xattrs(self, path: str) -> dict[str, str]:
        node = self.tree.lookup(path)
        out: dict[str, str] = {}
        if path in ("", "/"):
            out[XATTR_PREFIX + "layout"] = self.tree.layout
        product = node.product
        if product is not None:
            out[XATTR_PREFIX + "product_id"] = product.id
            out[XATTR_PREFIX + "record"] = ""
        if isinstance(node, FileNode):
            out[XATTR_PREFIX + "url"] = node.file.href
        if self.tree.layout == "platform" and product is not None:
            # The platform layout's paths are the platform paths.
            out[XATTR_PREFIX + "platform_path"] = "/data/" + path.strip("/")
        elif isinstance(node, FileNode):
            if node.file.local_path:
                out[XATTR_PREFIX + "platform_path"] = node.file.local_path
        elif product is not None and product.files and product.files[0].local_path:
            local = product.files[0].local_path
            rel = product.files[0].relpath
            if local.endswith("/" + rel):
                out[XATTR_PREFIX + "platform_path"] = local[: -len(rel) - 1]
        return out

    def statfs(self, path):
        return {"f_bsize": 1 << 20, "f_frsize": 1 << 20, "f_namemax": 255}

    # ---- data --------------------------------------------------------
    @translated
    def open(self, path, flags):
        return self.open_keep(path, flags)[0]

    @translated
    def open_keep(self, path, flags) -> tuple[int, bool, bool]:
        """(file handle, whether the kernel may keep its cached pages of the file, whether the
        open is direct I/O: a file republished at another size, whose size the kernel may not know)."""
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC):
            raise fuse.FuseOSError(errno.EROFS)
        node = self.tree.lookup(path)
        if not isinstance(node, FileNode):
            raise fuse.FuseOSError(errno.EISDIR)
        handle, keep = self.files.open(node)
        with self._lock:
            fh = next(self._next_fh)
            self._handles[fh] = handle
        return fh, keep, handle.direct

    def _handle(self, fh):
        handle = self._handles.get(fh)
        if handle is None:
            raise fuse.FuseOSError(errno.EBADF)
        return handle

    @translated
    def read(self, path, size, offset, fh):
        # Under FUSE below, libfuse's read callback goes to read_into; this one
        # serves plain mfusepy (and its presence makes mfusepy register the callback).
        return self.files.read(self._handle(fh), offset, size)

    @translated
    def read_into(self, path, buf, size, offset, fh):
        """read(), but into libfuse's reply buffer (see FUSE below): no bytes object, one copy less."""
        handle = self._handle(fh)
        if size <= 0:
            return 0
        out = memoryview((ctypes.c_char * size).from_address(ctypes.addressof(buf.contents))).cast("B")
        return self.files.read_into(handle, offset, out)

    @translated
    def release(self, path, fh):
        with self._lock:
            handle = self._handles.pop(fh, None)
            last = handle is not None and all(h.remote.key != handle.remote.key for h in self._handles.values())
        if last:
            self.files.release(handle)
        return 0

    # A read-only mount: every change is refused with EROFS.
    def _readonly(self, *args):
        raise fuse.FuseOSError(errno.EROFS)

    chmod = chown = create = mkdir = mknod = rename = rmdir = _readonly
    symlink = truncate = unlink = utimens = write = link = setxattr = removexattr = _readonly


_ADOPTED: set[int] = set()  # native ids of libfuse threads that keep their Python thread state
_adopt_lock = threading.Lock()


def _keep_thread_state() -> None:
    """Let the calling libfuse worker thread keep its Python thread state between callbacks.

    libfuse's worker threads are not Python's: for each callback, ctypes makes
    a thread state and destroys it on return, and in CPython 3.11 that maps
    and unmaps a 16 KiB frame stack every time (munmap in a threaded process
    means a TLB flush on every CPU). One extra PyGILState_Ensure, never
    released, keeps the state for the thread's life; measured on a cold copy
    of a 211 MB band, ~1000 map/unmap pairs less. A thread that exits leaves
    its small state behind until the daemon ends (libfuse keeps up to 10 idle
    workers, so there are few).
    """
    tid = threading.get_native_id()
    if tid in _ADOPTED:
        return
    with _adopt_lock:
        if tid not in _ADOPTED:
            ctypes.pythonapi.PyGILState_Ensure()
            _ADOPTED.add(tid)


class FUSE(fuse.FUSE):
    """mfusepy's FUSE with two changes, both for the cost of a callback.

    A read fills libfuse's buffer in place: mfusepy's read takes bytes from
    the operations and copies them into the buffer libfuse replies from (a
    cold copy of a band is ~1000 reads of 192 KiB); here the operations get
    the buffer itself (read_into) and the reader copies each byte into it
    once. And libfuse's threads keep their Python thread state (see
    _keep_thread_state).
    """

    def _wrapper(self, func, *args, **kwargs):  # mfusepy calls every callback through this
        _keep_thread_state()
        return super()._wrapper(func, *args, **kwargs)

    def read(self, path, buf, size, offset, fip):  # the signature of mfusepy's callback
        name = None if path is None else path.decode(self.encoding, self.errors)  # as mfusepy decodes paths
        return self.operations.read_into(name, buf, size, offset, fip.contents.fh)

    def open(self, path, fip):  # the signature of mfusepy's callback
        fip.contents.fh, keep, direct = self.operations.open_keep(path.decode(self.encoding, self.errors),
                                                                  fip.contents.flags)
        # The kernel keeps a file's pages across opens unless the file changed on the server.
        fip.contents.keep_cache = 1 if keep else 0
        # A file republished at another size: the kernel's idea of its size may be an hour old
        # (attr_timeout), and it ends page-cache reads there; direct reads go by our answers.
        fip.contents.direct_io = 1 if direct else 0
        return 0
