"""Which libfuse a mount runs on: libfuse 3 wherever it is installed.

mfusepy chooses its library once, when it is first imported, and looks for
libfuse 2 before libfuse 3; many machines have both (desktops install
libfuse 2 for AppImages), and a mount there would run on 2. Here libfuse 3 is
named to mfusepy (through FUSE_LIBRARY_PATH, for that import only) whenever
the system's library search finds it; FUSE_LIBRARY_PATH set by the user
still wins, and without libfuse 3 mfusepy's own search finds libfuse 2.

Must not: import mfusepy before choosing (every terrafs module gets it from
here), or leave FUSE_LIBRARY_PATH changed in the environment.
"""
from __future__ import annotations

import ctypes.util
import logging
import os
import platform
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType

log = logging.getLogger(__name__)

ENV = "FUSE_LIBRARY_PATH"


@dataclass(frozen=True)
class Choice:
    path: str | None  # what to name to mfusepy; None: leave the search to it
    why: str


def choose(environ: Mapping[str, str], find: Callable[[str], str | None], system: str = "Linux") -> Choice:
    """Which library to give mfusepy, from the environment and a library search (ctypes.util.find_library)."""
    if environ.get(ENV):
        return Choice(None, f"{ENV} names it")
    if system != "Linux":  # mfusepy runs on libfuse 3 on Linux only
        return Choice(None, "mfusepy's own search")
    found = find("fuse3")
    if found:
        return Choice(found, "libfuse 3 is preferred when it is installed")
    return Choice(None, "no libfuse 3 found; mfusepy's own search")


_chosen: Choice | None = None


def load() -> ModuleType:
    """mfusepy, imported on the library choose() picks (once per process)."""
    global _chosen
    if "mfusepy" in sys.modules:
        return sys.modules["mfusepy"]
    _chosen = choose(os.environ, ctypes.util.find_library, platform.system())
    if _chosen.path is None:
        import mfusepy

        return mfusepy
    os.environ[ENV] = _chosen.path
    try:
        import mfusepy
    finally:
        os.environ.pop(ENV, None)
    return mfusepy


def describe() -> str:
    """One line for the log: the version and file of the library in use, and why it was chosen."""
    fuse = load()
    why = _chosen.why if _chosen is not None else "chosen before terrafs was imported"
    return (f"libfuse {fuse.fuse_version_major}.{fuse.fuse_version_minor} from "
            f"{getattr(fuse, '_libfuse_path', '?')} ({why})")
