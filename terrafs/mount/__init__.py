"""A mount: FUSE operations (thin), mount options, xattrs, the daemon's run loop, control socket, metrics.

May import build, openfiles, tree, read, cache, remote, config. Must not be imported by them.
This __init__ imports nothing, so `terrafs.mount.xattrs` can be read without loading libfuse.
"""
