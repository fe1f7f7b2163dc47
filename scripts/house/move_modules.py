#!/usr/bin/env python3
"""The package move of docs/house-plan.md (its step M): move terrafs modules into packages and rewrite every import path.

Run from the repository root on a clean tree:  python3 scripts/house/move_modules.py [--dry-run]
Idempotent: a dotted name that is already a new module path is left alone.
Touches: terrafs/, tests/, scripts/ (incl. extensionless python scripts), pyproject.toml,
.ci/, README.md, docs/ (dotted names only; file paths 'terrafs/x.py' in prose via --paths).
"""
import os, re, subprocess, sys

MOVES = {  # old module -> new module
    "terrafs.cli": "terrafs.cli.main",
    "terrafs.cachecmd": "terrafs.cli.cache",
    "terrafs.resolve": "terrafs.cli.resolve",
    "terrafs.mounthelper": "terrafs.cli.mounthelper",
    "terrafs.mount": "terrafs.build",          # whole file first; run() etc. split out by hand (step 5)
    "terrafs.fs": "terrafs.mount.fuseops",
    "terrafs.libfuse": "terrafs.mount.libfuse",
    "terrafs.options": "terrafs.mount.options",
    "terrafs.control": "terrafs.mount.control",
    "terrafs.metrics": "terrafs.mount.metrics",
    "terrafs.files": "terrafs.openfiles",
    "terrafs.http": "terrafs.remote.http",
    "terrafs.answers": "terrafs.remote.answers",
    "terrafs.auth": "terrafs.remote.auth",
    "terrafs.scope": "terrafs.remote.scope",
    "terrafs.ratelimit": "terrafs.remote.ratelimit",
    "terrafs.ratelimit_redis": "terrafs.remote.ratelimit_redis",
    "terrafs.blockcache": "terrafs.cache.blocks",
    "terrafs.listings": "terrafs.cache.listings",
    "terrafs.tree": "terrafs.tree.paths",
    "terrafs.treenodes": "terrafs.tree.nodes",
    "terrafs.treedays": "terrafs.tree.days",
    "terrafs.dating": "terrafs.tree.dating",
    "terrafs.limiter": "terrafs.remote.limiter",
    "terrafs.memtrim": "terrafs.mount.memtrim",
    "terrafs.preflight": "terrafs.cli.preflight",
    "terrafs.filemeta": "terrafs.cache.filemeta",
    "terrafs.blockfiles": "terrafs.cache.blockfiles",
}
PACKAGES = {  # new package -> its __init__ docstring (job; what it may import)
    "terrafs/cli": "The command line: `terrafs` and `mount.terrafs`; parses arguments, prints, exits.\n\nMay import every other package of terrafs; nothing imports it.",
    "terrafs/mount": "A mount: FUSE operations (thin), mount options, xattrs, the daemon's run loop, control socket, metrics.\n\nMay import build, openfiles, tree, read, cache, remote, config. Must not be imported by them.\nThis __init__ imports nothing, so `terrafs.mount.xattrs` can be read without loading libfuse.",
    "terrafs/remote": "Talking to the services: HTTP (session, retries, answers), credentials and their scope, the request budgets.\n\nMay import config, text, errors, localfs, counters. Must not import read, cache, tree, mount, cli.",
    "terrafs/cache": "What is kept on this machine: the block cache, the listing store, per-file metadata.\n\nMay import config, text, errors, localfs, counters. Must not import remote, read, tree, mount, cli.",
    "terrafs/tree": "Paths <-> catalogue nodes (default and platform layouts); listings asked lazily, kept bounded.\n\nMay import catalogue, cache, config, text, errors. Must not import read, remote, mount, cli.",
}
NEW = set(MOVES.values()) | {p.replace("/", ".") for p in PACKAGES} | {
    "terrafs.mount.xattrs", "terrafs.mount.daemon"}  # made by hand in later steps
DOTTED = re.compile(r"(?<![\w.])terrafs(?:\.[A-Za-z_]\w*)+")
PATHS = re.compile(r"(?<![\w/.])(" + "|".join(re.escape(k.replace(".", "/")) for k in sorted(MOVES, key=len, reverse=True))
                   + r")\.py\b")
FROM_PKG = re.compile(r"^(\s*)from terrafs import ([\w, ]+?)(\s*(?:#.*)?)$", re.M)


