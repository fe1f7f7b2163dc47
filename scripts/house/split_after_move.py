#!/usr/bin/env python3
"""Step 5 of docs/house-plan.md, after move_modules.py: the hand cuts that need more than a rename.

- build.py keeps the assembly; the FUSE run loop (fuse_options .. end) goes to mount/daemon.py;
- the catalogue response counter goes from mount/metrics.py to counters.py (build must not import mount/);
- the xattr names go to mount/xattrs.py (importing them must not load libfuse);
- split_listen goes from mount/metrics.py to text.py (config_schema must not import mount/).
Run from the repository root once, on the tree move_modules.py left.
"""
import re
import subprocess
import sys


def read(p):
    return open(p).read()


def write(p, s):
    open(p, "w").write(s)


def cut(src: str, start: str, end: str | None) -> tuple[str, str]:
    """src without the text from the line beginning `start` to (not incl.) the line beginning `end`."""
    i = src.index("\n" + start) + 1
    j = src.index("\n" + end, i) + 1 if end else len(src)
    return src[:i] + src[j:], src[i:j]


# 1. build.py -> mount/daemon.py
b = read("terrafs/build.py")
b, loop = cut(b, "def fuse_options(", None)
b = b.rstrip("\n") + "\n"
b = b.replace('"""Builds the daemon\'s objects from a Config and runs the FUSE loop.',
              '"""Builds the daemon\'s objects from a Config (the FUSE loop that serves them: mount/daemon.py).', 1)
for line in ("from terrafs.mount.memtrim import Trimmer\n",):
    b = b.replace(line, "")
if "limit_malloc_arenas" not in b.split("from terrafs.tree.nodes import limit_malloc_arenas", 1)[1]:
    b = b.replace("from terrafs.tree.nodes import limit_malloc_arenas\n", "")
b = b.replace("    from terrafs.mount.metrics import CATALOGUE_RESPONSES\n\n", "")
b = b.replace("from terrafs.config import Config\n", "from terrafs.config import Config\nfrom terrafs.counters import CATALOGUE_RESPONSES\n", 1)
b = b.replace("from typing import Any, Callable\n", "from typing import Any\n", 1)
b = b.replace("from terrafs.errors import AuthError, ConfigError, TerrafsError\n",
              "from terrafs.errors import AuthError, ConfigError\n", 1)
write("terrafs/build.py", b)
names = sorted(set(re.findall(r"\b(Daemon|build|Config|TerrafsError|limit_malloc_arenas|Trimmer|Callable|Path)\b", loop)))
imports = {
    "Callable": "from collections.abc import Callable",
    "Path": "from pathlib import Path",
}
head = '''"""The mount's run loop: libfuse's options, the FUSE loop over a built daemon, the control socket, metrics and the
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


'''
write("terrafs/mount/daemon.py", head + loop)
subprocess.run(["git", "add", "terrafs/mount/daemon.py"], check=True)

# 2. the catalogue response counter -> counters.py
m = read("terrafs/mount/metrics.py")
m, counts = cut(m, "class StatusCounts:", "def _guarded(")
m = m.replace("from terrafs.errors import TerrafsError\n",
              "from terrafs.counters import CATALOGUE_RESPONSES\nfrom terrafs.errors import TerrafsError\n", 1)
# 4. split_listen -> text.py
m, listen = cut(m, "def split_listen(", None)
m = m.replace("import threading\nfrom collections import Counter\n", "", 1)
m = m.replace("from terrafs.remote.limiter import LimiterStats\n",
              "from terrafs.remote.limiter import LimiterStats\nfrom terrafs.text import split_listen\n", 1)
write("terrafs/mount/metrics.py", m.rstrip("\n") + "\n")
c = read("terrafs/counters.py")
c = c.replace("import threading\n", "import threading\nfrom collections import Counter\n", 1)
c = c.replace("from collections.abc import Mapping\n", "from collections.abc import Mapping\nfrom typing import Any\n", 1)
c = c.rstrip("\n") + "\n\n\n" + counts.rstrip("\n").replace("mount.build", "build.py").replace(
    "(mount.catalogue_session registers the hook)", "(build.catalogue_session registers the hook)") + "\n"
write("terrafs/counters.py", c)
t = read("terrafs/text.py")
write("terrafs/text.py", t.rstrip("\n") + "\n\n\n" + listen.rstrip("\n") + "\n")

# 3. xattr names -> mount/xattrs.py
f = read("terrafs/mount/fuseops.py")
line = re.search(r'^XATTR_PREFIX = .*\n', f, re.M).group(0)
f = f.replace(line, "")
f = re.sub(r"^(from terrafs\.)", "from terrafs.mount.xattrs import XATTR_PREFIX\n\\1", f, count=1, flags=re.M)
write("terrafs/mount/fuseops.py", f)
write("terrafs/mount/xattrs.py", '"""The names of the extended attributes a mount shows (no libfuse here: the CLI reads them too)."""\n\n'
      + line)
subprocess.run(["git", "add", "terrafs/mount/xattrs.py"], check=True)

# callers
out = subprocess.run(["git", "ls-files", "terrafs", "tests", "scripts"], capture_output=True, text=True).stdout.split()
for p in out:
    if not (p.endswith(".py") or "." not in p.rsplit("/", 1)[-1]):
        continue
    try:
        s = read(p)
    except (UnicodeDecodeError, IsADirectoryError):
        continue
    n = s
    n = n.replace("from terrafs.mount.fuseops import XATTR_PREFIX", "from terrafs.mount.xattrs import XATTR_PREFIX")
    n = n.replace("from terrafs.mount.metrics import split_listen", "from terrafs.text import split_listen")
    n = n.replace("from terrafs.mount.metrics import CATALOGUE_RESPONSES", "from terrafs.counters import CATALOGUE_RESPONSES")
    n = n.replace("from terrafs.build import make_auth, run", "from terrafs.build import make_auth\n    from terrafs.mount.daemon import run")
    n = n.replace("from terrafs.build import run", "from terrafs.mount.daemon import run")
    n = re.sub(r"\bterrafs\.build\.(run|fuse_options|_libfuse_major|_start_control|_start_metrics)\b", r"terrafs.mount.daemon.\1", n)
    if n != s:
        print("rewrote", p)
        write(p, n)

# prose: file names that changed, in the code's docstrings and comments and in the docs
PROSE = {"fs.py": "mount/fuseops.py", "files.py": "openfiles.py", "blockcache.py": "cache/blocks.py",
         "cachecmd.py": "cli/cache.py", "treenodes.py": "tree/nodes.py", "treedays.py": "tree/days.py",
         "mount.py": "build.py", "cli.py": "cli/main.py", "listings.py": "cache/listings.py"}
prose = re.compile(r"(?<![\w/.])(" + "|".join(re.escape(k) for k in PROSE) + r")(?![\w])")
docs = subprocess.run(["git", "ls-files", "terrafs", "README.md", "docs"], capture_output=True, text=True).stdout.split()
for p in docs:
    if not p.endswith((".py", ".md")) or p.startswith("docs/house-plan"):
        continue
    s = read(p)
    n = prose.sub(lambda m: PROSE[m.group(1)], s)
    if n != s:
        print("prose", p)
        write(p, n)
