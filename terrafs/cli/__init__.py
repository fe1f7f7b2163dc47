"""The command line: `terrafs` and `mount.terrafs`; parses arguments, prints, exits.

May import every other package of terrafs; nothing imports it.
"""