def rewrite_dotted(m: re.Match) -> str:
    name = m.group(0)
    parts = name.split(".")
    for k in range(len(parts), 1, -1):
        head = ".".join(parts[:k])
        if head in NEW and head not in MOVES:
            return name  # already new
        if head in MOVES:
            return ".".join([MOVES[head]] + parts[k:])
    return name


def rewrite_from_pkg(m: re.Match) -> str:
    indent, names, tail = m.groups()
    out, keep = [], []
    for n in [x.strip() for x in names.split(",")]:
        base, _, alias = n.partition(" as ")
        new = MOVES.get("terrafs." + base.strip())
        if new:
            pkg, _, mod = new.rpartition(".")
            out.append(f"{indent}from {pkg} import {mod} as {(alias or base).strip()}"
                       if mod != (alias or base).strip() else f"{indent}from {pkg} import {mod}")
        else:
            keep.append(n)
    if keep:
        out.insert(0, f"{indent}from terrafs import {', '.join(keep)}")
    out[-1] += tail
    return "\n".join(out)


def relative_to_absolute(text: str, module: str) -> str:
    pkg = module.rpartition(".")[0]
    def fix(m):
        dots, rest = m.group(2), m.group(3)
        base = pkg.split(".")[: len(pkg.split(".")) - (len(dots) - 1)]
        target = ".".join(base + ([rest] if rest else []))
        return f"{m.group(1)}from {target} import"
    return re.sub(r"^(\s*)from (\.+)([\w.]*) import", fix, text, flags=re.M)


def files():
    out = subprocess.run(["git", "ls-files"], capture_output=True, text=True, check=True).stdout.split()
    for p in out:
        if p.startswith(("scripts/house/", "docs/house-plan.md")):
            continue  # the move's own tools and plan name the old paths on purpose
        if p.startswith(("terrafs/", "tests/", "scripts/", ".ci/", "docs/")) or p in ("pyproject.toml", "README.md"):
            if p.endswith((".py", ".toml", ".md", ".cfg", ".ini", ".sh", ".yml", ".yaml")) or "." not in os.path.basename(p):
                yield p


def main(dry: bool) -> None:
    # 1. relative imports -> absolute (auth.py, http.py, answers.py use them)
    for p in files():
        if p.startswith("terrafs/") and p.endswith(".py"):
            mod = p[:-3].replace("/", ".").removesuffix(".__init__")
            src = open(p).read()
            new = relative_to_absolute(src, mod if not p.endswith("__init__.py") else mod + ".x")
            if new != src and not dry:
                open(p, "w").write(new)
    # 2. move files (a module and a package of the same name cannot coexist: go through a temp name)
    for old, new in MOVES.items():
        src, dst = old.replace(".", "/") + ".py", new.replace(".", "/") + ".py"
        if os.path.exists(src):
            tmp = src + ".moving"
            print("git mv", src, dst)
            if not dry:
                subprocess.run(["git", "mv", src, tmp], check=True)
    for old, new in MOVES.items():
        src, dst = old.replace(".", "/") + ".py.moving", new.replace(".", "/") + ".py"
        if os.path.exists(src) and not dry:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            subprocess.run(["git", "mv", src, dst], check=True)
    for pkg, doc in PACKAGES.items():
        init = os.path.join(pkg, "__init__.py")
        if not dry and not os.path.exists(init):
            os.makedirs(pkg, exist_ok=True)
            open(init, "w").write(f'"""{doc}\n"""\n')
            subprocess.run(["git", "add", init], check=True)
    # 3. rewrite names everywhere
    for p in files():
        if not os.path.exists(p):
            continue
        try:
            src = open(p).read()
        except UnicodeDecodeError:
            continue
        new = DOTTED.sub(rewrite_dotted, src)  # first: the lines FROM_PKG writes are new paths already
        new = PATHS.sub(lambda m: MOVES[m.group(1).replace("/", ".")].replace(".", "/") + ".py", new)
        if p.endswith(".py") or "." not in os.path.basename(p):
            new = FROM_PKG.sub(rewrite_from_pkg, new)
        if new != src:
            print("rewrote", p)
            if not dry:
                open(p, "w").write(new)


if __name__ == "__main__":
    main("--dry-run" in sys.argv)
