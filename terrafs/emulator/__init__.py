"""The Terrascope emulator: STAC API, OpenSearch, download service and token
endpoint on one port, for tests, benchmarks and the demo.

It follows how the real services behave (see README), not what is convenient
for the client, and imports nothing from the client side of terrafs.
"""
