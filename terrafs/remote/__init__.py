"""Talking to the services: HTTP (session, retries, answers), credentials and their scope, the request budgets.

May import config, text, errors, localfs, counters. Must not import read, cache, tree, mount, cli.
"""
