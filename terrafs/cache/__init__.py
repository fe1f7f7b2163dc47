"""What is kept on this machine: the block cache, the listing store, per-file metadata.

May import config, text, errors, localfs, counters. Must not import remote, read, tree, mount, cli.
"""
