"""Paths <-> catalogue nodes (default and platform layouts); listings asked lazily, kept bounded.

May import catalogue, cache, config, text, errors. Must not import read, remote, mount, cli.
"""
