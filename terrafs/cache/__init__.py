"""What is kept on this machine: the block cache, the listing store, per-file metadata.

May import catalogue (the model its listings hold), text, errors. Must not import remote, read, tree, mount, cli.
"""
