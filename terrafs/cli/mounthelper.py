"""`mount.terrafs`: the helper mount(8) runs for `mount -t terrafs` and fstab lines of type terrafs.

mount(8) calls `mount.terrafs SOURCE MOUNTPOINT [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]`.
This turns that into `terrafs mount -o OPTIONS MOUNTPOINT` (config= and layout=
ride in the options, SOURCE becomes the name shown in /proc/mounts), which
returns once the mount is ready and leaves its daemon running; a plain
`umount` ends the daemon, its cache writes flushed.

Must not: take credentials from the command line (there is no option for
them), or fail on the flags mount(8) adds: -s (sloppy), -n (no mtab), -v are
accepted, -f (fake) does everything but mount.
"""
from __future__ import annotations

import getopt
import sys

# mount(8)'s conventions for a helper's exit status.
EXIT_USAGE = 1
EXIT_MOUNT_FAILED = 32

USAGE = "usage: mount.terrafs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        flags, positional = getopt.gnu_getopt(argv, "sfnvhN:o:t:")
    except getopt.GetoptError as exc:
        print(f"mount.terrafs: {exc}\n{USAGE}", file=sys.stderr)
        return EXIT_USAGE
    seen = {flag for flag, _ in flags}
    if "-h" in seen or len(positional) != 2:
        print(USAGE, file=sys.stderr)
        return 0 if "-h" in seen else EXIT_USAGE
    if "-N" in seen:
        print("mount.terrafs: mounting into another namespace (-N) is not supported", file=sys.stderr)
        return EXIT_USAGE
    source, mountpoint = positional
    if "," in source or "=" in source:
        print(f"mount.terrafs: the source {source!r} may not hold ',' or '=' (it becomes fsname=)",
              file=sys.stderr)
        return EXIT_USAGE
    options = ",".join(value for flag, value in flags if flag == "-o" and value)
    if "fsname=" not in options:
        options = ",".join(filter(None, [f"fsname={source}", options]))
    command = ["mount", "-o", options, *(["-v"] if "-v" in seen else []), mountpoint]
    if "-f" in seen:  # mount -f: everything but the mount itself
        print("mount.terrafs: would run: terrafs " + " ".join(command))
        return 0
    from terrafs.cli.main import main as terrafs_main

    return 0 if terrafs_main(command) == 0 else EXIT_MOUNT_FAILED
